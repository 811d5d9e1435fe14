"""trnctl.preflight: pure decisions first, then the AWS calls against moto's server.

moto answers STS, DescribeRegions, DescribeAvailabilityZones, DescribeInstanceTypeOfferings
(from its own offering files: trn1.2xlarge/trn1.32xlarge in usw2-az1/az4, trn1n.32xlarge in
usw2-az4, inf2 in all four usw2 AZs; trn1/trn1n only in use2-az3) and ECR DescribeImages.
It has no EC2 quotas in Service Quotas and no DescribeCapacityReservations: those go
through botocore's Stubber with the response shapes in tests/fixtures/aws/.
"""
from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.stub import Stubber

from trnctl import preflight
from infra.config import load_stack_file

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "aws"
QUOTAS = json.loads((FIXTURES / "service-quotas.json").read_text())
RESERVATIONS = json.loads((FIXTURES / "ec2-capacity-reservations.json").read_text())
READ_ONLY = ("Describe", "Get", "List")


def stack_file(tmp_path: Path, base: str, name: str, edit=None) -> Path:
    """A copy of the repository's Pulumi.<base>.yaml as Pulumi.<name>.yaml, changed by `edit(config)`."""
    doc = yaml.safe_load((ROOT / f"Pulumi.{base}.yaml").read_text())
    if edit:
        edit(doc["config"])
    (tmp_path / f"Pulumi.{name}.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path


def stubbed_quotas(values: dict[str, float], log: list[str] | None = None):
    """A service-quotas client answering GetServiceQuota for `values` (sorted by code, as
    preflight asks); a value of None answers NoSuchResourceException, then the AWS default."""
    client = boto3.client("service-quotas", region_name="us-west-2")
    if log is not None:
        preflight.aws_ops.guard_read_only(client, log)
    stub = Stubber(client)
    for code in sorted(values):
        if values[code] is None:
            err = QUOTAS["no_such_resource"]
            stub.add_client_error("get_service_quota", err["Code"], err["Message"],
                                  expected_params={"ServiceCode": "ec2", "QuotaCode": code})
            stub.add_response("get_aws_default_service_quota", QUOTAS["default"][code],
                              {"ServiceCode": "ec2", "QuotaCode": code})
        else:
            response = json.loads(json.dumps(QUOTAS["applied"].get(code, QUOTAS["applied"]["L-2C3B7624"])))
            response["Quota"].update(QuotaCode=code, Value=values[code])
            stub.add_response("get_service_quota", response, {"ServiceCode": "ec2", "QuotaCode": code})
    stub.activate()
    return client, stub


# dev-usw2 needs: Trn on-demand 2x8 + 4x128 = 528, Inf on-demand 4x32 = 128,
# Standard on-demand 10x16 + system 3x2 = 166, Standard spot 10x16 = 160.
ENOUGH = {"L-1216C47A": 1152.0, "L-1945791B": 128.0, "L-2C3B7624": 640.0, "L-34B43A08": None}


# --------------------------------------------------------------------------- pure functions


def test_quota_needs_follow_the_pools_karpenter_limits():
    cfg = load_stack_file(ROOT, "dev-usw2")
    needs = preflight.quota_needs(cfg)
    assert {k: sum(v for _, v in users) for k, users in needs.items()} == {
        ("Trn", "on-demand"): 528, ("Inf", "on-demand"): 128, ("Standard", "on-demand"): 166, ("Standard", "spot"): 160}
    assert needs[("Trn", "on-demand")] == [("trn1-single", 16), ("trn1-efa", 512)]


def test_quota_findings_too_small_blocks_with_the_increase_command():
    needs = {("Trn", "on-demand"): [("trn1-efa", 512)], ("Standard", "spot"): [("cpu", 160)],
             ("Inf", "spot"): [("inf2", 64)]}
    rows = {f.check: f for f in preflight.quota_findings(needs, {"L-2C3B7624": 256.0, "L-34B43A08": 5.0,
                                                                 "L-B5D1601B": "AccessDeniedException: no"}, "us-west-2")}
    trn = rows["quota: Trn on-demand"]
    assert trn.status == "FAIL" and "256 vCPU; the pools may use 512 (trn1-efa 512)" in trn.detail
    assert ("aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-2C3B7624 "
            "--desired-value 512 --region us-west-2") in trn.fix
    assert rows["quota: Standard spot"].status == "WARN"  # CPU pools: slower, not blocked
    assert rows["quota: Inf spot"].status == "WARN" and "could not be read: AccessDenied" in rows["quota: Inf spot"].detail


def test_identity_findings():
    assert preflight.identity_findings(None, "us-west-2", None, "NoCredentialsError: none")[0].status == "FAIL"
    ok = {"Account": "123456789012", "Arn": "arn:aws:iam::123456789012:user/me"}
    assert [f.status for f in preflight.identity_findings(ok, "us-west-2", {"OptInStatus": "opt-in-not-required"}, None)] \
        == ["PASS", "PASS"]
    opt_in = preflight.identity_findings(ok, "ap-southeast-4", {"OptInStatus": "not-opted-in"}, None)[1]
    assert opt_in.status == "FAIL" and "aws account enable-region --region-name ap-southeast-4" in opt_in.fix


def test_workload_requirements_read_the_workload_stacks(tmp_path):
    lora = preflight.workload_requirements(ROOT / "workloads", "lora-finetune-usw2")
    assert (lora.ecr_repo, lora.tag, lora.needs_hf_token, lora.hf_token_set) == ("finetune", "1.0.0", True, False)
    assert lora.platform_stack == "dev-usw2"  # the example ciphertext is a placeholder, not a token

    compile_ = preflight.workload_requirements(ROOT / "workloads", "compile-usw2")
    assert [i.repository for i in compile_.images] == ["compile", "serve"] and not compile_.needs_hf_token

    doc = yaml.safe_load((ROOT / "workloads" / "Pulumi.lora-finetune-usw2.yaml").read_text())
    doc["config"]["trn-workloads:hfToken"] = {"secure": "v1:q2Lk0yBvQ1s=:Zm9vYmFyYmF6"}
    (tmp_path / "Pulumi.with-token.yaml").write_text(yaml.safe_dump(doc))
    assert preflight.workload_requirements(tmp_path, "with-token").hf_token_set

    doc["config"]["trn-workloads:hfToken"] = "hf_plaintext"
    (tmp_path / "Pulumi.plain.yaml").write_text(yaml.safe_dump(doc))
    plain = preflight.workload_requirements(tmp_path, "plain")
    assert any("hfToken: must be a secret" in p for p in plain.problems)
    assert preflight.workload_config_finding(plain).status == "FAIL"


# --------------------------------------------------------------------------- AZ offerings (moto)


def test_az_without_the_instance_type_is_caught(aws_env, tmp_path):
    # trn1n.32xlarge is offered only in use2-az3; pin the cluster to the other two AZs
    def edit(config):
        config["trn-platform:network"]["availabilityZoneIds"] = ["use2-az1", "use2-az2"]
    cfg = load_stack_file(stack_file(tmp_path, "dev-use2", "no-trn-az", edit), "no-trn-az")
    ec2 = boto3.client("ec2", region_name="us-east-2")
    offerings = preflight.fetch_offerings(ec2, [t for p in cfg.node_pools for t in p.instance_types])
    assert offerings["trn1n.32xlarge"] == {"use2-az3"}
    zones = preflight.fetch_zones(ec2)
    findings, chosen = preflight.offering_findings(cfg, offerings, set(zones.values()))
    rows = {f.check: f for f in findings}
    assert chosen == ["use2-az1", "use2-az2"]
    assert rows["availability zones"].status == "FAIL"
    trn = rows["offerings: trn1-efa"]
    assert trn.status == "FAIL" and "trn1n.32xlarge in use2-az3" in trn.detail
    assert trn.fix == "add one of use2-az3 to network.availabilityZoneIds"
    assert rows["offerings: inf2"].status == "PASS" and rows["offerings: cpu"].status == "PASS"


def test_pinned_azs_against_moto_offerings_in_us_west_2(aws_env, tmp_path):
    def edit(config):
        config["trn-platform:network"]["availabilityZoneIds"] = ["usw2-az1", "usw2-az2"]
        config["trn-platform:nodePools"] = [
            {"name": "trn1", "family": "trn1", "instanceTypes": ["trn1.2xlarge"], "maxNodes": 1},
            {"name": "trn1n", "family": "trn1n", "instanceTypes": ["trn1n.32xlarge"], "maxNodes": 1},
            {"name": "cpu", "family": "cpu", "instanceTypes": ["m6i.2xlarge"], "maxNodes": 1}]
        config.pop("trn-platform:workloadPresets")
    cfg = load_stack_file(stack_file(tmp_path, "dev-usw2", "partial", edit), "partial")
    ec2 = boto3.client("ec2", region_name="us-west-2")
    offerings = preflight.fetch_offerings(ec2, ["trn1.2xlarge", "trn1n.32xlarge", "m6i.2xlarge"])
    findings, _ = preflight.offering_findings(cfg, offerings, set(preflight.fetch_zones(ec2).values()))
    rows = {f.check: f for f in findings}
    assert rows["offerings: trn1"].status == "PASS"  # trn1.2xlarge: usw2-az1, usw2-az4
    assert rows["offerings: trn1n"].status == "FAIL"  # trn1n.32xlarge: usw2-az4 only
    assert rows["offerings: trn1n"].fix == "add one of usw2-az4 to network.availabilityZoneIds"


def test_type_offered_outside_the_chosen_azs_is_a_warning():
    cfg = load_stack_file(ROOT, "dev-usw2")  # inf2 pool: inf2.xlarge, inf2.8xlarge
    offerings = {"trn1.2xlarge": {"usw2-az1", "usw2-az4"}, "trn1.32xlarge": {"usw2-az1", "usw2-az4"},
                 "inf2.xlarge": {"usw2-az1"}, "inf2.8xlarge": {"usw2-az3"},
                 **{t: {"usw2-az1", "usw2-az4"} for t in cfg.pool("cpu").instance_types}}
    findings, chosen = preflight.offering_findings(cfg, offerings, {"usw2-az1", "usw2-az2", "usw2-az3", "usw2-az4"})
    inf2 = next(f for f in findings if f.check == "offerings: inf2")
    assert chosen == ["usw2-az1", "usw2-az4"]
    assert inf2.status == "WARN" and inf2.detail.startswith("inf2.8xlarge not offered in the chosen AZs")
    assert "remove inf2.8xlarge from nodePools (inf2).instanceTypes" in inf2.fix


# --------------------------------------------------------------------------- Stubber: quotas, reservations


def test_fetch_quotas_falls_back_to_the_aws_default():
    client, stub = stubbed_quotas({"L-2C3B7624": 256.0, "L-6B0D517C": None})
    assert preflight.fetch_quotas(client, ["L-2C3B7624", "L-6B0D517C"]) == {"L-2C3B7624": 256.0, "L-6B0D517C": 0.0}
    stub.assert_no_pending_responses()


def _reserved_config(tmp_path: Path, ids: list[str]):
    def edit(config):
        pool = config["trn-platform:nodePools"][1]  # trn1-efa, trn1.32xlarge
        pool["capacityTypes"] = ["reserved", "on-demand"]
        pool["capacityReservationIds"] = ids
    return load_stack_file(stack_file(tmp_path, "dev-usw2", "reserved", edit), "reserved")


def test_reservations_missing_inactive_and_mismatched_are_caught(tmp_path):
    scenarios = ["active", "expired", "scheduled_block", "wrong_type_and_zone"]
    ids = [RESERVATIONS[s]["CapacityReservations"][0]["CapacityReservationId"] for s in scenarios]
    missing = "cr-0a1b2c3d4e5f60009"
    cfg = _reserved_config(tmp_path, ids + [missing])

    ec2 = boto3.client("ec2", region_name="us-west-2")
    stub = Stubber(ec2)
    for scenario, rid in zip(scenarios, ids):
        stub.add_response("describe_capacity_reservations", RESERVATIONS[scenario], {"CapacityReservationIds": [rid]})
    stub.add_client_error("describe_capacity_reservations", RESERVATIONS["not_found"]["Code"],
                          RESERVATIONS["not_found"]["Message"], expected_params={"CapacityReservationIds": [missing]})
    with stub:
        found = preflight.fetch_reservations(ec2, ids + [missing])
    stub.assert_no_pending_responses()
    assert found[missing] is None

    offerings = {"trn1.32xlarge": {"usw2-az1", "usw2-az4"}, "trn1.2xlarge": {"usw2-az1", "usw2-az4"},
                 "inf2.xlarge": {"usw2-az1"}, "inf2.8xlarge": {"usw2-az1"}}
    rows = {f.check: f for f in preflight.reservation_findings(cfg, found, offerings, ["usw2-az1", "usw2-az4"], {})}
    active, expired, block, wrong, absent = (rows[f"reservation: {rid}"] for rid in ids + [missing])
    assert active.status == "PASS" and "trn1.32xlarge x4 (4 free) in usw2-az4" in active.detail
    assert expired.status == "FAIL" and "state is 'expired'" in expired.detail
    assert "renew or replace it, or remove it from nodePools[1] (trn1-efa).capacityReservationIds[1]" in expired.fix
    assert block.status == "WARN" and "Capacity Block not started yet" in block.detail
    assert wrong.status == "FAIL" and "it is for trn1n.32xlarge" in wrong.detail and "in usw2-az3" in wrong.detail
    assert "add trn1n.32xlarge to nodePools (trn1-efa).instanceTypes" in wrong.fix
    assert "add usw2-az3 to network.availabilityZoneIds" in wrong.fix
    assert absent.status == "FAIL" and f"{missing} not found in us-west-2" in absent.detail
    assert f"--capacity-reservation-ids {missing}" in absent.fix


def test_reservation_zone_name_is_mapped_to_its_zone_id(tmp_path):
    res = json.loads(json.dumps(RESERVATIONS["active"]["CapacityReservations"][0]))
    del res["AvailabilityZoneId"]  # older answers carry only the account-specific AZ name
    cfg = _reserved_config(tmp_path, [res["CapacityReservationId"]])
    offerings = {"trn1.32xlarge": {"usw2-az4"}}
    ok = preflight.reservation_findings(cfg, {res["CapacityReservationId"]: res}, offerings, ["usw2-az4"],
                                        {"us-west-2d": "usw2-az4"})
    assert ok[0].status == "PASS"


# --------------------------------------------------------------------------- whole runs


def _push_image(ecr, repository: str, tag: str) -> None:
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 7,
                           "digest": "sha256:" + "1" * 64}, "layers": []}
    ecr.put_image(repositoryName=repository, imageManifest=json.dumps(manifest), imageTag=tag)


def test_passing_config_passes_and_only_reads(aws_env):
    ecr = boto3.client("ecr", region_name="us-west-2")
    for repo in ("compile", "serve"):
        ecr.create_repository(repositoryName=f"trn-dev-usw2/{repo}")
        _push_image(ecr, f"trn-dev-usw2/{repo}", "1.0.0")
    cfg = load_stack_file(ROOT, "dev-usw2")
    calls: list[str] = []
    clients = preflight.Clients.for_region("us-west-2", calls, public_ip=lambda: "203.0.113.9")
    clients.quotas, stub = stubbed_quotas(ENOUGH, calls)
    workloads = [preflight.workload_requirements(ROOT / "workloads", "compile-usw2")]

    findings = preflight.run_preflight(cfg, clients, workloads)
    stub.assert_no_pending_responses()
    assert [(f.check, f.status) for f in findings if f.status != "PASS"] == []
    assert {"GetCallerIdentity", "DescribeInstanceTypeOfferings", "GetServiceQuota", "GetAWSDefaultServiceQuota",
            "DescribeImages"} <= set(calls)
    assert all(c.startswith(READ_ONLY) for c in calls)
    # moto's state after: nothing new (same repositories, no instances, no reservations)
    assert sorted(r["repositoryName"] for r in ecr.describe_repositories()["repositories"]) == [
        "trn-dev-usw2/compile", "trn-dev-usw2/serve"]
    assert boto3.client("ec2", region_name="us-west-2").describe_instances()["Reservations"] == []


def test_read_only_clients_refuse_changes(aws_env):
    clients = preflight.Clients.for_region("us-west-2")
    with pytest.raises(preflight.aws_ops.ReadOnlyViolation, match="CreateRepository"):
        clients.ecr.create_repository(repositoryName="nope")


def test_missing_credentials_stop_the_run():
    sts = boto3.client("sts", region_name="us-west-2")
    stub = Stubber(sts)
    stub.add_client_error("get_caller_identity", "InvalidClientTokenId", "The security token included in the request "
                          "is invalid.", http_status_code=403)
    with stub:
        findings = preflight.run_preflight(load_stack_file(ROOT, "dev-usw2"),
                                           preflight.Clients(sts=sts, ec2=None, quotas=None, ecr=None))
    assert [(f.check, f.status) for f in findings] == [("credentials", "FAIL")]
    assert "InvalidClientTokenId" in findings[0].detail


def _workloads_dir(tmp_path: Path) -> Path:
    """Copies of the repository's two example workload stacks (lora has the placeholder token)."""
    wl = tmp_path / "workloads"
    wl.mkdir()
    for stack in ("compile-usw2", "lora-finetune-usw2"):
        (wl / f"Pulumi.{stack}.yaml").write_text((ROOT / "workloads" / f"Pulumi.{stack}.yaml").read_text())
    return wl


def test_cli_prints_one_table_and_fails_on_blocking_findings(aws_env, tmp_path, capsys):
    ecr = boto3.client("ecr", region_name="us-west-2")
    ecr.create_repository(repositoryName="trn-dev-usw2/compile")  # repository exists, tag 1.0.0 not pushed
    clients = preflight.Clients.for_region("us-west-2", public_ip=lambda: "192.0.2.50")  # outside 203.0.113.0/24
    clients.quotas, _ = stubbed_quotas({**ENOUGH, "L-2C3B7624": 256.0})
    rc = preflight.main(["dev-usw2", "--project-dir", str(ROOT), "--workloads-dir", str(_workloads_dir(tmp_path))],
                        clients=clients)
    out = capsys.readouterr().out
    assert rc == 1
    lines = out.splitlines()
    assert sum(line.startswith("check ") for line in lines) == 1  # one table
    assert "FAIL" in next(line for line in lines if line.startswith("quota: Trn on-demand"))
    assert "FAIL" in next(line for line in lines if line.startswith("image: compile-usw2 (compile)"))
    assert "WARN" in next(line for line in lines if line.startswith("image: compile-usw2 (serve)"))
    # lora's example token is one row: the placeholder (not also an "hf token" row)
    assert "trn-workloads:hfToken = secure:" in next(ln for ln in lines if ln.startswith("placeholder: lora"))
    assert not [ln for ln in lines if ln.startswith("hf token: lora-finetune-usw2")]
    assert "FAIL" in next(line for line in lines if line.startswith("api endpoint"))
    assert "add 192.0.2.50/32" in out
    # the example values of dev-usw2 (its CIDR and alert address) and lora's token, before any AWS row
    placeholders = [i for i, line in enumerate(lines) if line.startswith("placeholder: ")]
    assert len(placeholders) == 3 and max(placeholders) < min(i for i, ln in enumerate(lines) if ln.startswith("credentials"))
    assert "6 blocking" in out


def test_cli_bad_stack_is_a_clear_error(capsys):
    assert preflight.main(["nope", "--project-dir", str(ROOT)]) == 2
    assert "Pulumi.nope.yaml does not exist; stacks here:" in capsys.readouterr().err


# --------------------------------------------------------------------------- API endpoint vs this machine's IP


@pytest.fixture
def checkip_server():
    """A loopback stand-in for checkip.amazonaws.com: answers every GET with one address."""
    import http.server
    import threading

    answer = {"body": b"198.51.100.7\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer["body"])

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/", answer
    finally:
        server.shutdown()
        server.server_close()


def test_public_ip_lookup_reads_the_address_and_refuses_anything_else(checkip_server):
    url, answer = checkip_server
    assert preflight.lookup_public_ip(url) == "198.51.100.7"
    answer["body"] = b"<html>captive portal</html>"
    with pytest.raises(ValueError):
        preflight.lookup_public_ip(url)
    # Real runs ask AWS's own service; tests never do.
    assert preflight.lookup_public_ip.__defaults__[0] == "https://checkip.amazonaws.com"


def test_caller_outside_the_public_cidrs_fails_with_the_fix(checkip_server):
    url, _ = checkip_server
    cfg = load_stack_file(ROOT, "dev-usw2")  # the example 203.0.113.0/24
    finding = preflight.fetch_endpoint_finding(cfg, lambda: preflight.lookup_public_ip(url))
    assert finding.status == "FAIL"
    assert "198.51.100.7 is outside" in finding.detail.replace("(", "").replace(")", "")
    assert "203.0.113.0/24 is the example range" in finding.detail
    assert "add 198.51.100.7/32" in finding.fix and "endpoint.publicAccessCidrs" in finding.fix
    assert "pulumi config set --path 'endpoint.publicAccessCidrs[0]' 198.51.100.7/32 -s dev-usw2" in finding.fix


def test_caller_inside_passes_private_endpoint_warns_and_a_failed_lookup_warns():
    cfg = load_stack_file(ROOT, "dev-usw2")
    assert preflight.fetch_endpoint_finding(cfg, lambda: "203.0.113.77").status == "PASS"

    def offline():
        raise OSError("no route to host")
    unknown = preflight.fetch_endpoint_finding(cfg, offline)
    assert unknown.status == "WARN" and "no route to host" in unknown.detail and "checkip.amazonaws.com" in unknown.fix
    private = load_stack_file(ROOT, "dev-use2")  # endpoint.publicAccess: false
    finding = preflight.fetch_endpoint_finding(private, lambda: pytest.fail("no lookup for a private endpoint"))
    assert finding.status == "WARN" and "private only" in finding.detail and "inside the VPC" in finding.fix
