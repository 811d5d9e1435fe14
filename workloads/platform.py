"""The platform stack as a workload stack sees it: typed values read once through a
StackReference. Node selection, tolerations, the FSx claim and the ECR repositories all
come from here — never from labels or names written into a workload."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from workloads.errors import WorkloadConfigError

REQUIRED_OUTPUTS = ("clusterName", "region", "kubernetesVersion", "kubeconfig", "identityMode", "oidcProviderArn",
                    "oidcIssuer", "nodePools", "sharedStorage", "workloadNamespace", "ecrRepositories",
                    "artifactsBucket", "artifactsBucketArn", "volcanoQueue", "neuronSchedulerName", "neuronSdkVersion")

OPTIONAL_OUTPUTS = ("neuronTracks",)  # platforms from before the two Neuron tracks lack it


@dataclass(frozen=True)
class PoolScheduling:
    name: str
    node_selector: dict[str, str]
    tolerations: list[dict]
    instance_types: list[str]
    neuron_devices_per_node: int
    neuron_cores_per_node: int
    efa_per_node: int
    vcpu_per_node: int
    memory_gib_per_node: int
    max_nodes: int
    # What one workload pod may request on a node of the pool's largest type, as Karpenter sizes it before a
    # first launch, after the DaemonSets (infra/nodepools.py schedulable_per_node): per-node pods size from these.
    schedulable_millicpu_per_node: int = 0
    schedulable_memory_mib_per_node: int = 0
    lnc: int | None = None  # Logical NeuronCore setting (trn2/trn3); neuron_cores_per_node counts logical cores
    track: str | None = None  # the Neuron software track its hardware runs (images/neuron-sdk.json), None: CPU

    @property
    def is_accelerator(self) -> bool:
        return self.neuron_devices_per_node > 0


@dataclass(frozen=True)
class SharedStorage:
    pvc_name: str
    namespace: str
    mount_path: str


@dataclass(frozen=True)
class Platform:
    """Plain values of the platform outputs (secrets stay Outputs)."""
    stack: str
    cluster_name: str
    region: str
    kubernetes_version: str
    kubeconfig: pulumi.Output[str]
    identity_mode: str
    oidc_provider_arn: str
    oidc_issuer: str
    pools: dict[str, PoolScheduling]
    storage: SharedStorage
    namespace: str
    ecr_repositories: dict[str, str]
    artifacts_bucket: str
    artifacts_bucket_arn: str
    volcano_queue: str
    neuron_scheduler_name: str
    neuron_sdk_version: str
    neuron_tracks: dict[str, list[str]] = field(default_factory=dict)  # track -> pools whose hardware runs it
    workload_tracks: tuple[str, ...] | None = None  # set for a workload's parse: the tracks its pools must run

    def would_work(self, accelerator: bool | None) -> str:
        """The pools a workload may name here (of the kind, on hardware running its track), or why none."""
        return _would_work(self, accelerator)

    def pool(self, name: str, *, key: str, accelerator: bool | None = None) -> PoolScheduling:
        """The named pool, or a config error naming `key` and the pools that exist (or, for an
        accelerator pool whose hardware does not run the workload's track, the pools that do)."""
        if name not in self.pools:
            raise WorkloadConfigError([f"{key}: pool {name!r} does not exist in platform stack {self.stack}; "
                                       f"{self.would_work(accelerator)}"])
        pool = self.pools[name]
        if accelerator is not None and pool.is_accelerator != accelerator:
            raise WorkloadConfigError([f"{key}: pool {name!r} is {'an accelerator' if pool.is_accelerator else 'a CPU'} "
                                       f"pool; {self.would_work(accelerator)}"])
        if pool.is_accelerator and self.workload_tracks is not None:
            from workloads.common import check_track

            check_track(self, pool, self.workload_tracks, key)
        return pool


def _usable(platform: Platform, accelerator: bool | None) -> list[str]:
    """Pools of the platform a workload may name: of the wanted kind and, for accelerator
    pools, on hardware that runs one of the workload's Neuron tracks."""
    return sorted(n for n, p in platform.pools.items()
                  if (accelerator is None or p.is_accelerator == accelerator)
                  and (not p.is_accelerator or platform.workload_tracks is None or p.track in platform.workload_tracks))


def _would_work(platform: Platform, accelerator: bool | None) -> str:
    """"allowed values: ..." listing only pools that would work, or why no pool of this platform can."""
    usable = _usable(platform, accelerator)
    if usable:
        return f"allowed values: {', '.join(usable)}"
    from infra import versions

    tracks = platform.workload_tracks or ()
    families = ", ".join(f for t in tracks for f in versions.neuron_track(t)["families"])
    present = ", ".join(f"{n} ({p.track} track)" for n, p in sorted(platform.pools.items()) if p.is_accelerator)
    return (f"no pool of platform stack {platform.stack} can run this workload: it needs the "
            f"{' or '.join(tracks)} Neuron track ({families}) and the platform's accelerator pools are "
            f"{present or 'none'}; add a {families} pool to the platform, or set platformStack to a platform "
            f"stack that has one")


def check_region(platform: Platform, region: str | None) -> None:
    """The workload stack's aws:region must be its platform's: one cluster, one region (ECR,
    the artifacts bucket and the IAM roles of the workload all live there)."""
    if region != platform.region:
        got = f"{region!r} differs from" if region else "is not set; it must be"
        raise WorkloadConfigError([f"aws:region: {got} the region of platform stack {platform.stack} "
                                   f"({platform.region}); set aws:region: {platform.region}"])


def parse_platform_outputs(stack: str, values: dict[str, Any], kubeconfig: pulumi.Output[str]) -> Platform:
    missing = [k for k in REQUIRED_OUTPUTS if k != "kubeconfig" and k not in values]
    if missing:
        raise WorkloadConfigError([f"platformStack: stack {stack} lacks outputs {', '.join(missing)}; "
                                   "run `pulumi up` on the platform stack first"])
    stale = sorted(name for name, p in values["nodePools"].items() if "schedulableMemoryMiBPerNode" not in p)
    if stale:
        raise WorkloadConfigError([f"platformStack: stack {stack} exports no schedulableMilliCpuPerNode/"
                                   f"schedulableMemoryMiBPerNode for pools {', '.join(stale)} (a platform from before "
                                   "workloads sized pods from them); run `pulumi up` on the platform stack first"])
    pools = {name: PoolScheduling(
        name=name, node_selector=dict(p["nodeSelector"]), tolerations=list(p["tolerations"]),
        instance_types=list(p["instanceTypes"]), neuron_devices_per_node=int(p["neuronDevicesPerNode"]),
        neuron_cores_per_node=int(p["neuronCoresPerNode"]), efa_per_node=int(p["efaPerNode"]),
        vcpu_per_node=int(p["vcpuPerNode"]), memory_gib_per_node=int(p["memoryGiBPerNode"]),
        max_nodes=int(p["maxNodes"]), schedulable_millicpu_per_node=int(p["schedulableMilliCpuPerNode"]),
        schedulable_memory_mib_per_node=int(p["schedulableMemoryMiBPerNode"]), lnc=None if p.get("lnc") is None else int(p["lnc"]),
        track=p.get("track") or _track_of(p)) for name, p in values["nodePools"].items()}
    tracks = values.get("neuronTracks") or {t: sorted(n for n, s in pools.items() if s.track == t)
                                            for t in sorted({s.track for s in pools.values() if s.track})}
    s = values["sharedStorage"]
    return Platform(
        stack=stack, cluster_name=values["clusterName"], region=values["region"],
        kubernetes_version=values["kubernetesVersion"], kubeconfig=kubeconfig,
        identity_mode=values["identityMode"], oidc_provider_arn=values["oidcProviderArn"],
        oidc_issuer=values["oidcIssuer"], pools=pools,
        storage=SharedStorage(pvc_name=s["pvcName"], namespace=s["namespace"], mount_path=s["mountPath"]),
        namespace=values["workloadNamespace"], ecr_repositories=dict(values["ecrRepositories"]),
        artifacts_bucket=values["artifactsBucket"], artifacts_bucket_arn=values["artifactsBucketArn"],
        volcano_queue=values["volcanoQueue"], neuron_scheduler_name=values["neuronSchedulerName"],
        neuron_sdk_version=values["neuronSdkVersion"], neuron_tracks={t: list(p) for t, p in tracks.items()})


def _track_of(pool: dict) -> str | None:
    """A platform that predates per-pool `track` outputs: the track of its instance family."""
    from infra.versions import neuron_track_for_family

    if not int(pool["neuronDevicesPerNode"]):
        return None
    families = {t.split(".")[0] for t in pool["instanceTypes"]}
    found = {neuron_track_for_family(f) for f in families}
    return found.pop() if len(found) == 1 else None


def read_platform(stack: str, *, region: str | None) -> Platform:
    """Read the platform outputs once, as plain values, so configs are checked against
    them before any workload resource is registered; `region` is the workload stack's."""
    # get_output_details is a coroutine; the SDK's own synchronous invokes wait the same way.
    from pulumi.runtime.sync_await import _sync_await

    ref = pulumi.StackReference(stack)
    values = {k: _sync_await(ref.get_output_details(k)).value for k in (*REQUIRED_OUTPUTS, *OPTIONAL_OUTPUTS)
              if k != "kubeconfig"}
    values = {k: v for k, v in values.items() if v is not None}
    platform = parse_platform_outputs(stack, values, ref.require_output("kubeconfig"))
    check_region(platform, region)
    return platform
