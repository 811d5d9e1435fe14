"""What the platform program, the workload program and the offline tools share: reading
stack files, the config reader that validates them, and the record format of what a
stack registers."""
from stackfiles.files import (check_namespaces, decode_value, pulumi_config_bag, raw_from_bag, read_stack_bag,
                               stack_argument, stack_file, stacks_in)
from stackfiles.reader import ConfigError, ConfigReader

__all__ = ["ConfigError", "ConfigReader", "check_namespaces", "decode_value", "pulumi_config_bag", "raw_from_bag",
           "read_stack_bag", "stack_argument", "stack_file", "stacks_in"]
