"""Facts about instance types, regions and AZ offerings, read from infra/data/.

`instance_types.json` holds hardware facts (vCPU, memory, Neuron devices, physical and
logical NeuronCores, device memory, EFA interfaces, EC2 usage classes) and, per family,
its Logical NeuronCore (LNC) settings.
`offerings-snapshot.json` is a snapshot of DescribeInstanceTypeOfferings for the offline
render only (every region offering an accelerator family, generated from moto's recording by
scripts/offerings_snapshot.py); live deployments and preflight ask EC2.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
# EC2 SupportedUsageClasses of a type whose entry names none (the general-purpose CPU types).
DEFAULT_USAGE_CLASSES = ("on-demand", "spot")


@dataclass(frozen=True)
class InstanceType:
    name: str
    family: str
    vcpu: int
    memory_gib: int
    neuron_devices: int
    neuron_cores: int
    efa_interfaces: int
    instance_store_gib: int
    device_memory_gib: int = 0
    # NeuronCores the Neuron runtime exposes per LNC setting ({lnc: cores}); empty where the
    # hardware has no LNC (trn1/inf2: every physical core is one NeuronCore).
    logical_neuron_cores: dict[int, int] = field(default_factory=dict, hash=False)
    usage_classes: tuple[str, ...] = DEFAULT_USAGE_CLASSES
    ultraserver: bool = False
    # ENIs of the default network card and IPv4 addresses per ENI (Karpenter's ENI-limited max pods); 0: unknown
    default_card_interfaces: int = 0
    ipv4_per_interface: int = 0
    # Facts (instance_types.json keys) no EC2 answer confirms (Trn3): preflight compares them with
    # the live DescribeInstanceTypes answer.
    unverified: tuple[str, ...] = ()

    def neuron_cores_at(self, lnc: int | None) -> int:
        """NeuronCores a pod sees on this type at Logical NeuronCore setting `lnc`."""
        return self.logical_neuron_cores[lnc] if lnc else self.neuron_cores


@dataclass(frozen=True)
class WorkloadCapacity:
    """What one workload preset needs from a node pool (checked at platform config time)."""
    instance_type: str
    nodes: int
    efa: bool


# The multi-node presets of the workloads (workloads/ and images/trn_workloads/ hold the
# full presets; tests assert these agree).
WORKLOAD_CAPACITY: dict[str, WorkloadCapacity] = {
    "nemo-llama2-7b": WorkloadCapacity("trn1.32xlarge", 4, True),
    "nemo-small": WorkloadCapacity("trn1.32xlarge", 1, True),
    "ray-llama2-7b": WorkloadCapacity("trn1.32xlarge", 2, True),
    "lora-llama3-8b": WorkloadCapacity("trn1.32xlarge", 1, False),
    "compile": WorkloadCapacity("trn1.2xlarge", 1, False),
}


@functools.lru_cache(maxsize=None)
def _instance_data() -> dict:
    return json.loads((DATA / "instance_types.json").read_text())


@functools.lru_cache(maxsize=None)
def _offerings() -> dict:
    return json.loads((DATA / "offerings-snapshot.json").read_text())


def instance_type(name: str) -> InstanceType:
    d = _instance_data()["instanceTypes"][name]
    return InstanceType(name=name, family=d["family"], vcpu=d["vcpu"], memory_gib=d["memoryGiB"],
                        neuron_devices=d["neuronDevices"], neuron_cores=d["neuronCores"],
                        efa_interfaces=d["efaInterfaces"], instance_store_gib=d["instanceStoreGiB"],
                        device_memory_gib=d.get("deviceMemoryGiB", 0),
                        logical_neuron_cores={int(k): v for k, v in d.get("logicalNeuronCores", {}).items()},
                        usage_classes=tuple(d.get("usageClasses", DEFAULT_USAGE_CLASSES)),
                        ultraserver=d.get("ultraServer", False), unverified=tuple(d.get("unverified", ())),
                        default_card_interfaces=d.get("defaultCardEnis", 0), ipv4_per_interface=d.get("ipv4PerEni", 0))


@dataclass(frozen=True)
class LncSetting:
    """A family's Logical NeuronCore configuration: the values the Neuron runtime accepts
    and the one it uses when none is set."""
    allowed: tuple[int, ...]
    default: int


def family_lnc(family: str) -> LncSetting | None:
    """None for families without LNC (trn1, trn1n, inf2, cpu)."""
    lnc = _instance_data()["families"][family].get("lnc")
    return LncSetting(tuple(lnc["allowed"]), lnc["default"]) if lnc else None


def family_not_offered(family: str) -> str | None:
    """Why a family has no instance type in the catalog, or None when it has some."""
    return _instance_data()["families"][family].get("notOffered")


def family_unverified(family: str) -> str | None:
    """Why EC2 gives no facts for a family whose types the catalog still lists (Trn3: named by
    Neuron's sources only), or None. Such a family has no recorded regions: preflight asks EC2."""
    return _instance_data()["families"][family].get("unverified")


def families() -> tuple[str, ...]:
    return tuple(_instance_data()["families"])


def all_instance_types() -> tuple[str, ...]:
    return tuple(_instance_data()["instanceTypes"])


def instance_types_of(family: str) -> tuple[str, ...]:
    return tuple(n for n, d in _instance_data()["instanceTypes"].items() if d["family"] == family)


def cpu_instance_types() -> tuple[str, ...]:
    return instance_types_of("cpu")


def family_regions(family: str) -> tuple[str, ...]:
    """Regions where EC2 offers a type of the family, from the offerings snapshot (one source:
    scripts/offerings_snapshot.py); ("*",) for the CPU family, offered everywhere."""
    if not _instance_data()["families"][family].get("accelerator"):
        return ("*",)
    types = instance_types_of(family)
    return tuple(r for r in known_regions() if any(_offerings()[r]["offerings"].get(t) for t in types))


def family_in_region(family: str, region: str) -> bool:
    regions = family_regions(family)
    return "*" in regions or region in regions


def known_regions() -> tuple[str, ...]:
    """Regions this repository has offering data for (offline render and validation); keys
    starting with `_` are the data file's notes (`_comment`), not regions."""
    return tuple(sorted(r for r in _offerings() if not r.startswith("_")))


def zone_ids(region: str) -> tuple[str, ...]:
    return tuple(_offerings()[region]["zones"])


def zone_names(region: str) -> dict[str, str]:
    return dict(_offerings()[region]["zones"])


def snapshot_offerings(region: str, instance_type_name: str) -> tuple[str, ...]:
    """AZ IDs offering an instance type, from the snapshot (mock runtime only)."""
    offers = _offerings()[region]["offerings"]
    return tuple(offers.get(instance_type_name, offers["*"]))
