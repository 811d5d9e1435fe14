"""Cost estimates (trnctl/cost.py) against hand computations from infra/data/prices.json."""
from __future__ import annotations

import json

import pytest

from infra import catalog, config
from trnctl import cost
from infra.network import INTERFACE_ENDPOINTS
from policy import rules
from tests.platform_helpers import REPO, rendered_platform, rendered_workload

PRICES = json.loads((REPO / "infra" / "data" / "prices.json").read_text())


def test_dev_usw2_always_on_matches_hand_computation():
    report = cost.estimate_platform(config.load_stack_file(REPO, "dev-usw2"))
    # Pulumi.dev-usw2.yaml: 2 AZs, single NAT, 2 x m6i.large system nodes with 50 GiB roots,
    # FSx PERSISTENT_2 1200 GiB at 125 MB/s/TiB; endpoints ecr.api, ecr.dkr, sts.
    hand = {
        "EKS control plane": 0.10,
        "system nodes m6i.large": 2 * 0.096,
        "system node root volumes gp3": 2 * 50 * 0.08 / 730,
        "NAT gateways": 1 * 0.045,
        "NAT public IPv4 addresses": 1 * 0.005,
        "VPC interface endpoints": 3 * 2 * 0.01,
        "FSx Lustre PERSISTENT_2": 1200 * 0.145 / 730,
        # monitoring: Prometheus 50 + Alertmanager 5 + Grafana 10 GiB gp3, 6 FSx metrics a minute
        "monitoring volumes gp3": 65 * 0.08 / 730,
        "CloudWatch GetMetricData (FSx)": 6 * 60 / 1000 * 0.01,
    }
    assert {i.name: round(i.per_hour, 6) for i in report.always_on} == {k: round(v, 6) for k, v in hand.items()}
    assert report.always_on_per_hour == pytest.approx(0.662038, abs=1e-6)
    assert report.always_on_per_month == pytest.approx(0.662038 * 730, abs=1e-3)  # about $483


def test_dev_usw2_pools_per_node_and_at_limit():
    report = cost.estimate_platform(config.load_stack_file(REPO, "dev-usw2"))
    pools = {p.name: (p.instance_type, p.per_node_hour, p.max_nodes, round(p.at_limit_hour, 4)) for p in report.pools}
    assert pools == {
        "trn1-single": ("trn1.2xlarge", 1.34375, 2, 2.6875),
        "trn1-efa": ("trn1.32xlarge", 21.50, 4, 86.0),
        "inf2": ("inf2.8xlarge", 1.9679, 4, 7.8716),  # the larger of inf2.xlarge/inf2.8xlarge
        "cpu": ("m6i.4xlarge", 0.768, 10, 7.68),
    }
    assert report.all_pools_at_limit_hour == pytest.approx(2.6875 + 86 + 7.8716 + 7.68)


def test_dev_usw2_keeps_zero_accelerator_nodes_when_idle():
    report = cost.estimate_platform(config.load_stack_file(REPO, "dev-usw2"))
    assert report.idle_accelerator_per_hour == 0
    # ... and the render agrees: no static accelerator capacity, every accelerator pool bounded
    # and able to empty (the policy rules that guarantee it find nothing).
    result = rendered_platform("dev-usw2")
    resources = rules.resources_from_records([r.to_json() for r in result.resources])
    assert not any(catalog.instance_type(t).neuron_devices for g in result.by_type(rules.NODE_GROUP)
                   for t in g.inputs["instanceTypes"])
    pools = [r for r in resources if r.type == rules.NODE_POOL and rules.pool_selects_neuron(r.props["spec"])]
    assert {p.props["metadata"]["name"] for p in pools} == {"trn1-single", "trn1-efa", "inf2"}
    assert all("replicas" not in p.props["spec"] for p in pools)
    guard = {"nodes-no-static-accelerators", "nodes-accelerator-pool-limits", "nodes-neuron-taint"}
    assert [v for v in rules.evaluate(resources) if v.rule in guard] == []


def test_dev_use2_counts_one_nat_per_az_and_its_fsx_tier():
    report = cost.estimate_platform(config.load_stack_file(REPO, "dev-use2"))
    items = {i.name: i for i in report.always_on}
    assert items["NAT gateways"].quantity == 2  # natGateways: per-az over two AZ IDs
    assert items["NAT public IPv4 addresses"].quantity == 2
    assert items["VPC interface endpoints"].quantity == 3 * 2
    assert items["FSx Lustre PERSISTENT_2"].per_hour == pytest.approx(2400 * 0.21 / 730)  # 250 MB/s/TiB
    assert report.region == "us-east-2"


def test_interface_endpoints_come_from_the_network_module():
    assert cost.interface_endpoints() == INTERFACE_ENDPOINTS


@pytest.mark.parametrize("region", ["us-west-2", "us-east-2"])
def test_every_instance_type_is_priced(region):
    prices = cost.load_prices(region)
    types = json.loads((REPO / "infra" / "data" / "instance_types.json").read_text())["instanceTypes"]
    # trn2 only in us-east-2; Trn3 types (facts unverified, no EC2 offering or list price yet) are
    # left to the render's "cost: not estimated" line
    offered = {t for t in types if catalog.snapshot_offerings(region, t) and not catalog.instance_type(t).unverified}
    assert offered <= set(prices.ec2_per_hour)
    assert set(prices.ec2_per_hour) <= set(types)
    assert set(prices.capacity_block_per_hour) <= offered  # block rates only where the type is offered
    assert all(p > 0 for p in prices.ec2_per_hour.values())
    for dtype, rule in config.FSX_RULES.items():
        for throughput in rule["throughput"] or (0,):
            assert prices.fsx(dtype, throughput) > 0
    assert prices.eks_control_plane == 0.10
    assert PRICES["regions"][region]["asOf"] and PRICES["_source"]


def test_estimate_workload():
    assert cost.estimate_workload("trn1.32xlarge", 4, "us-west-2") == pytest.approx(86.0)
    assert cost.estimate_workload("inf2.xlarge", 0, "us-east-2") == 0


def test_bad_inputs_name_what_is_missing():
    with pytest.raises(cost.PriceError, match=r"no prices for region 'eu-west-9'; priced regions: us-east-2, us-west-2"):
        cost.load_prices("eu-west-9")
    with pytest.raises(cost.PriceError, match=r"no on-demand price for p5.48xlarge in us-west-2"):
        cost.estimate_workload("p5.48xlarge", 1, "us-west-2")
    with pytest.raises(cost.PriceError, match=r"no PERSISTENT_2 price for 300 MB/s/TiB .* priced tiers: 125, 250, 500, 1000"):
        cost.load_prices("us-west-2").fsx("PERSISTENT_2", 300)
    with pytest.raises(ValueError, match="nodes must be >= 0"):
        cost.estimate_workload("trn1.2xlarge", -1, "us-west-2")


def test_format_prints_a_short_table():
    text = cost.estimate_platform(config.load_stack_file(REPO, "dev-usw2")).format()
    assert "cost estimate dev-usw2 (us-west-2" in text
    assert "total" in text and "0.662" in text and "$483/month" in text
    assert "trn1-efa" in text and "86.00" in text
    assert "idle accelerators: $0.00/h" in text
    assert len(text.splitlines()) < 20


def test_render_summary_for_platform_and_workload_stacks():
    platform = cost.summary_for_render(rendered_platform("dev-usw2"), REPO)
    assert platform.startswith("cost estimate dev-usw2")
    # compile-usw2: a 1-device compile Job on trn1-single and a 1-replica, 1-device server on inf2.
    workload = cost.summary_for_render(rendered_workload("compile-usw2"), REPO / "workloads")
    assert "trn1-single    1 pod(s), 1 Neuron devices -> 1 x trn1.2xlarge  $1.34/h" in workload
    assert "inf2           1 pod(s), 1 Neuron devices -> 1 x inf2.xlarge  $0.76/h" in workload
    assert f"total ${1.34375 + 0.7582:,.2f}/h" in workload


def test_workload_cost_fits_pods_by_cpu_and_memory_and_prices_the_autoscaled_maximum():
    # compile-usw2's server has an HPA up to 3 replicas: one inf2.xlarge each at the maximum.
    compile_ = cost.summary_for_render(rendered_workload("compile-usw2"), REPO / "workloads")
    assert f"at the autoscalers' maximum (inf2 3 pod(s)): ${1.34375 + 3 * 0.7582:,.2f}/h" in compile_
    # llm-serve-usw2: the vLLM pod asks 8 vCPU / 48 GiB, which no inf2.xlarge (4 vCPU, 16 GiB)
    # has: Karpenter launches inf2.8xlarge; KEDA may scale to 3 replicas.
    serve = cost.summary_for_render(rendered_workload("llm-serve-usw2"), REPO / "workloads")
    assert "inf2           1 pod(s), 1 Neuron devices -> 1 x inf2.8xlarge  $1.97/h" in serve
    assert f"at the autoscalers' maximum (inf2 3 pod(s)): ${3 * 1.968:,.2f}/h" in serve
    # no autoscaler, no extra line
    nemo = cost.summary_for_render(rendered_workload("nemo-pretrain-usw2"), REPO / "workloads")
    assert "autoscalers" not in nemo


def test_kubernetes_quantities():
    assert cost._quantity("500m", memory=False) == 0.5 and cost._quantity(8, memory=False) == 8
    assert cost._quantity("48Gi", memory=True) == 48 and cost._quantity("512Mi", memory=True) == 0.5
    assert abs(cost._quantity("1G", memory=True) - 0.931) < 0.001
