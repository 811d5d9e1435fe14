"""The one command-line entry point: subcommands, --help, exit codes, deterministic renders."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from trnctl import cli, exitcodes, render

REPO = Path(__file__).resolve().parent.parent


def test_every_subcommand_has_help(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: trnctl {name}") and "exit codes: 0 ok, 1 findings, 2 bad input" in out


def test_console_script_entry_point_is_the_cli():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'trnctl = "trnctl.cli:main"' in pyproject
    done = subprocess.run([sys.executable, "-m", "trnctl", "--help"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0 and "render" in done.stdout and "preflight" in done.stdout


def test_the_project_is_found_from_the_stack_name():
    assert render.find_project_dir("dev-usw2") == REPO
    assert render.find_project_dir("compile-usw2") == REPO / "workloads"
    with pytest.raises(render.RenderError, match="no Pulumi.nope.yaml .* stacks here: .*compile-usw2.*dev-usw2"):
        render.find_project_dir("nope")


@pytest.mark.parametrize("argv", [["render", "nope"], ["cost", "nope"], ["preflight", "nope"], ["sweep", "nope"],
                                  ["validate", "/does/not/exist"]])
def test_bad_input_exits_2_with_one_error_line_style(argv, capsys):
    assert cli.main(argv) == exitcodes.BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_render_defaults_out_and_is_deterministic(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["render", "dev-use2", "--no-check"]) == exitcodes.OK
    first = (tmp_path / "build" / "render" / "dev-use2" / "resources.json").read_text()
    assert cli.main(["render", "dev-use2", "--no-check", "--out", str(tmp_path / "again")]) == exitcodes.OK
    assert (tmp_path / "again" / "resources.json").read_text() == first
    capsys.readouterr()


def test_cost_prices_platform_and_workload_stacks(capsys):
    assert cli.main(["cost", "dev-usw2"]) == exitcodes.OK
    assert "always on" in capsys.readouterr().out
    assert cli.main(["cost", "lora-finetune-usw2"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "trn1-efa" in out and "total $21.50/h" in out


# --------------------------------------------------------------------------- issue 23 item 7: how a newcomer types it


def test_render_accepts_the_stack_file_path(tmp_path, capsys):
    argv = ["render", str(REPO / "Pulumi.dev-use2.yaml"), "--no-check", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == exitcodes.OK  # was: no Pulumi.Pulumi.dev-use2.yaml.yaml
    assert (tmp_path / "out" / "resources.json").exists()
    assert "trn-platform/dev-use2:" in capsys.readouterr().out
    assert render.resolve_stack("workloads/Pulumi.compile-usw2.yaml", None) == ("compile-usw2", Path("workloads"))


def test_bare_render_lists_the_stacks(capsys):
    assert cli.main(["render"]) == exitcodes.BAD_INPUT
    captured = capsys.readouterr()
    assert "platform stacks (Pulumi.<stack>.yaml): dev-trn2-use2, dev-use2, dev-usw2" in captured.out
    assert "workload stacks (workloads/Pulumi.<stack>.yaml): compile-usw2," in captured.out
    assert captured.err.startswith("error: name a stack, e.g. trnctl render dev-usw2")


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("trnctl 0.3.0 (trn-platform; Neuron SDK tracks: xla 2.26.1, native ")


def _no_credentials(tmp_path, monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no IMDS probe: offline and quick


def test_preflight_of_a_workload_stack_preflights_its_platform(tmp_path, monkeypatch, capsys):
    _no_credentials(tmp_path, monkeypatch)
    monkeypatch.chdir(REPO)
    assert cli.main(["preflight", "compile-usw2"]) == exitcodes.FINDINGS  # was: bad input, no Pulumi.compile-usw2.yaml
    out = capsys.readouterr().out
    assert "note: compile-usw2 is a workload stack of platform stack dev-usw2" in out
    assert "preflight for stack dev-usw2: cluster trn-dev-usw2 in us-west-2, workload stacks compile-usw2," in out


def test_sweep_of_a_workload_stack_names_the_platform_and_deletes_nothing(capsys):
    assert cli.main(["sweep", "compile-usw2", "--project-dir", str(REPO)]) == exitcodes.BAD_INPUT
    assert "sweep the platform stack: trnctl sweep dev-usw2" in capsys.readouterr().err


# --------------------------------------------------------------------------- issue 23 item 8: render-all


def test_render_all_goes_on_after_a_failure_and_ends_with_a_table(tmp_path, capsys):
    import yaml

    from tests.platform_helpers import project_with_stack, stack_config

    (tmp_path / "repo").mkdir()
    root = project_with_stack(tmp_path / "repo", "platform", "dev-use2", stack_config("platform", "dev-use2"))
    (root / "Pulumi.aa-bad.yaml").write_text(yaml.safe_dump({"config": {"aws:region": "us-west-1"}}))
    code = render.render_all(tmp_path / "out", check=False, root=root)
    out = capsys.readouterr().out
    assert code == exitcodes.BAD_INPUT  # non-zero: one stack failed (the worst exit code of all)
    assert out.index("[1/2] aa-bad ...") < out.index("[2/2] dev-use2 ...")  # went on after the failure
    table = out.split("\nstack ", 1)[1].splitlines()
    assert table[0].split() == ["resources", "findings", "placeholders", "$/h", "seconds", "result"]
    bad = next(line for line in table if line.startswith("aa-bad"))
    good = next(line for line in table if line.startswith("dev-use2"))
    assert bad.split()[1:5] == ["-", "-", "-", "-"] and bad.endswith("bad input")
    assert good.split()[1:5] == ["150", "0", "1", "1.16"] and good.endswith("ok")
    assert "1 of 2 stacks rendered clean; not clean: aa-bad" in out


def test_a_clean_render_says_the_policy_rules_and_the_schema_check_ran(tmp_path, capsys):
    assert cli.main(["render", "compile-usw2", "--out", str(tmp_path / "out")]) == exitcodes.OK
    out = capsys.readouterr().out
    assert "policy rules (policy/rules): " in out and " 0 mandatory and 0 advisory violation(s)" in out
    assert "provider schemas (pulumi-aws " in out and "0 issue(s)" in out
