"""Images: one Neuron SDK pin for all, every package pinned, one uid, nothing floating."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infra import config, versions
from workloads.common import build_args
from workloads.config import IMAGE_DIRS, IMAGE_TRACKS

IMAGES = Path(__file__).resolve().parent.parent / "images"
_PINS = json.loads((IMAGES / "neuron-sdk.json").read_text())
PIN = {**_PINS["tracks"]["xla"], "uid": _PINS["uid"]}  # the track of the images below
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))


def test_every_repository_has_an_image_and_every_image_a_repository():
    assert sorted(p.parent.name for p in DOCKERFILES) == sorted(IMAGE_DIRS.values())
    assert sorted(IMAGE_TRACKS) == sorted(IMAGE_DIRS), "every image declares its Neuron track"
    # The default repositories are the xla track's; a platform with trn2/trn3 pools lists its
    # native-track repositories (titan) in ecrRepositories.
    assert sorted(r for r, t in IMAGE_TRACKS.items() if t == "xla") == sorted(config.ECR_DEFAULT)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_takes_its_base_from_the_one_pin(dockerfile: Path):
    text = dockerfile.read_text()
    instructions = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0] == "ARG BASE_IMAGE"
    assert instructions[1] == "FROM ${BASE_IMAGE}"
    assert len(re.findall(r"^FROM ", text, re.M)) == 1
    assert ":latest" not in text and "curl " not in text.replace("curl -f", "")
    user = re.findall(r"^USER (\d+)", text, re.M)
    assert user and user[-1] == str(PIN["uid"]), "images run as the uid pods are given"


@pytest.mark.parametrize("requirements", sorted(IMAGES.glob("*/requirements.txt")), ids=lambda p: p.parent.name)
def test_image_requirements_are_exact_pins(requirements: Path):
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9_.+\-]*", line), f"{requirements}: {line!r}"


def test_build_args_come_from_the_pin():
    assert build_args("serve")["BASE_IMAGE"] == PIN["base_images"]["inference"]
    for image in ("compile", "finetune"):
        assert build_args(image) == {"BASE_IMAGE": PIN["base_images"]["training"], "NEURON_SDK_VERSION": PIN["neuron_sdk"]}
    for base in PIN["base_images"].values():
        assert f"sdk{PIN['neuron_sdk']}" in base and f"py{PIN['python'].replace('.', '')}" in base
    assert versions.neuron_sdk() == PIN


# --- what pip must not move: the `pip freeze | grep -iE '<pattern>'` holds --------------------------------------

# pip freeze prints a distribution's name as its metadata spells it (neuronx_distributed, Torch-Neuronx, ...);
# PEP 503 makes names equal across case and runs of "-", "_", ".".
HELD_BY_EVERY_TRAINING_IMAGE = ("torch", "torch-neuronx", "torch-xla", "neuronx-cc", "neuronx-distributed",
                                "libneuronxla")
HELD = {
    # optimum-neuron 0.4.5's [neuronx] extra needs numpy<=1.26.4, the base image's (huggingface/optimum-neuron
    # v0.4.5 pyproject.toml): pip would otherwise upgrade it for datasets/pyarrow.
    "finetune": HELD_BY_EVERY_TRAINING_IMAGE + ("numpy",),
    "ray-train": HELD_BY_EVERY_TRAINING_IMAGE + ("numpy",),
    "nemo": HELD_BY_EVERY_TRAINING_IMAGE + ("neuronx-distributed-training", "nemo-toolkit", "megatron-core"),
    # The native track (TorchNeuron): no torch-xla/NxD; TorchTitan Neuron is installed from its pinned commit, not held.
    "titan": ("torch", "torch-neuronx", "neuronx-cc", "nki", "numpy"),
}


def freeze_hold_pattern(image: str) -> str:
    text = (IMAGES / image / "Dockerfile").read_text()
    found = re.findall(r"pip freeze\s*\\?\s*\|\s*grep -iE '([^']+)'", text)
    assert len(found) == 1, f"{image}: expected one `pip freeze | grep -iE '...'` hold"
    return found[0]


def spellings(name: str) -> set[str]:
    parts = re.split(r"[-_.]+", name)
    return {"-".join(parts), "_".join(parts), ".".join(parts), "_".join(parts).upper(),
            "-".join(p.capitalize() for p in parts), "__".join(parts), "-_".join(parts)}


@pytest.mark.parametrize("image", sorted(HELD))
def test_freeze_holds_match_every_spelling_pip_may_print(image: str):
    def canonicalize_name(name: str) -> str:  # PEP 503's normalisation, as the spec writes it
        return re.sub(r"[-_.]+", "-", name).lower()

    pattern = re.compile(freeze_hold_pattern(image), re.IGNORECASE)  # grep -iE: same syntax for this subset
    for name in HELD[image]:
        for spelling in spellings(name):
            assert canonicalize_name(spelling) == name
            assert pattern.match(f"{spelling}==1.2.3"), f"{image}: {spelling!r} is not held"
    for other in ("torchaudio", "numpy-financial", "neuronx-cc-stubs", "xtorch"):
        assert not pattern.match(f"{other}==1.0"), f"{image}: {other!r} must not be held"


def test_nemo_image_imports_nxd_training_before_nemo_collections():
    """neuronx_distributed_training's package __init__ installs the import patches NeMo needs
    (src/neuronx_distributed_training/patches/import_override.py at NxD Training 1.6.0), and its
    examples/training.py reaches nemo.collections only through it: every build step that imports
    nemo.collections imports neuronx_distributed_training first."""
    text = (IMAGES / "nemo" / "Dockerfile").read_text()
    instructions = re.split(r"^(?=[A-Z]+ )", text, flags=re.M)
    using_nemo = [step for step in instructions if step.startswith("RUN ") and "nemo.collections" in step]
    assert len(using_nemo) >= 2  # the helper compile and the fit check
    for step in using_nemo:
        nxdt = re.search(r"\bimport neuronx_distributed_training\b", step)
        nemo = re.search(r"\bnemo\.collections\b", step)
        assert nxdt and nxdt.start() < nemo.start(), step.splitlines()[0]
