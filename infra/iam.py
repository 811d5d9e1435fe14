"""IAM policy documents (pure functions) and the service-account role component.

Documents are plain dicts so tests and the policy pack read them directly. Every write
action is scoped to this cluster's resources by ARN or by the tags Karpenter sets;
the few actions AWS offers no resource scoping for are listed in policy/exceptions.yaml.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

# --------------------------------------------------------------------------- documents


def statement(sid: str, actions: list[str], resources: list[str], condition: dict | None = None,
              effect: str = "Allow") -> dict:
    s = {"Sid": sid, "Effect": effect, "Action": sorted(actions), "Resource": resources}
    if condition:
        s["Condition"] = condition
    return s


def document(*statements: dict) -> dict:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def karpenter_controller_policy(*, cluster_name: str, region: str, account_id: str, partition: str,
                                node_role_arn: str, interruption_queue_arn: str) -> dict:
    """The Karpenter v1 controller policy, scoped to this cluster.

    Statement by statement the policies of upstream's CloudFormation for v1.14
    (aws/karpenter-provider-aws@1d927085, "docs: update for patch release v1.14.1",
    website/content/en/v1.14/getting-started/getting-started-with-karpenter/cloudformation.yaml),
    with the differences listed in docs/operations.md ("Karpenter controller policy"): no
    zonal-shift statement (settings.enableZonalShift stays false) and iam:PassedToService
    without the China-partition principal."""
    arn = f"arn:{partition}:ec2:{region}"
    owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}": "owned",
             "aws:RequestTag/eks:eks-cluster-name": cluster_name}
    owned_res = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}
    return document(
        statement("AllowScopedEC2InstanceAccessActions", ["ec2:RunInstances", "ec2:CreateFleet"], [
            f"{arn}::image/*", f"{arn}::snapshot/*", f"{arn}:*:security-group/*", f"{arn}:*:subnet/*",
            f"{arn}:*:capacity-reservation/*", f"{arn}:*:placement-group/*"]),
        statement("AllowScopedEC2LaunchTemplateAccessActions", ["ec2:RunInstances", "ec2:CreateFleet"],
                  [f"{arn}:*:launch-template/*"],
                  {"StringEquals": owned_res, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}),
        statement("AllowScopedEC2InstanceActionsWithTags",
                  ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
                  [f"{arn}:*:fleet/*", f"{arn}:*:instance/*", f"{arn}:*:volume/*", f"{arn}:*:network-interface/*",
                   f"{arn}:*:launch-template/*", f"{arn}:*:spot-instances-request/*"],
                  {"StringEquals": owned, "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}),
        statement("AllowScopedResourceCreationTagging", ["ec2:CreateTags"],
                  [f"{arn}:*:fleet/*", f"{arn}:*:instance/*", f"{arn}:*:volume/*", f"{arn}:*:network-interface/*",
                   f"{arn}:*:launch-template/*", f"{arn}:*:spot-instances-request/*"],
                  {"StringEquals": {**owned, "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"]},
                   "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"}}),
        statement("AllowScopedResourceTagging", ["ec2:CreateTags"], [f"{arn}:*:instance/*"],
                  {"StringEquals": owned_res, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"},
                   "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster_name},
                   "ForAllValues:StringEquals": {"aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]}}),
        statement("AllowScopedDeletion", ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
                  [f"{arn}:*:instance/*", f"{arn}:*:launch-template/*"],
                  {"StringEquals": owned_res, "StringLike": {"aws:ResourceTag/karpenter.sh/nodepool": "*"}}),
        statement("AllowRegionalReadActions", [
            # DescribeInstanceStatus: the instance-status controller cordons nodes failing EC2 status checks.
            "ec2:DescribeCapacityReservations", "ec2:DescribeImages", "ec2:DescribeInstances",
            "ec2:DescribeInstanceStatus", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes", "ec2:DescribeLaunchTemplates",
            "ec2:DescribePlacementGroups", "ec2:DescribeSecurityGroups", "ec2:DescribeSpotPriceHistory",
            "ec2:DescribeSubnets"], ["*"], {"StringEquals": {"aws:RequestedRegion": region}}),
        statement("AllowSSMReadActions", ["ssm:GetParameter"], [f"arn:{partition}:ssm:{region}::parameter/aws/service/*"]),
        statement("AllowPricingReadActions", ["pricing:GetProducts"], ["*"]),
        statement("AllowInterruptionQueueActions",
                  ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"], [interruption_queue_arn]),
        statement("AllowPassingInstanceRole", ["iam:PassRole"], [node_role_arn],
                  {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com"]}}),
        statement("AllowScopedInstanceProfileCreationActions", ["iam:CreateInstanceProfile"],
                  [f"arn:{partition}:iam::{account_id}:instance-profile/*"],
                  {"StringEquals": {**owned, "aws:RequestTag/topology.kubernetes.io/region": region},
                   "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}),
        statement("AllowScopedInstanceProfileTagActions", ["iam:TagInstanceProfile"],
                  [f"arn:{partition}:iam::{account_id}:instance-profile/*"],
                  {"StringEquals": {**owned_res, "aws:ResourceTag/topology.kubernetes.io/region": region, **owned,
                                    "aws:RequestTag/topology.kubernetes.io/region": region},
                   "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
                                  "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"}}),
        statement("AllowScopedInstanceProfileActions",
                  ["iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile"],
                  [f"arn:{partition}:iam::{account_id}:instance-profile/*"],
                  {"StringEquals": {**owned_res, "aws:ResourceTag/topology.kubernetes.io/region": region},
                   "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"}}),
        # ListInstanceProfiles on "*" as upstream (AllowUnscopedInstanceProfileListAction): a list call
        # is authorized against the account, not a profile ARN, so the old instance-profile/* scope denied it.
        statement("AllowUnscopedInstanceProfileListAction", ["iam:ListInstanceProfiles"], ["*"]),
        statement("AllowInstanceProfileReadActions", ["iam:GetInstanceProfile"],
                  [f"arn:{partition}:iam::{account_id}:instance-profile/*"]),
        statement("AllowAPIServerEndpointDiscovery", ["eks:DescribeCluster"],
                  [f"arn:{partition}:eks:{region}:{account_id}:cluster/{cluster_name}"]),
    )


def s3_prefix_access_policy(bucket_arn: str, prefixes: list[str], *, write: bool) -> dict:
    """Read (and optionally write) access to given prefixes of one bucket."""
    actions = ["s3:GetObject"] + (["s3:PutObject", "s3:AbortMultipartUpload"] if write else [])
    objects = [f"{bucket_arn}/{p.strip('/')}/*" if p else f"{bucket_arn}/*" for p in prefixes]
    return document(
        statement("ListPrefixes", ["s3:ListBucket"], [bucket_arn],
                  {"StringLike": {"s3:prefix": [f"{p.strip('/')}/*" if p else "*" for p in prefixes]}}),
        statement("ObjectAccess", actions, objects),
    )


def tls_only_bucket_policy(bucket_arn: str) -> dict:
    return document(statement("DenyInsecureTransport", ["s3:*"], [bucket_arn, f"{bucket_arn}/*"],
                              {"Bool": {"aws:SecureTransport": "false"}}, effect="Deny") | {"Principal": "*"})


def service_account_trust_policy(*, mode: str, namespace: str, service_account: str,
                                 oidc_provider_arn: str | None = None, oidc_issuer: str | None = None) -> dict:
    """Trust for one Kubernetes service account only.

    pod-identity: the EKS Pod Identity service principal; the PodIdentityAssociation binds
    the role to exactly this namespace/service account. irsa: the cluster's OIDC provider,
    with `sub` pinned to system:serviceaccount:<namespace>:<service_account>.
    """
    if mode == "pod-identity":
        return {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession"]}]}
    if mode == "irsa":
        if not (oidc_provider_arn and oidc_issuer):
            raise ValueError("irsa trust needs the cluster's OIDC provider ARN and issuer")
        return {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Principal": {"Federated": oidc_provider_arn},
            "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {
                f"{oidc_issuer}:sub": f"system:serviceaccount:{namespace}:{service_account}",
                f"{oidc_issuer}:aud": "sts.amazonaws.com"}}}]}
    raise ValueError(f"identity mode {mode!r}: allowed values: pod-identity, irsa")


def assume_role_by_service(service: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]}


def managed_policy_arn(partition: str, name: str) -> str:
    return f"arn:{partition}:iam::aws:policy/{name}"


# What every EKS node needs: join the cluster, run the VPC CNI, pull from ECR, SSM access.
NODE_MANAGED_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy",
                         "AmazonEC2ContainerRegistryPullOnly", "AmazonSSMManagedInstanceCore")


def node_role(name: str, *, partition: str, tags: dict[str, str], parent: pulumi.Resource,
              role_name: str | None = None) -> aws.iam.Role:
    """An EC2 node role with the node managed policies (system nodes and Karpenter nodes)."""
    child = pulumi.ResourceOptions(parent=parent)
    role = aws.iam.Role(name, name=role_name, assume_role_policy=json.dumps(assume_role_by_service("ec2.amazonaws.com")),
                        tags=tags, opts=child)
    for i, policy in enumerate(NODE_MANAGED_POLICIES):
        aws.iam.RolePolicyAttachment(f"{name}-{i}", role=role.name, policy_arn=managed_policy_arn(partition, policy),
                                     opts=child)
    return role


# --------------------------------------------------------------------------- component


@dataclass(frozen=True)
class ClusterIdentity:
    """What a service-account role needs to know about the cluster."""
    cluster_name: pulumi.Input[str]
    mode: str  # pod-identity | irsa
    oidc_provider_arn: pulumi.Input[str]
    oidc_issuer: pulumi.Input[str]


class ServiceAccountRole(pulumi.ComponentResource):
    """An IAM role that exactly one Kubernetes service account can assume.

    With Pod Identity it also creates the association; with IRSA the service account
    must carry `annotations` (exposed here) pointing at the role.
    """

    def __init__(self, name: str, *, identity: ClusterIdentity, namespace: str, service_account: str,
                 policy: pulumi.Input[dict] | None = None, managed_policy_arns: list[str] = (),
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:iam:ServiceAccountRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        trust = pulumi.Output.all(identity.oidc_provider_arn, identity.oidc_issuer).apply(
            lambda a: json.dumps(service_account_trust_policy(
                mode=identity.mode, namespace=namespace, service_account=service_account,
                oidc_provider_arn=a[0], oidc_issuer=a[1])))
        self.role = aws.iam.Role(name, assume_role_policy=trust,
                                 description=f"service account {namespace}/{service_account}", opts=child)
        if policy is not None:
            aws.iam.RolePolicy(f"{name}-inline", role=self.role.id,
                               policy=pulumi.Output.from_input(policy).apply(json.dumps), opts=child)
        for i, arn in enumerate(managed_policy_arns):
            aws.iam.RolePolicyAttachment(f"{name}-managed-{i}", role=self.role.name, policy_arn=arn, opts=child)
        if identity.mode == "pod-identity":
            aws.eks.PodIdentityAssociation(f"{name}-association", cluster_name=identity.cluster_name,
                                           namespace=namespace, service_account=service_account,
                                           role_arn=self.role.arn, opts=child)
            self.annotations: pulumi.Output[dict] = pulumi.Output.from_input({})
        else:
            self.annotations = self.role.arn.apply(lambda arn: {"eks.amazonaws.com/role-arn": arn})
        self.register_outputs({"roleArn": self.role.arn})
