"""The offline tools on bad input (issue 16): render never leaves an earlier render's files
next to an error and has a default --out; a float kubernetesVersion or a platformStack that
does not exist is a clear error, never a traceback; sweep without credentials speaks like
preflight."""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from trnctl import render
from tests.platform_helpers import REPO, project_with_stack, stack_config


def _platform_project(tmp_path: Path, stack: str, config: dict) -> Path:
    (tmp_path / "project").mkdir()
    return project_with_stack(tmp_path / "project", "platform", stack, config)


def test_error_render_into_an_existing_out_dir_leaves_no_earlier_files(tmp_path, capsys):
    out = tmp_path / "out"
    good = stack_config("platform", "dev-usw2")
    project = _platform_project(tmp_path, "s", good)
    assert render.main(["s", "--project-dir", str(project), "--out", str(out)]) == 0
    assert (out / "resources.json").exists() and list((out / "manifests").glob("*.yaml"))
    (out / "notes.txt").write_text("mine")  # not the render's: must survive
    bad = copy.deepcopy(good)
    bad["trn-platform:fsx"]["storageCapacityGiB"] = 1300
    (project / "Pulumi.s.yaml").write_text(yaml.safe_dump({"config": bad}))
    assert render.main(["s", "--project-dir", str(project), "--out", str(out)]) == 2
    assert "fsx.storageCapacityGiB: 1300" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_out_defaults_to_build_render_stack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project = _platform_project(tmp_path, "s", stack_config("platform", "dev-usw2"))
    assert render.main(["s", "--project-dir", str(project)]) == 0
    assert (tmp_path / "build" / "render" / "s" / "resources.json").exists()


def test_unquoted_kubernetes_version_is_a_clear_error_before_rendering(tmp_path, capsys):
    cfg = stack_config("platform", "dev-usw2")
    cfg["trn-platform:kubernetesVersion"] = 1.34
    project = _platform_project(tmp_path, "s", cfg)
    assert render.main(["s", "--project-dir", str(project), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert ('kubernetesVersion: expected str, got float 1.34; YAML read an unquoted value as a number '
            '(1.30 becomes 1.3): quote it exactly as written') in err
    assert "Traceback" not in err and not (tmp_path / "out" / "resources.json").exists()


def test_missing_platform_stack_names_platform_stack(tmp_path, capsys):
    cfg = stack_config("workloads", "compile-usw2")
    cfg["trn-workloads:platformStack"] = "organization/trn-platform/dev-usw9"
    (tmp_path / "wl").mkdir()
    project = project_with_stack(tmp_path / "wl", "workloads", "w", cfg)
    assert render.main(["w", "--project-dir", str(project), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "platformStack: platform stack 'dev-usw9' does not exist" in err
    assert "dev-use2, dev-usw2" in err


def test_sweep_without_credentials_is_a_finding_like_preflight(tmp_path, monkeypatch, capsys):
    from trnctl import sweep

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no IMDS probe: offline and quick
    assert sweep.main(["dev-usw2", "--project-dir", str(REPO)]) == 1  # a blocking finding, as in preflight
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "Traceback" not in out
    row = next(line for line in out.splitlines() if line.startswith("credentials"))
    assert "FAIL" in row and "Unable to locate credentials" in row
    assert "configure credentials (`aws configure sso`, AWS_PROFILE or" in out
    assert out.splitlines()[2].split() == ["check", "status", "detail", "fix"]  # preflight's table
