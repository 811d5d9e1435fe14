"""Bad platform stack input (issue 16): each case gets one clear message naming the file or
key and what is allowed, before anything renders; none is silently accepted."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from infra import catalog, config
from infra.config import ConfigError, load_stack_file
from tests.platform_helpers import stack_config

BASE = stack_config("platform", "dev-usw2")
ROOT = Path(__file__).resolve().parents[1]


def changed(key: str, value, base: dict = BASE) -> dict:
    cfg = copy.deepcopy(base)
    cfg[key if ":" in key else f"trn-platform:{key}"] = value
    return cfg


def pool_changed(index: int, **changes) -> dict:
    pools = copy.deepcopy(BASE["trn-platform:nodePools"])
    pools[index].update(changes)
    return changed("nodePools", pools)


def problems_for(tmp_path, cfg: dict) -> str:
    (tmp_path / "Pulumi.bad.yaml").write_text(yaml.safe_dump({"config": cfg}))
    with pytest.raises(ConfigError) as err:
        load_stack_file(tmp_path, "bad")
    return str(err.value)


ACCEPTED_TODAY_BUT_WRONG = {
    "negative system disk": (changed("systemNodes", {**BASE["trn-platform:systemNodes"], "diskSizeGiB": -5}),
                             "systemNodes.diskSizeGiB: -5 is not allowed; must be 20 to 16384"),
    "ecr name with capitals": (changed("ecrRepositories", ["compile", "Ray_Train"]),
                               "ecrRepositories[1]: 'Ray_Train' is not an ECR repository name"),
    "ecr name with a space": (changed("ecrRepositories", ["my repo"]),
                              "ecrRepositories[0]: 'my repo' is not an ECR repository name"),
    "ecr name twice": (changed("ecrRepositories", ["serve", "serve"]), "ecrRepositories: 'serve' is listed more than once"),
    "infinite budget": (changed("budget", {"monthlyLimitUsd": float("inf"), "alertEmails": ["a@example.com"]}),
                        "budget.monthlyLimitUsd: inf is not allowed; must be a positive amount"),
    "nan budget": (changed("budget", {"monthlyLimitUsd": float("nan"), "alertEmails": ["a@example.com"]}),
                   "budget.monthlyLimitUsd: nan is not allowed"),
    "tag value list": (changed("tags", {"team": ["a", "b"]}), "tags.team: expected a string value, got list ['a', 'b']"),
    "tag key aws:": (changed("tags", {"aws:owner": "me"}), "tags.aws:owner: keys starting with 'aws:' are reserved by AWS"),
    "tag key the platform sets": (changed("tags", {"trn-platform/cluster": "other"}),
                                  "tags.trn-platform/cluster: the platform sets this tag itself"),
    "fsx mount on /": (changed("fsx", {"mountPath": "/"}), "fsx.mountPath: '/' must be a plain absolute directory"),
    "fsx mount on /etc": (changed("fsx", {"mountPath": "/etc/data"}), "fsx.mountPath: '/etc/data' is inside a system directory"),
    "fsx mount on /opt": (changed("fsx", {"mountPath": "/opt"}), "fsx.mountPath: '/opt' is inside a system directory"),
    "fsx mount with ..": (changed("fsx", {"mountPath": "/shared/../etc"}), "fsx.mountPath: '/shared/../etc' must be a plain"),
    "fsx pvc name": (changed("fsx", {"pvcName": "Shared_Data"}), "fsx.pvcName: 'Shared_Data' is not a Kubernetes object name"),
    "fsx pvc namespace": (changed("fsx", {"pvcNamespace": "ml.shared"}), "fsx.pvcNamespace: 'ml.shared' is not a namespace name"),
    "fsx s3 path without bucket": (changed("fsx", {"s3ImportPath": "s3:///datasets"}),
                                   "fsx.s3ImportPath: 's3:///datasets' must be s3://<bucket>[/<prefix>]"),
    "disruption budget": (pool_changed(1, disruptionBudgetNodes="ten"),
                          "nodePools[1].disruptionBudgetNodes: 'ten' is not allowed; a node count such as 1 or a percentage"),
    "disruption budget over 100%": (pool_changed(1, disruptionBudgetNodes="150%"),
                                    "nodePools[1].disruptionBudgetNodes: '150%' is not allowed"),
    "pool name too long": (pool_changed(3, name="cpu-" + "x" * 41),
                           f"nodePools[3].name: 'cpu-{'x' * 41}' is 45 characters; at most 40 are allowed"),
    "cluster name too long": (changed("clusterName", "trn-" + "a" * 40), "clusterName: 'trn-" + "a" * 40 +
                              "' is 44 characters; at most 40 are allowed"),
    "pool name characters": (pool_changed(3, name="CPU"), "nodePools[3].name: 'CPU' must be lowercase letters"),
    "maxNodes too large": (pool_changed(1, maxNodes=100), "nodePools[1].maxNodes: 100 is not allowed; must be 1 to 64"),
    "unquoted kubernetes version": (changed("kubernetesVersion", 1.34),
                                    'kubernetesVersion: expected str, got float 1.34; YAML read an unquoted value as a number '
                                    '(1.30 becomes 1.3): quote it exactly as written'),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED_TODAY_BUT_WRONG))
def test_bad_value_is_refused_naming_the_key(case, tmp_path):
    cfg, expected = ACCEPTED_TODAY_BUT_WRONG[case]
    assert expected in problems_for(tmp_path, cfg)


@pytest.mark.parametrize("bad", [100, "four"])
def test_bad_max_nodes_is_reported_as_given_and_never_as_zero(bad, tmp_path):
    message = problems_for(tmp_path, pool_changed(1, maxNodes=bad))
    assert f"nodePools[1].maxNodes: {bad if isinstance(bad, int) else 'expected int'}" in message
    assert "0 is below" not in message and ": 0 " not in message
    assert "none is configured" not in message  # the pool exists; it only has a bad maxNodes
    assert len(message.splitlines()) == 2  # the header and exactly this one problem


def test_unknown_region_lists_regions_not_the_data_files_comment(tmp_path):
    message = problems_for(tmp_path, changed("aws:region", "mars-east-1"))
    assert f"supported regions: {', '.join(catalog.known_regions())};" in message and "us-east-1, us-east-2, us-west-2" in message
    assert "_comment" not in message
    assert "_comment" not in catalog.known_regions()


def test_good_tags_are_kept_as_strings():
    raw, region = config.raw_from_bag(changed("tags", {"team": "ml", "cost-center": 1234}))
    assert config.parse(raw, stack="t", region=region).tags == {"team": "ml", "cost-center": "1234"}


# --------------------------------------------------------------------------- the stack file itself

GOOD_FILE = (ROOT / "Pulumi.dev-usw2.yaml").read_text()

BROKEN_FILES = {
    "yaml syntax error": (GOOD_FILE.replace("  trn-platform:identity: pod-identity\n",
                                            "  trn-platform:identity: [pod-identity\n"),
                          "Pulumi.bad.yaml: YAML syntax error at line"),
    "config is not a mapping": ("config:\n  - aws:region: us-west-2\n",
                                "Pulumi.bad.yaml: config: expected a mapping of <namespace>:<name> settings, got list"),
    "file is not a mapping": ("- config\n", "Pulumi.bad.yaml: expected a mapping with a `config:` section, got list"),
    "duplicate top-level key": (GOOD_FILE + "  trn-platform:identity: irsa\n",
                                "Pulumi.bad.yaml: config.trn-platform:identity: duplicate key (lines 10 and "),
    "duplicate nested key": (GOOD_FILE.replace("    storageCapacityGiB: 1200\n",
                                               "    storageCapacityGiB: 1200\n    storageCapacityGiB: 2400\n"),
                             "Pulumi.bad.yaml: config.trn-platform:fsx.storageCapacityGiB: duplicate key (lines"),
    "misspelled project prefix": (GOOD_FILE.replace("  trn-platform:fsx:", "  trn-platfrom:fsx:"),
                                  "Pulumi.bad.yaml: config.trn-platfrom:fsx: unknown namespace 'trn-platfrom'; "
                                  "did you mean trn-platform:fsx?"),
    "key without namespace": (GOOD_FILE.replace("  trn-platform:fsx:", "  fsx:"),
                              "Pulumi.bad.yaml: config.fsx: keys are <namespace>:<name>, e.g. trn-platform:fsx"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FILES))
def test_broken_stack_file_is_one_clear_message_naming_file_and_key(case, tmp_path):
    text, expected = BROKEN_FILES[case]
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    (tmp_path / "Pulumi.bad.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_stack_file(tmp_path, "bad")
    assert expected in str(err.value)
    assert "Traceback" not in str(err.value)


def test_the_program_refuses_a_misspelled_project_prefix_too():
    """`pulumi up` hands the program every key of the stack file: one under a misspelled
    prefix would be ignored silently, so the program checks the namespaces itself."""
    import pulumi

    bag = {f"trn-platfrom:{k.split(':', 1)[1]}" if k == "trn-platform:fsx" else k: v for k, v in BASE.items()}
    pulumi.runtime.set_all_config({k: v if isinstance(v, str) else __import__("json").dumps(v) for k, v in bag.items()})
    try:
        with pytest.raises(ConfigError, match="trn-platfrom:fsx: unknown namespace 'trn-platfrom'; did you mean "
                                              "trn-platform:fsx"):
            config.from_pulumi("s")
    finally:
        pulumi.runtime.set_all_config({})


@pytest.mark.parametrize("path", ["/shared", "/fsx/shared", "/opt/data", "/mnt/lustre"])
def test_plain_mount_paths_are_accepted(path):
    assert config.mount_path_problem(path) is None
