"""One container of one pod in its own world: a bubblewrap (`bwrap`, Debian package bubblewrap) sandbox.

What the sandbox holds, and what stands in for what:
- The image root, read-only: this machine's /usr (and /bin, /lib, /sbin), /etc (with the pod's own
  /etc/hosts, /etc/hostname, /etc/passwd and /etc/group over it), and the image's Python environment, which
  on this machine is a virtualenv of the repository (`IMAGE_ENVIRONMENTS`: `.venv` for our images, `.venv-vllm`
  for the vLLM DLC, `.venv-titan` for the TorchNeuron image) bound at its own path; the image's PATH has its
  bin first. The repository's `images/trn_workloads` is bound read-only where the Dockerfile COPYs it.
- The container's writable layer: /tmp and the image user's home, empty per container (as a fresh container
  starts with the image's, which ours leave empty). A WORKDIR that is neither is an empty read-only directory
  (root-owned in the image: the vLLM DLC's /opt/vllm).
- Exactly the pod's volumes: emptyDir = a per-pod directory (medium Memory: under /dev/shm, this machine's
  tmpfs), the PVC = one shared directory per rehearsal and claim, ConfigMap/Secret/projected = files with
  their modes in the kubelet's atomic-writer layout (`..data` symlink), mounted read-only.
- The pod's uid/gid via `--uid/--gid` in a user namespace (supplemental groups such as fsGroup cannot be set
  in an unprivileged user namespace: files the rehearsal creates are owned by the mapped uid instead),
  `--clearenv` and exactly the container env, `--unshare-pid --unshare-ipc --unshare-uts`, hostname = pod
  hostname, `--die-with-parent`. The network namespace is this machine's (pods talk over 127.0.0.0/8).
"""
from __future__ import annotations

import os
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

from trnctl.operators.kubernetes import ContainerProcess, Mount

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # Docker's default image PATH

# Image repository name (last path part) -> the virtualenv that stands in for the image's Python.
IMAGE_ENVIRONMENTS = {"pytorch-inference-vllm-neuronx": ".venv-vllm", "titan": ".venv-titan"}
DEFAULT_ENVIRONMENT = ".venv"


class SandboxError(RuntimeError):
    pass


def image_environment(image: str, root: Path = REPO_ROOT) -> Path:
    name = image_name(image)
    venv = (root / IMAGE_ENVIRONMENTS.get(name, DEFAULT_ENVIRONMENT)).resolve()
    if not (venv / "bin" / "python").exists():
        raise SandboxError(f"image {image}: its stand-in environment {venv} is missing (make setup)")
    return venv


def _python_home(venv: Path) -> Path:
    """The interpreter installation a virtualenv points at (pyvenv.cfg `home` = its bin directory)."""
    for line in (venv / "pyvenv.cfg").read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "home":
            return Path(value.strip()).resolve().parent
    raise SandboxError(f"{venv}/pyvenv.cfg has no home")


def write_volume_files(mount: Mount, target: Path) -> None:
    """ConfigMap/Secret/projected content as the kubelet's atomic writer lays it out: the files in a
    timestamped directory, `..data` -> it, and each top-level name a symlink through `..data`.
    source: kubernetes/kubernetes@v1.34.0:pkg/volume/util/atomic_writer.go (Write)."""
    data_dir = target / "..2026_01_01_00_00_00.000000000"
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(target, 0o777 if not mount.read_only else 0o755)
    os.chmod(data_dir, 0o755)
    tops = set()
    for f in mount.files:
        path = data_dir / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.content)
        os.chmod(path, f.mode)
        tops.add(f.path.split("/", 1)[0])
    (target / "..data").symlink_to(data_dir.name)
    for top in sorted(tops):
        (target / top).symlink_to(f"..data/{top}")


@dataclass
class PodDirs:
    """Host directories of one pod of one rehearsal."""
    root: Path  # <rehearsal>/pods/<pod>
    memory_root: Path  # /dev/shm/<rehearsal id>/<pod>
    shared_root: Path  # <rehearsal>/shared (one dir per claim below it)

    def volume(self, mount: Mount) -> Path:
        if mount.kind == "pvc":
            return self.shared_root / mount.source
        if mount.kind == "memory":
            return self.memory_root / mount.source
        if mount.kind == "emptyDir":
            return self.root / "volumes" / mount.source
        if mount.kind == "files":
            return self.root / "files" / mount.source
        raise SandboxError(f"volume kind {mount.kind} ({mount.source}) cannot be rehearsed")


def passwd_lines(proc: ContainerProcess) -> tuple[str, str]:
    """/etc/passwd and /etc/group of the image: root plus the image's own user (our Dockerfiles' useradd)."""
    img = proc.image
    passwd = ["root:x:0:0:root:/root:/bin/bash", "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"]
    group = ["root:x:0:", "nogroup:x:65534:"]
    account = img.account()
    if account:
        name, uid, home = account
        passwd.append(f"{name}:x:{uid}:{uid}::{home}:/bin/bash")
        group.append(f"{name}:x:{uid}:")
    return "\n".join(passwd) + "\n", "\n".join(group) + "\n"


STAND_IN_DIR = "/opt/rehearsal"  # where an image stand-in's extra commands live in the sandbox


def image_name(image: str) -> str:
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def bwrap_argv(proc: ContainerProcess, *, image: str, dirs: PodDirs, container: str, hosts: Path,
               root: Path = REPO_ROOT, commands: dict[str, str] | None = None,
               extra_ro_binds: list[tuple[str, str]] | None = None) -> list[str]:
    """The bwrap command line that runs `proc` (its volume content is written here). `extra_ro_binds`: (source,
    path) files an image has from its build that the sandbox's root lacks (the nemo image's ssh client config)."""
    if not shutil.which("bwrap"):
        raise SandboxError("bwrap not found: install the Debian package bubblewrap (make setup)")
    venv = image_environment(image, root)
    cdir = dirs.root / "containers" / container
    for sub in ("tmp", "home", "workdir", "etc"):
        (cdir / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(cdir / "tmp", 0o1777)
    passwd, group = passwd_lines(proc)
    (cdir / "etc" / "passwd").write_text(passwd)
    (cdir / "etc" / "group").write_text(group)
    (cdir / "etc" / "hostname").write_text(proc.hostname + "\n")

    env = proc.env  # completed here (PATH, HOME, HOSTNAME): exec_in enters with the same env
    stand_in_bin = []
    if commands:  # commands of an image with no CPU build, run by a CPU-path module of this repository
        (cdir / "bin").mkdir(exist_ok=True)
        for command, module in commands.items():
            script = cdir / "bin" / command
            script.write_text(f'#!/bin/sh\nPYTHONPATH={STAND_IN_DIR}${{PYTHONPATH:+:$PYTHONPATH}} exec python -m {module} "$@"\n')
            os.chmod(script, 0o755)
        stand_in_bin = [f"{STAND_IN_DIR}/bin"]
    env.setdefault("PATH", ":".join([*stand_in_bin, f"{venv}/bin", DEFAULT_PATH]))
    account = proc.image.account()
    home = account[2] if account and account[1] == proc.uid else "/"
    env.setdefault("HOME", home)
    env.setdefault("HOSTNAME", proc.hostname)  # the runtime sets it (containerd pkg/cri: WithEnv HOSTNAME)

    argv = ["bwrap", "--unshare-user", "--uid", str(proc.uid), "--gid", str(proc.gid),
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--hostname", proc.hostname,
            "--die-with-parent", "--clearenv"]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        p = Path("/") / link
        if p.is_symlink():
            argv += ["--symlink", os.readlink(p), f"/{link}"]
        elif p.exists():
            argv += ["--ro-bind", str(p), f"/{link}"]
    # /etc: this machine's entries one by one on a tmpfs, so the pod's own files and the mount points of
    # its volumes (/etc/run, /etc/mpi, ...) can be placed; remounted read-only at the end, as is /.
    own = {"hosts": hosts, "passwd": cdir / "etc" / "passwd", "group": cdir / "etc" / "group",
           "hostname": cdir / "etc" / "hostname"}
    argv += ["--tmpfs", "/etc"]
    for entry in sorted(os.listdir("/etc")):
        if entry in own:
            continue
        path = Path("/etc") / entry
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.exists():
            argv += ["--ro-bind", str(path), str(path)]
    for entry, source in own.items():
        argv += ["--ro-bind", str(source), f"/etc/{entry}"]
    for source, path in extra_ro_binds or []:
        argv += ["--ro-bind", str(source), path]
    argv += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", "/sys", "/sys",  # runc mounts sysfs read-only
             "--bind", str(cdir / "tmp"), "/tmp"]
    if proc.image.home not in ("/", "/tmp"):  # the account's home: owned by it in the image
        argv += ["--bind" if home == proc.image.home else "--ro-bind", str(cdir / "home"), proc.image.home]
    # The image's Python after /tmp and the home: a checkout (and so its venv) may live under either, and a later
    # mount hides what an earlier one put below it.
    argv += ["--ro-bind", str(_python_home(venv)), str(_python_home(venv)), "--ro-bind", str(venv), str(venv)]
    if commands:
        argv += ["--ro-bind", str(cdir / "bin"), f"{STAND_IN_DIR}/bin",
                 "--ro-bind", str(root / "images" / "trn_workloads"), f"{STAND_IN_DIR}/trn_workloads"]
    for image_path, repo_path in proc.image.code:
        argv += ["--ro-bind", str(root / repo_path), image_path]
    writable = [w for w in (proc.image.home, "/tmp") if w != "/"]
    if not any(proc.workdir == w or proc.workdir.startswith(w.rstrip("/") + "/") for w in writable) \
            and not any(proc.workdir == m.path or proc.workdir.startswith(m.path.rstrip("/") + "/") for m in proc.mounts):
        argv += ["--ro-bind", str(cdir / "workdir"), proc.workdir]
    for mount in sorted(proc.mounts, key=lambda m: m.path.count("/")):
        host = dirs.volume(mount)
        if mount.kind == "files":
            if not host.exists():
                write_volume_files(mount, host)
        else:
            host.mkdir(parents=True, exist_ok=True)
            if mount.kind in ("emptyDir", "memory"):
                os.chmod(host, 0o777)  # source: kubernetes/kubernetes@v1.34.0:pkg/volume/emptydir/empty_dir.go (perm 0777)
        if mount.sub_path:
            host = host / mount.sub_path
            host.mkdir(parents=True, exist_ok=True)
        argv += ["--ro-bind" if mount.read_only else "--bind", str(host), mount.path]
    argv += ["--remount-ro", "/etc", "--remount-ro", "/", "--chdir", posixpath.normpath(proc.workdir), "--"]
    return argv + list(proc.argv)
