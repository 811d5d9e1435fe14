"""Burn-in of this node: run the checks, then pass (remove the taint) or fail (record, replace).

    python3 -m trn_workloads.burnin --expectations /etc/trn-burnin/expectations.json

Environment (set by infra/burnin.py): NODE_NAME (downward API), POD_NAMESPACE,
BURNIN_STATE_CONFIGMAP, EVENT_NAMESPACE. After it acts it sleeps: a DaemonSet pod must keep
running, and a restart would burn the node in again.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from . import checks, decisions, parsers
from ..kube_api import ApiError, Kube
from ..rate_bound import history_from_configmap, history_to_configmap

POOL_LABEL = "trn-platform/pool"  # infra/nodepools.py POOL_LABEL
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CONFLICT_RETRIES = 5
RETRY_REPLACEMENT_SECONDS = 300  # a failed node waiting for the rate bound asks again this often


@dataclass(frozen=True)
class Commands:
    """The commands and their time limits. `nccom-test -r <NeuronCores> allr` runs an all-reduce
    over every NeuronCore of the node at the default 32 MB size with `--check` verifying the data
    (aws-neuron-sdk tools/neuron-sys-tools/nccom-test.rst: `-r/--nworkers`, `allr`, `-c/--check`)."""
    timeout_seconds: int = 600
    # Where the Neuron tools (aws-neuronx-tools) and the EFA installer's libfabric put them when
    # the image's PATH does not name them.
    tool_dirs: tuple[str, ...] = ("/opt/aws/neuron/bin", "/opt/amazon/efa/bin")

    def tool(self, name: str) -> str:
        found = shutil.which(name)
        if found:
            return found
        return next((f"{d}/{name}" for d in self.tool_dirs if os.path.exists(f"{d}/{name}")), name)

    def neuron_ls(self) -> list[str]:
        return [self.tool("neuron-ls"), "--json-output"]

    def fi_info(self) -> list[str]:
        return [self.tool("fi_info"), "-p", "efa"]

    def nccom_test(self, ranks: int) -> list[str]:
        return [self.tool("nccom-test"), "-r", str(ranks), "--check", "allr"]


def run(cmd: list[str], *, timeout: int, env: dict[str, str]) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not found in the image"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd)}: no result within {timeout}s"
    return p.returncode, p.stdout + ("\n" + p.stderr if p.returncode else "")


def burn_in(expect: checks.Expectations, commands: Commands, env: dict[str, str]) -> list[str]:
    """Every problem found (empty: the node passed)."""
    problems: list[str] = []
    code, out = run(commands.neuron_ls(), timeout=120, env=env)
    if code:
        return [f"neuron-ls failed ({code}): {out.strip()[:300]}"]
    problems += checks.check_devices(expect, parsers.parse_neuron_ls(out))
    if expect.efa_devices:
        code, out = run(commands.fi_info(), timeout=120, env=env)
        # fi_info exits non-zero when the provider finds no device: that is zero devices, not an error.
        problems += checks.check_efa(expect, parsers.efa_devices(out))
    if problems:
        return problems  # a collective over missing devices says nothing more
    code, out = run(commands.nccom_test(expect.neuron_cores), timeout=commands.timeout_seconds, env=env)
    result = parsers.parse_nccom_test(out)
    problems += checks.check_collective(expect, result)
    if code and not problems:
        problems.append(f"nccom-test exited {code}: {out.strip()[-300:]}")
    return problems


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def remove_taint(kube: Kube, node_name: str) -> None:
    for _ in range(CONFLICT_RETRIES):
        node = kube.get_node(node_name)
        taints = node["spec"].get("taints")
        if not decisions.has_burn_in_taint(taints):
            return
        try:
            kube.set_taints(node_name, node["metadata"]["resourceVersion"], decisions.taints_without_burn_in(taints))
            return
        except ApiError as e:
            if e.status not in (409, 422):  # 422: the resourceVersion test of the JSON patch failed
                raise
    raise RuntimeError(f"could not remove the burn-in taint of {node_name}: the node kept changing")


def try_replace(kube: Kube, node: dict, *, pool: str, max_per_hour: int, state: tuple[str, str]) -> str:
    """Delete the node's NodeClaim if the pool's hourly bound allows; returns what happened."""
    namespace, name = state
    for _ in range(CONFLICT_RETRIES):
        cm = kube.get_configmap(namespace, name)
        decision = decisions.decide_replacement(history_from_configmap(cm.get("data")), pool=pool,
                                                now=time.time(), max_per_hour=max_per_hour)
        if not decision.allowed:
            return decision.reason
        claim = decisions.nodeclaim_of(kube.list_nodeclaims(), node_name=node["metadata"]["name"],
                                       provider_id=node["spec"].get("providerID"))
        if claim is None:  # spends no replacement
            return "no NodeClaim found for this node (not launched by Karpenter?); it stays tainted"
        try:  # recorded before acting: a conflict means another node took the slot meanwhile
            kube.replace_configmap(namespace, name, {**cm, "data": history_to_configmap(decision.history)})
        except ApiError as e:
            if e.status == 409:
                continue
            raise
        kube.delete_nodeclaim(claim["metadata"]["name"])
        return f"deleted NodeClaim {claim['metadata']['name']} ({decision.reason})"
    return "the replacement history kept changing; will ask again"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m trn_workloads.burnin")
    ap.add_argument("--expectations", required=True, help="JSON written by infra/burnin.py")
    args = ap.parse_args(argv)
    spec = json.loads(open(args.expectations).read())
    kube = Kube.in_cluster()
    node_name = os.environ["NODE_NAME"]
    state = (os.environ["POD_NAMESPACE"], os.environ["BURNIN_STATE_CONFIGMAP"])
    event_ns = os.environ.get("EVENT_NAMESPACE", state[0])

    node = kube.get_node(node_name)
    if not decisions.has_burn_in_taint(node["spec"].get("taints")):
        print(f"{node_name}: no burn-in taint (already passed); idle", flush=True)
        return idle()
    labels = node["metadata"].get("labels", {})
    pool, itype = labels.get(POOL_LABEL), labels.get(INSTANCE_TYPE_LABEL)
    pool_spec = spec["pools"].get(pool or "")
    if not pool_spec or itype not in pool_spec["instanceTypes"]:
        problems = [f"no burn-in expectations for pool {pool!r} and instance type {itype!r}"]
    else:
        expect = checks.Expectations.from_dict(pool_spec["instanceTypes"][itype])
        claim = decisions.nodeclaim_of(kube.list_nodeclaims(), node_name=node_name,
                                       provider_id=node["spec"].get("providerID"))
        expect = dataclasses.replace(expect, efa_devices=decisions.efa_devices_expected(expect.efa_devices, claim))
        env = {**os.environ, **({"NEURON_LOGICAL_NC_CONFIG": str(expect.lnc)} if expect.lnc else {})}
        problems = burn_in(expect, Commands(timeout_seconds=int(pool_spec["timeoutSeconds"])), env)
    uid = node["metadata"]["uid"]
    kube.set_condition(node_name, decisions.condition(passed=not problems, problems=problems, now=now_iso()))
    if not problems:
        remove_taint(kube, node_name)
        kube.create_event(decisions.event(node_name=node_name, node_uid=uid, reason="BurnInPassed", kind="Normal",
                                          message="burn-in passed; taint removed", now=now_iso(), namespace=event_ns))
        print(f"{node_name}: burn-in passed", flush=True)
        return idle()
    print(f"{node_name}: burn-in FAILED: " + "; ".join(problems), flush=True)
    kube.create_event(decisions.event(node_name=node_name, node_uid=uid, reason="BurnInFailed", kind="Warning",
                                      message="; ".join(problems), now=now_iso(), namespace=event_ns))
    max_per_hour = int(pool_spec["maxReplacementsPerHour"]) if pool_spec else 0
    while True:  # bounded by the node's life: it ends when Karpenter deletes the node
        outcome = try_replace(kube, node, pool=pool or "", max_per_hour=max_per_hour, state=state)
        print(f"{node_name}: {outcome}", flush=True)
        if outcome.startswith("deleted") or "stays tainted" in outcome:
            return idle()
        time.sleep(RETRY_REPLACEMENT_SECONDS)


def idle() -> int:
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
