"""FSx for Lustre shared by every workload: the file system, its CSI driver, and one
statically bound PV/PVC whose name and namespace are stack outputs (one name, no drift)."""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import versions
from infra.config import FsxConfig

CSI_DRIVER = "fsx.csi.aws.com"
LUSTRE_PORTS = ((988, 988), (1018, 1023))


def fsx_csi_values() -> dict:
    """The node DaemonSet must run on tainted Neuron nodes too, or pods there cannot mount."""
    return {
        "controller": {"nodeSelector": {"trn-platform/pool": "system"},
                       "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}]},
        "node": {"tolerations": [{"operator": "Exists"}]},
    }


STORAGE_CLASS = "fsx-lustre-static"


def static_volume(cfg: FsxConfig, *, file_system_id: str, dns_name: str, mount_name: str) -> tuple[dict, dict]:
    """PersistentVolume and PersistentVolumeClaim bound to each other for the existing
    file system (static provisioning: the CSI driver needs no AWS permissions)."""
    sc_name = STORAGE_CLASS
    capacity = f"{cfg.storage_capacity_gib}Gi"
    pv = {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{cfg.pvc_name}-pv"},
        "spec": {
            "capacity": {"storage": capacity}, "volumeMode": "Filesystem", "accessModes": ["ReadWriteMany"],
            "persistentVolumeReclaimPolicy": "Retain", "storageClassName": sc_name,
            "mountOptions": ["flock"],
            "claimRef": {"namespace": cfg.pvc_namespace, "name": cfg.pvc_name},
            "csi": {"driver": CSI_DRIVER, "volumeHandle": file_system_id,
                    "volumeAttributes": {"dnsname": dns_name, "mountname": mount_name}},
        },
    }
    pvc = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": cfg.pvc_name, "namespace": cfg.pvc_namespace},
        "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": sc_name,
                 "resources": {"requests": {"storage": capacity}}, "volumeName": f"{cfg.pvc_name}-pv"},
    }
    return pv, pvc


WORKLOAD_POLICY_NAME = "workload-ingress"


def _pods_in(namespace: str, labels: dict[str, str]) -> dict:
    # `kubernetes.io/metadata.name` is set on every namespace by the API server (Kubernetes >= 1.22).
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": dict(labels)}}


def workload_ingress_policy(*, monitoring_namespace: str, kuberay_namespace: str) -> dict:
    """Ingress to workload pods: from the same namespace (gang traffic: MPI over ssh, torch.distributed,
    Ray GCS; the RayJob submitter to its head), from Prometheus to the scrape port every workload and
    Ray pod names `metrics` (and to its number on the progress sidecar: a native sidecar is an init
    container, whose named ports the EKS network policy controller does not resolve), and from the KubeRay
    operator to the Ray head dashboard it polls for RayJob status. Nothing else; egress unrestricted (S3,
    ECR, HF Hub, FSx). trnctl/cluster/reachability.py checks these flows, and that nothing else opens, at
    every render."""
    from infra.addons import KUBERAY_OPERATOR_POD_LABELS
    from infra.monitoring.scrape import METRICS_PORT, SIDECAR_METRICS_PORT
    from infra.monitoring.values import PROMETHEUS_POD_LABELS
    from trnctl.operators.kuberay import DASHBOARD_PORT
    return {"podSelector": {}, "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {}}]},
                {"from": [_pods_in(monitoring_namespace, PROMETHEUS_POD_LABELS)],
                 "ports": [{"protocol": "TCP", "port": METRICS_PORT}, {"protocol": "TCP", "port": SIDECAR_METRICS_PORT}]},
                {"from": [_pods_in(kuberay_namespace, KUBERAY_OPERATOR_POD_LABELS)],
                 "ports": [{"protocol": "TCP", "port": DASHBOARD_PORT}]},
            ]}


@dataclass
class SharedStorageArgs:
    config: FsxConfig
    cluster_name: str
    vpc_id: pulumi.Input[str]
    vpc_cidr: str
    subnet_id: pulumi.Input[str]  # one private subnet in the accelerator AZ (Lustre is single-AZ)
    node_security_group_id: pulumi.Input[str]
    monitoring_namespace: str  # where Prometheus runs (it scrapes the workload pods)
    kuberay_namespace: str     # where the KubeRay operator runs (it polls Ray head dashboards)
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]
    tags: dict[str, str]


class SharedStorage(pulumi.ComponentResource):
    def __init__(self, name: str, args: SharedStorageArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:SharedStorage", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        sg = aws.ec2.SecurityGroup(f"{name}-lustre", vpc_id=args.vpc_id, description="Lustre from cluster nodes",
                                   tags={**args.tags, "Name": f"{args.cluster_name}-fsx"}, opts=child)
        for lo, hi in LUSTRE_PORTS:
            aws.ec2.SecurityGroupRule(f"{name}-lustre-nodes-{lo}", type="ingress", protocol="tcp", from_port=lo,
                                      to_port=hi, security_group_id=sg.id,
                                      source_security_group_id=args.node_security_group_id,
                                      description="Lustre from nodes", opts=child)
            aws.ec2.SecurityGroupRule(f"{name}-lustre-self-{lo}", type="ingress", protocol="tcp", from_port=lo,
                                      to_port=hi, security_group_id=sg.id, self=True,
                                      description="Lustre between file servers", opts=child)
        aws.ec2.SecurityGroupRule(f"{name}-lustre-egress", type="egress", protocol="-1", from_port=0, to_port=0,
                                  security_group_id=sg.id, cidr_blocks=[args.vpc_cidr], description="to the VPC",
                                  opts=child)
        self.key = aws.kms.Key(f"{name}-fsx", description=f"FSx for Lustre of {args.cluster_name}",
                               enable_key_rotation=True, deletion_window_in_days=7, tags=args.tags, opts=child)
        persistent = cfg.deployment_type.startswith("PERSISTENT")
        self.file_system = aws.fsx.LustreFileSystem(
            f"{name}-lustre", deployment_type=cfg.deployment_type, storage_capacity=cfg.storage_capacity_gib,
            per_unit_storage_throughput=cfg.per_unit_storage_throughput if persistent else None,
            subnet_ids=args.subnet_id, security_group_ids=[sg.id], data_compression_type=cfg.data_compression,
            kms_key_id=self.key.arn if persistent else None, file_system_type_version="2.15",
            log_configuration=aws.fsx.LustreFileSystemLogConfigurationArgs(level="WARN_ERROR"),
            tags={**args.tags, "Name": f"{args.cluster_name}-shared"}, opts=child)
        if cfg.s3_import_path:
            # s3ImportPath -> <mountPath>/datasets in every pod. DRAs work on 2.12/2.15 file systems of every
            # deployment type but SCRATCH_1 (FSx API reference, CreateDataRepositoryAssociation); metadata is
            # imported at creation, then new/changed/deleted objects automatically (README, "How data reaches").
            aws.fsx.DataRepositoryAssociation(
                f"{name}-s3", file_system_id=self.file_system.id, data_repository_path=cfg.s3_import_path,
                file_system_path="/datasets", batch_import_meta_data_on_create=True,
                s3=aws.fsx.DataRepositoryAssociationS3Args(
                    auto_import_policy=aws.fsx.DataRepositoryAssociationS3AutoImportPolicyArgs(
                        events=["NEW", "CHANGED", "DELETED"])),
                tags=args.tags, opts=child)

        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        self.csi = k8s.helm.v3.Release(f"{name}-csi", name="aws-fsx-csi-driver", chart=versions.FSX_CSI_CHART,
                                       version=versions.FSX_CSI_CHART_VERSION, namespace="kube-system",
                                       repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=versions.FSX_CSI_CHART_REPO),
                                       values=fsx_csi_values(), opts=k8s_opts)
        self.namespace = k8s.core.v1.Namespace(f"{name}-ns", metadata={"name": cfg.pvc_namespace,
                                               "labels": {"trn-platform/shared-storage": "true"}}, opts=k8s_opts)
        # Workloads in this namespace talk to each other (MPI over SSH, Ray, serving); from outside only
        # Prometheus (scrape port) and the KubeRay operator (Ray dashboard) reach them, and
        # `kubectl port-forward` (which no NetworkPolicy applies to).
        k8s.networking.v1.NetworkPolicy(
            f"{name}-workload-ingress",
            metadata={"name": WORKLOAD_POLICY_NAME, "namespace": cfg.pvc_namespace},
            spec=workload_ingress_policy(monitoring_namespace=args.monitoring_namespace,
                                         kuberay_namespace=args.kuberay_namespace),
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider,
                                        depends_on=[*args.depends_on, self.namespace]))
        docs = pulumi.Output.all(self.file_system.id, self.file_system.dns_name, self.file_system.mount_name).apply(
            lambda a: static_volume(cfg, file_system_id=a[0], dns_name=a[1], mount_name=a[2]))
        vol_opts = pulumi.ResourceOptions(parent=self, provider=args.provider,
                                          depends_on=[*args.depends_on, self.csi, self.namespace])
        sc = k8s.storage.v1.StorageClass(f"{name}-sc", metadata={"name": STORAGE_CLASS},
                                         provisioner=CSI_DRIVER, reclaim_policy="Retain",
                                         volume_binding_mode="Immediate", opts=vol_opts)
        self.pv = k8s.core.v1.PersistentVolume(f"{name}-pv", metadata=docs[0]["metadata"], spec=docs[0]["spec"],
                                               opts=pulumi.ResourceOptions.merge(vol_opts, pulumi.ResourceOptions(depends_on=[sc])))
        self.pvc = k8s.core.v1.PersistentVolumeClaim(f"{name}-pvc", metadata=docs[1]["metadata"], spec=docs[1]["spec"],
                                                     opts=pulumi.ResourceOptions.merge(
                                                         vol_opts, pulumi.ResourceOptions(depends_on=[self.pv])))
        self.pvc_name = cfg.pvc_name
        self.pvc_namespace = cfg.pvc_namespace
        self.mount_path = cfg.mount_path
        self.register_outputs({"fileSystemId": self.file_system.id})
