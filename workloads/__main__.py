"""The workload program: one stack = one pinned version of one workload on one platform.

Config is parsed and checked against the platform's outputs (pools, limits, devices)
before any workload resource is registered; then the shared base (provider, identity,
image) and the workload's own component are composed.
"""
import sys
from pathlib import Path

# Pulumi runs this file from workloads/; the packages below live at the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi  # noqa: E402

from workloads import config, registry  # noqa: E402
from workloads.common import WorkloadBase, WorkloadBaseArgs  # noqa: E402
from workloads.errors import WorkloadConfigError  # noqa: E402
from workloads.platform import read_platform  # noqa: E402

stack = pulumi.get_stack()
problems: list[str] = []
cfg = config.from_pulumi(stack, problems)
workload = registry.WORKLOADS[cfg.workload]
try:
    # Every problem at once: the common keys' and the workload section's (when the workload and
    # its platform are known), in one message naming the stack and its file.
    if config.common_keys_usable(problems):
        platform = read_platform(cfg.platform_stack, region=cfg.region)
        settings = workload.parse(cfg.section, platform=platform, stack=cfg)
except WorkloadConfigError as err:
    problems += err.problems
if problems:
    raise WorkloadConfigError(problems, stack=stack)

base = WorkloadBase(cfg.stack, WorkloadBaseArgs(config=cfg, platform=platform,
                                                s3_prefixes=[f"workloads/{cfg.stack}"]))
deployed = workload.component(cfg.workload, base=base, settings=settings)

pulumi.export("workload", cfg.workload)
pulumi.export("version", cfg.version)
pulumi.export("image", base.image)
pulumi.export("namespace", base.namespace)
pulumi.export("runDir", base.paths.run_dir)
for key, value in deployed.outputs.items():
    pulumi.export(key, value)
