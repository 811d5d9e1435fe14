"""Bad workload stack input against its platform (issue 16): a platformStack of another
project, a region other than the platform's, a platform stack that does not exist."""
from __future__ import annotations

import copy

import pytest

from tests.platform_helpers import assert_rejected_before_any_resource, stack_config
from workloads import config as wconfig
from workloads.errors import WorkloadConfigError

BASE = stack_config("workloads", "compile-usw2")


def changed(key: str, value) -> dict:
    cfg = copy.deepcopy(BASE)
    cfg[key if ":" in key else f"trn-workloads:{key}"] = value
    return cfg


BAD = {
    "platform stack of another project": (
        changed("platformStack", "organization/trn-platfrom/dev-usw2"),
        "platformStack: 'organization/trn-platfrom/dev-usw2' names project 'trn-platfrom'; "
        "the platform project is 'trn-platform'"),
    "platform stack not fully qualified": (
        changed("platformStack", "dev-usw2"),
        "platformStack: 'dev-usw2' is not a stack reference; use <organization>/trn-platform/<stack>"),
    "region other than the platform's": (
        changed("aws:region", "us-east-2"),
        "aws:region: 'us-east-2' differs from the region of platform stack organization/trn-platform/dev-usw2 "
        "(us-west-2); set aws:region: us-west-2"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_rejected_before_any_resource(case, tmp_path):
    cfg, expected = BAD[case]
    assert_rejected_before_any_resource(tmp_path, "workloads", cfg, expected, WorkloadConfigError)


def test_region_missing_is_named():
    from tests.test_workloads_common import KUBECONFIG, platform_values
    from workloads.platform import check_region, parse_platform_outputs

    platform = parse_platform_outputs("organization/trn-platform/dev-usw2", platform_values(), KUBECONFIG)
    with pytest.raises(WorkloadConfigError, match="aws:region: is not set; it must be the region of platform stack"):
        check_region(platform, None)
    check_region(platform, platform.region)  # the same region passes
    cfg = copy.deepcopy(BASE)
    del cfg["aws:region"]
    raw, region = wconfig.raw_from_bag(cfg, wconfig.PROJECT)
    assert region is None and wconfig.parse(raw, stack="s", region=region).region is None
