"""Workload stack configuration: the keys every workload stack has, parsed once.

Each workload module parses its own section (`compile`, `nemo`, `ray`, `lora`) with the
same ConfigReader, so errors look alike everywhere and are raised together.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infra.config import PROJECT as PLATFORM_PROJECT
from infra import versions
from stackfiles import ConfigReader, check_namespaces, raw_from_bag
from workloads.errors import WorkloadConfigError

PROJECT = "trn-workloads"
WORKLOADS = ("compile", "nemo-pretrain", "ray-pretrain", "lora-finetune", "llm-serve", "titan-pretrain")
# The config section each workload reads, and the ECR repository its image goes to.
SECTIONS = {"compile": "compile", "nemo-pretrain": "nemo", "ray-pretrain": "ray", "lora-finetune": "lora",
            "llm-serve": "llmServe", "titan-pretrain": "titan"}
DEFAULT_REPOSITORY = {"compile": "compile", "nemo-pretrain": "nemo", "ray-pretrain": "ray-train",
                      "lora-finetune": "finetune",
                      # llm-serve runs the Neuron vLLM container (images/neuron-sdk.json), not an image
                      # of ours; the shared base only needs a valid default here.
                      "llm-serve": "serve", "titan-pretrain": "titan"}
IMAGE_DIRS = {"compile": "compile", "serve": "serve", "nemo": "nemo", "ray-train": "ray-train", "finetune": "finetune",
              "titan": "titan"}
# The Neuron software tracks (images/neuron-sdk.json) each workload runs on and each image is
# built for: xla = PyTorch/XLA, NxD Training/Inference, optimum-neuron on trn1/trn1n/inf2;
# native = TorchNeuron on trn2/trn3. llm-serve runs on every track that pins a vLLM backend.
WORKLOAD_TRACKS = {"compile": ("xla",), "nemo-pretrain": ("xla",), "ray-pretrain": ("xla",),
                   "lora-finetune": ("xla",), "titan-pretrain": ("native",),
                   "llm-serve": tuple(t for t in versions.NEURON_TRACKS if versions.neuron_track(t).get("vllm"))}
IMAGE_TRACKS = {"compile": "xla", "serve": "xla", "nemo": "xla", "ray-train": "xla", "finetune": "xla",
                "titan": "native"}
_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_RUN_ID = re.compile(r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")
# A fully qualified StackReference: <organization>/<project>/<stack> ("organization" on a self-managed backend).
_STACK_REF = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+)$")


def platform_stack_problem(value: str) -> str | None:
    m = _STACK_REF.match(value)
    if not m:
        return (f"{value!r} is not a stack reference; use <organization>/{PLATFORM_PROJECT}/<stack>, "
                f"e.g. organization/{PLATFORM_PROJECT}/dev-usw2")
    if m.group(2) != PLATFORM_PROJECT:
        return (f"{value!r} names project {m.group(2)!r}; the platform project is {PLATFORM_PROJECT!r} "
                f"(<organization>/{PLATFORM_PROJECT}/<stack>)")
    return None


@dataclass(frozen=True)
class ImageConfig:
    repository: str  # key of the platform's ecrRepositories
    tag: str
    digest: str | None
    build: bool  # build and push with docker-build during `pulumi up`


@dataclass(frozen=True)
class WorkloadStackConfig:
    stack: str
    platform_stack: str
    region: str | None  # aws:region of this stack: must be the platform's
    workload: str
    version: str
    run_id: str
    image: ImageConfig
    hf_token_set: bool
    section: dict[str, Any]  # the workload's own section, parsed by its module
    api_key_set: bool = False  # apiKey (secret): the key llm-serve requires from clients


def parse(raw: dict[str, Any], *, stack: str, secret_keys: set[str] = frozenset(),
          region: str | None = None, problems: list[str] | None = None) -> WorkloadStackConfig:
    """The keys every workload stack has. With `problems` given, what is wrong is appended there
    and a config of defaults returned, so the caller can go on to check the workload's own
    section and report everything at once; otherwise a WorkloadConfigError is raised."""
    collect = problems is not None
    problems = problems if collect else []
    r = ConfigReader(raw, "", problems)
    platform_stack = r.get("platformStack", str, "", required=True, check=platform_stack_problem)
    workload = r.get("workload", str, "compile", required=True, allowed=WORKLOADS)
    version = r.get("version", str, "0.0.0", required=True,
                    check=lambda v: None if _VERSION.match(v) else "must be a semantic version such as 1.2.0 (it tags the image)")
    run_id = r.get("runId", str, f"v{version.replace('.', '-')}",
                   check=lambda v: None if _RUN_ID.match(v) else "lowercase letters, digits and '-' only")
    img = ConfigReader(r.get("image", dict, {}), "image", problems)
    image = ImageConfig(
        repository=img.get("repository", str, DEFAULT_REPOSITORY.get(workload, workload), allowed=tuple(IMAGE_DIRS)),
        tag=img.get("tag", str, version,
                    check=lambda v: None if _VERSION.match(v) else "must be an exact version tag such as 1.2.0 (no latest)"),
        digest=img.get("digest", str, None, check=lambda v: None if _DIGEST.match(v) else "must be sha256:<64 hex>"),
        build=img.get("build", bool, False),
    )
    img.finish()
    hf_token = r.get("hfToken", str, None)
    if hf_token is not None and f"{PROJECT}:hfToken" not in secret_keys:
        problems.append("hfToken: must be a secret; set it with `pulumi config set --secret hfToken <token>`")
    api_key = r.get("apiKey", str, None)
    if api_key is not None and f"{PROJECT}:apiKey" not in secret_keys:
        problems.append("apiKey: must be a secret; set it with `pulumi config set --secret apiKey <key>`")
    sections = {}
    for name in SECTIONS.values():
        sections[name] = r.get(name, dict, None)
    r.finish()
    wanted = SECTIONS.get(workload)
    for name, value in sections.items():
        if value is not None and name != wanted:
            problems.append(f"{name}: section of another workload; workload {workload!r} reads section {wanted!r}")
    if problems and not collect:
        raise WorkloadConfigError(problems, stack=stack)
    return WorkloadStackConfig(stack=stack, platform_stack=platform_stack, region=region, workload=workload,
                               version=version,
                               run_id=run_id, image=image, hf_token_set=hf_token is not None,
                               section=sections.get(wanted) or {},
                               api_key_set=api_key is not None)


def common_keys_usable(problems: list[str]) -> bool:
    """Whether the workload's own section can be checked after these problems of the common keys:
    not when the workload or its platform stack is itself unknown."""
    return not any(p.startswith(("workload:", "platformStack:")) for p in problems)


def from_pulumi(stack: str, problems: list[str] | None = None) -> WorkloadStackConfig:
    from pulumi.runtime import config as runtime_config

    bag = dict(runtime_config.get_config_env())
    bag.update(runtime_config.CONFIG.get())
    secret_keys = set(runtime_config.get_config_secret_keys_env()) | set(runtime_config._SECRET_KEYS.get())
    check_namespaces(bag, PROJECT)
    raw, region = raw_from_bag(bag, PROJECT)
    return parse(raw, stack=stack, secret_keys=secret_keys, region=region, problems=problems)
