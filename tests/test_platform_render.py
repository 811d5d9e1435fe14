"""The platform program under Pulumi's mock runtime: every stack file renders, and the
wiring between its parts holds (selectors, EFA, PVC, CRD ordering, limits, IMDSv2)."""
from __future__ import annotations

import json

import pytest
import yaml

from infra import catalog, config, versions
from trnctl.render import render_stack
from tests.platform_helpers import PLATFORM_STACKS, REPO, rendered_platform

NODEPOOL = "kubernetes:karpenter.sh/v1:NodePool"
NODECLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
RELEASE = "kubernetes:helm.sh/v3:Release"


def release(result, chart_name: str):
    return next(r for r in result.by_type(RELEASE) if r.inputs["name"] == chart_name)


def test_there_are_platform_stacks():
    assert {"dev-usw2", "dev-use2"} <= set(PLATFORM_STACKS)


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_stack_renders_validates_and_passes_policy(stack, tmp_path):
    result, problems = render_stack(REPO, stack, tmp_path)
    assert problems == []
    assert (tmp_path / "resources.json").exists()
    written = json.loads((tmp_path / "resources.json").read_text())
    assert {"type", "name", "inputs", "parent", "dependsOn"} <= set(written[0])
    manifests = list((tmp_path / "manifests").glob("*.yaml"))
    assert len(manifests) == len(result.manifests) > 0
    outputs = json.loads((tmp_path / "outputs.json").read_text())
    assert outputs["kubeconfig"] == "[secret]"


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_nodepool_labels_match_exported_selectors(stack):
    result = rendered_platform(stack)
    exported = result.outputs["nodePools"]
    pools = {r.inputs["metadata"]["name"]: r.inputs["spec"] for r in result.by_type(NODEPOOL)}
    assert set(pools) == set(exported)
    for name, scheduling in exported.items():
        node_labels = pools[name]["template"]["metadata"]["labels"]
        for key, value in scheduling["nodeSelector"].items():
            assert node_labels[key] == value
        taints = pools[name]["template"]["spec"].get("taints", [])
        for tol in scheduling["tolerations"]:
            assert any(t["key"] == tol["key"] and t["effect"] == tol["effect"] for t in taints)


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_limits_match_config_and_accelerators_scale_to_zero(stack):
    cfg = config.load_stack_file(REPO, stack)
    result = rendered_platform(stack)
    pools = {r.inputs["metadata"]["name"]: r.inputs["spec"] for r in result.by_type(NODEPOOL)}
    for pool in cfg.node_pools:
        big = pool.largest_instance
        assert pools[pool.name]["limits"]["cpu"] == str(big.vcpu * pool.max_nodes)
        assert pools[pool.name]["limits"]["memory"] == f"{big.memory_gib * pool.max_nodes}Gi"
        if pool.is_accelerator:
            assert pools[pool.name]["limits"]["aws.amazon.com/neuron"] == str(big.neuron_devices * pool.max_nodes)
            assert pools[pool.name]["template"]["spec"]["taints"] == [
                {"key": "aws.amazon.com/neuron", "value": "true", "effect": "NoSchedule"}]
            assert pools[pool.name]["disruption"]["consolidationPolicy"] == "WhenEmpty"
    # The only static capacity is the CPU system node group: no trn/inf instance anywhere else.
    for group in result.by_type("aws:eks/nodeGroup:NodeGroup"):
        assert all(catalog.instance_type(t).family == "cpu" for t in group.inputs["instanceTypes"])


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_imdsv2_and_encrypted_roots_everywhere(stack):
    result = rendered_platform(stack)
    classes = result.by_type(NODECLASS)
    assert classes
    for nc in classes:
        spec = nc.inputs["spec"]
        assert spec["metadataOptions"]["httpTokens"] == "required"
        assert spec["amiSelectorTerms"] == [{"alias": versions.AL2023_AMI_ALIAS}]
        assert all(b["ebs"]["encrypted"] for b in spec["blockDeviceMappings"])
    for lt in result.by_type("aws:ec2/launchTemplate:LaunchTemplate"):
        assert lt.inputs["metadataOptions"]["httpTokens"] == "required"
        assert all(b["ebs"]["encrypted"] == "true" for b in lt.inputs["blockDeviceMappings"])


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_efa_security_group_rule_and_device_plugin(stack):
    result = rendered_platform(stack)
    node_sg = result.one("aws:ec2/securityGroup:SecurityGroup", "cluster-nodes")
    rules = [r.inputs for r in result.by_type("aws:ec2/securityGroupRule:SecurityGroupRule")
             if r.name.startswith("cluster-nodes-")]
    assert {"type": "ingress", "protocol": "-1", "self": True} .items() <= next(
        r for r in rules if r["type"] == "ingress").items()
    assert any(r["type"] == "egress" and r.get("self") and r["protocol"] == "-1" for r in rules)
    assert node_sg.inputs["tags"]["karpenter.sh/discovery"] == result.outputs["clusterName"]
    efa_pools = [p for p, s in result.outputs["nodePools"].items() if s["efaPerNode"]]
    assert efa_pools, "the stack files define a multi-node EFA pool"
    efa_values = release(result, "aws-efa-k8s-device-plugin").inputs["values"]
    for name in efa_pools:
        pool = next(r for r in result.by_type(NODEPOOL) if r.inputs["metadata"]["name"] == name)
        labels = pool.inputs["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in efa_values["nodeSelector"].items())


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_pvc_name_is_the_exported_one(stack):
    result = rendered_platform(stack)
    shared = result.outputs["sharedStorage"]
    pvc = result.by_type("kubernetes:core/v1:PersistentVolumeClaim")[0].inputs
    pv = result.by_type("kubernetes:core/v1:PersistentVolume")[0].inputs
    assert (pvc["metadata"]["name"], pvc["metadata"]["namespace"]) == (shared["pvcName"], shared["namespace"])
    assert pv["spec"]["claimRef"] == {"namespace": shared["namespace"], "name": shared["pvcName"]}
    assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
    assert pv["spec"]["csi"]["volumeHandle"] == shared["fileSystemId"]


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_custom_resources_depend_on_the_release_installing_their_crd(stack):
    result = rendered_platform(stack)
    crd_release = {"karpenter.sh": release(result, "karpenter-crd").urn,
                   "karpenter.k8s.aws": release(result, "karpenter-crd").urn,
                   "scheduling.volcano.sh": release(result, "volcano").urn}
    custom = [r for r in result.resources if r.type.startswith("kubernetes:") and r.custom
              and r.inputs.get("apiVersion", "").split("/")[0] in crd_release]
    assert len(custom) >= 3
    for r in custom:
        assert crd_release[r.inputs["apiVersion"].split("/")[0]] in r.depends_on, r.name


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_pools_only_in_zones_offering_their_instance_types(stack):
    cfg = config.load_stack_file(REPO, stack)
    result = rendered_platform(stack)
    for r in result.by_type(NODEPOOL):
        spec = r.inputs["spec"]["template"]["spec"]
        zones = next(q["values"] for q in spec["requirements"] if q["key"] == "topology.k8s.aws/zone-id")
        types = next(q["values"] for q in spec["requirements"] if q["key"] == "node.kubernetes.io/instance-type")
        assert zones
        for az in zones:
            assert az in result.outputs["availabilityZoneIds"]
            assert any(az in catalog.snapshot_offerings(cfg.region, t) for t in types)


def test_us_east_2_trn_pool_pinned_to_the_one_az_offering_trn1n():
    result = rendered_platform("dev-use2")
    pool = next(r for r in result.by_type(NODEPOOL) if r.inputs["metadata"]["name"] == "trn1-efa")
    zones = next(q["values"] for q in pool.inputs["spec"]["template"]["spec"]["requirements"]
                 if q["key"] == "topology.k8s.aws/zone-id")
    assert zones == ["use2-az3"]
    assert len(result.outputs["availabilityZoneIds"]) == 2  # EKS still gets two AZs


def test_every_chart_and_manifest_is_pinned():
    result = rendered_platform("dev-usw2")
    for r in result.by_type(RELEASE):
        assert r.inputs["version"] and r.inputs["version"][0].isdigit() or r.inputs["version"].startswith("v")
        assert "latest" not in json.dumps(r.inputs)
    kustomization = yaml.safe_load((REPO / "infra/manifests/mpi-operator/kustomization.yaml").read_text())
    assert kustomization["resources"][0].endswith(f"?ref={versions.MPI_OPERATOR_VERSION}")
    image, tag = versions.MPI_OPERATOR_IMAGE.split(":")
    assert kustomization["images"] == [{"name": image, "newTag": tag}]
    assert release(result, "volcano").inputs["values"]["basic"]["image_tag_version"] == f"v{versions.VOLCANO_VERSION}"


@pytest.mark.parametrize("stack", PLATFORM_STACKS)
def test_region_and_version_specific_images_follow_the_stack(stack):
    cfg = config.load_stack_file(REPO, stack)
    result = rendered_platform(stack)
    efa = release(result, "aws-efa-k8s-device-plugin").inputs["values"]
    assert efa["image"]["repository"].startswith(f"602401143452.dkr.ecr.{cfg.region}.amazonaws.com/")
    scheduler = release(result, "neuron").inputs["values"]["scheduler"]["customScheduler"]["image"]
    assert scheduler["tag"].startswith(f"v{cfg.kubernetes_version}.")


def test_karpenter_controller_and_queue_wiring():
    result = rendered_platform("dev-usw2")
    values = release(result, "karpenter").inputs["values"]
    queue = result.one("aws:sqs/queue:Queue", "karpenter-interruption").inputs
    assert values["settings"] == {"clusterName": "trn-dev-usw2", "interruptionQueue": queue["name"],
                                  "featureGates": {"nodeRepair": True}}
    assert queue["sqsManagedSseEnabled"] is True
    rules = [json.loads(r.inputs["eventPattern"])["detail-type"][0] for r in result.by_type("aws:cloudwatch/eventRule:EventRule")]
    assert sorted(rules) == sorted(["AWS Health Event", "EC2 Spot Instance Interruption Warning",
                                    "EC2 Instance Rebalance Recommendation", "EC2 Instance State-change Notification",
                                    "EC2 Capacity Reservation Instance Interruption Warning"])
    assert {"name": "AWS_REGION", "value": "us-west-2"} in values["controller"]["env"]
    entry = result.one("aws:eks/accessEntry:AccessEntry", "karpenter-node").inputs
    assert entry["type"] == "EC2_LINUX"
    role = result.one("aws:iam/role:Role", "karpenter-node")
    assert entry["principalArn"] == role.state["arn"]


def test_destroy_order_follows_dependencies():
    """NodePools depend on the Karpenter release (destroyed first, while the controller can
    still drain nodes); add-ons depend on the system nodes, which depend on the cluster."""
    result = rendered_platform("dev-usw2")
    karpenter = release(result, "karpenter").urn
    for pool in result.by_type(NODEPOOL):
        assert karpenter in pool.depends_on
    system_nodes = result.one("aws:eks/nodeGroup:NodeGroup", "cluster-system").urn
    for r in result.by_type(RELEASE):
        assert system_nodes in r.depends_on, r.name
    assert result.one("eks:index:Cluster", "cluster-eks").urn in result.one(
        "aws:eks/nodeGroup:NodeGroup", "cluster-system").depends_on


def test_cluster_endpoint_logging_and_secrets_encryption():
    usw2 = rendered_platform("dev-usw2").one("eks:index:Cluster", "cluster-eks").inputs
    assert usw2["publicAccessCidrs"] == ["203.0.113.0/24"]
    assert {"api", "audit", "authenticator"} <= set(usw2["enabledClusterLogTypes"])
    assert usw2["encryptionConfigKeyArn"].startswith("arn:aws:kms:")
    assert usw2["authenticationMode"] == "API" and usw2["skipDefaultNodeGroup"] is True
    use2 = rendered_platform("dev-use2").one("eks:index:Cluster", "cluster-eks").inputs
    assert use2["endpointPublicAccess"] is False and use2.get("publicAccessCidrs") is None
    assert use2["createOidcProvider"] is True  # irsa stack


def test_s3_import_path_reaches_shared_datasets_through_a_data_repository_association():
    cfg = config.load_stack_file(REPO, "dev-use2")
    result = rendered_platform("dev-use2")
    [dra] = result.by_type("aws:fsx/dataRepositoryAssociation:DataRepositoryAssociation")
    assert dra.inputs["dataRepositoryPath"] == cfg.fsx.s3_import_path
    assert dra.inputs["fileSystemPath"] == "/datasets"  # <mountPath>/datasets in every pod
    assert dra.inputs["batchImportMetaDataOnCreate"] is True
    assert sorted(dra.inputs["s3"]["autoImportPolicy"]["events"]) == ["CHANGED", "DELETED", "NEW"]
    assert cfg.fsx.deployment_type != "SCRATCH_1"  # DRAs exist on every other deployment type
    assert not rendered_platform("dev-usw2").by_type("aws:fsx/dataRepositoryAssociation:DataRepositoryAssociation")
