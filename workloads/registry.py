"""Which module deploys which workload. Each module offers `parse(section, platform, stack)`
(pure, raises WorkloadConfigError) and `component(name, base, settings)` returning a
ComponentResource with an `outputs` dict (commands to follow the run, endpoints)."""
from __future__ import annotations

from types import SimpleNamespace

from workloads import compile as compile_workload

WORKLOADS = {
    "compile": SimpleNamespace(parse=compile_workload.parse, component=compile_workload.CompileWorkload),
}
