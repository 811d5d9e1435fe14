"""Images: one Neuron SDK pin for all, every package pinned, one uid, nothing floating."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infra import config, versions
from workloads.common import build_args
from workloads.config import IMAGE_DIRS

IMAGES = Path(__file__).resolve().parent.parent / "images"
_PINS = json.loads((IMAGES / "neuron-sdk.json").read_text())
PIN = {**_PINS["tracks"]["xla"], "uid": _PINS["uid"]}  # the track of the images below
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))


def test_every_repository_has_an_image_and_every_image_a_repository():
    assert sorted(p.parent.name for p in DOCKERFILES) == sorted(IMAGE_DIRS.values())
    assert sorted(IMAGE_DIRS) == sorted(config.ECR_DEFAULT)


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
