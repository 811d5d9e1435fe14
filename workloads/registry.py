"""Which module deploys which workload. Each module offers `parse(section, platform, stack)`
(pure, raises WorkloadConfigError) and a ComponentResource taking `(name, base, settings)`
with an `outputs` dict (commands to follow the run, endpoints)."""
from __future__ import annotations

from types import SimpleNamespace

from workloads import compile as compile_workload
from workloads import llm_serve, lora, nemo, ray_pretrain

WORKLOADS = {
    "compile": SimpleNamespace(parse=compile_workload.parse, component=compile_workload.CompileWorkload),
    "nemo-pretrain": SimpleNamespace(parse=nemo.parse, component=nemo.NemoPretrainWorkload),
    "ray-pretrain": SimpleNamespace(parse=ray_pretrain.parse, component=ray_pretrain.RayPretrainWorkload),
    "lora-finetune": SimpleNamespace(parse=lora.parse, component=lora.LoraFinetuneWorkload),
    "llm-serve": SimpleNamespace(parse=llm_serve.parse, component=llm_serve.LlmServeWorkload),
}
