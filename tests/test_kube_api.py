"""The agents' Kubernetes client (images/trn_workloads/kube_api.py) against a recording HTTP
server on 127.0.0.1: methods, paths, content types and bodies as the API server expects them,
the service account token read on every call, and API errors with their status."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import certifi
import pytest

from tests.loopback import free_port
from trn_workloads.kube_api import ApiError, Kube


class Recorder(BaseHTTPRequestHandler):
    calls: list[dict] = []
    status = 200

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).calls.append({"method": self.command, "path": self.path, "type": self.headers.get("Content-Type"),
                                 "auth": self.headers.get("Authorization"), "body": json.loads(body) if body else None})
        payload = json.dumps({"items": [{"metadata": {"name": "x"}}]} if type(self).status == 200 else
                             {"kind": "Status", "message": "conflict"}).encode()
        self.send_response(type(self).status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def api(tmp_path):
    Recorder.calls, Recorder.status = [], 200
    server = HTTPServer(("127.0.0.1", free_port()), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = tmp_path / "token"
    token.write_text("t1\n")
    kube = Kube(f"http://127.0.0.1:{server.server_port}", token_path=str(token), ca_path=certifi.where(), timeout=5)
    yield kube, token
    server.shutdown()
    thread.join(timeout=5)


def test_requests_as_the_api_server_expects_them(api):
    kube, token = api
    kube.set_taints("n1", "42", [{"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}])
    kube.set_taints("n1", "43", [])
    kube.set_condition("n1", {"type": "BurnInPassed", "status": "True"})
    token.write_text("t2")  # the kubelet rotated the projected token
    assert kube.list_pods("ml-shared", "app.kubernetes.io/instance=s1,trn-platform/gang-restart=true") == [
        {"metadata": {"name": "x"}}]
    kube.delete_nodeclaim("c1")
    patch, remove, status, pods, claim = Recorder.calls
    assert (patch["method"], patch["path"], patch["type"]) == ("PATCH", "/api/v1/nodes/n1", "application/json-patch+json")
    assert patch["body"] == [{"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                             {"op": "replace", "path": "/spec/taints",
                              "value": [{"key": "aws.amazon.com/neuron", "effect": "NoSchedule"}]}]
    assert remove["body"][1] == {"op": "remove", "path": "/spec/taints"}
    assert (status["path"], status["type"]) == ("/api/v1/nodes/n1/status", "application/strategic-merge-patch+json")
    assert status["body"] == {"status": {"conditions": [{"type": "BurnInPassed", "status": "True"}]}}
    assert pods["path"] == ("/api/v1/namespaces/ml-shared/pods?labelSelector="
                            "app.kubernetes.io%2Finstance%3Ds1%2Ctrn-platform%2Fgang-restart%3Dtrue")
    assert (patch["auth"], pods["auth"]) == ("Bearer t1", "Bearer t2")
    assert (claim["method"], claim["path"]) == ("DELETE", "/apis/karpenter.sh/v1/nodeclaims/c1")


def test_api_errors_carry_their_status(api):
    kube, _ = api
    Recorder.status = 409
    with pytest.raises(ApiError) as err:
        kube.replace_configmap("kube-system", "s", {"data": {}})
    assert err.value.status == 409 and Recorder.calls[0]["method"] == "PUT"
