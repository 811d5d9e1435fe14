"""What a container image contributes to its process: ENTRYPOINT, CMD, WORKDIR, USER, ENV (and, for our
images, where the Dockerfile COPYs this repository's code).

- Our images: parsed from `images/<name>/Dockerfile` (build args from `images/neuron-sdk.json`), on top of
  the upstream base image they name, whose config is below.
- Upstream images we run unmodified or build on (Neuron DLCs): from their Dockerfile at the pinned tag of
  aws-neuron/deep-learning-containers (tag 2.26.1 = commit 14b1f0d38347b052f8d2c4179cbab1e1ef579480, the
  commit images/neuron-sdk.json names), cited per image.

Dockerfile semantics (docs.docker.com/reference/dockerfile): the last ENTRYPOINT/CMD/WORKDIR/USER of the
final stage wins; ENV accumulates; a shell-form ENTRYPOINT/CMD runs as `/bin/sh -c "<text>"`; setting
ENTRYPOINT resets a CMD inherited from the base image ("If CMD is defined from the base image, setting
ENTRYPOINT will reset CMD to an empty value"); a relative WORKDIR is joined to the previous one.
"""
from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = REPO_ROOT / "images"
DLC_SOURCE = "aws-neuron/deep-learning-containers@2.26.1"


@dataclass(frozen=True)
class ImageConfig:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""  # "uid[:gid]" or a name; "" = root
    # the image's own user account (`useradd` in our Dockerfiles): name and home, for /etc/passwd and HOME
    # (runc sets HOME from the image's /etc/passwd when the env has none: opencontainers/runc
    # libcontainer/init_linux.go setupUser; "/" for a uid without an entry)
    user_name: str = ""
    home: str = "/"
    account_uid: int | None = None  # that account's uid (and group id); None = the USER's
    env: tuple[tuple[str, str], ...] = ()
    # image path -> repository path, for each `COPY <repo code> <image path>` of our Dockerfiles
    code: tuple[tuple[str, str], ...] = ()
    source: str = ""

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def account(self) -> tuple[str, int, str] | None:
        """(name, uid = gid, home) of the image's own account, if it has one."""
        uid = self.account_uid if self.account_uid is not None else self.uid_gid()[0]
        return (self.user_name, uid, self.home) if self.user_name and uid is not None else None

    def uid_gid(self) -> tuple[int | None, int | None]:
        """USER as numbers. A uid without a group takes its primary group from the image's /etc/passwd;
        our Dockerfiles create that user with `useradd` (USERGROUPS_ENAB: group id = uid), so it is the uid."""
        if not self.user:
            return 0, 0
        uid, _, gid = self.user.partition(":")
        if not uid.isdigit() or (gid and not gid.isdigit()):
            return None, None  # a name: only the image's /etc/passwd knows
        return int(uid), int(gid) if gid else int(uid)


# Upstream images, from their Dockerfiles at the pinned tag.
UPSTREAM: dict[str, ImageConfig] = {
    # vllm/inference/0.9.1/Dockerfile.neuronx: stage prod/repo `WORKDIR /opt/vllm` (the vLLM fork checkout,
    # installed with `pip install -e .`), final stage ENTRYPOINT/CMD, no USER (root). Base stage
    # `useradd -m model-server` on ubuntu:22.04 (which has no uid-1000 user): model-server is uid 1000 with
    # home /home/model-server, so a pod with runAsUser 1000 gets HOME=/home/model-server.
    "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx": ImageConfig(
        entrypoint=("python", "/usr/local/bin/vllm_entrypoint.py"), cmd=("/bin/bash",), workdir="/opt/vllm",
        user_name="model-server", home="/home/model-server", account_uid=1000,
        env=(("LANG", "C.UTF-8"), ("VLLM_TARGET_DEVICE", "neuron")),
        source=f"{DLC_SOURCE}:vllm/inference/0.9.1/Dockerfile.neuronx"),
    # pytorch/training/2.8.0/Dockerfile.neuronx: WORKDIR /, final ENTRYPOINT/CMD, no USER.
    "public.ecr.aws/neuron/pytorch-training-neuronx": ImageConfig(
        entrypoint=("bash", "-m", "start_with_right_hostname.sh"), cmd=("/bin/bash",), workdir="/",
        env=(("PYTHONDONTWRITEBYTECODE", "1"), ("PYTHONUNBUFFERED", "1"), ("PYTHONIOENCODING", "UTF-8"),
             ("LANG", "C.UTF-8"), ("LC_ALL", "C.UTF-8")),
        source=f"{DLC_SOURCE}:pytorch/training/2.8.0/Dockerfile.neuronx"),
    # pytorch/inference/2.8.0/Dockerfile.neuronx: final ENTRYPOINT/CMD, no USER, no WORKDIR after the base.
    "public.ecr.aws/neuron/pytorch-inference-neuronx": ImageConfig(
        entrypoint=("python", "/usr/local/bin/dockerd-entrypoint.py"), cmd=("/usr/local/bin/entrypoint.sh",),
        workdir="/", env=(("LANG", "C.UTF-8"), ("TEMP", "/home/model-server/tmp")),
        source=f"{DLC_SOURCE}:pytorch/inference/2.8.0/Dockerfile.neuronx"),
}


def _repository(image: str) -> str:
    """Image reference without tag or digest."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined; comments and heredoc bodies dropped."""
    out: list[tuple[str, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            nxt = lines[i].strip()
            i += 1
            if nxt.startswith("#"):
                continue
            line = line[:-1] + " " + nxt
        heredoc = re.search(r"<<-?'?\"?(\w+)'?\"?", line)
        if heredoc and line.split(None, 1)[0].upper() == "RUN":
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _substitute(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value)


def _exec_form(args: str, variables: dict[str, str]) -> tuple[str, ...]:
    if args.startswith("["):
        return tuple(json.loads(args))  # exec form: no variable substitution (Dockerfile reference)
    return ("/bin/sh", "-c", _substitute(args, variables))


def _env_pairs(args: str) -> list[tuple[str, str]]:
    if "=" not in args.split(None, 1)[0]:
        key, _, value = args.partition(" ")  # legacy `ENV KEY value`
        return [(key, value.strip())]
    return [tuple(tok.split("=", 1)) for tok in shlex.split(args)]  # type: ignore[misc]


def build_args() -> dict[str, str]:
    """Build args our Dockerfiles take, from images/neuron-sdk.json (xla track: the stacks' images)."""
    sdk = json.loads((IMAGES_DIR / "neuron-sdk.json").read_text())
    xla = sdk["tracks"]["xla"]
    return {"NEURON_SDK_VERSION": xla["neuron_sdk"], "BASE_IMAGE": xla["base_images"]["training"]}


def parse_dockerfile(text: str, base: ImageConfig, args: dict[str, str], *, context: Path = IMAGES_DIR,
                     source: str = "") -> ImageConfig:
    """The config of the image a (single-stage) Dockerfile builds on `base`."""
    variables = dict(args)
    env = dict(base.env)
    entrypoint, cmd, workdir, user = base.entrypoint, base.cmd, base.workdir, base.user
    code: list[tuple[str, str]] = []
    user_name, home = base.user_name, base.home
    for word, rest in _instructions(text):
        if word == "RUN" and "useradd" in rest:
            account = re.search(r"useradd\s+((?:--?[\w-]+(?:[ =](?!-)\S+)?\s+)*)(\w[\w-]*)", rest)
            if account:
                user_name = account.group(2)
                created = re.search(r"(--create-home|\s-m\b)", account.group(1))
                home = f"/home/{user_name}" if created else "/"
        if word == "ARG":
            name, _, default = rest.partition("=")
            variables.setdefault(name.strip(), default.strip())
        elif word == "ENV":
            for key, value in _env_pairs(rest):
                value = _substitute(value, {**variables, **env})
                env[key] = value
        elif word == "ENTRYPOINT":
            entrypoint, cmd = _exec_form(rest, {**variables, **env}), ()
        elif word == "CMD":
            cmd = _exec_form(rest, {**variables, **env})
        elif word == "WORKDIR":
            workdir = posixpath.normpath(posixpath.join(workdir, _substitute(rest, {**variables, **env})))
        elif word == "USER":
            user = _substitute(rest, {**variables, **env})
        elif word == "COPY" and not rest.startswith("--from"):
            parts = shlex.split(rest)
            srcs, dest = [p for p in parts[:-1] if not p.startswith("--")], parts[-1]
            for src in srcs:
                if (context / src).is_dir() and (context / src / "__init__.py").exists():
                    code.append((dest, str((context / src).relative_to(REPO_ROOT))))
    return ImageConfig(entrypoint=tuple(entrypoint), cmd=tuple(cmd), workdir=workdir, user=user,
                       env=tuple(env.items()), code=tuple(code), source=source, user_name=user_name, home=home)


# The tags the UPSTREAM entries were read for (the Dockerfiles at aws-neuron/deep-learning-containers@2.26.1).
UPSTREAM_TAGS = {
    "public.ecr.aws/neuron/pytorch-inference-vllm-neuronx": ("0.9.1-neuronx-py311-sdk2.26.1-ubuntu22.04",),
    "public.ecr.aws/neuron/pytorch-training-neuronx": ("2.8.0-neuronx-py311-sdk2.26.1-ubuntu22.04",),
    "public.ecr.aws/neuron/pytorch-inference-neuronx": ("2.8.0-neuronx-py311-sdk2.26.1-ubuntu22.04",),
}


def base_image_config(image: str | None) -> ImageConfig:
    if not image:  # e.g. the native track's training DLC, not pinned yet (images/neuron-sdk.json)
        return ImageConfig(source="base image not pinned: its ENTRYPOINT/CMD/WORKDIR/USER/ENV are unknown")
    repo = _repository(image)
    tag = image.split("@", 1)[0][len(repo) + 1:]
    if repo not in UPSTREAM or tag not in UPSTREAM_TAGS.get(repo, ()):
        raise KeyError(f"image {image!r}: no ENTRYPOINT/CMD/WORKDIR/USER recorded for it in "
                       f"trnctl/operators/images.py UPSTREAM (read from its Dockerfile at the pinned tag); "
                       f"known: {', '.join(f'{r}:{t}' for r, ts in sorted(UPSTREAM_TAGS.items()) for t in ts)}")
    return UPSTREAM[repo]


def our_image(name: str) -> ImageConfig:
    """The config of `images/<name>/Dockerfile` built on the base image its BASE_IMAGE build arg names."""
    path = IMAGES_DIR / name / "Dockerfile"
    args = build_args()
    if name == "serve":  # the serve image builds on the inference base (images/serve/Dockerfile header)
        sdk = json.loads((IMAGES_DIR / "neuron-sdk.json").read_text())
        args["BASE_IMAGE"] = sdk["tracks"]["xla"]["base_images"]["inference"]
    if name == "titan":
        sdk = json.loads((IMAGES_DIR / "neuron-sdk.json").read_text())
        args["BASE_IMAGE"] = sdk["tracks"]["native"]["base_images"]["training"]
    base = replace(base_image_config(args.get("BASE_IMAGE")))
    return parse_dockerfile(path.read_text(), base, args, source=str(path.relative_to(REPO_ROOT)))


OUR_IMAGE_NAMES = frozenset(p.parent.name for p in IMAGES_DIR.glob("*/Dockerfile"))


def image_config(image: str) -> ImageConfig:
    """The config of any image a pod names: ours (`<registry>/<prefix>/<name>:<tag>` with `<name>` one of
    images/*/) or a recorded upstream image."""
    repo = _repository(image)
    name = repo.rsplit("/", 1)[-1]
    if repo not in UPSTREAM and name in OUR_IMAGE_NAMES:
        return our_image(name)
    return base_image_config(image)


__all__ = ["ImageConfig", "UPSTREAM", "image_config", "our_image", "parse_dockerfile"]
