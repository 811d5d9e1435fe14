"""Which module deploys which workload. Each module offers `parse(section, platform, stack)`
(pure, raises WorkloadConfigError) and a ComponentResource taking `(name, base, settings)`
with an `outputs` dict (commands to follow the run, endpoints).

Every workload runs one Neuron track (workloads/config.py WORKLOAD_TRACKS): its parse sees
the platform with that track set, so each accelerator pool it resolves is checked against
the track (workloads/common.py check_track) before any resource exists."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Callable

from workloads import compile as compile_workload
from workloads import lora, nemo, ray_pretrain, titan
from workloads.config import WORKLOAD_TRACKS


def _on_track(name: str, parse: Callable) -> Callable:
    def parse_on_track(section, *, platform, stack):
        return parse(section, platform=dataclasses.replace(platform, workload_track=WORKLOAD_TRACKS[name]), stack=stack)

    return parse_on_track


_MODULES = {
    "compile": (compile_workload.parse, compile_workload.CompileWorkload),
    "nemo-pretrain": (nemo.parse, nemo.NemoPretrainWorkload),
    "ray-pretrain": (ray_pretrain.parse, ray_pretrain.RayPretrainWorkload),
    "lora-finetune": (lora.parse, lora.LoraFinetuneWorkload),
    "titan-pretrain": (titan.parse, titan.TitanPretrainWorkload),
}
WORKLOADS = {name: SimpleNamespace(parse=_on_track(name, parse), component=component, track=WORKLOAD_TRACKS[name])
             for name, (parse, component) in _MODULES.items()}
