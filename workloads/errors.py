"""Workload config errors share the platform's error type: one message listing every bad
key with its allowed values, raised before any resource is registered. The message names the
stack and its file when the stack is known (the program labels what its parts raise)."""
from stackfiles import ConfigError


class WorkloadConfigError(ConfigError):
    def __init__(self, problems: list[str], stack: str | None = None):
        self.stack = stack
        source = (f"config for workload stack {stack!r} (workloads/Pulumi.{stack}.yaml)" if stack
                  else "workload stack config")
        super().__init__(problems, source)
