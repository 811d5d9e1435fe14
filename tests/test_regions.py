"""Every region where EC2 offers Trainium or Inferentia (issue 23 item 1): the offline
offerings snapshot is generated from EC2's recorded offerings, a stack file copied to any of
those regions renders (a region without list prices says "no price data" in its estimate)
or stops with one message saying what to change."""
from __future__ import annotations

import copy
import gzip
import json
import subprocess
import sys
from pathlib import Path

import moto
import pytest
import yaml

from infra import catalog
from infra.config import ConfigError, load_stack_file
from infra.prices import has_prices
from tests.platform_helpers import project_with_stack, stack_config
from trnctl import cli, exitcodes

REPO = Path(__file__).resolve().parent.parent
# moto 5.2.5 (requirements.txt): EC2 DescribeInstanceTypeOfferings as recorded from EC2.
RECORDED = Path(moto.__file__).parent / "ec2" / "resources" / "instance_type_offerings" / "availability-zone-id"
NEURON_FAMILIES = ("trn1", "trn1n", "trn2", "inf2")


def regions_offering_neuron() -> set[str]:
    out = set()
    for path in RECORDED.glob("*.json.gz"):
        rows = json.loads(gzip.open(path, "rt").read())
        if any(r["InstanceType"].split(".")[0] in NEURON_FAMILIES for r in rows):
            out.add(path.name.removesuffix(".json.gz"))
    return out


def copied_to(region: str) -> dict:
    cfg = copy.deepcopy(stack_config("platform", "dev-usw2"))
    cfg["aws:region"] = region
    return cfg


def test_snapshot_is_what_the_script_generates():
    done = subprocess.run([sys.executable, "scripts/offerings_snapshot.py", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_every_region_where_ec2_offers_trainium_or_inferentia_has_offering_data():
    want = regions_offering_neuron()
    assert {"us-east-1", "us-east-2", "us-west-2", "ap-south-2", "eu-west-1"} <= want
    assert want <= set(catalog.known_regions())
    assert catalog.snapshot_offerings("us-east-1", "trn1n.32xlarge") == ("use1-az6",)
    assert catalog.family_regions("trn2") == ("ap-south-2", "us-east-2")  # the recorded answer, not a hand list


@pytest.mark.parametrize("region", sorted(regions_offering_neuron()))
def test_a_copy_with_only_the_region_changed_loads_or_says_in_one_message_what_to_change(tmp_path, region):
    (tmp_path / "Pulumi.copy.yaml").write_text(yaml.safe_dump({"config": copied_to(region)}))
    try:
        cfg = load_stack_file(tmp_path, "copy")
    except ConfigError as err:
        problems = str(err).splitlines()[1:]
        assert len(problems) == 1, str(err)
        assert "not offered in " + region + " (infra/data/offerings-snapshot.json); offered: " in problems[0]
        assert "or set aws:region to one offering" in problems[0] and "us-west-2" in problems[0]
    else:
        assert cfg.region == region


def test_a_copy_in_a_region_without_prices_renders_with_no_price_data(tmp_path, capsys):
    assert not has_prices("us-east-1")
    project = project_with_stack(tmp_path, "platform", "dev-use1", copied_to("us-east-1"))
    argv = ["render", "dev-use1", "--project-dir", str(project), "--out", str(tmp_path / "out"), "--no-check"]
    assert cli.main(argv) == exitcodes.OK  # was: infra.prices.PriceError traceback
    out = capsys.readouterr().out
    assert "cost estimate dev-use1: no price data for us-east-1: infra/data/prices.json prices us-east-2, us-west-2" in out
    # `trnctl cost` cannot do its one job there: exit 2, one message naming the file to extend
    assert cli.main(["cost", "dev-use1", "--project-dir", str(project)]) == exitcodes.BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "add a 'us-east-1' entry there" in err and "Traceback" not in err


def test_a_region_without_trainium_or_inferentia_is_one_message_naming_the_file_to_extend(tmp_path):
    (tmp_path / "Pulumi.copy.yaml").write_text(yaml.safe_dump({"config": copied_to("us-west-1")}))
    with pytest.raises(ConfigError) as err:
        load_stack_file(tmp_path, "copy")
    problems = str(err.value).splitlines()[1:]
    assert len(problems) == 1  # not also one "trn1 is not offered" per pool
    assert "aws:region: 'us-west-1' has no offering data here" in problems[0]
    assert "extend infra/data/offerings-snapshot.json (scripts/offerings_snapshot.py regenerates it)" in problems[0]


# --------------------------------------------------------------------------- item 2: a copy next to its original


def test_a_copy_next_to_its_original_says_what_collides(tmp_path):
    for stack in ("dev-usw2", "dev-use2"):
        (tmp_path / f"Pulumi.{stack}.yaml").write_text((REPO / f"Pulumi.{stack}.yaml").read_text())
    (tmp_path / "Pulumi.yaml").write_text((REPO / "Pulumi.yaml").read_text())
    original = (REPO / "Pulumi.dev-usw2.yaml").read_text()
    (tmp_path / "Pulumi.dev-use1.yaml").write_text(original.replace("aws:region: us-west-2", "aws:region: us-east-1"))
    with pytest.raises(ConfigError) as err:
        load_stack_file(tmp_path, "dev-use1")
    assert problems_of(err) == ["clusterName: 'trn-dev-usw2' is also the cluster name of Pulumi.dev-usw2.yaml: its IAM "
                                "roles and budget would collide; set clusterName: trn-dev-use1 (or remove the key: that "
                                "is the default)"]
    # the same region as well: the VPC range too, with a free one to take
    (tmp_path / "Pulumi.dev2-usw2.yaml").write_text(original.replace("clusterName: trn-dev-usw2", "clusterName: trn-dev2"))
    with pytest.raises(ConfigError) as err:
        load_stack_file(tmp_path, "dev2-usw2")
    assert problems_of(err) == ["network.vpcCidr: 10.40.0.0/16 overlaps the VPC of Pulumi.dev-usw2.yaml (10.40.0.0/16) in "
                                "us-west-2; set network.vpcCidr to a free range, e.g. 10.41.0.0/16"]
    # the repository's own stacks do not collide with one another
    for stack in ("dev-usw2", "dev-use2", "dev-trn2-use2"):
        load_stack_file(REPO, stack)


def problems_of(err) -> list[str]:
    return [line.removeprefix("  - ") for line in str(err.value).splitlines()[1:]]


def test_the_render_summary_lists_the_az_ids_each_pool_got(tmp_path, capsys):
    assert cli.main(["render", "dev-use2", "--no-check", "--out", str(tmp_path / "out")]) == exitcodes.OK
    out = capsys.readouterr().out
    pools = out.split("node pools:\n", 1)[1].split("monitoring:", 1)[0]
    trn1n = next(line for line in pools.splitlines() if "trn1n.32xlarge" in line)
    assert "AZ IDs use2-az3 " in trn1n  # the only AZ offering trn1n in us-east-2
