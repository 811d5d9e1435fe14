"""What a new user copies from the README and the requirements file works as written."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_architecture_diagram_is_mermaid_with_stacks_components_and_data_flow():
    blocks = re.findall(r"```mermaid\n(.*?)```", README, re.S)
    assert len(blocks) == 1
    diagram = blocks[0]
    assert diagram.startswith("flowchart ")
    for part in ("platform stack", "workload stacks", "StackReference", "Karpenter", "NodePools", "SharedStorage",
                 "Addons", "Registry", "fsx.s3ImportPath", "/shared", "artifacts bucket"):
        assert part in diagram, part
    assert "<" not in diagram.replace("<br/>", ""), "angle brackets break Mermaid labels"


def test_inspect_commands_expand_run_dir_in_the_pod_not_on_the_laptop():
    lines = [ln for ln in README.splitlines() if "kubectl" in ln and "exec" in ln and "$RUN_DIR" in ln]
    assert lines
    for line in lines:
        command = line.split("  #")[0]
        # The local shell expands $RUN_DIR (empty on a laptop) unless it sits inside single quotes.
        assert all(_single_quoted(command, m.start()) for m in re.finditer(r"\$RUN_DIR", command)), line
        assert "bash -c" in shlex.join(shlex.split(command)), line  # a shell in the pod does the expansion


def _single_quoted(command: str, index: int) -> bool:
    quoted = False
    for ch in command[:index]:
        if ch == "'":
            quoted = not quoted
    return quoted


def test_prerequisites_name_git_and_github_for_the_mpi_operator_kustomization():
    prerequisites = README.split("Prerequisites:", 1)[1].split("```", 1)[0]
    assert "git" in prerequisites and "github.com" in prerequisites
    assert "mpi-operator" in prerequisites


def test_data_to_shared_is_documented_with_the_commands():
    section = README.split("## How data reaches `/shared`", 1)[1].split("\n## ", 1)[0]
    for needed in ("fsx.s3ImportPath", "aws s3 sync", "pulumi config set --path fsx.s3ImportPath",
                   "describe-data-repository-associations", "/shared/datasets/"):
        assert needed in section, needed
    storage = (ROOT / "infra/storage.py").read_text()
    assert 'file_system_path="/datasets"' in storage  # what the section promises


def test_requirements_comment_points_at_files_that_exist():
    for path in re.findall(r"images/[\w./-]+\.\w+", (ROOT / "requirements.txt").read_text()):
        assert (ROOT / path.rstrip(").")).exists(), path


def test_render_usage_names_the_stack_variable_and_the_out_default():
    assert "make render STACK=<name>" in README
    assert "build/render/dev-usw2" in README and "--out" in README
    makefile = (ROOT / "Makefile").read_text()
    assert "STACK ?=" in makefile and "$(STACK)" in makefile


# --------------------------------------------------------------------------- issue 23 item 10: a newcomer's order


def _section(heading: str) -> str:
    return README.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_starts_with_the_quickstart_in_the_order_of_the_work():
    assert re.findall(r"^## (.+)$", README, re.M)[0] == "Quickstart"
    quick = _section("Quickstart")
    assert "Where the offline proof ends" in quick
    steps = ["make render", "trnctl preflight dev-usw2", "pulumi up --stack dev-usw2", "fsx.s3ImportPath",
             "docker login", "`compile-usw2`", "`lora-finetune-usw2` **before** `llm-serve-usw2`",
             "`dev-trn2-use2`", "**Destroy**"]
    where = [quick.find(s) for s in steps]
    assert -1 not in where, dict(zip(steps, where))
    assert where == sorted(where), "quickstart steps out of the order of the work"


def test_every_workload_has_its_internals_page_and_the_readme_keeps_only_what_a_user_does():
    from workloads.config import WORKLOADS

    section = _section("Workload stacks")
    for workload in WORKLOADS:
        page = ROOT / "docs" / f"{workload}.md"
        assert page.exists(), page
        assert f"(docs/{workload}.md)" in section, workload
    internals = {"mixed_precision_SR": "nemo-pretrain", "recompute_causal_mask": "lora-finetune",
                 "PREMUL_SUM": "titan-pretrain", "selective activation checkpointing": "ray-pretrain",
                 "gigatoken-cache-bytes": "nemo-pretrain", "TRN_SERVE_MAX_QUEUED_REQUESTS": "compile"}
    for phrase, workload in internals.items():
        assert phrase not in README, phrase
        assert phrase in (ROOT / "docs" / f"{workload}.md").read_text(), phrase


def test_readme_says_whether_organization_in_platform_stack_is_literal():
    row = next(line for line in README.splitlines() if line.startswith("| `platformStack` |"))
    assert "`organization` is literal on a self-managed backend" in row and "Pulumi Cloud" in row
    assert "fullyQualifiedStackName" in row  # the Pulumi doc that says so


# --------------------------------------------------------------------------- issue 23 item 9: what setup installs


def _make_dry_run(target: str, tmp_path: Path) -> str:
    import subprocess

    venvs = {"VENV": "v", "CHECKOV_VENV": "c", "TITAN_VENV": "t", "VLLM_VENV": "l"}  # none exists: every step shows
    args = [f"{k}={tmp_path / v}" for k, v in venvs.items()]
    done = subprocess.run(["make", "-n", "--no-print-directory", target, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_setup_says_what_it_installs_before_it_starts_and_each_step_as_it_goes(tmp_path):
    out = _make_dry_run("setup", tmp_path)
    assert out.splitlines()[0] == 'echo "$SETUP_PLAN"'  # the plan, before any venv is made
    headers = [line for line in out.splitlines() if line.startswith('echo "==> [')]
    assert [h.split("]")[0][-3:] for h in headers] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert out.count("ready: $(du -sh") == 4
    plan = (ROOT / "Makefile").read_text().split("define SETUP_PLAN", 1)[1].split("endef", 1)[0]
    sizes = dict(re.findall(r"\$\((\w+)\)\s+(\d+\.\d) GB", plan))
    # the README's measured sizes are the plan's (du -sh of each venv after a full setup)
    assert sizes == {"VENV": "2.4", "CHECKOV_VENV": "0.3", "VLLM_VENV": "3.5", "TITAN_VENV": "1.5"}
    for venv, size in (("`.venv`", "2.4 GB"), ("`.venv-vllm`", "3.5 GB"), ("`.venv-titan`", "1.5 GB"),
                       ("`.venv-checkov`", "291 MB")):
        assert f"{venv} {size}" in README or f"{venv}\n   {size}" in README, venv


def test_make_render_sets_up_only_what_rendering_needs(tmp_path):
    out = _make_dry_run("render", tmp_path)
    assert f"{tmp_path / 'v'}/bin/pip install" in out
    for other in ("c", "t", "l"):
        assert str(tmp_path / other) not in out
    assert "apt-get" not in out and "SETUP_PLAN" not in out


# --------------------------------------------------------------------------- issue 23 item 11: the laptop commands


def laptop_block() -> str:
    section = _section("Run the workload code on your laptop")
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_laptop_section_covers_every_step_of_the_work():
    block = laptop_block()
    for command in ("train_bpe_tokenizer", "-m trn_workloads.dataprep", "-m trn_workloads.compile.housing_mlp train",
                    "-m trn_workloads.compile ", "-m trn_workloads.serve", "save_tiny_base_model",
                    "-m trn_workloads.finetune", "-m trn_workloads.titan.train"):
        assert command in block, command


@pytest.mark.slow
def test_laptop_commands_run_as_written(tmp_path):
    """The README block, run by bash from the repository root: every command must succeed."""
    import os
    import subprocess

    from tests.loopback import free_port

    if not (ROOT / ".venv-titan" / "bin" / "python").exists():
        pytest.fail(".venv-titan not found: `make setup` creates it (the block's TorchTitan step needs it)")
    script = tmp_path / "laptop.sh"
    script.write_text(laptop_block())
    env = {**os.environ, "W": str(tmp_path / "w"), "PORT": str(free_port())}
    done = subprocess.run(["bash", "-euo", "pipefail", str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    w = tmp_path / "w"
    assert (w / "data" / "corpus_text_document.idx").exists() and (w / "compiled" / "manifest.json").exists()
    assert '"outputs":[[' in done.stdout  # the served prediction
    assert (w / "lora-run" / "eval.json").exists() and (w / "lora-run" / "merged").is_dir()
    steps = [json.loads(line)["step"] for line in (w / "titan-run" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6
