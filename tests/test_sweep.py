"""trnctl.sweep: pure ownership rules first, then a real sweep against moto's server.

moto holds resources of this cluster, of other clusters (names sharing a prefix, to catch
any prefix/substring matching) and untagged ones; only this cluster's may go.
"""
from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from trnctl import sweep

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = "trn-dev-usw2"  # clusterName of Pulumi.dev-usw2.yaml
OTHERS = ("trn-dev-usw2-b", "trn-dev")  # a longer and a shorter name sharing the prefix
FAST = sweep.Timing(poll_seconds=0.2, timeout_seconds=20)


def karpenter_tags(cluster: str, pool: str = "trn1-efa") -> list[dict]:
    return [{"Key": "karpenter.sh/nodepool", "Value": pool},
            {"Key": "karpenter.k8s.aws/ec2nodeclass", "Value": pool},
            {"Key": "eks:eks-cluster-name", "Value": cluster},
            {"Key": f"kubernetes.io/cluster/{cluster}", "Value": "owned"},
            {"Key": "Name", "Value": f"{cluster}-{pool}"}]


# --------------------------------------------------------------------------- pure functions


def test_owner_tag_matches_exact_key_and_value_only():
    keys = sweep.INSTANCE_KEYS
    assert sweep.owner_tag({"eks:eks-cluster-name": CLUSTER}, CLUSTER, keys) == f"eks:eks-cluster-name={CLUSTER}"
    assert sweep.owner_tag({f"kubernetes.io/cluster/{CLUSTER}": "owned"}, CLUSTER, keys) is not None
    # shared (the platform's subnets), other clusters, prefixes and substrings never match
    assert sweep.owner_tag({f"kubernetes.io/cluster/{CLUSTER}": "shared"}, CLUSTER, keys) is None
    for other in OTHERS:
        assert sweep.owner_tag({"eks:eks-cluster-name": other, f"kubernetes.io/cluster/{other}": "owned"},
                               CLUSTER, keys) is None
    assert sweep.owner_tag({"eks:eks-cluster-name": CLUSTER.upper()}, CLUSTER, keys) is None


def test_select_instances_needs_karpenter_tag_and_skips_terminated():
    base = {"InstanceType": "trn1.32xlarge", "VpcId": "vpc-1"}
    instances = [
        {**base, "InstanceId": "i-ours", "State": {"Name": "running"}, "Tags": karpenter_tags(CLUSTER)},
        {**base, "InstanceId": "i-gone", "State": {"Name": "terminated"}, "Tags": karpenter_tags(CLUSTER)},
        # an EKS managed node group instance: owned tag but no karpenter.sh/nodepool
        {**base, "InstanceId": "i-mng", "State": {"Name": "running"},
         "Tags": [{"Key": f"kubernetes.io/cluster/{CLUSTER}", "Value": "owned"}]},
        {**base, "InstanceId": "i-other", "State": {"Name": "running"}, "Tags": karpenter_tags(OTHERS[0])},
    ]
    assert [i.id for i in sweep.select_instances(instances, CLUSTER)] == ["i-ours"]


def test_select_network_interfaces():
    enis = [
        {"NetworkInterfaceId": "eni-cni", "Status": "available",
         "TagSet": [{"Key": "cluster.k8s.amazonaws.com/name", "Value": CLUSTER}]},
        {"NetworkInterfaceId": "eni-other", "Status": "available",
         "TagSet": [{"Key": "cluster.k8s.amazonaws.com/name", "Value": OTHERS[1]}]},
        {"NetworkInterfaceId": "eni-secondary", "Status": "in-use",
         "Attachment": {"InstanceId": "i-ours", "DeviceIndex": 1, "DeleteOnTermination": False}},
        {"NetworkInterfaceId": "eni-primary", "Status": "in-use",
         "Attachment": {"InstanceId": "i-ours", "DeviceIndex": 0, "DeleteOnTermination": True}},
        {"NetworkInterfaceId": "eni-cni-on-kept-node", "Status": "in-use",
         "TagSet": [{"Key": "cluster.k8s.amazonaws.com/name", "Value": CLUSTER}],
         "Attachment": {"InstanceId": "i-node-group", "DeviceIndex": 1, "DeleteOnTermination": False}},
        {"NetworkInterfaceId": "eni-elb", "Status": "in-use", "RequesterManaged": True,
         "TagSet": [{"Key": "cluster.k8s.amazonaws.com/name", "Value": CLUSTER}]},
    ]
    found = sweep.select_network_interfaces(enis, CLUSTER, {"i-ours"})
    assert [(e.id, e.reason) for e in found] == [
        ("eni-cni", f"cluster.k8s.amazonaws.com/name={CLUSTER}"), ("eni-secondary", "attached to i-ours")]


def test_select_security_groups_leaves_eks_groups_and_default():
    owned = [{"Key": f"kubernetes.io/cluster/{CLUSTER}", "Value": "owned"}]
    groups = [
        {"GroupId": "sg-lb", "GroupName": "k8s-elb-a1", "Tags": owned},
        {"GroupId": "sg-eks", "GroupName": f"eks-cluster-sg-{CLUSTER}",
         "Tags": owned + [{"Key": "aws:eks:cluster-name", "Value": CLUSTER}]},
        {"GroupId": "sg-default", "GroupName": "default", "Tags": owned},
        {"GroupId": "sg-alb", "GroupName": "k8s-traffic", "Tags": [{"Key": "elbv2.k8s.aws/cluster", "Value": CLUSTER}]},
        {"GroupId": "sg-alb-other", "GroupName": "k8s-traffic",
         "Tags": [{"Key": "elbv2.k8s.aws/cluster", "Value": OTHERS[0]}]},
    ]
    assert [g.id for g in sweep.select_security_groups(groups, CLUSTER)] == ["sg-lb", "sg-alb"]


def test_rules_referencing_reduces_each_rule_to_the_referencing_pair():
    node_sg = {"GroupId": "sg-node", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
         "UserIdGroupPairs": [{"GroupId": "sg-lb", "UserId": "1"}, {"GroupId": "sg-keep", "UserId": "1"}]},
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}], "IpPermissionsEgress": []}
    lb_sg = {"GroupId": "sg-lb", "IpPermissions": [
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-lb"}]}],  # about itself: goes with it
        "IpPermissionsEgress": [{"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535,
                                 "UserIdGroupPairs": [{"GroupId": "sg-other-doomed"}]}]}
    revocations = sweep.rules_referencing([node_sg, lb_sg], {"sg-lb", "sg-other-doomed"})
    assert revocations == [
        sweep.RuleRevocation("sg-node", False, {"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80,
                                                "UserIdGroupPairs": [{"GroupId": "sg-lb"}]}, "sg-lb"),
        sweep.RuleRevocation("sg-lb", True, {"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535,
                                             "UserIdGroupPairs": [{"GroupId": "sg-other-doomed"}]}, "sg-other-doomed"),
    ]


# --------------------------------------------------------------------------- against moto


def _tags(key_values: dict[str, str]) -> list[dict]:
    return [{"Key": k, "Value": v} for k, v in key_values.items()]


@pytest.fixture
def world(aws_env):
    """This cluster's, other clusters' and untagged resources in one VPC. Returns the ids."""
    ec2 = boto3.client("ec2", region_name="us-west-2")
    elbv2 = boto3.client("elbv2", region_name="us-west-2")
    elb = boto3.client("elb", region_name="us-west-2")
    vpc = ec2.create_vpc(CidrBlock="10.40.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.40.{i}.0/24", AvailabilityZone=f"us-west-2{z}")["Subnet"]["SubnetId"]
               for i, z in enumerate("ab")]
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ids: dict[str, dict[str, str]] = {"ours": {}, "kept": {}}

    def instance(tags: list[dict]) -> str:
        return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="m6i.large", SubnetId=subnets[0],
                                 TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]

    def sg(name: str, tags: dict[str, str]) -> str:
        gid = ec2.create_security_group(GroupName=name, Description=name, VpcId=vpc)["GroupId"]
        if tags:
            ec2.create_tags(Resources=[gid], Tags=_tags(tags))
        return gid

    def eni(tags: dict[str, str]) -> str:
        spec = [{"ResourceType": "network-interface", "Tags": _tags(tags)}] if tags else []
        return ec2.create_network_interface(SubnetId=subnets[1], TagSpecifications=spec)["NetworkInterface"]["NetworkInterfaceId"]

    def launch_template(name: str, tags: dict[str, str]) -> str:
        spec = [{"ResourceType": "launch-template", "Tags": _tags(tags)}] if tags else []
        return ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image},
                                          TagSpecifications=spec)["LaunchTemplate"]["LaunchTemplateId"]

    # instances: Karpenter's for us and for the others, an untagged one, a managed node group's
    ids["ours"]["instance"] = instance(karpenter_tags(CLUSTER))
    for other in OTHERS:
        ids["kept"][f"instance {other}"] = instance(karpenter_tags(other))
    ids["kept"]["instance untagged"] = instance([{"Key": "Name", "Value": "bastion"}])
    ids["kept"]["instance node group"] = instance(_tags({f"kubernetes.io/cluster/{CLUSTER}": "owned",
                                                         "eks:nodegroup-name": "system"}))
    # a secondary ENI on our instance that does not go with it (the VPC CNI attaches these)
    ids["ours"]["eni secondary"] = eni({})
    ec2.attach_network_interface(NetworkInterfaceId=ids["ours"]["eni secondary"], InstanceId=ids["ours"]["instance"],
                                 DeviceIndex=1)
    ids["ours"]["eni cni"] = eni({"cluster.k8s.amazonaws.com/name": CLUSTER})
    ids["kept"]["eni other"] = eni({"cluster.k8s.amazonaws.com/name": OTHERS[0]})
    ids["kept"]["eni untagged"] = eni({})
    # a CNI interface of this cluster still in use by the node group's instance: in use, kept
    ids["kept"]["eni on node group"] = eni({"cluster.k8s.amazonaws.com/name": CLUSTER})
    ec2.attach_network_interface(NetworkInterfaceId=ids["kept"]["eni on node group"],
                                 InstanceId=ids["kept"]["instance node group"], DeviceIndex=1)

    # security groups: the load balancer controller's (ours, other's), a shared-tagged and an
    # untagged node group whose rule references ours
    ids["ours"]["sg lb"] = sg("k8s-traffic-ours", {"elbv2.k8s.aws/cluster": CLUSTER})
    ids["ours"]["sg classic"] = sg("k8s-elb-ours", {f"kubernetes.io/cluster/{CLUSTER}": "owned"})
    ids["kept"]["sg other"] = sg("k8s-traffic-other", {"elbv2.k8s.aws/cluster": OTHERS[0]})
    ids["kept"]["sg shared"] = sg("shared", {f"kubernetes.io/cluster/{CLUSTER}": "shared"})
    ids["kept"]["sg node"] = sg("nodes", {})
    ec2.authorize_security_group_ingress(GroupId=ids["kept"]["sg node"], IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": ids["ours"]["sg lb"]}]},
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}])

    # load balancers and target groups
    for who, cluster, group in (("ours", CLUSTER, ids["ours"]["sg lb"]), ("kept", OTHERS[0], ids["kept"]["sg other"])):
        lb = elbv2.create_load_balancer(Name=f"k8s-{who}", Subnets=subnets, SecurityGroups=[group], Type="application",
                                        Tags=_tags({"elbv2.k8s.aws/cluster": cluster}))["LoadBalancers"][0]
        ids[who]["lb"] = lb["LoadBalancerArn"]
        ids[who]["tg"] = elbv2.create_target_group(Name=f"k8s-{who}-tg", Protocol="HTTP", Port=80, VpcId=vpc,
                                                   Tags=_tags({"elbv2.k8s.aws/cluster": cluster}))["TargetGroups"][0]["TargetGroupArn"]
    ids["kept"]["lb untagged"] = elbv2.create_load_balancer(Name="untagged", Subnets=subnets)["LoadBalancers"][0]["LoadBalancerArn"]
    listeners = [{"Protocol": "tcp", "LoadBalancerPort": 80, "InstancePort": 30080}]
    elb.create_load_balancer(LoadBalancerName="a1ours", Listeners=listeners, Subnets=[subnets[0]],
                             SecurityGroups=[ids["ours"]["sg classic"]],
                             Tags=_tags({f"kubernetes.io/cluster/{CLUSTER}": "owned"}))
    ids["ours"]["classic"] = "a1ours"
    elb.create_load_balancer(LoadBalancerName="a1other", Listeners=listeners, Subnets=[subnets[0]],
                             Tags=_tags({f"kubernetes.io/cluster/{OTHERS[1]}": "owned"}))
    ids["kept"]["classic"] = "a1other"

    # Karpenter's launch templates
    ids["ours"]["lt"] = launch_template("karpenter.k8s.aws/ours", {"karpenter.k8s.aws/cluster": CLUSTER})
    ids["kept"]["lt other"] = launch_template("karpenter.k8s.aws/other", {"karpenter.k8s.aws/cluster": OTHERS[0]})
    ids["kept"]["lt untagged"] = launch_template("hand-made", {})
    return ids


def _existing(ids: dict[str, str]) -> dict[str, str]:
    """The subset of `ids` that still exists (terminated instances count as gone)."""
    ec2 = boto3.client("ec2", region_name="us-west-2")
    elbv2 = boto3.client("elbv2", region_name="us-west-2")
    elb = boto3.client("elb", region_name="us-west-2")
    live = {i["InstanceId"] for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]
            if i["State"]["Name"] != "terminated"}
    live |= {e["NetworkInterfaceId"] for e in ec2.describe_network_interfaces()["NetworkInterfaces"]}
    live |= {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    live |= {lt["LaunchTemplateId"] for lt in ec2.describe_launch_templates()["LaunchTemplates"]}
    live |= {lb["LoadBalancerArn"] for lb in elbv2.describe_load_balancers()["LoadBalancers"]}
    live |= {tg["TargetGroupArn"] for tg in elbv2.describe_target_groups()["TargetGroups"]}
    live |= {lb["LoadBalancerName"] for lb in elb.describe_load_balancers()["LoadBalancerDescriptions"]}
    return {name: rid for name, rid in ids.items() if rid in live}


def test_dry_run_lists_only_this_cluster_and_changes_nothing(world, capsys):
    calls: list[str] = []
    plan = sweep.find_leftovers(sweep.Clients.for_region("us-west-2", read_only=True, log=calls), CLUSTER)
    assert {x.id for x in plan.leftovers()} == set(world["ours"].values())
    assert [(r.group_id, r.references) for r in plan.revocations] == [(world["kept"]["sg node"], world["ours"]["sg lb"])]
    assert calls and all(c.startswith(("Describe", "Get", "List")) for c in calls)

    assert sweep.main(["dev-usw2", "--project-dir", str(ROOT)], timing=FAST) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and world["ours"]["instance"] in out and world["kept"]["instance untagged"] not in out
    assert _existing(world["ours"]) == world["ours"]
    assert _existing(world["kept"]) == world["kept"]


def test_read_only_clients_refuse_changes(aws_env):
    clients = sweep.Clients.for_region("us-west-2", read_only=True)
    with pytest.raises(Exception, match="TerminateInstances is not read-only"):
        clients.ec2.terminate_instances(InstanceIds=["i-0123456789abcdef0"])


def test_yes_deletes_only_this_cluster_then_second_run_does_nothing(world, capsys):
    assert sweep.main(["dev-usw2", "--project-dir", str(ROOT), "--yes"], timing=FAST) == 0
    out = capsys.readouterr().out
    assert "swept: nothing left behind" in out and "failed" not in out
    assert _existing(world["ours"]) == {}
    assert _existing(world["kept"]) == world["kept"]

    # the untagged node group keeps its other rule; only the one naming the deleted group went
    ec2 = boto3.client("ec2", region_name="us-west-2")
    node = ec2.describe_security_groups(GroupIds=[world["kept"]["sg node"]])["SecurityGroups"][0]
    assert [(p["FromPort"], p.get("UserIdGroupPairs")) for p in node["IpPermissions"]] == [(22, [])]

    calls: list[str] = []
    clients = sweep.Clients.for_region("us-west-2", read_only=False, log=calls)
    plan = sweep.find_leftovers(clients, CLUSTER)
    assert plan.empty
    assert sweep.delete_leftovers(clients, plan, FAST) == []
    assert all(c.startswith(("Describe", "Get", "List")) for c in calls)
    assert sweep.main(["dev-usw2", "--project-dir", str(ROOT), "--yes"], timing=FAST) == 0
    assert "nothing left behind for this cluster" in capsys.readouterr().out


def test_bad_stack_name_is_a_clear_error(capsys):
    assert sweep.main(["no-such-stack", "--project-dir", str(ROOT)]) == 2
    assert "Pulumi.no-such-stack.yaml does not exist" in capsys.readouterr().err
