"""The pure spec builders of the platform, tested directly (before any Pulumi program runs):
NodePool / EC2NodeClass specs, Helm values, IAM documents, the FSx PV/PVC pair, the EFA
security-group rules. Specs that become Kubernetes objects are also validated against the
bundled schemas (CRD OpenAPI + CEL), so a broken builder fails here with the field named.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from infra import addons, catalog, cluster, iam, karpenter, nodepools, storage, versions
from infra.config import FsxConfig, NodePoolConfig, load_stack_file
from trnctl.validation import validate_objects

ROOT = Path(__file__).resolve().parents[1]
KUBE = "1.34"


def pool(**overrides) -> NodePoolConfig:
    base = dict(name="trn1-efa", family="trn1", instance_types=("trn1.32xlarge",), max_nodes=4, efa=True)
    return NodePoolConfig(**(base | overrides))


CPU = pool(name="cpu", family="cpu", instance_types=("m6i.2xlarge", "m6i.4xlarge"), max_nodes=10, efa=False,
           capacity_types=("on-demand", "spot"))
INF2_MIXED = pool(name="inf2", family="inf2", instance_types=("inf2.xlarge", "inf2.8xlarge"), efa=False)
RESERVED = pool(capacity_types=("reserved", "on-demand"), capacity_reservation_ids=("cr-0123456789abcdef0",))


def as_object(kind: str, name: str, spec: dict) -> dict:
    api = {"NodePool": "karpenter.sh/v1", "EC2NodeClass": "karpenter.k8s.aws/v1"}[kind]
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name}, "spec": spec}


def nodeclass(p: NodePoolConfig) -> dict:
    return nodepools.ec2_nodeclass_spec(p, cluster_name="trn-test", node_role_name="KarpenterNode-trn-test",
                                        cluster_security_group_id="sg-0123456789abcdef0", tags={"env": "test"})


def tolerates(tolerations: list[dict], taint: dict) -> bool:
    """Kubernetes' matching: an empty key with Exists matches every key, an empty effect every effect."""
    def matches(t: dict) -> bool:
        exists = t.get("operator") == "Exists"
        key_ok = t.get("key") == taint["key"] or (exists and not t.get("key"))
        value_ok = exists or t.get("value") == taint["value"]
        return key_ok and value_ok and t.get("effect") in (None, "", taint["effect"])
    return any(matches(t) for t in tolerations)


# --------------------------------------------------------------------------- NodePool / EC2NodeClass


def assert_valid_karpenter_objects(p: NodePoolConfig, zone_ids: list[str]) -> None:
    """The pool's NodePool and EC2NodeClass pass the CRD schemas with their CEL rules."""
    objs = [("spec", as_object("NodePool", p.name, nodepools.nodepool_spec(p, zone_ids=zone_ids))),
            ("spec", as_object("EC2NodeClass", p.name, nodeclass(p)))]
    report = validate_objects(objs, KUBE)
    assert report.ok, "\n".join(map(str, report.issues))
    assert report.checked == {"karpenter.k8s.aws/v1/EC2NodeClass": 1, "karpenter.sh/v1/NodePool": 1}
    assert report.cel_evaluated > 10  # the CRDs' x-kubernetes-validations really ran


@pytest.mark.parametrize("p", [pool(), CPU, INF2_MIXED, RESERVED], ids=lambda p: p.name + "-" + p.capacity_types[0])
def test_specs_are_valid_karpenter_objects_with_cel(p):
    assert_valid_karpenter_objects(p, ["usw2-az1", "usw2-az2"])


def test_validation_rejects_a_spec_the_builder_must_never_emit():
    spec = nodepools.nodepool_spec(pool(), zone_ids=["usw2-az1"])
    spec["template"]["spec"]["requirements"][0]["operator"] = "Within"
    report = validate_objects([("spec", as_object("NodePool", "bad", spec))], KUBE)
    assert not report.ok and "operator" in str(report.issues[0])


def test_accelerator_pool_is_tainted_labelled_limited_and_never_disrupts_busy_nodes():
    p = pool()
    spec = nodepools.nodepool_spec(p, zone_ids=["usw2-az4"])
    template = spec["template"]
    assert template["spec"]["taints"] == [nodepools.NEURON_TAINT]
    assert template["metadata"]["labels"] == {nodepools.POOL_LABEL: "trn1-efa", nodepools.FAMILY_LABEL: "trn1",
                                              nodepools.EFA_LABEL: "true"}
    # 4 x trn1.32xlarge: 128 vCPU, 512 GiB and 16 Neuron devices each.
    assert spec["limits"] == {"cpu": "512", "memory": "2048Gi", "aws.amazon.com/neuron": "64"}
    assert "replicas" not in spec  # dynamic pool: zero nodes until a pod asks
    assert template["spec"]["expireAfter"] == "Never"
    disruption = spec["disruption"]
    assert disruption["consolidationPolicy"] == "WhenEmpty"
    assert {"nodes": "0", "reasons": ["Drifted", "Underutilized"]} in disruption["budgets"]
    reqs = {r["key"]: r["values"] for r in template["spec"]["requirements"]}
    assert reqs["node.kubernetes.io/instance-type"] == ["trn1.32xlarge"]
    assert reqs["topology.k8s.aws/zone-id"] == ["usw2-az4"]
    assert reqs["karpenter.sh/capacity-type"] == ["on-demand"]


def test_cpu_pool_has_no_taint_and_consolidates_underutilized_nodes():
    spec = nodepools.nodepool_spec(CPU, zone_ids=["usw2-az1"])
    assert "taints" not in spec["template"]["spec"]
    assert nodepools.EFA_LABEL not in spec["template"]["metadata"]["labels"]
    assert spec["disruption"]["consolidationPolicy"] == "WhenEmptyOrUnderutilized"
    assert spec["limits"] == {"cpu": "160", "memory": "640Gi"}  # 10 x m6i.4xlarge, the largest type


def test_reserved_capacity_is_selected_and_preferred():
    spec = nodepools.nodepool_spec(RESERVED, zone_ids=["usw2-az4"])
    assert spec["weight"] > nodepools.nodepool_spec(pool(), zone_ids=["usw2-az4"])["weight"]
    assert nodeclass(RESERVED)["capacityReservationSelectorTerms"] == [{"id": "cr-0123456789abcdef0"}]
    assert "capacityReservationSelectorTerms" not in nodeclass(pool())


def test_nodeclass_imdsv2_encrypted_root_pinned_ami_and_raid0_only_with_instance_store():
    spec = nodeclass(pool(root_volume_gib=500))
    assert spec["metadataOptions"]["httpTokens"] == "required"
    assert spec["metadataOptions"]["httpPutResponseHopLimit"] == 1  # pods cannot reach the node's IMDS
    root = spec["blockDeviceMappings"][0]["ebs"]
    assert root["encrypted"] is True and root["volumeSize"] == "500Gi"
    assert spec["amiSelectorTerms"] == [{"alias": versions.AL2023_AMI_ALIAS}]
    assert "@latest" not in versions.AL2023_AMI_ALIAS
    assert spec["instanceStorePolicy"] == "RAID0"  # trn1.32xlarge: 4 x 1.9 TB NVMe
    # inf2.xlarge has no instance store: a RAID0 policy would leave kubelet without disk there.
    assert catalog.instance_type("inf2.xlarge").instance_store_gib == 0
    assert "instanceStorePolicy" not in nodeclass(INF2_MIXED)
    assert nodeclass(INF2_MIXED)["blockDeviceMappings"][0]["ebs"]["volumeSize"] == \
        f"{nodepools.DEFAULT_ROOT_GIB['inf2']}Gi"


@pytest.mark.parametrize("stack", ["dev-usw2", "dev-use2"])
def test_scheduling_facts_select_and_tolerate_exactly_what_the_nodepool_sets(stack):
    cfg = load_stack_file(ROOT, stack)
    for p in cfg.node_pools:
        facts = nodepools.pool_scheduling(p, daemonset_pods=nodepools.rendered_daemonset_pods(cfg))
        spec = nodepools.nodepool_spec(p, zone_ids=["z"])
        labels = spec["template"]["metadata"]["labels"]
        assert facts["nodeSelector"].items() <= labels.items(), p.name
        for taint in spec["template"]["spec"].get("taints", []):
            assert tolerates(facts["tolerations"], taint), (p.name, taint)
        # Only pools that taint get tolerations: a CPU pod must not drift onto Neuron nodes.
        assert bool(facts["tolerations"]) == p.is_accelerator
        big = p.largest_instance
        assert facts["neuronDevicesPerNode"] == big.neuron_devices
        assert facts["efaPerNode"] == (big.efa_interfaces if p.efa else 0)


# --------------------------------------------------------------------------- Helm values


def test_efa_plugin_runs_exactly_on_efa_pools_and_tolerates_their_taint():
    values = addons.efa_values(region="us-west-2", instance_types=addons.efa_instance_types())
    efa_labels = nodepools.node_labels(pool())
    assert values["nodeSelector"].items() <= efa_labels.items()
    assert not values["nodeSelector"].items() <= nodepools.node_labels(pool(name="trn1-single", efa=False,
                                                                            instance_types=("trn1.2xlarge",))).items()
    assert tolerates(values["tolerations"], nodepools.NEURON_TAINT)


def test_operators_run_on_system_nodes_and_neuron_scheduler_is_not_on_control_plane():
    neuron = addons.neuron_values(kubernetes_version=KUBE, instance_types=addons.neuron_instance_types())
    for part in (neuron["scheduler"], neuron["scheduler"]["customScheduler"], addons.kuberay_values(),
                 karpenter.controller_values(cluster_name="c", region="us-west-2", queue_name="q",
                                             service_account_annotations={})):
        assert part["nodeSelector"] == cluster.SYSTEM_POOL_LABEL
    # The chart's problem detector reports; its ASG-based recovery stays off: Karpenter's node repair acts.
    assert neuron["npd"] == {"enabled": True, "namespaceOverride": "kube-system", "nodeRecovery": {"enabled": False}}
    # ... and exactly one component replaces a broken node: Karpenter's repair, not the chart's recovery.
    repair = karpenter.controller_values(cluster_name="c", region="us-west-2", queue_name="q",
                                         service_account_annotations={})["settings"]["featureGates"]["nodeRepair"]
    assert [repair, neuron["npd"]["nodeRecovery"]["enabled"]].count(True) == 1
    assert addons.kuberay_values()["batchScheduler"] == {"name": "volcano"}
    assert addons.volcano_values()["basic"]["image_tag_version"] == f"v{versions.VOLCANO_VERSION}"


def test_fsx_csi_node_driver_tolerates_every_taint_so_neuron_pods_can_mount():
    values = storage.fsx_csi_values()
    assert values["node"]["tolerations"] == [{"operator": "Exists"}]
    assert tolerates(values["node"]["tolerations"], nodepools.NEURON_TAINT)


def test_karpenter_values_name_this_cluster_and_its_queue():
    values = karpenter.controller_values(cluster_name="trn-test", region="us-east-2", queue_name="trn-test-interruptions",
                                         service_account_annotations={"a": "b"})
    assert values["settings"] == {"clusterName": "trn-test", "interruptionQueue": "trn-test-interruptions",
                                  "featureGates": {"nodeRepair": True}}
    assert values["replicas"] >= 2 and values["podDisruptionBudget"]["maxUnavailable"] == 1


def test_default_queue_capability_covers_the_limits_and_omits_neuron_when_none():
    assert addons.default_queue_spec(640, 2560, 64)["capability"] == {
        "cpu": "640", "memory": "2560Gi", "aws.amazon.com/neuron": "64"}
    assert "aws.amazon.com/neuron" not in addons.default_queue_spec(8, 32, 0)["capability"]
    assert addons.default_queue_spec(8, 32, 0)["reclaimable"] is False


# --------------------------------------------------------------------------- IAM documents

WRITE_PREFIXES = ("Create", "Delete", "Terminate", "Run", "Put", "Add", "Remove", "Tag", "Pass", "Send", "Update")


def test_karpenter_policy_has_no_star_actions_and_no_unconditioned_writes_on_star():
    doc = iam.karpenter_controller_policy(
        cluster_name="trn-test", region="us-west-2", account_id="111122223333", partition="aws",
        node_role_arn="arn:aws:iam::111122223333:role/KarpenterNode-trn-test",
        interruption_queue_arn="arn:aws:sqs:us-west-2:111122223333:trn-test")
    sids = [s["Sid"] for s in doc["Statement"]]
    assert len(sids) == len(set(sids))
    for s in doc["Statement"]:
        assert all("*" not in a for a in s["Action"]), s["Sid"]
        writes = [a for a in s["Action"] if a.split(":")[1].startswith(WRITE_PREFIXES)]
        if writes:
            assert s["Resource"] != ["*"], s["Sid"]
            assert all(":us-west-2:" in r or ":iam::" in r or r.startswith("arn:aws:ec2:us-west-2::")
                       for r in s["Resource"]), s["Sid"]
    terminate = next(s for s in doc["Statement"] if "ec2:TerminateInstances" in s["Action"])
    assert terminate["Condition"]["StringEquals"] == {"aws:ResourceTag/kubernetes.io/cluster/trn-test": "owned"}
    pass_role = next(s for s in doc["Statement"] if s["Action"] == ["iam:PassRole"])
    assert pass_role["Resource"] == ["arn:aws:iam::111122223333:role/KarpenterNode-trn-test"]


def test_service_account_trust_is_pinned_to_one_service_account():
    irsa = iam.service_account_trust_policy(
        mode="irsa", namespace="ml", service_account="trainer",
        oidc_provider_arn="arn:aws:iam::111122223333:oidc-provider/oidc.eks.us-west-2.amazonaws.com/id/ABC",
        oidc_issuer="oidc.eks.us-west-2.amazonaws.com/id/ABC")
    cond = irsa["Statement"][0]["Condition"]["StringEquals"]
    assert cond["oidc.eks.us-west-2.amazonaws.com/id/ABC:sub"] == "system:serviceaccount:ml:trainer"
    assert cond["oidc.eks.us-west-2.amazonaws.com/id/ABC:aud"] == "sts.amazonaws.com"
    pod_identity = iam.service_account_trust_policy(mode="pod-identity", namespace="ml", service_account="trainer")
    assert pod_identity["Statement"][0]["Principal"] == {"Service": "pods.eks.amazonaws.com"}
    with pytest.raises(ValueError, match="allowed values: pod-identity, irsa"):
        iam.service_account_trust_policy(mode="kiam", namespace="ml", service_account="trainer")
    with pytest.raises(ValueError, match="OIDC provider"):
        iam.service_account_trust_policy(mode="irsa", namespace="ml", service_account="trainer")


def test_s3_prefix_policy_reads_or_writes_only_its_prefixes():
    bucket = "arn:aws:s3:::artifacts"
    read = iam.s3_prefix_access_policy(bucket, ["models/", "runs"], write=False)
    objects = read["Statement"][1]
    assert objects["Action"] == ["s3:GetObject"]
    assert objects["Resource"] == [f"{bucket}/models/*", f"{bucket}/runs/*"]
    assert read["Statement"][0]["Condition"] == {"StringLike": {"s3:prefix": ["models/*", "runs/*"]}}
    write = iam.s3_prefix_access_policy(bucket, ["runs"], write=True)
    assert "s3:PutObject" in write["Statement"][1]["Action"] and "s3:DeleteObject" not in write["Statement"][1]["Action"]


def test_tls_only_policies_deny_plain_http():
    for doc, resource in ((iam.tls_only_bucket_policy("arn:aws:s3:::b"), ["arn:aws:s3:::b", "arn:aws:s3:::b/*"]),
                          (karpenter.interruption_queue_policy("arn:aws:sqs:us-west-2:1:q"), "arn:aws:sqs:us-west-2:1:q")):
        deny = next(s for s in doc["Statement"] if s["Effect"] == "Deny")
        assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        assert deny["Resource"] == resource and deny["Principal"] == "*"


# --------------------------------------------------------------------------- storage, network rules


def test_static_pv_and_pvc_bind_to_each_other_and_validate():
    cfg = FsxConfig()
    pv, pvc = storage.static_volume(cfg, file_system_id="fs-0123456789abcdef0",
                                    dns_name="fs-0123.fsx.us-west-2.amazonaws.com", mount_name="abcdefgh")
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["claimRef"] == {"namespace": pvc["metadata"]["namespace"], "name": pvc["metadata"]["name"]}
    assert pv["spec"]["capacity"] == pvc["spec"]["resources"]["requests"] == {"storage": f"{cfg.storage_capacity_gib}Gi"}
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain"  # a PVC delete never wipes the shared data
    assert pv["spec"]["csi"]["driver"] == storage.CSI_DRIVER
    report = validate_objects([("pv", pv), ("pvc", pvc)], KUBE)
    assert report.ok, "\n".join(map(str, report.issues))
    assert report.checked == {"v1/PersistentVolume": 1, "v1/PersistentVolumeClaim": 1}


def test_node_security_group_allows_all_traffic_within_itself_both_ways_for_efa():
    rules = cluster.node_security_group_rules("10.40.0.0/16")
    for direction in ("ingress", "egress"):
        assert any(r["type"] == direction and r.get("self") is True and r["protocol"] == "-1"
                   and r["from_port"] == 0 and r["to_port"] == 0 for r in rules), direction
    # Nothing from the internet reaches a node directly.
    assert not any(r["type"] == "ingress" and r.get("cidr_blocks") for r in rules)


# --------------------------------------------------------------------------- upstream parity (issue 16)

UPSTREAM_POLICY = ROOT / "tests/fixtures/karpenter-v1.14-controller-policy.json"
# What we keep different from upstream's v1.14 policy, and why (docs/operations.md says the same):
# zonal shift stays off (settings.enableZonalShift false), so no arc-zonal-shift read; nodes are only
# launched in the `aws` partition, so PassRole names ec2.amazonaws.com only.
KEPT_DIFFERENT = {"AllowZonalShiftStatusReadOnly": None,
                  "AllowPassingInstanceRole": {"iam:PassedToService": ["ec2.amazonaws.com"]}}


def _normalized(statement: dict) -> dict:
    def as_list(v):
        return sorted(v) if isinstance(v, list) else [v]
    condition = {op: {k: as_list(v) for k, v in kv.items()} for op, kv in statement.get("Condition", {}).items()}
    return {"Effect": statement["Effect"], "Action": as_list(statement["Action"]),
            "Resource": as_list(statement["Resource"]), "Condition": condition}


def our_karpenter_policy() -> dict:
    return iam.karpenter_controller_policy(
        cluster_name="trn-test", region="us-west-2", account_id="111122223333", partition="aws",
        node_role_arn="arn:aws:iam::111122223333:role/KarpenterNode-trn-test",
        interruption_queue_arn="arn:aws:sqs:us-west-2:111122223333:trn-test-karpenter")


def test_karpenter_policy_matches_upstream_v1_14_statement_by_statement():
    import json
    upstream = {s["Sid"]: _normalized(s) for s in json.loads(UPSTREAM_POLICY.read_text())["Statement"]}
    ours = {s["Sid"]: _normalized(s) for s in our_karpenter_policy()["Statement"]}
    assert set(ours) == set(upstream) - {sid for sid, v in KEPT_DIFFERENT.items() if v is None}
    for sid, statement in ours.items():
        expected = upstream[sid]
        if KEPT_DIFFERENT.get(sid):
            expected["Condition"]["StringEquals"].update(KEPT_DIFFERENT[sid])
        assert statement == expected, sid
    reads = ours["AllowRegionalReadActions"]
    assert "ec2:DescribeInstanceStatus" in reads["Action"]
    assert reads["Condition"] == {"StringEquals": {"aws:RequestedRegion": ["us-west-2"]}}


def test_karpenter_controller_gets_its_region_without_imds_and_every_interruption_rule():
    values = karpenter.controller_values(cluster_name="c", region="us-east-2", queue_name="q",
                                         service_account_annotations={})
    assert {"name": "AWS_REGION", "value": "us-east-2"} in values["controller"]["env"]
    assert "EC2 Capacity Reservation Instance Interruption Warning" in [
        p["detail-type"][0] for p in karpenter.INTERRUPTION_EVENTS.values()]


@pytest.mark.parametrize("minor", versions.SUPPORTED_KUBERNETES_VERSIONS)
def test_neuron_second_scheduler_runs_the_clusters_own_kube_scheduler_minor(minor):
    image = addons.neuron_values(kubernetes_version=minor, instance_types=[])["scheduler"]["customScheduler"]["image"]
    assert image["repository"] == "public.ecr.aws/eks-distro/kubernetes/kube-scheduler"
    assert image["tag"].startswith(f"v{minor}.") and f"-eks-{minor.replace('.', '-')}-" in image["tag"]
    with pytest.raises(ValueError, match="no kube-scheduler image pinned for Kubernetes '1.31'"):
        addons.neuron_values(kubernetes_version="1.31", instance_types=[])


def test_neuron_device_plugin_affinity_covers_every_trainium_and_inferentia_generation():
    instances = addons.neuron_values(kubernetes_version=KUBE, instance_types=addons.neuron_instance_types())[
        "neuronInstances"]
    for family in ("trn1", "trn1n", "inf2"):
        assert set(catalog.instance_types_of(family)) <= set(instances), family
    assert {"trn2.48xlarge", "trn2u.48xlarge", "trn3.48xlarge"} <= set(instances)
    assert all(t.split(".")[0].startswith(("trn", "inf")) for t in instances)


def test_efa_plugin_image_is_regional_current_and_its_affinity_lists_our_efa_types():
    for region in catalog.known_regions():
        values = addons.efa_values(region=region, instance_types=addons.efa_instance_types())
        assert values["image"]["repository"] == f"{versions.eks_image_registry(region)}/eks/aws-efa-k8s-device-plugin"
        assert values["image"]["tag"] == versions.EFA_PLUGIN_IMAGE_TAG == "v0.5.20"
        listed = set(values["supportedInstanceLabels"]["values"])
        efa_in_catalog = {t for f in ("trn1", "trn1n", "inf2") for t in catalog.instance_types_of(f)
                          if catalog.instance_type(t).efa_interfaces}
        assert efa_in_catalog <= listed and {"trn1.32xlarge", "trn1n.32xlarge"} <= listed
        assert {"trn2.48xlarge", "trn2u.48xlarge"} <= listed
        assert "trn1.2xlarge" not in listed  # no EFA on it
    assert versions.EFA_CHART_VERSION == "v0.5.30"
    trn3 = addons.efa_values(region="us-east-2", instance_types=["trn2.48xlarge", "trn3.48xlarge"])
    assert trn3["supportedInstanceLabels"] == {"keys": ["node.kubernetes.io/instance-type"],
                                               "values": ["trn2.48xlarge", "trn3.48xlarge"]}
    assert versions.eks_image_registry("ap-southeast-4") == "491585149902.dkr.ecr.ap-southeast-4.amazonaws.com"
    with pytest.raises(ValueError, match="no EKS image registry known for region 'xx-east-9'"):
        versions.eks_image_registry("xx-east-9")


def test_mpi_operator_patch_places_it_on_the_system_nodes_like_the_other_operators():
    import yaml
    kustomization = yaml.safe_load((ROOT / "infra/manifests/mpi-operator/kustomization.yaml").read_text())
    [patch] = [p for p in kustomization["patches"] if p["target"].get("kind") == "Deployment"]
    assert patch["target"] == {"group": "apps", "version": "v1", "kind": "Deployment", "name": "mpi-operator"}
    pod = yaml.safe_load(patch["patch"])["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == addons.ON_SYSTEM_NODES["nodeSelector"] == cluster.SYSTEM_POOL_LABEL
    assert pod["tolerations"] == addons.ON_SYSTEM_NODES["tolerations"]
    assert tolerates(pod["tolerations"], {"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"})
    [container] = pod["containers"]
    assert container["name"] == "mpi-operator"  # upstream's container name: the strategic merge key
    assert set(container["resources"]) == {"requests", "limits"}
