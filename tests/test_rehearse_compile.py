"""Rehearsal of the compile stack (trnctl rehearse compile-usw2): the compile Job's pod (train init container,
then compile) writes its artifact to S3 (the rehearsal's S3 stand-in), and the MLP server started from the
rendered Deployment answers a prediction sent to its Service name from inside the pod's own sandbox."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from trn_workloads.compile.housing_mlp import INPUT_FEATURES
from trnctl.rehearse import overlay
from trnctl.rehearse.runner import Rehearsal
from trnctl.rehearse.stack import load

pytestmark = pytest.mark.slow

STACK = "compile-usw2"
REPO = Path(__file__).resolve().parents[1]
VENV_REPO = (REPO / ".venv").resolve().parent  # the venv's own checkout when .venv is a link


@pytest.fixture(scope="module")
def rehearsal():
    with Rehearsal(load(STACK, overlay.stack_overlays()), step_timeout=180) as r:
        result = r.run()
        yield r, result


def test_every_step_succeeds(rehearsal):
    r, result = rehearsal
    assert result.ok, result.report()
    kinds = {p.owner.split("/")[0]: p for p in result.pods}
    assert kinds["Job"].exit_code == 0 and kinds["Deployment"].ready is True


def test_compile_job_uploads_the_artifact_to_the_stack_s3_uri(rehearsal):
    import boto3
    r, _ = rehearsal
    bucket = r.stack.platform.outputs["artifactsBucket"]
    s3 = boto3.client("s3", endpoint_url=r.s3_endpoint, region_name="us-west-2", aws_access_key_id="rehearsal",
                      aws_secret_access_key="rehearsal")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"workloads/{STACK}/housing-mlp/1.0.0/model.pt" in keys
    assert f"workloads/{STACK}/housing-mlp/1.0.0/manifest.json" in keys


def test_server_answers_through_its_service_name(rehearsal):
    r, _ = rehearsal
    service = next(o for o in r.stack.objects if o["kind"] == "Service")["metadata"]["name"]
    pod = next(p for p in r.all_pods if p["metadata"]["name"].startswith(f"{service}-"))["metadata"]["name"]
    client = ("import json, urllib.request; body = json.dumps({'inputs': [[0.5] * %d]})" % INPUT_FEATURES + ".encode(); "
              f"req = urllib.request.Request('http://{service}/predict', data=body, "
              "headers={'Content-Type': 'application/json'}); print(urllib.request.urlopen(req, timeout=30).read().decode())")
    done = r.exec_in(pod, "serve", ["python", "-c", client], timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["model"] == "housing-mlp" and len(answer["outputs"]) == 1


def test_pod_sees_only_its_own_volumes_and_user(rehearsal):
    r, _ = rehearsal
    pod = next(p for p in r.all_pods if p["metadata"]["labels"].get("app.kubernetes.io/component") == "serve")
    name = pod["metadata"]["name"]
    done = r.exec_in(name, "serve", ["sh", "-c", f"id -u; id -g; hostname; ls {REPO}/images {VENV_REPO}/images 2>&1 | wc -l; ls /opt/trn; "
                                     "cat /proc/1/cmdline | tr '\\0' ' '; echo; env | sort"])
    lines = done.stdout.splitlines()
    assert lines[:3] == ["1000", "1000", name]
    assert lines[3] == "2"  # two "No such file" lines: this machine's repository is not in the pod
    assert lines[4] == "trn_workloads"
    env = dict(line.split("=", 1) for line in lines[6:] if "=" in line)
    assert env["TRN_BACKEND"] == "cpu" and env["PYTHONPATH"] == "/opt/trn"
    assert "PYTEST_CURRENT_TEST" not in env and "VIRTUAL_ENV" not in env  # nothing of the test runner's env
