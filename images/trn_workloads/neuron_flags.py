"""NEURON_CC_FLAGS merging, shared by every training path that sets compiler flags of its own.

The pods already set NEURON_CC_FLAGS (`--cache_dir=<FSx cache>`, workloads/common.py), so a
workload must add its flags to what is there, not replace it, nor let the pod's value
replace its own. An option the current value already sets (by name, in `--opt=value`,
`--opt value` or bare `--opt` form) keeps the value given there: the pod's setting wins.
"""
from __future__ import annotations

from typing import Sequence


def option_name(flag: str) -> str:
    """`--model-type=transformer` -> `--model-type`; `--retry_failed_compilation` -> itself."""
    return flag.split("=", 1)[0]


def merge_compiler_flags(current: str | None, required: Sequence[str]) -> str:
    """`current` (a NEURON_CC_FLAGS value, may be empty) plus each of `required` whose option it
    does not set yet, appended in order."""
    tokens = (current or "").split()
    present = {option_name(token) for token in tokens if token.startswith("-")}
    for flag in required:
        name = option_name(flag)
        if name not in present:
            tokens.append(flag)
            present.add(name)
    return " ".join(tokens)
