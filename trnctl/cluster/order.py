"""Order, both ways, from each stack's dependency graph (resources.json `dependsOn`, which the
SDK fills from dependsOn options and from every input's Output dependencies, components expanded
to their custom resources: pulumi/pulumi sdk/python/lib/pulumi/runtime/resource.py
`_prepare_resource` / `_expand_dependencies`).

`pulumi up` creates a resource after everything it depends on; `pulumi destroy` deletes in the
reverse order (pulumi/pulumi pkg/resource/deploy/step_generator.go, GenerateDeletes: "delete in
reverse topological order"). So one edge proves both directions:
- every custom resource depends on the release that installs its CRD (or `pulumi up` fails with
  "no matches for kind") and on the controller that serves it;
- every namespaced object depends on the resource that creates its namespace, when this stack
  creates it;
- Karpenter NodePools/EC2NodeClasses depend on the Karpenter controller: their finalizers
  (karpenter.sh/termination) are removed by the controller, which must still run while they are
  deleted (kubernetes-sigs/karpenter@v1.14.1 pkg/controllers/node/termination, nodeclaim/lifecycle);
- the FSx PV/PVC depend on the CSI driver release (its node plugin unmounts on pod deletion).
Across stacks Pulumi has no edge: a workload stack's objects need the platform's operators, so the
platform stack is destroyed after every workload stack that references it (README, teardown), and the
platform a workload references must install the operators of its custom resources.
"""
from __future__ import annotations

from trnctl.cluster import MANDATORY, Finding, Model, Render

RULE = "order"
RELEASE = "kubernetes:helm.sh/v3:Release"
KUSTOMIZE = "kubernetes:kustomize/v2:Directory"

# API group -> (release installing the CRD, release running the controller). Chart names from
# infra/versions.py; the MPI operator is our kustomization (infra/manifests/mpi-operator).
def crd_owners() -> dict[str, tuple[str, str]]:
    from infra import versions
    karpenter = ("karpenter-crd", "karpenter")
    volcano = (versions.VOLCANO_CHART, versions.VOLCANO_CHART)
    return {
        "karpenter.sh": karpenter, "karpenter.k8s.aws": karpenter,
        "scheduling.volcano.sh": volcano, "batch.volcano.sh": volcano,
        "monitoring.coreos.com": ("kube-prometheus-stack", "kube-prometheus-stack"),
        "ray.io": ("kuberay-operator", "kuberay-operator"),
        "kubeflow.org": ("mpi-operator", "mpi-operator"),
        "keda.sh": (versions.KEDA_CHART, versions.KEDA_CHART),
    }


BUILTIN_GROUPS = ("", "apps", "batch", "policy", "networking.k8s.io", "storage.k8s.io", "rbac.authorization.k8s.io",
                  "autoscaling", "scheduling.k8s.io", "apiextensions.k8s.io", "admissionregistration.k8s.io")


def _kube_kind(record: dict) -> tuple[str, str] | None:
    """(group, kind) of a Kubernetes object record, None for anything else."""
    typ = record["type"]
    if not typ.startswith("kubernetes:") or typ.startswith(("kubernetes:helm.sh/", "kubernetes:yaml/", "kubernetes:kustomize/",
                                                            "pulumi:providers:")):
        return None
    inputs = record.get("inputs") or {}
    api_version = inputs.get("apiVersion") or typ.split(":")[1]
    group = api_version.rpartition("/")[0]
    return ("" if group == "core" else group), inputs.get("kind") or typ.rsplit(":", 1)[-1]


def ancestors(render: Render) -> dict[str, set[str]]:
    """URN -> every URN it transitively depends on."""
    deps = {r["urn"]: set(r.get("dependsOn") or []) for r in render.records}
    memo: dict[str, set[str]] = {}

    def walk(urn: str, stack: frozenset = frozenset()) -> set[str]:
        if urn in memo:
            return memo[urn]
        out: set[str] = set()
        for d in deps.get(urn, ()):
            if d not in stack:
                out |= {d} | walk(d, stack | {urn})
        memo[urn] = out
        return out

    return {urn: walk(urn) for urn in deps}


def _installers(render: Render) -> dict[str, str]:
    """Release/kustomization name -> URN, and namespace -> URN of whatever creates it."""
    out = {}
    for r in render.records:
        inputs = r.get("inputs") or {}
        if r["type"] == RELEASE:
            out[f"release:{inputs.get('name', r['name'])}"] = r["urn"]
            if inputs.get("createNamespace") and inputs.get("namespace"):
                out.setdefault(f"namespace:{inputs['namespace']}", r["urn"])
        elif r["type"] == KUSTOMIZE and "mpi-operator" in r["name"]:
            out["release:mpi-operator"] = r["urn"]
        elif r["type"] == "kubernetes:core/v1:Namespace":
            out[f"namespace:{(inputs.get('metadata') or {}).get('name')}"] = r["urn"]
    return out


def check_render(render: Render) -> list[Finding]:
    findings = []
    anc = ancestors(render)
    installers = _installers(render)
    owners = crd_owners()
    for r in render.records:
        gk = _kube_kind(r)
        if gk is None:
            continue
        group, kind = gk
        meta = (r.get("inputs") or {}).get("metadata") or {}
        what = f"{kind} {meta.get('namespace', '') + '/' if meta.get('namespace') else ''}{meta.get('name', r['name'])}"
        needs: list[tuple[str, str]] = []
        if group not in BUILTIN_GROUPS and group in owners:
            crd, controller = owners[group]
            needs += [(f"release:{crd}", f"the release installing the {group} CRDs ({crd})"),
                      (f"release:{controller}", f"the controller serving {group} ({controller}); on destroy it must outlive "
                                                f"this object's finalizers")]
        if meta.get("namespace"):
            needs.append((f"namespace:{meta['namespace']}", f"namespace {meta['namespace']}"))
        if kind in ("PersistentVolume", "PersistentVolumeClaim") and "release:aws-fsx-csi-driver" in installers:
            needs.append(("release:aws-fsx-csi-driver", "the FSx CSI driver release (it must outlive the volume on destroy)"))
        for key, why in needs:
            urn = installers.get(key)
            if urn is None or urn == r["urn"]:
                continue  # created outside this stack (the platform's, for a workload stack): see module doc
            if urn not in anc.get(r["urn"], set()):
                findings.append(Finding(f"{RULE}/missing-dependency", MANDATORY, (what,),
                                        f"{render.project}/{render.stack}: {what} does not depend on {why}: `pulumi up` may "
                                        f"create it first and `pulumi destroy` may delete that first; fix: add it to the "
                                        f"resource's depends_on"))
    return findings


def check_workload_kinds(model: Model) -> list[Finding]:
    """A workload stack's custom resources need the platform it references to install their CRDs
    and run their controllers (no edge across stacks: this is the only place it is checked offline)."""
    installed = _installers(model.platform)
    owners = crd_owners()
    findings = []
    for render in model.workloads:
        for r in render.records:
            gk = _kube_kind(r)
            if gk is None or gk[0] not in owners:
                continue
            missing = [rel for rel in dict.fromkeys(owners[gk[0]]) if f"release:{rel}" not in installed]
            if missing:
                findings.append(Finding(f"{RULE}/missing-operator", MANDATORY, (f"{gk[1]} {r['name']}",),
                                        f"{render.project}/{render.stack}: {gk[1]} ({gk[0]}) needs {', '.join(missing)} "
                                        f"from platform stack {model.platform.stack}, which does not install it; fix: "
                                        f"install it in the platform (infra/addons.py) or drop the resource"))
    return findings


def check(model: Model) -> list[Finding]:
    return [f for render in model.renders for f in check_render(render)] + check_workload_kinds(model)
