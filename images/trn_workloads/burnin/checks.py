"""What a healthy node of an instance type shows, and the checks of the three outputs against it.

The expectations come from the platform (infra/burnin.py writes them from infra/catalog.py per
pool and instance type into the DaemonSet's ConfigMap); each check returns the problems it
found, worded for the node Event a person reads.
"""
from __future__ import annotations

from dataclasses import dataclass

from .parsers import CollectiveResult, NeuronDevice

GIB = 2**30
# A device's reported memory may differ from the catalog's whole GiB by rounding; a missing
# HBM stack is a quarter or more of it.
MEMORY_TOLERANCE = 0.02


@dataclass(frozen=True)
class Expectations:
    instance_type: str
    neuron_devices: int
    device_memory_gib: float  # per device
    neuron_cores: int  # NeuronCores of the node at its pool's LNC
    lnc: int | None
    efa_devices: int  # 0: the pool has no EFA, fi_info is not run
    bus_bandwidth_floor_gbps: float  # nccom-test all-reduce "Avg bus bandwidth" at least this

    @classmethod
    def from_dict(cls, d: dict) -> Expectations:
        return cls(instance_type=d["instanceType"], neuron_devices=int(d["neuronDevices"]),
                   device_memory_gib=float(d["deviceMemoryGiB"]), neuron_cores=int(d["neuronCores"]),
                   lnc=d.get("lnc"), efa_devices=int(d["efaDevices"]),
                   bus_bandwidth_floor_gbps=float(d["busBandwidthFloorGBps"]))


def check_devices(expect: Expectations, devices: list[NeuronDevice]) -> list[str]:
    problems = []
    if len(devices) != expect.neuron_devices:
        problems.append(f"neuron-ls lists {len(devices)} Neuron devices; {expect.instance_type} has "
                        f"{expect.neuron_devices}")
    want = expect.device_memory_gib * GIB
    for d in devices:
        if abs(d.memory_bytes - want) > MEMORY_TOLERANCE * want:
            problems.append(f"Neuron device {d.index} reports {d.memory_bytes / GIB:.1f} GiB of memory; "
                            f"{expect.instance_type} devices have {expect.device_memory_gib:g} GiB")
    cores = sum(d.cores for d in devices)
    if cores != expect.neuron_cores:
        problems.append(f"neuron-ls counts {cores} NeuronCores; {expect.instance_type} at LNC "
                        f"{expect.lnc or 1} has {expect.neuron_cores}")
    if expect.lnc:
        wrong = sorted({d.lnc for d in devices if d.lnc != expect.lnc}, key=str)
        if wrong:
            problems.append(f"devices run at logical NeuronCore config {', '.join(map(str, wrong))}; the pool sets "
                            f"LNC {expect.lnc}")
    return problems


def check_efa(expect: Expectations, devices: list[str]) -> list[str]:
    if len(devices) == expect.efa_devices:
        return []
    return [f"fi_info -p efa lists {len(devices)} EFA devices ({', '.join(devices) or 'none'}); an EFA "
            f"{expect.instance_type} has {expect.efa_devices}"]


def check_collective(expect: Expectations, result: CollectiveResult) -> list[str]:
    problems = [f"nccom-test all-reduce failed: {line}" for line in result.failures]
    if result.avg_bus_bandwidth_gbps is None:
        if not problems:
            problems.append("nccom-test printed no 'Avg bus bandwidth' line")
    elif result.avg_bus_bandwidth_gbps < expect.bus_bandwidth_floor_gbps:
        problems.append(f"nccom-test all-reduce bus bandwidth {result.avg_bus_bandwidth_gbps:g} GB/s is below the "
                        f"floor of {expect.bus_bandwidth_floor_gbps:g} GB/s for {expect.instance_type}")
    return problems
