"""An independent scan: checkov over the Kubernetes manifests of every rendered stack.

checkov lives in its own virtualenv (.venv-checkov; its pins clash with the main one),
which `make setup` creates. Each skipped check is listed with its reason in
policy/checkov_skips.yaml.
"""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from trnctl.render import render_stack
from tests.platform_helpers import PLATFORM_STACKS, REPO, WORKLOAD_STACKS

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
SKIPS_FILE = REPO / "policy" / "checkov_skips.yaml"


def skip_ids() -> list[str]:
    return [s["id"] for s in yaml.safe_load(SKIPS_FILE.read_text())["skips"]]


def run_checkov(directory) -> list[dict]:
    """checkov's report(s) for a directory; --skip-download keeps it offline."""
    if not CHECKOV.exists():
        pytest.fail(f"{CHECKOV} not found: checkov is not installed; `make setup` installs it into .venv-checkov")
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(directory), "--framework", "kubernetes", "-o", "json", "--quiet",
         "--skip-download", "--skip-check", ",".join(skip_ids())],
        capture_output=True, text=True, timeout=300)
    if proc.returncode not in (0, 1):  # 1: failed checks; anything else: checkov itself failed
        pytest.fail(f"checkov exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    return report if isinstance(report, list) else [report]


def failed_checks(reports: list[dict]) -> list[dict]:
    return [f for r in reports for f in (r.get("results") or {}).get("failed_checks", [])]


def test_skips_have_ids_and_reasons_and_match_the_installed_checkov():
    doc = yaml.safe_load(SKIPS_FILE.read_text())
    ids = skip_ids()
    assert len(ids) == len(set(ids))
    for s in doc["skips"]:
        assert re.match(r"^CKV2?_K8S_\d+$", s["id"]), s
        assert len(s["reason"].split()) >= 5, f"{s['id']}: give a reason"
    pinned = (REPO / "requirements-checkov.txt")
    if pinned.exists():  # the Makefile installs checkov from this file
        assert f"checkov=={doc['checkovVersion']}" in pinned.read_text().split()


@pytest.mark.slow
def test_every_rendered_stack_passes_checkov(tmp_path):
    rendered = 0
    for project_dir, stacks in ((REPO, PLATFORM_STACKS), (REPO / "workloads", WORKLOAD_STACKS)):
        for stack in stacks:
            render_stack(project_dir, stack, tmp_path / stack, check=False)
            rendered += len(list((tmp_path / stack / "manifests").glob("*.yaml")))
    assert rendered > 0
    for stack_dir in tmp_path.iterdir():
        for extra in ("helm",):  # chart values are not manifests
            for f in (stack_dir / extra).glob("*"):
                f.unlink()
    reports = run_checkov(tmp_path)
    scanned = sum((r.get("summary") or {}).get("resource_count", 0) for r in reports)
    assert scanned >= len(WORKLOAD_STACKS), "checkov scanned no workload objects"
    failed = failed_checks(reports)
    assert failed == [], "\n".join(f"{f['check_id']} {f['check_name']}: {f['resource']} ({f['file_path']})"
                                   for f in failed)


def test_checkov_still_catches_a_privileged_pod_with_the_skips_applied(tmp_path):
    (tmp_path / "pod.yaml").write_text((REPO / "tests/fixtures/policy/checkov/privileged-pod.yaml").read_text())
    failed = {f["check_id"] for f in failed_checks(run_checkov(tmp_path))}
    assert {"CKV_K8S_16", "CKV_K8S_17"} <= failed  # privileged container, host PID namespace


def test_missing_checkov_fails_the_suite_with_the_setup_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(globals(), "CHECKOV", tmp_path / "no-such-checkov")
    with pytest.raises(pytest.fail.Exception, match=r"`make setup` installs it"):
        run_checkov(tmp_path)
