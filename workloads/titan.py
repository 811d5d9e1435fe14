"""Llama 3 pretraining with TorchTitan Neuron on trn2/trn3 (the native Neuron track), as one
gang-scheduled Volcano Job, after the data step (workloads/dataprep.py, the NeMo workload's)
when `titan.data` is set: a CPU-pool Job that writes the corpus the trainer reads.

One pod per node (all its Neuron devices and EFA interfaces), `torchrun` in each with one
process per logical NeuronCore at the pool's LNC setting. Volcano's `pytorch` plugin gives
every pod MASTER_ADDR/MASTER_PORT/WORLD_SIZE (pods)/RANK (pod index) and its `svc` plugin the
headless Service those addresses resolve through; `minAvailable` = nodes makes the scheduler
start all pods together or none. A failed or evicted pod restarts the whole job, which
resumes from the newest checkpoint on FSx.

The run config is the trainer's own RunConfig (images/trn_workloads/titan/config.py),
checked by that code against the pool before anything is created.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra import versions
from infra.monitoring.scrape import METRICS_PORT as METRICS_PORT_NAME
from infra.monitoring.scrape import WORKLOAD_SCRAPE_LABEL
from stackfiles import ConfigReader
from workloads.common import (RUN_CONFIG_FILE, TRAINING_POD_ANNOTATIONS, Paths, WorkloadBase, build_args, common_env,
                              container, json_config_map, labels, pod_spec, resources_for, wait_for)
from workloads import dataprep
from workloads.config import IMAGE_DIRS, WORKLOAD_TRACKS, WorkloadStackConfig
from workloads.dataprep import DataSettings
from workloads.entrypoints import titan_trainer
from workloads.errors import WorkloadConfigError
from workloads.platform import Platform, PoolScheduling
from workloads.progress import GANG_RESTART_LABEL

TRAINING_METRICS_PORT = 9400  # images/trn_workloads/training_metrics.py METRICS_PORT (rank 0 serves it)
MASTER_PORT = 23456  # volcano v1.15.1 pkg/controllers/job/plugins/distributed-framework/pytorch/pytorch.go DefaultPort
MASTER_TASK, WORKER_TASK = "master", "worker"
# checkov 3.3.30 reads kind `Job` as batch/v1 and looks for spec.template, which a Volcano Job
# does not have (its pod templates are under spec.tasks), so these pod-level checks fail on the
# Job object itself. The templates set what they ask for (non-root uid, RuntimeDefault seccomp,
# no service account token, security contexts); the policy pack checks every pod spec of any kind.
CHECKOV_POD_CHECKS = ("CKV_K8S_23", "CKV_K8S_29", "CKV_K8S_31", "CKV_K8S_38")
# The Llama 3 tokenizer (vocabulary 128256, the flavors' in trn_workloads/titan/config.py): gated, needs hfToken.
LLAMA3_TOKENIZER = "meta-llama/Meta-Llama-3-8B"


@dataclass(frozen=True)
class TitanSettings:
    pool: str
    nodes: int
    run: dict  # the trainer's RunConfig as JSON (validated)
    deadline_seconds: int
    tensorboard_pool: str | None  # a CPU pool for TensorBoard over the run's logs, or None
    data: DataSettings | None  # the data step this stack runs before training, or None (corpus prepared elsewhere)


def parse(section: dict, *, platform: Platform, stack: WorkloadStackConfig) -> TitanSettings:
    problems: list[str] = []
    r = ConfigReader(section, "titan", problems)
    pool_name = r.get("pool", str, "trn2-efa")
    nodes = r.get("nodes", int, 1, check=lambda v: None if 1 <= v <= 64 else "must be 1 to 64")
    data_raw = r.get("data", dict, None)
    dataset_prefix = r.get("datasetPrefix", str, None)
    peak = r.get("peakTflopsPerCore", float, None, check=lambda v: None if v > 0 else "must be positive")
    run_raw = r.get("run", dict, {})
    deadline = r.get("deadlineSeconds", int, 14 * 24 * 3600)
    tensorboard = r.get("tensorboard", bool, True)
    tensorboard_pool = r.get("tensorboardPool", str, "cpu")
    r.finish()
    data = None
    if data_raw is not None:
        # The data step the NeMo workload runs, with this stack's image and CPU pool: the corpus it writes is what trains.
        data = dataprep.parse(data_raw, key="titan.data", platform=platform, stack=stack,
                              default_tokenizer=LLAMA3_TOKENIZER, problems=problems)
        if dataset_prefix is not None:
            problems.append(f"titan.datasetPrefix: titan.data writes the corpus to {data.dataset_prefix} and training "
                            "reads it there; remove datasetPrefix (or remove titan.data to read a corpus prepared elsewhere)")
        dataset_prefix = data.dataset_prefix
    elif dataset_prefix is None:
        problems.append(f"titan: no corpus; add titan.data (inputs, tokenizer: the data step this stack runs on the "
                        f"CPU pool) or titan.datasetPrefix (<prefix>{dataprep.DATASET_SUFFIX} of a corpus already on "
                        f"{platform.storage.mount_path})")
    run = None
    try:
        pool = platform.pool(pool_name, key="titan.pool", accelerator=True)
        if nodes > 1 and not pool.efa_per_node:
            problems.append(f"titan.pool: {pool_name!r} has no EFA; {nodes} nodes need an EFA pool: "
                            f"{', '.join(sorted(p for p, s in platform.pools.items() if s.efa_per_node)) or 'none'}")
        paths = Paths(mount=platform.storage.mount_path, stack=stack.stack, run_id=stack.run_id)
        owned = {"nodes": nodes, "processes_per_node": pool.neuron_cores_per_node, "dataset_prefix": dataset_prefix,
                 "run_dir": paths.run_dir, "compile_cache": paths.neff_cache,
                 "peak_tflops_per_process": peak, "metrics_port": TRAINING_METRICS_PORT}
        run = titan_trainer.run_config(run_raw, owned=owned, max_nodes=pool.max_nodes, key="titan.run")
        if tensorboard:
            platform.pool(tensorboard_pool, key="titan.tensorboardPool", accelerator=False)
        if stack.image.build and IMAGE_DIRS.get(stack.image.repository) == "titan":
            build_args("titan")  # the fork's commit pin must be complete before `pulumi up` builds
    except WorkloadConfigError as e:
        problems += e.problems
    if problems:
        raise WorkloadConfigError(problems)
    return TitanSettings(pool=pool_name, nodes=nodes, run=run, deadline_seconds=deadline,
                         tensorboard_pool=tensorboard_pool if tensorboard else None, data=data)


def trainer_env(platform: Platform, base: WorkloadBase, pool: PoolScheduling) -> list[dict]:
    """The common env with the native track's SDK version and NEFF cache on FSx (no XLA cache
    settings), the pool's LNC for the Neuron runtime (NEURON_LOGICAL_NC_CONFIG, Neuron docs
    "Logical NeuronCore configuration") and EFA for the collectives."""
    (track,) = WORKLOAD_TRACKS["titan-pretrain"]
    native = versions.neuron_track(track)
    env = [{**e, "value": native["neuron_sdk"]} if e["name"] == "NEURON_SDK_VERSION" else e
           for e in common_env(platform, base.paths, neuron=True, hf_secret=base.hf_secret, track=track)]
    if pool.lnc is not None:
        env.append({"name": "NEURON_LOGICAL_NC_CONFIG", "value": str(pool.lnc)})
    if pool.efa_per_node:  # as the NeMo launcher sets them (trn_workloads/nemo/command.py build_env)
        env += [{"name": "FI_PROVIDER", "value": "efa"}, {"name": "FI_EFA_USE_DEVICE_RDMA", "value": "1"},
                {"name": "FI_EFA_FORK_SAFE", "value": "1"}, {"name": "CCOM_SOCKET_IFNAME", "value": "eth0"}]
    return env


def volcano_job(name: str, *, base: WorkloadBase, s: TitanSettings, config_map: str, image) -> dict:
    cfg, platform = base.config, base.platform
    pool = platform.pools[s.pool]

    def task(task_name: str, replicas: int) -> dict:
        # Global rank 0 runs in the master pod: only it serves the training metrics, so only it is scraped.
        serves_metrics = task_name == MASTER_TASK
        train = container(
            name="trainer", image=image, env=trainer_env(platform, base, pool), mount_path=platform.storage.mount_path,
            command=titan_trainer.torchrun_command(pool.neuron_cores_per_node, RUN_CONFIG_FILE), efa=True,
            resources=resources_for(pool, neuron_devices=pool.neuron_devices_per_node, efa=pool.efa_per_node),
            ports=[{"name": METRICS_PORT_NAME, "containerPort": TRAINING_METRICS_PORT}] if serves_metrics else None)
        return {"name": task_name, "replicas": replicas, "template": {
            # The master's deletion restarts the gang (Volcano PodEvicted -> RestartJob: workloads/progress.py).
            "metadata": {"labels": {**labels(cfg, "train"),
                                    **({**WORKLOAD_SCRAPE_LABEL, **GANG_RESTART_LABEL} if serves_metrics else {})},
                         "annotations": dict(TRAINING_POD_ANNOTATIONS)},
            "spec": pod_spec(platform=platform, pool=pool, containers=[train], service_account=base.service_account,
                             run_config=config_map, restart_policy="Never", shm_size="64Gi",
                             activeDeadlineSeconds=s.deadline_seconds)}}

    tasks = [task(MASTER_TASK, 1)] + ([task(WORKER_TASK, s.nodes - 1)] if s.nodes > 1 else [])
    return {
        "apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job",
        "metadata": {"name": name, "namespace": base.namespace, "labels": labels(cfg, "train"),
                     # Training runs for days: Pulumi records it once every pod runs, not when it ends.
                     "annotations": {**wait_for("jsonpath={.status.state.phase}=Running", 3600), **{
                         f"checkov.io/skip{i}": f"{check}=Volcano Job pod templates are under spec.tasks"
                         for i, check in enumerate(CHECKOV_POD_CHECKS, start=1)}}},
        "spec": {
            "schedulerName": "volcano", "queue": platform.volcano_queue,
            "minAvailable": s.nodes,  # the gang: every node's pod or none
            "maxRetry": 3,
            # volcano v1.15.1 pytorch plugin flags (pytorch.go addFlags); svc gives the pods stable hostnames.
            "plugins": {"pytorch": [f"--master={MASTER_TASK}", f"--worker={WORKER_TASK}", f"--port={MASTER_PORT}"],
                        "svc": []},
            # One lost pod breaks every collective: restart the gang, which resumes from the newest checkpoint.
            "policies": [{"event": "PodEvicted", "action": "RestartJob"}, {"event": "PodFailed", "action": "RestartJob"}],
            "ttlSecondsAfterFinished": 7 * 24 * 3600,
            "tasks": tasks,
        },
    }


class TitanPretrainWorkload(pulumi.ComponentResource):
    def __init__(self, name: str, *, base: WorkloadBase, settings: TitanSettings,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:workloads:TitanPretrain", name, None, opts)
        cfg, s = base.config, settings
        ns = base.namespace
        run_config = json_config_map(f"{cfg.stack}-run", namespace=ns, data=s.run, cfg=cfg, component="config",
                                     opts=base.run_opts())
        job_name = f"{cfg.stack}-train"
        before_training: list[pulumi.Resource] = [run_config]
        if s.data is not None:
            self.data = dataprep.job(f"{name}-data", base=base, data=s.data, image=base.image,
                                     tokenizer_dir=dataprep.tokenizer_dir(base.platform.storage.mount_path, cfg.stack))
            before_training.append(self.data)
        job = volcano_job(job_name, base=base, s=s, config_map=run_config.metadata["name"], image=base.image)
        self.job = k8s.apiextensions.CustomResource(
            f"{name}-train", api_version=job["apiVersion"], kind=job["kind"], metadata=job["metadata"],
            spec=job["spec"], opts=base.run_opts(*before_training))
        run_dir = s.run["run_dir"]
        self.outputs = {
            "followTraining": f"kubectl -n {ns} logs -f {job_name}-{MASTER_TASK}-0",
            "gang": f"kubectl -n {ns} get vcjob {job_name} && kubectl -n {ns} get pods -l volcano.sh/job-name={job_name}",
            "checkpoints": f"{run_dir}/checkpoints",
            "tensorboardLogs": f"{run_dir}/tensorboard",
            "worldSize": s.run["nodes"] * s.run["processes_per_node"],
            "datasetPrefix": s.run["dataset_prefix"],
        }
        if s.data is not None:
            self.outputs["followDataPrep"] = dataprep.follow_command(base)
        if s.tensorboard_pool:
            self.outputs["tensorboard"] = base.tensorboard(name, logdir=f"{run_dir}/tensorboard",
                                                           pool=base.platform.pools[s.tensorboard_pool])
        self.register_outputs(self.outputs)
