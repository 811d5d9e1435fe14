"""Sweep: remove what a failed or interrupted `pulumi destroy` left behind for ONE cluster.

    trnctl sweep <stack> [--project-dir .] [--yes]

Controllers running inside the cluster create AWS resources that Pulumi never knew about:
Karpenter's instances and launch templates, the VPC CNI's network interfaces, the load
balancers and security groups of Services/Ingresses. When the cluster goes away before
they are cleaned up, they keep costing money and block the VPC's deletion.

The sweep lists them (a dry run, the default) and deletes them only with `--yes`, in
dependency order: instances (and wait until terminated) -> load balancers, target groups
-> network interfaces -> launch templates -> security groups (rules in other groups that
reference them are revoked first). A second run finds nothing and does nothing.

A resource is this cluster's only when it carries one of the ownership tags below with
exactly this cluster's name as key part or value; another cluster's or untagged resources
are never touched. Tag keys, as the controllers write them:
  - Karpenter (docs "EC2NodeClass / spec.tags", upgrade guide v0.14 for launch templates):
    instances get karpenter.sh/nodepool, eks:eks-cluster-name=<cluster> and
    kubernetes.io/cluster/<cluster>=owned; launch templates karpenter.k8s.aws/cluster=<cluster>.
  - AWS Load Balancer Controller: elbv2.k8s.aws/cluster=<cluster> on ELBv2 load balancers,
    target groups and the security groups it creates.
  - Kubernetes in-tree service controller: kubernetes.io/cluster/<cluster>=owned on classic
    ELBs and their security groups.
  - Amazon VPC CNI: cluster.k8s.amazonaws.com/name=<cluster> on the ENIs it creates.
The platform's own Pulumi resources carry none of these with these values (its subnets
use kubernetes.io/cluster/<cluster>=shared), and EKS's own security groups (tag
aws:eks:cluster-name) are left to EKS.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from trnctl import aws_ops, exitcodes
from infra.config import load_stack_file
from stackfiles import ConfigError

KARPENTER_NODEPOOL_TAG = "karpenter.sh/nodepool"
EKS_MANAGED_TAG = "aws:eks:cluster-name"  # EKS's own groups and interfaces: deleted with the cluster


def ownership_tags(cluster: str) -> dict[str, str]:
    """Every tag (key -> exact value) that marks a resource as created for `cluster`."""
    return {
        "eks:eks-cluster-name": cluster,
        f"kubernetes.io/cluster/{cluster}": "owned",
        "karpenter.k8s.aws/cluster": cluster,
        "elbv2.k8s.aws/cluster": cluster,
        "cluster.k8s.amazonaws.com/name": cluster,
    }


# Which ownership tags count for each kind of resource.
INSTANCE_KEYS = ("eks:eks-cluster-name", "kubernetes.io/cluster/{c}")
LAUNCH_TEMPLATE_KEYS = ("karpenter.k8s.aws/cluster",)
ENI_KEYS = ("cluster.k8s.amazonaws.com/name",)
LOAD_BALANCER_KEYS = ("elbv2.k8s.aws/cluster", "kubernetes.io/cluster/{c}")
CLASSIC_LB_KEYS = ("kubernetes.io/cluster/{c}",)
SECURITY_GROUP_KEYS = ("elbv2.k8s.aws/cluster", "kubernetes.io/cluster/{c}")

# Errors that mean "already gone": deleting twice is not a failure.
NOT_FOUND = {
    "InvalidInstanceID.NotFound", "LoadBalancerNotFound", "TargetGroupNotFound", "InvalidNetworkInterfaceID.NotFound",
    "InvalidLaunchTemplateId.NotFound", "InvalidLaunchTemplateName.NotFoundException", "InvalidGroup.NotFound",
    "InvalidPermission.NotFound",
}
RETRY_LATER = {"DependencyViolation", "ResourceInUse", "InvalidNetworkInterface.InUse"}


@dataclass(frozen=True)
class Leftover:
    kind: str  # instance | load-balancer | target-group | classic-load-balancer | network-interface | launch-template | security-group
    id: str  # what the delete call takes: instance/ENI/LT/SG id, ELBv2 ARN, classic ELB name
    name: str
    reason: str  # the ownership tag that matched ("key=value"), or the instance an ENI belongs to
    vpc_id: str = ""


@dataclass(frozen=True)
class RuleRevocation:
    """One rule in `group_id` that references a security group the sweep deletes."""
    group_id: str
    egress: bool
    permission: dict  # an IpPermissions entry reduced to the one referencing pair
    references: str


@dataclass
class Plan:
    cluster: str
    instances: list[Leftover] = field(default_factory=list)
    load_balancers: list[Leftover] = field(default_factory=list)
    target_groups: list[Leftover] = field(default_factory=list)
    classic_load_balancers: list[Leftover] = field(default_factory=list)
    network_interfaces: list[Leftover] = field(default_factory=list)
    launch_templates: list[Leftover] = field(default_factory=list)
    security_groups: list[Leftover] = field(default_factory=list)
    revocations: list[RuleRevocation] = field(default_factory=list)

    def leftovers(self) -> list[Leftover]:
        """Everything, in the order it is deleted."""
        return (self.instances + self.load_balancers + self.target_groups + self.classic_load_balancers
                + self.network_interfaces + self.launch_templates + self.security_groups)

    @property
    def empty(self) -> bool:
        return not self.leftovers() and not self.revocations


# --------------------------------------------------------------------------- pure: ownership


def owner_tag(tags: dict[str, str], cluster: str, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` whose tag value is exactly this cluster's ("key=value"), else None."""
    wanted = ownership_tags(cluster)
    for pattern in keys:
        key = pattern.format(c=cluster)
        if key in tags and tags[key] == wanted[key]:
            return f"{key}={wanted[key]}"
    return None


def select_instances(instances: list[dict], cluster: str) -> list[Leftover]:
    """Karpenter's nodes of this cluster that are not terminated yet.

    Instances of EKS managed node groups carry kubernetes.io/cluster/<c>=owned as well but no
    karpenter.sh/nodepool tag: their node group (a Pulumi resource) owns them.
    """
    out = []
    for inst in instances:
        tags = aws_ops.tag_map(inst.get("Tags"))
        reason = owner_tag(tags, cluster, INSTANCE_KEYS)
        if reason and KARPENTER_NODEPOOL_TAG in tags and inst["State"]["Name"] != "terminated":
            out.append(Leftover("instance", inst["InstanceId"], tags.get("Name", inst.get("InstanceType", "")),
                                f"{reason}, {KARPENTER_NODEPOOL_TAG}={tags[KARPENTER_NODEPOOL_TAG]}",
                                inst.get("VpcId", "")))
    return out


def select_network_interfaces(interfaces: list[dict], cluster: str, instance_ids: set[str]) -> list[Leftover]:
    """ENIs the VPC CNI tagged for this cluster, and the other ENIs of the swept instances.

    Interfaces managed by AWS services (load balancers, the EKS control plane) are deleted by
    their service and skipped; a primary interface goes with its instance; one attached to
    an instance the sweep keeps is in use and stays.
    """
    out = []
    for eni in interfaces:
        if eni.get("RequesterManaged"):
            continue
        tags = aws_ops.tag_map(eni.get("TagSet"))
        attachment = eni.get("Attachment") or {}
        attached_to = attachment.get("InstanceId")
        if attached_to and attached_to not in instance_ids:
            continue  # in use by an instance the sweep keeps (a node group's, another cluster's)
        reason = owner_tag(tags, cluster, ENI_KEYS)
        if reason is None and attached_to in instance_ids:
            if attachment.get("DeviceIndex") == 0 or attachment.get("DeleteOnTermination"):
                continue  # terminated together with the instance
            reason = f"attached to {attachment['InstanceId']}"
        if reason:
            out.append(Leftover("network-interface", eni["NetworkInterfaceId"], eni.get("Description", ""), reason,
                                eni.get("VpcId", "")))
    return out


def select_tagged(kind: str, resources: list[dict], tags_by_id: dict[str, dict[str, str]], cluster: str,
                  keys: tuple[str, ...], id_key: str, name_key: str) -> list[Leftover]:
    """Load balancers and target groups, whose tags come from a separate DescribeTags call."""
    out = []
    for res in resources:
        reason = owner_tag(tags_by_id.get(res[id_key], {}), cluster, keys)
        if reason:
            out.append(Leftover(kind, res[id_key], res.get(name_key, ""), reason, res.get("VpcId", res.get("VPCId", ""))))
    return out


def select_launch_templates(templates: list[dict], cluster: str) -> list[Leftover]:
    out = []
    for lt in templates:
        reason = owner_tag(aws_ops.tag_map(lt.get("Tags")), cluster, LAUNCH_TEMPLATE_KEYS)
        if reason:
            out.append(Leftover("launch-template", lt["LaunchTemplateId"], lt.get("LaunchTemplateName", ""), reason))
    return out


def select_security_groups(groups: list[dict], cluster: str) -> list[Leftover]:
    out = []
    for sg in groups:
        tags = aws_ops.tag_map(sg.get("Tags"))
        reason = owner_tag(tags, cluster, SECURITY_GROUP_KEYS)
        if reason and EKS_MANAGED_TAG not in tags and sg.get("GroupName") != "default":
            out.append(Leftover("security-group", sg["GroupId"], sg.get("GroupName", ""), reason, sg.get("VpcId", "")))
    return out


def rules_referencing(groups: list[dict], doomed: set[str]) -> list[RuleRevocation]:
    """Rules in any of `groups` that name a group in `doomed` (a group's rules about itself
    go with it). AWS refuses to delete a group that another group's rule still references."""
    out = []
    for sg in groups:
        for egress, perms in ((False, sg.get("IpPermissions", [])), (True, sg.get("IpPermissionsEgress", []))):
            for perm in perms:
                for pair in perm.get("UserIdGroupPairs", []):
                    ref = pair.get("GroupId")
                    if ref in doomed and ref != sg["GroupId"]:
                        one = {k: perm[k] for k in ("IpProtocol", "FromPort", "ToPort") if k in perm}
                        one["UserIdGroupPairs"] = [{"GroupId": ref}]
                        out.append(RuleRevocation(sg["GroupId"], egress, one, ref))
    return out


# --------------------------------------------------------------------------- AWS calls: find


@dataclass
class Clients:
    ec2: Any
    elbv2: Any
    elb: Any
    sts: Any
    eks: Any

    @classmethod
    def for_region(cls, region: str, *, read_only: bool, log: list[str] | None = None) -> "Clients":
        sess = aws_ops.session(region)

        def make(service: str) -> Any:
            c = aws_ops.client(sess, service)
            if read_only:
                return aws_ops.guard_read_only(c, log)
            return aws_ops.record_operations(c, log) if log is not None else c

        return cls(ec2=make("ec2"), elbv2=make("elbv2"), elb=make("elb"), sts=make("sts"), eks=make("eks"))


def _tag_filter(key: str, value: str) -> list[dict]:
    return [{"Name": f"tag:{key}", "Values": [value]}]


def _by_id(items: list[dict], id_key: str) -> list[dict]:
    return list({i[id_key]: i for i in items}.values())


def find_leftovers(clients: Clients, cluster: str) -> Plan:
    """Describe calls only. Server-side tag filters narrow the lists; the pure `select_*`
    functions decide, on exact key and value."""
    ec2, wanted = clients.ec2, ownership_tags(cluster)
    plan = Plan(cluster)

    instances = []
    for pattern in INSTANCE_KEYS:
        key = pattern.format(c=cluster)
        for r in aws_ops.paginate(ec2, "describe_instances", "Reservations", Filters=_tag_filter(key, wanted[key])):
            instances += r["Instances"]
    plan.instances = select_instances(_by_id(instances, "InstanceId"), cluster)
    instance_ids = {i.id for i in plan.instances}

    enis = list(aws_ops.paginate(ec2, "describe_network_interfaces", "NetworkInterfaces",
                                 Filters=_tag_filter(ENI_KEYS[0], cluster)))
    if instance_ids:
        enis += aws_ops.paginate(ec2, "describe_network_interfaces", "NetworkInterfaces",
                                 Filters=[{"Name": "attachment.instance-id", "Values": sorted(instance_ids)}])
    plan.network_interfaces = select_network_interfaces(_by_id(enis, "NetworkInterfaceId"), cluster, instance_ids)

    lbs = list(aws_ops.paginate(clients.elbv2, "describe_load_balancers", "LoadBalancers"))
    plan.load_balancers = select_tagged("load-balancer", lbs, _elbv2_tags(clients.elbv2, [lb["LoadBalancerArn"] for lb in lbs]),
                                        cluster, LOAD_BALANCER_KEYS, "LoadBalancerArn", "LoadBalancerName")
    tgs = list(aws_ops.paginate(clients.elbv2, "describe_target_groups", "TargetGroups"))
    plan.target_groups = select_tagged("target-group", tgs, _elbv2_tags(clients.elbv2, [t["TargetGroupArn"] for t in tgs]),
                                       cluster, LOAD_BALANCER_KEYS, "TargetGroupArn", "TargetGroupName")
    classic = list(aws_ops.paginate(clients.elb, "describe_load_balancers", "LoadBalancerDescriptions"))
    plan.classic_load_balancers = select_tagged(
        "classic-load-balancer", classic, _classic_tags(clients.elb, [lb["LoadBalancerName"] for lb in classic]),
        cluster, CLASSIC_LB_KEYS, "LoadBalancerName", "DNSName")

    lts = list(aws_ops.paginate(ec2, "describe_launch_templates", "LaunchTemplates",
                                Filters=_tag_filter(LAUNCH_TEMPLATE_KEYS[0], cluster)))
    plan.launch_templates = select_launch_templates(lts, cluster)

    groups = []
    for pattern in SECURITY_GROUP_KEYS:
        key = pattern.format(c=cluster)
        groups += aws_ops.paginate(ec2, "describe_security_groups", "SecurityGroups", Filters=_tag_filter(key, wanted[key]))
    plan.security_groups = select_security_groups(_by_id(groups, "GroupId"), cluster)
    vpcs = sorted({g.vpc_id for g in plan.security_groups if g.vpc_id})
    if vpcs:
        neighbours = list(aws_ops.paginate(ec2, "describe_security_groups", "SecurityGroups",
                                           Filters=[{"Name": "vpc-id", "Values": vpcs}]))
        plan.revocations = rules_referencing(neighbours, {g.id for g in plan.security_groups})
    return plan


def _elbv2_tags(elbv2: Any, arns: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for batch in aws_ops.chunks(arns, 20):
        for d in elbv2.describe_tags(ResourceArns=batch)["TagDescriptions"]:
            out[d["ResourceArn"]] = aws_ops.tag_map(d.get("Tags"))
    return out


def _classic_tags(elb: Any, names: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for batch in aws_ops.chunks(names, 20):
        for d in elb.describe_tags(LoadBalancerNames=batch)["TagDescriptions"]:
            out[d["LoadBalancerName"]] = aws_ops.tag_map(d.get("Tags"))
    return out


# --------------------------------------------------------------------------- AWS calls: delete


@dataclass(frozen=True)
class Timing:
    """How long to wait for AWS to let go (terminations, ENIs of deleted load balancers)."""
    poll_seconds: float = 10.0
    timeout_seconds: float = 900.0


@dataclass(frozen=True)
class Outcome:
    kind: str
    id: str
    result: str  # deleted | already gone | failed: <error>


def _attempt(kind: str, rid: str, call: Callable[[], Any], timing: Timing) -> Outcome:
    """Run one delete; 'already gone' counts as done; dependency errors are retried until the timeout."""
    deadline = time.monotonic() + timing.timeout_seconds
    while True:
        try:
            call()
            return Outcome(kind, rid, "deleted")
        except ClientError as err:
            code = aws_ops.error_code(err)
            if code in NOT_FOUND:
                return Outcome(kind, rid, "already gone")
            if code not in RETRY_LATER or time.monotonic() >= deadline:
                return Outcome(kind, rid, f"failed: {aws_ops.describe_error(err)}")
        time.sleep(timing.poll_seconds)


def _wait(aws_client: Any, waiter: str, timing: Timing, **kwargs: Any) -> bool:
    """A botocore waiter within `timing`; False when it gave up."""
    delay = max(1, round(timing.poll_seconds))
    try:
        aws_client.get_waiter(waiter).wait(
            **kwargs, WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timing.timeout_seconds // delay))})
    except WaiterError:
        return False
    return True


def _detached(ec2: Any, eni_id: str, swept_instances: set[str], timing: Timing) -> bool:
    """Wait until an ENI is detached. EC2 detaches it when its instance terminates; an
    attachment to a swept (terminated) instance that lingers is force-detached."""
    deadline = time.monotonic() + timing.timeout_seconds
    while True:
        try:
            found = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"]
        except ClientError as err:
            if aws_ops.error_code(err) in NOT_FOUND:
                return True
            raise
        if not found or found[0].get("Status") == "available":
            return True
        attachment = found[0].get("Attachment") or {}
        if attachment.get("InstanceId") in swept_instances and attachment.get("Status") != "detaching":
            ec2.detach_network_interface(AttachmentId=attachment["AttachmentId"], Force=True)
        if time.monotonic() >= deadline:
            return False
        time.sleep(timing.poll_seconds)


def delete_leftovers(clients: Clients, plan: Plan, timing: Timing = Timing()) -> list[Outcome]:
    """Delete `plan` in dependency order; safe to run again on what remains."""
    ec2, out = clients.ec2, []

    instance_outcomes = [_attempt("instance", i.id, lambda i=i.id: ec2.terminate_instances(InstanceIds=[i]), timing)
                         for i in plan.instances]
    terminating = [o.id for o in instance_outcomes if o.result == "deleted"]
    if terminating and not _wait(ec2, "instance_terminated", timing, InstanceIds=terminating):
        instance_outcomes = [Outcome(o.kind, o.id, "failed: not terminated in time") if o.id in terminating else o
                             for o in instance_outcomes]
    out += instance_outcomes

    lb_outcomes = [_attempt(lb.kind, lb.id, lambda a=lb.id: clients.elbv2.delete_load_balancer(LoadBalancerArn=a), timing)
                   for lb in plan.load_balancers]
    deleting = [o.id for o in lb_outcomes if o.result == "deleted"]
    if deleting:  # their ENIs and security group references go away only then
        _wait(clients.elbv2, "load_balancers_deleted", timing, LoadBalancerArns=deleting)
    out += lb_outcomes
    for tg in plan.target_groups:
        out.append(_attempt(tg.kind, tg.id, lambda a=tg.id: clients.elbv2.delete_target_group(TargetGroupArn=a), timing))
    for lb in plan.classic_load_balancers:
        out.append(_attempt(lb.kind, lb.id, lambda n=lb.id: clients.elb.delete_load_balancer(LoadBalancerName=n), timing))

    swept_instances = {i.id for i in plan.instances}
    for eni in plan.network_interfaces:
        if not _detached(ec2, eni.id, swept_instances, timing):
            out.append(Outcome(eni.kind, eni.id, "failed: still attached; rerun the sweep when it is detached"))
            continue
        out.append(_attempt(eni.kind, eni.id, lambda e=eni.id: ec2.delete_network_interface(NetworkInterfaceId=e), timing))

    for lt in plan.launch_templates:
        out.append(_attempt(lt.kind, lt.id, lambda t=lt.id: ec2.delete_launch_template(LaunchTemplateId=t), timing))

    for rule in plan.revocations:
        revoke = ec2.revoke_security_group_egress if rule.egress else ec2.revoke_security_group_ingress
        out.append(_attempt("rule", f"{rule.group_id} -> {rule.references}",
                            lambda r=rule, f=revoke: f(GroupId=r.group_id, IpPermissions=[r.permission]), timing))
    for sg in plan.security_groups:
        out.append(_attempt(sg.kind, sg.id, lambda g=sg.id: ec2.delete_security_group(GroupId=g), timing))
    return out


# --------------------------------------------------------------------------- output and CLI


def render_plan(plan: Plan) -> str:
    rows = [(x.kind, x.id, x.name, x.reason) for x in plan.leftovers()]
    rows += [("rule", r.group_id, f"{'egress' if r.egress else 'ingress'} rule naming {r.references}",
              "references a group being deleted") for r in plan.revocations]
    return aws_ops.render_table(("kind", "id", "name", "why it is this cluster's"), rows, max_width=80)


def render_outcomes(outcomes: list[Outcome]) -> str:
    return aws_ops.render_table(("kind", "id", "result"), [(o.kind, o.id, o.result) for o in outcomes], max_width=100)


def _cluster_still_exists(eks: Any, cluster: str) -> str | None:
    try:
        return eks.describe_cluster(name=cluster)["cluster"].get("status", "?")
    except ClientError:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stack", help="platform stack, by name or file, e.g. dev-usw2 or Pulumi.dev-usw2.yaml")
    parser.add_argument("--project-dir", default=".", type=Path, help="directory of the platform's Pulumi.yaml")
    parser.add_argument("--yes", action="store_true", help="delete what is listed (default: list only)")


def run(args: argparse.Namespace, timing: Timing = Timing()) -> int:
    from trnctl.preflight import platform_stack_argument
    try:
        stack, project_dir, note = platform_stack_argument(args.stack, args.project_dir, Path(args.project_dir) / "workloads")
        if note:  # a sweep deletes: never switch stacks on the user's behalf
            raise ConfigError([f"{args.stack}: {note.split(':')[0]}; sweep the platform stack: trnctl sweep {stack}"],
                              "stack for sweep")
        cfg = load_stack_file(project_dir, stack)
        args.stack = stack
    except ConfigError as err:
        return exitcodes.bad_input(err)
    clients = Clients.for_region(cfg.region, read_only=not args.yes)
    try:
        account = clients.sts.get_caller_identity()["Account"]
    except (ClientError, BotoCoreError) as err:
        # The credentials row and fix exactly as preflight prints them.
        from trnctl import preflight
        print(f"sweep for stack {args.stack}: cluster {cfg.cluster_name} in {cfg.region}\n")
        print(preflight.render(preflight.identity_findings(None, cfg.region, None, aws_ops.describe_error(err))))
        return exitcodes.FINDINGS
    print(f"sweep for stack {args.stack}: cluster {cfg.cluster_name}, account {account}, {cfg.region}")
    status = _cluster_still_exists(clients.eks, cfg.cluster_name)
    if status:
        print(f"note: EKS cluster {cfg.cluster_name} still exists ({status}); if Karpenter still runs it replaces "
              "terminated nodes: run `pulumi destroy` first and sweep what it leaves")
    plan = find_leftovers(clients, cfg.cluster_name)
    if plan.empty:
        print("nothing left behind for this cluster")
        return exitcodes.OK
    print(render_plan(plan))
    if not args.yes:
        print(f"\ndry run: {len(plan.leftovers())} resources listed, nothing deleted; rerun with --yes to delete them")
        return exitcodes.OK  # listing is what a dry run is for; only leftovers a deletion could not remove are findings

    outcomes = delete_leftovers(clients, plan, timing)
    print("\n" + render_outcomes(outcomes))
    remaining = find_leftovers(clients, cfg.cluster_name)
    if remaining.empty:
        print("\nswept: nothing left behind for this cluster")
        return exitcodes.OK
    print("\nstill present (rerun the sweep later, or see the errors above):\n" + render_plan(remaining))
    return exitcodes.FINDINGS



def main(argv: list[str] | None = None, timing: Timing = Timing()) -> int:
    parser = argparse.ArgumentParser(prog="trnctl sweep", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv), timing)
