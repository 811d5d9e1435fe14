"""Rehearsal of titan-pretrain's Volcano Job: its master and worker pods exactly as `trnctl.operators.volcano.pods`
builds them (the pytorch plugin's MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK, the svc plugin's hostname, subdomain,
VC_*_HOSTS env and /etc/volcano files), every pod started at once as the gang is, each running the Job's real
`torchrun` (static rendezvous at the master's TCPStore, gloo) on the CPU path; stop (the Job's pods deleted, as
Volcano's RestartJob or a delete would) and start again: the trainer resumes from its newest checkpoint on FSx.

What the rehearsal changes (tiny scale; everything else comes from the render):
- `TITAN_OVERLAY`: the stack config (2 nodes, TorchTitan's debug model, a few steps, a tokenizer and corpus
  on the shared volume, no TensorBoard Deployment).
- `scale_processes`: one process per pod (`--nproc-per-node` in the pods' torchrun and the run config's
  processes_per_node) instead of one per NeuronCore: 2 CPUs here.
- The CPU-path env over the pods' (runner's overlay), and the rehearsal's own network namespace (netns.py):
  torch's TCPStore binds every interface.
- The titan image's config (`titan_image_config`): images/titan/Dockerfile over an empty base, since its base
  (the TorchNeuron training DLC) is not pinned (images/neuron-sdk.json tracks.native base_images.training is
  null) and trnctl.operators.images.image_config cannot build it; what the pods need comes from the Dockerfile
  itself (USER 1000, WORKDIR /tmp, PYTHONPATH, the code COPY) and the pods' own command (torchrun).
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
import time
from pathlib import Path
from typing import Iterator

from trnctl import operators
from trnctl.operators import OWNER_ANNOTATION, images, volcano
from trnctl.rehearse import netns, overlay, sandbox
from trnctl.rehearse.runner import PodResult, Rehearsal

TITAN_TOKENIZER = f"/shared/{overlay.SEED_DIR}/titan-tokenizer"
TITAN_CORPUS = f"/shared/{overlay.SEED_DIR}/titan-corpus.jsonl"
TITAN_OVERLAY = {"titan-pretrain": {"titan": {
    "nodes": 2, "tensorboard": False,
    "data": {"tokenizer": TITAN_TOKENIZER, "inputs": [TITAN_CORPUS], "workers": 1},
    "run": {"model_flavor": "debugmodel", "seq_len": 32, "local_batch_size": 2, "steps": 16, "lr": 0.003,
            "warmup_steps": 2, "tensor_parallel_size": 1, "fsdp_size": -1, "checkpoint_every_n_steps": 4,
            "log_every_n_steps": 1},
}}}
PROCESSES_PER_POD = 1


def scale_processes(objects: list[dict]) -> list[dict]:
    """The objects with one training process per pod: the Volcano Job's `--nproc-per-node` and the run config's
    processes_per_node (the trainer checks the world size against it)."""
    out = []
    for obj in objects:
        if operators.key_of(obj) in volcano.KINDS:
            obj = copy.deepcopy(obj)
            for task in obj["spec"]["tasks"]:
                for c in task["template"]["spec"]["containers"]:
                    c["command"] = [re.sub(r"^--nproc-per-node=\d+$", f"--nproc-per-node={PROCESSES_PER_POD}", a)
                                    for a in c.get("command") or []]
        elif obj.get("kind") == "ConfigMap" and "processes_per_node" in (obj.get("data") or {}).get("run.json", ""):
            obj = copy.deepcopy(obj)
            run = json.loads(obj["data"]["run.json"])
            obj["data"]["run.json"] = json.dumps({**run, "processes_per_node": PROCESSES_PER_POD})
        out.append(obj)
    return out


def seed_titan_inputs(shared_root: Path, claim: str, dataset_prefix: str) -> None:
    """What titan's data step leaves on FSx (a Megatron indexed corpus at dataset_prefix), written by the same
    data-prep code from a seeded corpus and tokenizer."""
    from trn_workloads.dataprep import synthetic
    from trn_workloads.dataprep.config import DATASET_SUFFIX, DataPrepConfig
    from trn_workloads.dataprep.pipeline import prepare
    root = shared_root / claim
    on_pvc = lambda path: root / path.removeprefix("/shared/")  # noqa: E731
    texts = list(synthetic.generate_documents(300, seed=3, median_words=60))
    if not (on_pvc(TITAN_TOKENIZER) / "tokenizer.json").exists():
        synthetic.train_bpe_tokenizer(texts, on_pvc(TITAN_TOKENIZER), vocab_size=512)
    corpus = on_pvc(TITAN_CORPUS)
    corpus.parent.mkdir(parents=True, exist_ok=True)
    synthetic.write_jsonl(corpus, texts)
    prepare(DataPrepConfig(tokenizer=str(on_pvc(TITAN_TOKENIZER)), inputs=(str(corpus),),
                           output_prefix=str(on_pvc(dataset_prefix.removesuffix(DATASET_SUFFIX))), workers=1))


def titan_image_config() -> images.ImageConfig:
    """images/titan/Dockerfile over an empty base (its base image is unpinned: see the module docstring)."""
    path = images.IMAGES_DIR / "titan" / "Dockerfile"
    args = {**images.build_args(), "BASE_IMAGE": "unpinned-torchneuron-training-dlc"}
    return images.parse_dockerfile(path.read_text(), images.ImageConfig(source="unpinned base"), args,
                                   source=str(path.relative_to(images.REPO_ROOT)))


@contextlib.contextmanager
def titan_image_over_empty_base() -> Iterator[None]:
    """images.image_config, falling back to titan_image_config for the titan image (the runner looks the function
    up on the module at each call)."""
    original = images.image_config

    def image_config(ref: str) -> images.ImageConfig:
        try:
            return original(ref)
        except (KeyError, AttributeError):
            if sandbox.image_name(ref) != "titan":
                raise
            return titan_image_config()

    images.image_config = image_config
    try:
        yield
    finally:
        images.image_config = original


def policy_action(job: dict, task: str, event: str) -> str:
    """The action Volcano's job controller takes on `event` (PodFailed, PodEvicted, ...) of a pod of `task`: the
    task's policies first, then the Job's; none matching = SyncJob (no restart).
    source: volcano-sh/volcano@v1.15.1:pkg/controllers/job/job_controller_util.go (applyPolicies)"""
    tasks = {t["name"]: t for t in job["spec"].get("tasks") or []}
    for policies in ((tasks.get(task) or {}).get("policies") or [], job["spec"].get("policies") or []):
        for policy in policies:
            events = policy.get("events") or ([policy["event"]] if policy.get("event") else [])
            if event in events and policy.get("action"):
                return policy["action"]
    return "SyncJob"


class VolcanoRehearsal(Rehearsal):
    """Runs inside its own network namespace (netns.py) from construction to close(), unless isolated=False."""

    def __init__(self, *args, isolated: bool = True, **kwargs) -> None:
        self._isolation, self.namespace = netns.isolation(isolated)
        try:
            super().__init__(*args, **kwargs)
        except BaseException:
            self._isolation.close()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._isolation.close()

    def _start_container(self, pod: dict, container: dict, dirs, hosts):
        with titan_image_over_empty_base():
            return super()._start_container(pod, container, dirs, hosts)

    def run_step(self, index: int) -> list[PodResult]:
        jobs = [o for o in self.stack.steps[index] if operators.key_of(o) in volcano.KINDS]
        if not jobs:
            return super().run_step(index)
        rest = [o for o in self.stack.steps[index] if o not in jobs]
        results = [r for job in jobs for r in self.run_job(job, index)]
        if rest:  # the step's other objects (Services, ...) as the runner runs them
            saved, self.stack.steps[index] = self.stack.steps[index], rest
            try:
                results += super().run_step(index)
            finally:
                self.stack.steps[index] = saved
        return results

    def run_job(self, job: dict, index: int, *, until=None) -> list[PodResult]:
        """Every pod of the Job at once (the gang), then to completion (every container exited 0), to the first
        failure (named per pod), or until `until()` is true while they run (then left running). A Job Volcano
        refuses (or whose plugins do nothing) makes no pods: one result named after the Job says why."""
        results = self.start_job(job, index)
        return self.await_job(job, results, until=until)

    def start_job(self, job: dict, index: int) -> dict[str, PodResult]:
        owner = operators.describe(job)
        refused = volcano.admission_problems(job, self.stack.ctx, self.objects)
        if refused:
            name = f"(no pods of {owner})"
            return {name: PodResult(name, index, owner, problem="; ".join(refused))}
        pods = volcano.pods(job, self.stack.ctx)
        self._deadline = time.monotonic() + self.step_timeout
        results = {p["metadata"]["name"]: PodResult(p["metadata"]["name"], index, owner) for p in pods}
        for pod in pods:
            name = pod["metadata"]["name"]
            self.all_pods = [p for p in self.all_pods if p["metadata"]["name"] != name] + [pod]
            try:
                self._start_pod(pod, results[name], self._deadline)
            except Exception as exc:  # kubelet refusals (a missing ConfigMap key, ...): recorded on the pod
                results[name].problem = str(exc).strip("'")
        self._refresh_hosts()
        return results

    def await_job(self, job: dict, results: dict[str, PodResult], *, until=None) -> list[PodResult]:
        pending = [name for name, r in results.items() if not r.problem and any(c.pod == name for c in self.containers)]
        while pending and not any(r.problem for r in results.values()):
            for name in list(pending):
                codes = [c.proc.poll() for c in self.containers if c.pod == name]
                failed = next((code for code in codes if code not in (None, 0)), None)
                if failed is not None:
                    results[name].exit_code = failed
                    results[name].problem = f"container exited with {failed}"
                    results[name].log_tail = self._log_tail(name)
                    pending.remove(name)
                elif codes and all(code == 0 for code in codes):
                    results[name].exit_code = 0
                    pending.remove(name)
            if not pending or (until is not None and until()):
                break
            if time.monotonic() > self._deadline:
                for name in pending:
                    results[name].problem = f"not complete within the step bound of {self.step_timeout:.0f}s"
                    results[name].log_tail = self._log_tail(name)
                break
            time.sleep(0.5)
        return list(results.values())

    def kill_pod(self, name: str) -> None:
        """SIGKILL one pod's containers (a node or process lost mid-run); the pod stays known, as failed."""
        self.stop_pods(lambda pod: pod["metadata"]["name"] == name, grace=0.0)

    def stop_job(self, job: dict) -> None:
        """Delete the Job's pods (every pod it owns)."""
        owner = operators.describe(job)
        self.stop_pods(lambda pod: pod["metadata"].get("annotations", {}).get(OWNER_ANNOTATION) == owner)
