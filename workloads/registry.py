"""Which module deploys which workload. Each module offers `parse(section, platform, stack)`
(pure, raises WorkloadConfigError) and a ComponentResource taking `(name, base, settings)`
with an `outputs` dict (commands to follow the run, endpoints).

Every workload declares its Neuron tracks (workloads/config.py WORKLOAD_TRACKS): its parse sees
the platform with them set, so each accelerator pool it resolves is checked against
them (workloads/common.py check_track) before any resource exists."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Callable

from workloads import compile as compile_workload
from workloads import llm_serve, lora, nemo, ray_pretrain, titan
from workloads.config import WORKLOAD_TRACKS


def _on_track(name: str, parse: Callable) -> Callable:
    def parse_on_track(section, *, platform, stack):
        return parse(section, platform=dataclasses.replace(platform, workload_tracks=WORKLOAD_TRACKS[name]), stack=stack)

    return parse_on_track


_MODULES = {
    "compile": (compile_workload.parse, compile_workload.CompileWorkload),
    "nemo-pretrain": (nemo.parse, nemo.NemoPretrainWorkload),
    "ray-pretrain": (ray_pretrain.parse, ray_pretrain.RayPretrainWorkload),
    "lora-finetune": (lora.parse, lora.LoraFinetuneWorkload),
    "llm-serve": (llm_serve.parse, llm_serve.LlmServeWorkload),
    "titan-pretrain": (titan.parse, titan.TitanPretrainWorkload),
}
WORKLOADS = {name: SimpleNamespace(parse=_on_track(name, parse), component=component, tracks=WORKLOAD_TRACKS[name])
             for name, (parse, component) in _MODULES.items()}
