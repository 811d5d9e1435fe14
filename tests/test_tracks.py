"""Two Neuron software tracks pinned in images/neuron-sdk.json: every image and every workload
declares one, and a workload stack that puts a track on hardware that does not run it fails
before any resource, naming the key, the pool and the pools that would work.

The mismatch cases run against a test-local mixed platform (the dev-usw2 outputs plus trn2
and trn3 pools with `lnc`/`track` and the `neuronTracks` map), so the message lists pools
of the other track; the real single-track platforms are checked too."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from infra import catalog, versions
from tests.platform_helpers import platform_refs, rendered_platform, stack_config, with_setting
from tests.test_titan import rejected
from workloads import registry
from workloads.common import build_args
from workloads.config import IMAGE_DIRS, IMAGE_TRACKS, WORKLOAD_TRACKS, WORKLOADS
from workloads.errors import WorkloadConfigError

PLATFORM = "organization/trn-platform/mixed-use2"  # the test-local mixed platform below
PIN_FILE = Path(__file__).resolve().parent.parent / "images" / "neuron-sdk.json"
VERSION = re.compile(r"^\d+\.\d+\.\d+")


def test_two_tracks_pin_disjoint_families_and_cover_every_neuron_family():
    pins = json.loads(PIN_FILE.read_text())
    assert sorted(pins["tracks"]) == sorted(versions.NEURON_TRACKS) == ["native", "xla"]
    xla, native = versions.neuron_track("xla"), versions.neuron_track("native")
    assert versions.neuron_sdk() == xla and xla["neuron_sdk"] == "2.26.1" and xla["uid"] == native["uid"] == 1000
    assert native["neuron_sdk"] == "2.34.0" and native["torch"] == "2.14.0"
    assert native["torch_neuronx"].startswith("2.14.") and "+neuron" in native["torchtitan_neuron"]
    assert not set(xla["families"]) & set(native["families"])
    neuron_families = {f for f in catalog._instance_data()["families"] if f != "cpu"}
    assert neuron_families <= set(xla["families"]) | set(native["families"])
    for name in ("xla", "native"):
        track = versions.neuron_track(name)
        for base in filter(None, track["base_images"].values()):  # null: not pinned (test below)
            assert f"sdk{track['neuron_sdk']}" in base and f"py{track['python'].replace('.', '')}" in base
            assert ":latest" not in base
        assert all(VERSION.match(track[k]) for k in ("neuron_sdk", "torch"))
    assert all(b.endswith("-ubuntu26.04") for b in filter(None, native["base_images"].values()))  # 2.33+: 26.04 only
    with pytest.raises(KeyError, match="allowed values: native, xla"):
        versions.neuron_track("jax")


def test_no_base_image_is_a_dlc_neuron_no_longer_publishes():
    """pytorch-training-neuronx is not published from Neuron 2.31.0 (announce-no-longer-publish-
    pytorch-training-dlc): the native track (2.34.0) cannot build on it. Its TorchNeuron training
    DLC is not pinned (the tag could not be read here), and building a native training image says so."""
    assert versions.base_image_problems("xla") == {}
    assert set(versions.base_image_problems("native")) == {"training"}
    assert ("tracks.native.base_images.training is not pinned: the repository and tag of the TorchNeuron training DLC"
            in versions.base_image_problems("native")["training"])
    # the rule itself, on the pin this track had before
    old_pin = versions.neuron_track("native")
    old_pin["base_images"] = old_pin["base_images"] | {
        "training": "public.ecr.aws/neuron/pytorch-training-neuronx:2.14.0-neuronx-py314-sdk2.34.0-ubuntu26.04"}
    assert versions.base_image_problems("native", old_pin)["training"].endswith(
        "Neuron does not publish public.ecr.aws/neuron/pytorch-training-neuronx from SDK 2.31.0 on (the track pins 2.34.0)")
    with pytest.raises(WorkloadConfigError, match=r"image.build: images/titan cannot be built: neuron-sdk.json "
                                                  r"tracks.native.base_images.training is not pinned"):
        build_args("titan")
    assert versions.base_image("native", "inference") == versions.neuron_track("native")["base_images"]["inference"]


def test_every_workload_and_every_image_declares_a_track(monkeypatch):
    assert sorted(WORKLOAD_TRACKS) == sorted(WORKLOADS) == sorted(registry.WORKLOADS)
    assert sorted(IMAGE_TRACKS) == sorted(IMAGE_DIRS)
    assert {t for w in registry.WORKLOADS.values() for t in w.tracks} == {"xla", "native"}
    assert all(w.tracks and set(w.tracks) <= set(versions.NEURON_TRACKS) for w in registry.WORKLOADS.values())
    assert build_args("nemo")["BASE_IMAGE"] == versions.neuron_track("xla")["base_images"]["training"]
    native = versions.neuron_track("native")
    # Neither the fork's commit nor the TorchNeuron training DLC may be recorded yet (tests/test_titan_api.py,
    # test_no_base_image_is_a_dlc_neuron_no_longer_publishes): give both to see the rest of the args.
    source = {**native["torchtitan_neuron_source"], "commit": "0" * 40}
    training = "registry.example/torchneuron-training:test"
    patched = {**native, "torchtitan_neuron_source": source, "base_images": {**native["base_images"], "training": training}}
    monkeypatch.setattr(versions, "neuron_track", lambda name, real=versions.neuron_track: (
        patched if name == "native" else real(name)))
    assert build_args("titan") == {"BASE_IMAGE": training, "NEURON_SDK_VERSION": "2.34.0",
                                   "TORCHTITAN_NEURON_REPOSITORY": source["repository"],
                                   "TORCHTITAN_NEURON_COMMIT": "0" * 40}
    assert "LABEL trn-platform/neuron-track=${TRACK}" in (PIN_FILE.parent / "titan" / "Dockerfile").read_text()


def fake_trn2_platform() -> dict:
    """Per-node facts of the fake pools: trn2.48xlarge 16 Trainium2 devices x 8 physical cores,
    LNC 2 -> 64 logical cores; trn3 with LNC 1. Test values, not the catalog's."""
    outputs = {**copy.deepcopy(rendered_platform("dev-usw2").outputs), "region": "us-east-2"}
    template = outputs["nodePools"]["trn1-efa"]

    def pool(name, instance, *, devices, cores, lnc, efa, max_nodes):
        return {**copy.deepcopy(template), "instanceTypes": [instance], "neuronDevicesPerNode": devices,
                "neuronCoresPerNode": cores, "efaPerNode": efa, "vcpuPerNode": 192, "memoryGiBPerNode": 2048,
                "maxNodes": max_nodes, "lnc": lnc, "track": "native",
                "nodeSelector": {"trn-platform/pool": name}}

    outputs["nodePools"]["trn2-efa"] = pool("trn2-efa", "trn2.48xlarge", devices=16, cores=64, lnc=2, efa=16,
                                        max_nodes=4)
    outputs["nodePools"]["trn3-single"] = pool("trn3-single", "trn3.48xlarge", devices=16, cores=128,
                                               lnc=1, efa=0, max_nodes=1)
    for p in outputs["nodePools"].values():
        p.setdefault("track", "xla" if p["neuronDevicesPerNode"] else None)
        p.setdefault("lnc", None)
    outputs["neuronTracks"] = {"xla": sorted(n for n, p in outputs["nodePools"].items() if p["track"] == "xla"),
                               "native": ["trn2-efa", "trn3-single"]}
    outputs["ecrRepositories"] = {**outputs["ecrRepositories"],
                                  "titan": outputs["ecrRepositories"]["nemo"].rsplit("/", 1)[0] + "/titan"}
    return outputs


def mixed_refs() -> dict:
    platform = rendered_platform("dev-usw2")
    return {PLATFORM: {"outputs": fake_trn2_platform(), "secret": sorted(platform.secret_outputs)}}


def on_fake_trn2(stack: str, section: str, key: str, value) -> dict:
    cfg = with_setting(stack_config("workloads", stack), section, key, value)
    if section == "trn-workloads:llmServe":  # a hub model: no second StackReference to answer
        cfg[section]["model"] = {"huggingFace": "meta-llama/Meta-Llama-3-8B", "parametersBillion": 8.0}
    cfg["trn-workloads:platformStack"] = PLATFORM
    cfg["aws:region"] = "us-east-2"  # the fake trn2 platform's region
    return cfg


XLA_POOLS = "pools of platform stack organization/trn-platform/mixed-use2 that would work: inf2, trn1-efa, trn1-single"
NATIVE_POOLS = "pools of platform stack organization/trn-platform/mixed-use2 that would work: trn2-efa, trn3-single"


@pytest.mark.parametrize("stack,section,key,pool,message", [
    ("nemo-pretrain-usw2", "trn-workloads:nemo", "pool", "trn2-efa",
     "nemo.pool: pool 'trn2-efa' (trn2.48xlarge) runs the native Neuron track; this workload needs the xla track "
     "(trn1, trn1n, inf2); " + XLA_POOLS),
    ("nemo-pretrain-usw2", "trn-workloads:nemo", "pool", "trn3-single", "nemo.pool: pool 'trn3-single'"),
    ("ray-pretrain-usw2", "trn-workloads:ray", "pool", "trn2-efa", "ray.pool: pool 'trn2-efa' (trn2.48xlarge) runs the native"),
    ("lora-finetune-usw2", "trn-workloads:lora", "pool", "trn3-single", "lora.pool: pool 'trn3-single'"),
    ("compile-usw2", "trn-workloads:compile", "serve.pool", "trn2-efa", "compile.serve.pool: pool 'trn2-efa'"),
    ("llm-serve-usw2", "trn-workloads:llmServe", "pool", "trn2-efa",
     "llmServe.pool: pool 'trn2-efa' (trn2.48xlarge) runs the native Neuron track; this workload needs the xla "
     "track (trn1, trn1n, inf2); " + XLA_POOLS),
    ("titan-pretrain-use2", "trn-workloads:titan", "pool", "trn1-efa",
     "titan.pool: pool 'trn1-efa' (trn1.32xlarge) runs the xla Neuron track; this workload needs the native track "
     "(trn2, trn3); " + NATIVE_POOLS),
    ("titan-pretrain-use2", "trn-workloads:titan", "pool", "inf2", "titan.pool: pool 'inf2'"),
])
def test_a_track_on_hardware_that_does_not_run_it_fails_before_any_resource(tmp_path, stack, section, key, pool,
                                                                               message):
    text = rejected(tmp_path, on_fake_trn2(stack, section, key, pool), mixed_refs())
    assert message in text
    assert (XLA_POOLS if "xla track" in text.split("needs the")[1][:10] else NATIVE_POOLS) in text


def test_a_platform_without_track_outputs_gets_them_from_its_instance_families():
    from tests.platform_helpers import rendered_platform
    from workloads.platform import parse_platform_outputs

    current = rendered_platform("dev-usw2").outputs
    # A platform rendered before the track outputs existed: no neuronTracks, no per-pool track.
    outputs = {k: v for k, v in copy.deepcopy(current).items() if k != "neuronTracks"}
    for p in outputs["nodePools"].values():
        p.pop("track", None)
    platform = parse_platform_outputs("organization/trn-platform/dev-usw2", outputs, kubeconfig="stand-in")
    assert {n: p.track for n, p in platform.pools.items()} == {
        n: (None if p["neuronDevicesPerNode"] == 0 else "xla") for n, p in outputs["nodePools"].items()}
    assert platform.neuron_tracks == {"xla": sorted(n for n, p in platform.pools.items() if p.track)}
    assert {n: p["track"] for n, p in current["nodePools"].items()} == {n: p.track for n, p in platform.pools.items()}


def test_on_a_single_track_platform_the_message_says_what_pool_to_add(tmp_path):
    titan_on_trn1 = with_setting(stack_config("workloads", "titan-pretrain-use2"), "trn-workloads:titan", "pool",
                                 "trn1-efa")
    titan_on_trn1.update({"trn-workloads:platformStack": "organization/trn-platform/dev-usw2", "aws:region": "us-west-2"})
    assert ("titan.pool: pool 'trn1-efa' (trn1.32xlarge) runs the xla Neuron track; no pool of platform stack "
            "organization/trn-platform/dev-usw2 can run this workload: it needs the native Neuron track (trn2, trn3) and "
            "the platform's accelerator pools are inf2 (xla track), trn1-efa (xla track), trn1-single (xla track); add a "
            "trn2, trn3 pool to the platform") in rejected(tmp_path / "a", titan_on_trn1, platform_refs("dev-usw2"))

    nemo_on_trn2 = with_setting(stack_config("workloads", "nemo-pretrain-usw2"), "trn-workloads:nemo", "pool", "trn2-efa")
    nemo_on_trn2.update({"trn-workloads:platformStack": "organization/trn-platform/dev-trn2-use2", "aws:region": "us-east-2"})
    assert ("nemo.pool: pool 'trn2-efa' (trn2.48xlarge) runs the native Neuron track; no pool of platform stack "
            "organization/trn-platform/dev-trn2-use2 can run this workload: it needs the xla Neuron track (trn1, trn1n, "
            "inf2) and the platform's accelerator pools are trn2-block (native track), trn2-efa (native track); add a "
            "trn1, trn1n, inf2 pool to the platform") in rejected(
        tmp_path / "b", nemo_on_trn2, platform_refs("dev-trn2-use2"))
