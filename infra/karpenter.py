"""Karpenter v1: controller IAM, node role and its access entry, the SQS interruption queue
with its EventBridge rules, and the pinned charts (CRDs first, then the controller)."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra import iam, versions
from infra.cluster import SYSTEM_POOL_LABEL

NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"

# EventBridge patterns Karpenter handles: the rules of upstream's v1.14 CloudFormation
# (aws/karpenter-provider-aws@1d927085, website/content/en/v1.14/getting-started/
# getting-started-with-karpenter/cloudformation.yaml), capacity-reservation interruptions included.
INTERRUPTION_EVENTS = {
    "scheduled-change": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot-interruption": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "instance-state-change": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    "capacity-reservation-interruption": {"source": ["aws.ec2"],
                                          "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"]},
}


def interruption_queue_policy(queue_arn: str) -> dict:
    return iam.document(
        {"Sid": "EventBridgeWrite", "Effect": "Allow", "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
         "Action": "sqs:SendMessage", "Resource": queue_arn},
        {"Sid": "DenyHTTP", "Effect": "Deny", "Principal": "*", "Action": "sqs:*", "Resource": queue_arn,
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    )


def controller_values(*, cluster_name: str, region: str, queue_name: str, service_account_annotations: dict) -> dict:
    """Helm values for the karpenter chart: on the system nodes, two replicas, PDB.

    AWS_REGION is set explicitly: without it the controller asks IMDS for the region
    (pkg/operator/operator.go at v1.14.1), which a pod cannot reach on the system nodes
    (IMDSv2 with hop limit 1), and the controller exits. The chart's `controller.env`
    (charts/karpenter/values.yaml at 1d927085) carries it."""
    return {
        # nodeRepair (alpha, off by default in charts/karpenter/values.yaml @ v1.14.1, commit
        # c88abbbad455186e69e30296c595e474123e9bc1): replace nodes whose conditions (set by the
        # EKS node monitoring agent, e.g. AcceleratedHardwareReady=False) stay unhealthy.
        "settings": {"clusterName": cluster_name, "interruptionQueue": queue_name,
                     "featureGates": {"nodeRepair": True}},
        "serviceAccount": {"name": SERVICE_ACCOUNT, "annotations": service_account_annotations},
        "replicas": 2,
        "podDisruptionBudget": {"name": "karpenter", "maxUnavailable": 1},
        "nodeSelector": SYSTEM_POOL_LABEL,
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
        "controller": {"env": [{"name": "AWS_REGION", "value": region}],
                       "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                                     "limits": {"cpu": "1", "memory": "1Gi"}}},
        "logLevel": "info",
    }


@dataclass
class KarpenterArgs:
    cluster_name: str
    cluster_ready: pulumi.Input[str]  # resolves once the control plane exists
    region: str
    identity: iam.ClusterIdentity
    provider: k8s.Provider
    depends_on: list[pulumi.Resource]
    tags: dict[str, str]


class Karpenter(pulumi.ComponentResource):
    def __init__(self, name: str, args: KarpenterArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:platform:Karpenter", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        caller = aws.get_caller_identity()
        partition = aws.get_partition().partition

        self.node_role = iam.node_role(f"{name}-node", partition=partition, tags=args.tags, parent=self,
                                       role_name=f"KarpenterNode-{args.cluster_name}"[:64])
        # With API authentication mode, nodes Karpenter launches join through this entry.
        self.node_access = aws.eks.AccessEntry(f"{name}-node", cluster_name=args.cluster_ready,
                                               principal_arn=self.node_role.arn, type="EC2_LINUX", opts=child)

        self.queue = aws.sqs.Queue(f"{name}-interruption", name=f"{args.cluster_name}-karpenter",
                                   message_retention_seconds=300, sqs_managed_sse_enabled=True,
                                   tags=args.tags, opts=child)
        aws.sqs.QueuePolicy(f"{name}-interruption", queue_url=self.queue.url,
                            policy=self.queue.arn.apply(lambda arn: json.dumps(interruption_queue_policy(arn))),
                            opts=child)
        for event, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{event}", event_pattern=json.dumps(pattern),
                                            description=f"Karpenter interruption: {event}", tags=args.tags, opts=child)
            aws.cloudwatch.EventTarget(f"{name}-{event}", rule=rule.name, arn=self.queue.arn, opts=child)

        policy = pulumi.Output.all(self.node_role.arn, self.queue.arn).apply(
            lambda a: iam.karpenter_controller_policy(
                cluster_name=args.cluster_name, region=args.region, account_id=caller.account_id,
                partition=partition, node_role_arn=a[0], interruption_queue_arn=a[1]))
        self.controller_role = iam.ServiceAccountRole(
            f"{name}-controller", identity=args.identity, namespace=NAMESPACE, service_account=SERVICE_ACCOUNT,
            policy=policy, opts=pulumi.ResourceOptions(parent=self, depends_on=args.depends_on))

        k8s_opts = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=args.depends_on)
        self.crds = k8s.helm.v3.Release(
            f"{name}-crd", name="karpenter-crd", chart=versions.KARPENTER_CRD_CHART, version=versions.KARPENTER_VERSION,
            namespace=NAMESPACE, skip_await=False, opts=k8s_opts)
        values = pulumi.Output.from_input(self.controller_role.annotations).apply(
            lambda ann: controller_values(cluster_name=args.cluster_name, region=args.region,
                                          queue_name=f"{args.cluster_name}-karpenter", service_account_annotations=ann))
        self.release = k8s.helm.v3.Release(
            f"{name}", name="karpenter", chart=versions.KARPENTER_CHART, version=versions.KARPENTER_VERSION,
            namespace=NAMESPACE, skip_crds=True, values=values, atomic=True, timeout=600,
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider,
                                        depends_on=[*args.depends_on, self.crds, self.controller_role, self.queue]))
        self.register_outputs({"nodeRoleName": self.node_role.name, "queueName": self.queue.name})
