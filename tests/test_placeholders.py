"""Example values a stack file ships with (issue 23 item 3): the render lists them under its
summary, and preflight fails on them before it needs any credentials."""
from __future__ import annotations

from pathlib import Path

import yaml

from stackfiles.placeholders import find_placeholders
from tests.test_trnctl_cli import _no_credentials
from trnctl import cli, exitcodes

REPO = Path(__file__).resolve().parent.parent


def keys(project_dir: Path, stack: str) -> dict[str, str]:
    return {p.key: p.value for p in find_placeholders(project_dir, stack)}


def test_the_example_stacks_placeholders_are_found():
    assert keys(REPO, "dev-usw2") == {"trn-platform:endpoint.publicAccessCidrs[0]": "203.0.113.0/24",
                                      "trn-platform:budget.alertEmails[0]": "ml-platform-alerts@example.com"}
    assert keys(REPO, "dev-trn2-use2")["trn-platform:nodePools[1].capacityBlockIds[0]"] == "cr-0f1e2d3c4b5a69788"
    assert "trn-workloads:hfToken" in keys(REPO / "workloads", "lora-finetune-usw2")
    assert "trn-workloads:apiKey" in keys(REPO / "workloads", "llm-serve-usw2")


def test_real_values_are_not_placeholders(tmp_path):
    config = {"aws:region": "us-west-2",
              "trn-platform:endpoint": {"publicAccessCidrs": ["198.18.7.0/24", "2001:db9::/48"]},
              "trn-platform:budget": {"alertEmails": ["ml@corp.io"]},
              "trn-workloads:hfToken": {"secure": "v1:AAECAwQFBgcICQoL:c2VjcmV0IGNpcGhlcnRleHQ="},
              "trn-workloads:apiKey": {"secure": "AAABAOxZ0JnMw2hH"}}  # Pulumi Cloud ciphertext: one base64 string
    (tmp_path / "Pulumi.real.yaml").write_text(yaml.safe_dump({"config": config}))
    assert find_placeholders(tmp_path, "real") == []
    config["trn-platform:endpoint"]["publicAccessCidrs"].append("198.51.100.7/32")  # RFC 5737 TEST-NET-2
    (tmp_path / "Pulumi.real.yaml").write_text(yaml.safe_dump({"config": config}))
    [found] = find_placeholders(tmp_path, "real")
    assert found.key == "trn-platform:endpoint.publicAccessCidrs[2]" and "RFC 5737" in found.why
    assert "pulumi config set --path 'endpoint.publicAccessCidrs[2]'" in found.fix


def test_render_summary_lists_placeholders_and_still_passes(tmp_path, capsys):
    argv = ["render", "dev-use2", "--no-check", "--out", str(tmp_path / "out")]
    assert cli.main(argv) == exitcodes.OK
    out = capsys.readouterr().out
    assert "placeholders: 1 example value(s) that `pulumi up` would use as written" in out
    assert "trn-platform:monitoring.alertEmails[0] = ml-platform-alerts@example.com: an example address" in out


def test_preflight_reports_placeholders_before_the_credential_check(tmp_path, monkeypatch, capsys):
    _no_credentials(tmp_path, monkeypatch)
    monkeypatch.chdir(REPO)
    assert cli.main(["preflight", "dev-trn2-use2"]) == exitcodes.FINDINGS
    lines = capsys.readouterr().out.splitlines()
    rows = [ln.split()[0] + " " + ln.split()[1] for ln in lines if ln.startswith(("placeholder:", "credentials"))]
    assert rows[-1] == "credentials FAIL" and rows[:3] == ["placeholder: dev-trn2-use2"] * 3
    assert any("cr-0f1e2d3c4b5a69788" in ln for ln in lines)
