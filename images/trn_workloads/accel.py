"""The one switch between the Neuron path (production) and the CPU path (tests, laptops).

`TRN_BACKEND=neuron|cpu|auto` (default auto) selects it. `auto` picks Neuron when the
Neuron PyTorch stack imports and a Neuron device is visible, CPU otherwise. Code asks
`backend()` once at start-up and branches on the result in one place; nothing else
probes for Neuron.
"""
from __future__ import annotations

import enum
import functools
import glob
import importlib.util
import logging
import os

log = logging.getLogger(__name__)

ENV_VAR = "TRN_BACKEND"


class Backend(str, enum.Enum):
    NEURON = "neuron"
    CPU = "cpu"


def _neuron_stack_importable() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch_neuronx", "torch_xla"))


def _neuron_device_present() -> bool:
    # The Neuron driver exposes /dev/neuron0..N on trn1/inf2 hosts and in pods that were
    # given aws.amazon.com/neuron devices by the device plugin.
    return bool(glob.glob("/dev/neuron*"))


@functools.lru_cache(maxsize=None)
def backend() -> Backend:
    wanted = os.environ.get(ENV_VAR, "auto").strip().lower()
    allowed = ("auto", Backend.NEURON.value, Backend.CPU.value)
    if wanted not in allowed:
        raise ValueError(f"{ENV_VAR}={wanted!r} is not one of {', '.join(allowed)}")
    if wanted == Backend.CPU.value:
        chosen = Backend.CPU
    elif wanted == Backend.NEURON.value:
        if not _neuron_stack_importable():
            raise RuntimeError(f"{ENV_VAR}=neuron but torch_neuronx/torch_xla are not installed")
        chosen = Backend.NEURON
    else:
        chosen = Backend.NEURON if (_neuron_stack_importable() and _neuron_device_present()) else Backend.CPU
    if chosen is Backend.CPU:
        log.warning("Neuron SDK or device not found: running on the CPU path (%s=%s)", ENV_VAR, wanted)
    else:
        log.info("running on the Neuron path")
    return chosen


def is_neuron() -> bool:
    return backend() is Backend.NEURON
