"""Workload config errors share the platform's error type: one message listing every bad
key with its allowed values, raised before any resource is registered."""
from stackfiles import ConfigError


class WorkloadConfigError(ConfigError):
    def __init__(self, problems: list[str]):
        super().__init__(problems, "workload stack config")
