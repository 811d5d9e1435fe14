"""The few Kubernetes API calls the platform's node and job agents make (the burn-in,
images/trn_workloads/burnin/; the hang watchdog, images/trn_workloads/watchdog.py), over HTTPS
with the pod's projected service account token: the images they run in (the Neuron DLC, the
neuron-monitor image) have no Kubernetes client. Each agent's RBAC (infra/burnin.py,
infra/monitoring/hang.py) grants exactly the calls it makes (tests/test_burnin.py pins both)."""
from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
NODECLAIMS = "/apis/karpenter.sh/v1/nodeclaims"


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


@dataclass
class Kube:
    base_url: str
    token_path: str = f"{SA_DIR}/token"
    ca_path: str = f"{SA_DIR}/ca.crt"
    timeout: float = 30.0

    @classmethod
    def in_cluster(cls) -> Kube:
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        return cls(f"https://{host}:{port}")

    def request(self, method: str, path: str, body: dict | list | None = None,
                content_type: str = "application/json") -> dict:
        # The projected token is rotated by the kubelet: read it for every call.
        with open(self.token_path) as f:
            token = f.read().strip()
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/json", "Content-Type": content_type})
        ctx = ssl.create_default_context(cafile=self.ca_path)
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise ApiError(e.code, e.read().decode(errors="replace")[:500]) from None
        return json.loads(raw) if raw else {}

    # nodes: get, patch (spec.taints) and nodes/status patch (conditions)
    def get_node(self, name: str) -> dict:
        return self.request("GET", f"/api/v1/nodes/{name}")

    def set_taints(self, name: str, resource_version: str, taints: list[dict]) -> dict:
        """JSON patch guarded by the node's resourceVersion: a concurrent taint change (Karpenter's
        own, a cordon) makes this fail with 409 instead of being overwritten."""
        return self.request("PATCH", f"/api/v1/nodes/{name}", [
            {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
            {"op": "replace" if taints else "remove", "path": "/spec/taints", **({"value": taints} if taints else {})},
        ], content_type="application/json-patch+json")

    def set_condition(self, name: str, condition: dict) -> dict:
        # Strategic merge on status.conditions merges by `type`.
        return self.request("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [condition]}},
                            content_type="application/strategic-merge-patch+json")

    # events: create
    def create_event(self, event: dict) -> dict:
        return self.request("POST", f"/api/v1/namespaces/{event['metadata']['namespace']}/events", event)

    # karpenter.sh nodeclaims: list, delete
    def list_nodeclaims(self) -> list[dict]:
        return self.request("GET", NODECLAIMS).get("items", [])

    def delete_nodeclaim(self, name: str) -> dict:
        return self.request("DELETE", f"{NODECLAIMS}/{name}")

    # pods: list (by label selector), delete
    def list_pods(self, namespace: str, selector: str) -> list[dict]:
        query = urllib.parse.urlencode({"labelSelector": selector})
        return self.request("GET", f"/api/v1/namespaces/{namespace}/pods?{query}").get("items", [])

    def delete_pod(self, namespace: str, name: str) -> dict:
        return self.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}")

    # an agent's state ConfigMap (rate bounds): get, update
    def get_configmap(self, namespace: str, name: str) -> dict:
        return self.request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")

    def replace_configmap(self, namespace: str, name: str, configmap: dict) -> dict:
        """PUT with the read resourceVersion: two nodes failing at once cannot both take the last slot."""
        return self.request("PUT", f"/api/v1/namespaces/{namespace}/configmaps/{name}", configmap)
