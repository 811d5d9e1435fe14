"""Parsers of the three commands' outputs (formats as the tools' documentation shows them;
fixtures with their sources: tests/fixtures/burnin/)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class NeuronDevice:
    index: int
    cores: int  # NeuronCores of this device at the node's LNC (`nc_count`)
    memory_bytes: int
    lnc: int | None  # `logical_neuroncore_config`: only on Trn2/Trn3


def parse_neuron_ls(text: str) -> list[NeuronDevice]:
    """`neuron-ls --json-output`: a JSON list, one object per device with `neuron_device`,
    `nc_count`, `memory_size` (bytes) and on Trn2 `logical_neuroncore_config`
    (aws-neuron/aws-neuron-sdk@81ce03ae tools/neuron-sys-tools/neuron-ls.rst, "neuron-ls -j"
    and "Field Definitions")."""
    doc = json.loads(text)
    if not isinstance(doc, list):
        raise ValueError(f"neuron-ls --json-output: expected a JSON list of devices, got {type(doc).__name__}")
    return [NeuronDevice(index=int(d["neuron_device"]), cores=int(d["nc_count"]), memory_bytes=int(d["memory_size"]),
                         lnc=int(d["logical_neuroncore_config"]) if d.get("logical_neuroncore_config") else None)
            for d in doc]


# fi_info's summary output: one block per fabric interface, `provider:` then indented
# `fabric:`/`domain:`/`version:`/`type:`/`protocol:` lines (ofiwg/libfabric@v2.6.0 man/fi_info.1.md,
# OUTPUT). The EFA provider names a domain after its device plus `-rdm` or `-dgrm`
# (ofiwg/libfabric@v2.6.0 prov/efa/src/efa_domain.h), and lists each device once per fabric
# (`efa`, `efa-direct`) and endpoint type: devices are counted by name, not by block.
_FI_FIELD = re.compile(r"^\s*(provider|fabric|domain|version|type|protocol):\s*(\S.*?)\s*$")
_EFA_DOMAIN_SUFFIX = re.compile(r"-(rdm|dgrm)$")


def parse_fi_info(text: str) -> list[dict[str, str]]:
    """The interface blocks of `fi_info` summary output, as {field: value} dicts."""
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        m = _FI_FIELD.match(line)
        if not m:
            continue
        key, value = m.groups()
        if key == "provider":
            blocks.append({})
        if blocks:
            blocks[-1][key] = value
    return blocks


def efa_devices(text: str) -> list[str]:
    """The distinct EFA devices `fi_info -p efa` lists (sorted)."""
    return sorted({_EFA_DOMAIN_SUFFIX.sub("", b["domain"]) for b in parse_fi_info(text)
                   if b.get("provider") == "efa" and "domain" in b})


@dataclass(frozen=True)
class CollectiveResult:
    rows: list[dict[str, float]]  # one per message size: size_bytes, time_us, algbw_gbps, busbw_gbps
    avg_bus_bandwidth_gbps: float | None
    failures: list[str]  # lines reporting failed runs or data-check errors


# `nccom-test` prints a table `size(B) count(elems) type time(us) algbw(GB/s) busbw(GB/s)` (the
# time column may be `time:avg(us)` and more columns may come between), one row per size, then
# `Avg bus bandwidth: <x>GB/s`; a failed run prints `Failure running neuron-bench ...` and
# `<n> errors found - test failed` (aws-neuron/aws-neuron-sdk@81ce03ae
# tools/neuron-sys-tools/nccom-test.rst, "Output description" and "Examples").
_AVG = re.compile(r"Avg bus bandwidth:\s*([0-9.]+)\s*GB/s")
_FAILURE = re.compile(r"(Failure running|errors? found|test failed)", re.I)


def parse_nccom_test(text: str) -> CollectiveResult:
    header: list[str] | None = None
    rows: list[dict[str, float]] = []
    failures: list[str] = []
    avg = None
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "size(B)":
            header = fields
            continue
        m = _AVG.search(line)
        if m:
            avg = float(m.group(1))
            continue
        if _FAILURE.search(line):
            failures.append(line.strip())
            continue
        if header and len(fields) == len(header) and fields[0].isdigit():
            col = dict(zip(header, fields))
            time_key = next(k for k in header if k.startswith("time"))
            rows.append({"size_bytes": float(col["size(B)"]), "time_us": float(col[time_key]),
                         "algbw_gbps": float(col["algbw(GB/s)"]), "busbw_gbps": float(col["busbw(GB/s)"])})
    return CollectiveResult(rows=rows, avg_bus_bandwidth_gbps=avg, failures=failures)
