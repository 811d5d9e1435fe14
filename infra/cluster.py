"""EKS control plane (pulumi-eks), the node security group, the small system node group
that runs Karpenter/CoreDNS/operators, and the managed add-ons.

No default node group and no static accelerator capacity: accelerators come only from
Karpenter NodePools that scale to zero.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_eks as eks
import pulumi_kubernetes as k8s

from infra import iam, versions
from infra.config import PlatformConfig

SYSTEM_POOL_LABEL = {"trn-platform/pool": "system"}
CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]


def node_security_group_rules(vpc_cidr: str) -> list[dict]:
    """Rules of the node security group. EFA needs all traffic to and from the group
    itself (the reference blueprint missed this and multi-node EFA jobs hung)."""
    return [
        {"type": "ingress", "protocol": "-1", "from_port": 0, "to_port": 0, "self": True,
         "description": "all traffic between nodes (EFA requires all protocols, self-referencing)"},
        {"type": "egress", "protocol": "-1", "from_port": 0, "to_port": 0, "self": True,
         "description": "all traffic between nodes (EFA requires all protocols, self-referencing)"},
        {"type": "egress", "protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"],
         "description": "outbound (NAT, VPC endpoints)"},
    ]


def system_user_data(cluster_name: str) -> str:
    """AL2023 nodeadm needs nothing extra for a managed node group; a MIME stub keeps the
    launch template's user data valid and documents where kubelet settings would go."""
    body = ("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"//\"\n\n--//\n"
            "Content-Type: application/node.eks.aws\n\n"
            "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  kubelet:\n    config:\n"
            "      maxPods: 110\n--//--\n")
    return base64.b64encode(body.encode()).decode()


@dataclass
class ClusterArgs:
    config: PlatformConfig
    vpc_id: pulumi.Input[str]
    private_subnet_ids: list[pulumi.Input[str]]
    public_subnet_ids: list[pulumi.Input[str]]
    tags: dict[str, str]


class Cluster(pulumi.ComponentResource):
    """EKS cluster with API-mode access entries, KMS-encrypted secrets and logging."""

    def __init__(self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:Cluster", name, None, opts)
        cfg = args.config
        child = pulumi.ResourceOptions(parent=self)
        partition = aws.get_partition().partition

        self.secrets_key = aws.kms.Key(f"{name}-secrets", description=f"EKS secrets envelope key for {cfg.cluster_name}",
                                       enable_key_rotation=True, deletion_window_in_days=7, tags=args.tags, opts=child)

        self.node_security_group = aws.ec2.SecurityGroup(
            f"{name}-nodes", vpc_id=args.vpc_id, description=f"Karpenter and system nodes of {cfg.cluster_name}",
            tags={**args.tags, "karpenter.sh/discovery": cfg.cluster_name, "Name": f"{cfg.cluster_name}-nodes"},
            opts=child)
        for i, rule in enumerate(node_security_group_rules(cfg.network.vpc_cidr)):
            aws.ec2.SecurityGroupRule(f"{name}-nodes-{i}", security_group_id=self.node_security_group.id,
                                      opts=child, **rule)

        self.eks = eks.Cluster(
            f"{name}-eks",
            name=cfg.cluster_name,
            version=cfg.kubernetes_version,
            vpc_id=args.vpc_id,
            private_subnet_ids=args.private_subnet_ids,
            public_subnet_ids=args.public_subnet_ids,
            node_associate_public_ip_address=False,
            skip_default_node_group=True,
            skip_default_security_groups=True,
            authentication_mode=eks.AuthenticationMode.API,
            create_oidc_provider=cfg.identity == "irsa",
            endpoint_private_access=cfg.endpoint.private_access,
            endpoint_public_access=cfg.endpoint.public_access,
            public_access_cidrs=list(cfg.endpoint.public_access_cidrs) if cfg.endpoint.public_access else None,
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            encryption_config_key_arn=self.secrets_key.arn,
            coredns_addon_options=eks.CoreDnsAddonOptionsArgs(version=versions.EKS_ADDONS["coredns"]),
            kube_proxy_addon_options=eks.KubeProxyAddonOptionsArgs(version=versions.EKS_ADDONS["kube-proxy"]),
            # The VPC CNI's network policy agent enforces the NetworkPolicies of infra/storage.py.
            vpc_cni_options=eks.VpcCniOptionsArgs(addon_version=versions.EKS_ADDONS["vpc-cni"],
                                                  enable_network_policy=True),
            tags=args.tags,
            opts=child,
        )
        self.name = cfg.cluster_name
        self.cluster_security_group_id = self.eks.cluster_security_group_id

        # The control plane and nodes share the EKS-created cluster security group; the
        # node group adds the EFA-ready group.
        self.system_role = iam.node_role(f"{name}-system-nodes", partition=partition, tags=args.tags, parent=self)

        launch_template = aws.ec2.LaunchTemplate(
            f"{name}-system",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_tokens="required", http_endpoint="enabled", http_put_response_hop_limit=1),
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name="/dev/xvda", ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=cfg.system_nodes.disk_size_gib, volume_type="gp3", encrypted="true",
                    delete_on_termination="true"))],
            vpc_security_group_ids=[self.node_security_group.id, self.cluster_security_group_id],
            user_data=system_user_data(cfg.cluster_name),
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type="instance", tags=args.tags)],
            tags=args.tags, opts=child)

        # The name as an output of the cluster: what uses it waits for the control plane.
        cluster_name = self.eks.kubeconfig_json.apply(lambda _: cfg.cluster_name)
        self.system_nodes = aws.eks.NodeGroup(
            f"{name}-system",
            cluster_name=cluster_name,
            node_role_arn=self.system_role.arn,
            subnet_ids=args.private_subnet_ids,
            ami_type="AL2023_x86_64_STANDARD",
            instance_types=list(cfg.system_nodes.instance_types),
            capacity_type="ON_DEMAND",
            labels=SYSTEM_POOL_LABEL,
            # Only cluster-critical add-ons tolerate this; workloads go to Karpenter pools.
            taints=[aws.eks.NodeGroupTaintArgs(key="CriticalAddonsOnly", value="true", effect="NO_SCHEDULE")],
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(id=launch_template.id,
                                                                version=launch_template.latest_version.apply(str)),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=cfg.system_nodes.min_size,
                                                              desired_size=cfg.system_nodes.desired_size,
                                                              max_size=cfg.system_nodes.max_size),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            tags=args.tags, opts=child)

        addon_opts = pulumi.ResourceOptions(parent=self, depends_on=[self.system_nodes])
        self.pod_identity_agent = aws.eks.Addon(f"{name}-pod-identity-agent", cluster_name=cluster_name,
                                                addon_name="eks-pod-identity-agent",
                                                addon_version=versions.EKS_ADDONS["eks-pod-identity-agent"],
                                                resolve_conflicts_on_update="OVERWRITE", tags=args.tags, opts=addon_opts)
        self.identity = iam.ClusterIdentity(cluster_name=cluster_name, mode=cfg.identity,
                                            oidc_provider_arn=self.eks.oidc_provider_arn if cfg.identity == "irsa" else "",
                                            oidc_issuer=self.eks.oidc_issuer if cfg.identity == "irsa" else "")
        ebs_role = iam.ServiceAccountRole(f"{name}-ebs-csi", identity=self.identity, namespace="kube-system",
                                          service_account="ebs-csi-controller-sa",
                                          managed_policy_arns=[iam.managed_policy_arn(partition, "service-role/AmazonEBSCSIDriverPolicy")],
                                          opts=pulumi.ResourceOptions(parent=self, depends_on=[self.pod_identity_agent]))
        self.ebs_csi = aws.eks.Addon(
            f"{name}-ebs-csi", cluster_name=cluster_name, addon_name="aws-ebs-csi-driver",
            addon_version=versions.EKS_ADDONS["aws-ebs-csi-driver"], resolve_conflicts_on_update="OVERWRITE",
            service_account_role_arn=ebs_role.role.arn if cfg.identity == "irsa" else None,
            tags=args.tags, opts=addon_opts)
        # Node health: the agent sets NodeConditions (AcceleratedHardwareReady for Neuron and
        # EFA faults, ...) that Karpenter's node repair acts on (infra/karpenter.py).
        self.node_monitoring_agent = aws.eks.Addon(
            f"{name}-node-monitoring-agent", cluster_name=cluster_name, addon_name="eks-node-monitoring-agent",
            addon_version=versions.EKS_ADDONS["eks-node-monitoring-agent"], resolve_conflicts_on_update="OVERWRITE",
            tags=args.tags, opts=addon_opts)

        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig=self.eks.kubeconfig_json,
                                     enable_server_side_apply=True, opts=child)
        self.kubeconfig = pulumi.Output.secret(self.eks.kubeconfig_json)
        self.register_outputs({"clusterName": cfg.cluster_name})
