"""The burn-in gate of the accelerator pools: specs (pure) and the component.

Nodes of a pool with `burnIn.enabled` start with the startup taint `trn-platform/burn-in`
(infra/nodepools.py). One DaemonSet runs `python3 -m trn_workloads.burnin`
(images/trn_workloads/burnin/, shipped in a ConfigMap) in the xla track's Neuron training DLC,
which carries neuron-ls and nccom-test (aws-neuronx-tools, /opt/aws/neuron/bin on PATH) and
fi_info (the EFA installer's libfabric, /opt/amazon/efa/bin) and Python 3.11
(aws-neuron/deep-learning-containers@5a157957 pytorch/training/2.8.0/Dockerfile.neuronx); it
tolerates that taint and the Neuron taint and nothing else. Its expectations
per pool and instance type come from infra/catalog.py here, so the node is held to the same
facts the platform sizes workloads with.

RBAC is exactly what the program calls (images/trn_workloads/burnin/kube.py): nodes get/patch,
nodes/status patch, nodeclaims get/list/delete (cluster scope: RBAC cannot name nodes that do
not exist yet), and in its namespace events create and get/update on its one state ConfigMap.
`tests/test_burnin.py` pins these rules.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from infra import catalog, versions
from infra.agent_code import CODE_ROOT, code_configmap, package_modules, resource_args
from infra.config import NodePoolConfig
from infra.nodepools import BURN_IN_TAINT, NEURON_TAINT, POOL_LABEL

NAME = "trn-burnin"
# The image the burn-in runs in, whatever the pool's own track: the xla track's training DLC, whose
# Neuron tools know trn1/trn1n/inf2/trn2 (config.BURN_IN_FAMILIES); it checks hardware, not a framework.
BURN_IN_IMAGE_TRACK = "xla"
NAMESPACE = "kube-system"
# Node Events go to the burn-in's own namespace: `kubectl describe node` lists a node's events from every
# namespace (a cluster-scoped object has none of its own), and nothing is granted in `default`.
EVENT_NAMESPACE = NAMESPACE
STATE_CONFIGMAP = f"{NAME}-replacements"
EXPECTATIONS_CONFIGMAP = f"{NAME}-expectations"
CODE_CONFIGMAP = f"{NAME}-code"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / "images" / "trn_workloads" / "burnin"
LABELS = {"app": NAME, "app.kubernetes.io/name": NAME, "app.kubernetes.io/part-of": "trn-platform"}

# All-reduce bus bandwidth floor (GB/s, nccom-test "Avg bus bandwidth" of a 32 MB all-reduce over
# every NeuronCore of the node) for every Neuron type, unless DEFAULT_BUS_BANDWIDTH_FLOOR_GBPS names
# the type. The Neuron docs publish no per-type single-node figure; their example
# `nccom-test -r 2 allr` prints 40.69 GB/s at 32 MB (aws-neuron/aws-neuron-sdk@81ce03ae
# tools/neuron-sys-tools/nccom-test.rst, "Using nccom-test"). The default is half of that, low enough
# that a healthy node passes and a collective that fails or crawls does not: measure a healthy node
# of your type and set nodePools[].burnIn.busBandwidthFloorGBps from it.
DEFAULT_FLOOR_GBPS = 20.0
DEFAULT_BUS_BANDWIDTH_FLOOR_GBPS: dict[str, float] = {}  # per-type defaults once measured on real nodes
CHECKOV_SKIPS = {
    "CKV_K8S_16": "the burn-in opens every /dev/neuron* and /dev/infiniband/* device of the node, which needs a "
                  "privileged container (no device plugin allocates them to a DaemonSet)",
    "CKV_K8S_20": "privileged implies privilege escalation; required for the device checks",
    "CKV_K8S_23": "the Neuron tools open the devices as root inside the privileged node agent",
    "CKV_K8S_37": "capabilities cannot be dropped from a privileged container",
    "CKV_K8S_28": "capabilities (NET_RAW included) cannot be dropped from a privileged container",
    "CKV_K8S_38": "the burn-in removes its node's taint and deletes its NodeClaim through the Kubernetes API",
}


def burn_in_pools(pools: tuple[NodePoolConfig, ...]) -> list[NodePoolConfig]:
    return [p for p in pools if p.is_accelerator and p.burn_in.enabled]


def expectations(pool: NodePoolConfig, instance_type: str) -> dict:
    """What a healthy `instance_type` node of `pool` shows (images/trn_workloads/burnin/checks.py)."""
    t = catalog.instance_type(instance_type)
    if not t.device_memory_gib:
        raise ValueError(f"infra/data/instance_types.json: {instance_type} has no deviceMemoryGiB; the burn-in "
                         "cannot check its devices")
    floor = pool.burn_in.bus_bandwidth_floor_gbps.get(
        instance_type, DEFAULT_BUS_BANDWIDTH_FLOOR_GBPS.get(instance_type, DEFAULT_FLOOR_GBPS))
    return {"instanceType": instance_type, "neuronDevices": t.neuron_devices,
            "deviceMemoryGiB": t.device_memory_gib / t.neuron_devices, "neuronCores": t.neuron_cores_at(pool.lnc),
            "lnc": pool.lnc, "efaDevices": t.efa_interfaces if pool.efa else 0, "busBandwidthFloorGBps": floor}


def expectations_document(pools: list[NodePoolConfig]) -> dict:
    return {"pools": {p.name: {"maxReplacementsPerHour": p.burn_in.max_replacements_per_hour,
                               "timeoutSeconds": p.burn_in.timeout_seconds,
                               "instanceTypes": {t: expectations(p, t) for t in p.instance_types}}
                      for p in pools}}


def _meta(name: str, namespace: str | None = NAMESPACE) -> dict:
    return {"name": name, **({"namespace": namespace} if namespace else {}), "labels": dict(LABELS)}


def code() -> tuple[dict, list[dict]]:
    return code_configmap(CODE_CONFIGMAP, namespace=NAMESPACE, labels=LABELS, modules=package_modules("burnin"))


def configmaps(pools: list[NodePoolConfig]) -> list[dict]:
    return [
        code()[0],
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(EXPECTATIONS_CONFIGMAP),
         "data": {"expectations.json": json.dumps(expectations_document(pools), indent=1, sort_keys=True)}},
        # The replacement history ({pool: [epoch seconds]}); the program rewrites it.
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(STATE_CONFIGMAP), "data": {}},
    ]


def rbac() -> list[dict]:
    """ServiceAccount, ClusterRole + binding (nodes, nodeclaims), Role + binding in its namespace
    (its state ConfigMap, the Events it records)."""
    sa = {"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}
    rbac_api = "rbac.authorization.k8s.io/v1"
    role_ref = {"apiGroup": "rbac.authorization.k8s.io"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME), "automountServiceAccountToken": True},
        {"apiVersion": rbac_api, "kind": "ClusterRole", "metadata": _meta(NAME, None), "rules": cluster_rules()},
        {"apiVersion": rbac_api, "kind": "ClusterRoleBinding", "metadata": _meta(NAME, None),
         "roleRef": {**role_ref, "kind": "ClusterRole", "name": NAME}, "subjects": [sa]},
        {"apiVersion": rbac_api, "kind": "Role", "metadata": _meta(NAME), "rules": namespace_rules()},
        {"apiVersion": rbac_api, "kind": "RoleBinding", "metadata": _meta(NAME),
         "roleRef": {**role_ref, "kind": "Role", "name": NAME}, "subjects": [sa]},
    ]


def cluster_rules() -> list[dict]:
    return [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},  # read labels, remove the taint
        {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},  # the BurnInPassed condition
        {"apiGroups": ["karpenter.sh"], "resources": ["nodeclaims"], "verbs": ["get", "list", "delete"]},
    ]


def namespace_rules() -> list[dict]:
    # `create` cannot be limited by name, so the ConfigMap is created here, not by the program.
    return [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [STATE_CONFIGMAP],
             "verbs": ["get", "update"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]


def daemonset(*, image: str, pools: list[str]) -> dict:
    """The burn-in of every gated pool, in the xla track's training DLC (BURN_IN_IMAGE_TRACK)."""
    name = NAME
    code_items = code()[1]
    container = {
        "name": "burn-in", "image": image, "imagePullPolicy": "IfNotPresent",
        "command": ["python3", "-m", "trn_workloads.burnin", "--expectations", "/etc/trn-burnin/expectations.json"],
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "BURNIN_STATE_CONFIGMAP", "value": STATE_CONFIGMAP},
                {"name": "EVENT_NAMESPACE", "value": EVENT_NAMESPACE},
                {"name": "PYTHONPATH", "value": CODE_ROOT}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
        # Requests are what the pod holds for the node's whole life (it idles after the pass), so they
        # are small; the limits leave room for the all-reduce's host side while no workload runs yet.
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "4", "memory": "8Gi"}},
        # Privileged: a DaemonSet gets no devices from the device plugins, and the checks open them all.
        "securityContext": {"privileged": True},
        "volumeMounts": [{"name": "code", "mountPath": CODE_ROOT, "readOnly": True},
                         {"name": "expectations", "mountPath": "/etc/trn-burnin", "readOnly": True}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {**_meta(name), "annotations": {f"checkov.io/skip{i + 1}": f"{cid}={why}"
                                                    for i, (cid, why) in enumerate(CHECKOV_SKIPS.items())}},
        "spec": {
            "selector": {"matchLabels": {"app": NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "100%"}},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": NAME,
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [
                            {"key": POOL_LABEL, "operator": "In", "values": sorted(pools)}]}]}}},
                    # The burn-in taint (its own) and the Neuron taint every accelerator node carries.
                    "tolerations": [{"key": BURN_IN_TAINT["key"], "operator": "Exists", "effect": BURN_IN_TAINT["effect"]},
                                    {"key": NEURON_TAINT["key"], "operator": "Exists", "effect": NEURON_TAINT["effect"]}],
                    "priorityClassName": "system-node-critical",
                    "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "code", "configMap": {"name": CODE_CONFIGMAP, "items": code_items}},
                                {"name": "expectations", "configMap": {"name": EXPECTATIONS_CONFIGMAP}}],
                },
            },
        },
    }


def manifests(pools: tuple[NodePoolConfig, ...]) -> list[dict]:
    gated = burn_in_pools(pools)
    image = versions.base_image(BURN_IN_IMAGE_TRACK, "training")
    return [*rbac(), *configmaps(gated), daemonset(image=image, pools=[p.name for p in gated])] if gated else []


@dataclass
class BurnInArgs:
    pools: tuple[NodePoolConfig, ...]
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]


_KINDS = {
    "ServiceAccount": k8s.core.v1.ServiceAccount, "ConfigMap": k8s.core.v1.ConfigMap,
    "ClusterRole": k8s.rbac.v1.ClusterRole, "ClusterRoleBinding": k8s.rbac.v1.ClusterRoleBinding,
    "Role": k8s.rbac.v1.Role, "RoleBinding": k8s.rbac.v1.RoleBinding, "DaemonSet": k8s.apps.v1.DaemonSet,
}


class BurnIn(pulumi.ComponentResource):
    """The burn-in DaemonSets with their RBAC and ConfigMaps (nothing when no pool gates)."""

    def __init__(self, name: str, args: BurnInArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:BurnIn", name, None, opts)
        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        self.objects = []
        for m in manifests(args.pools):
            suffix = m["metadata"]["name"].removeprefix(NAME).lstrip("-") or "main"
            res_name = f"{name}-{m['kind'].lower()}-{suffix}"
            self.objects.append(_KINDS[m["kind"]](res_name, **resource_args(m), opts=k8s_opts))
        self.register_outputs({})
