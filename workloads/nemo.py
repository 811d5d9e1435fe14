"""NeMo-Megatron Llama pretraining: data preparation Job (CPU pool) -> precompile MPIJob ->
training MPIJob (trn1 EFA pool), plus TensorBoard. `pulumi up` runs them in that order:
the precompile MPIJob waits for the data Job, training waits for precompile to succeed.

The run configuration (model preset, parallelism, steps, paths) is the launcher's own
`RunConfig` (images/trn_workloads/nemo): the stack checks it with the same code the
image runs, against the platform pool it lands on.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stackfiles import ConfigReader
from workloads.common import (RUN_CONFIG_FILE, TRAINING_POD_ANNOTATIONS, WorkloadBase, common_env, container,
                              json_config_map, labels, pod_spec, resources_for, wait_for)
from workloads import dataprep
from workloads.config import WorkloadStackConfig
from workloads.dataprep import DataSettings
from workloads.errors import WorkloadConfigError
from workloads.entrypoints import nemo_launcher
from workloads.platform import Platform, PoolScheduling
from workloads.progress import GANG_RESTART_LABEL, progress_sidecar, scraped

# MPIJob workers run sshd as the image's non-root user (images/nemo/Dockerfile); the
# operator mounts the launcher's SSH key where that sshd looks for it.
WORKER_SSHD = ["/usr/sbin/sshd", "-De", "-f", "/home/trn/.sshd_config"]
SSH_AUTH_MOUNT_PATH = "/home/trn/.ssh"


@dataclass(frozen=True)
class NemoSettings:
    pool: str
    run: dict  # the launcher's RunConfig as JSON (validated)
    nodes: int
    data: DataSettings
    precompile: bool
    tensorboard_pool: str | None
    deadline_seconds: int


def parse(section: dict, *, platform: Platform, stack: WorkloadStackConfig) -> NemoSettings:
    problems: list[str] = []
    r = ConfigReader(section, "nemo", problems)
    pool_name = r.get("pool", str, "trn1-efa")
    run_raw = r.get("run", dict, {})
    data_raw = r.get("data", dict, {})
    precompile = r.get("precompile", bool, True)
    tensorboard = r.get("tensorboard", bool, True)
    deadline = r.get("deadlineSeconds", int, 7 * 24 * 3600)
    r.finish()

    mount = platform.storage.mount_path
    data = dataprep.parse(data_raw, key="nemo.data", platform=platform, stack=stack,
                          default_tokenizer="meta-llama/Llama-2-7b-hf", problems=problems)
    pool = None
    try:
        pool = platform.pool(pool_name, key="nemo.pool", accelerator=True)
        if not pool.efa_per_node:
            problems.append(f"nemo.pool: {pool_name!r} has no EFA; multi-node training needs an EFA pool: "
                            f"{', '.join(p for p, s in platform.pools.items() if s.efa_per_node) or 'none in this platform'}")
    except WorkloadConfigError as e:
        problems += e.problems
    run = None
    if pool is not None:
        paths = {"tokenizer": dataprep.tokenizer_dir(mount, stack.stack),
                 "dataset_prefix": data.dataset_prefix,
                 "run_dir": f"{mount}/runs/{stack.stack}/{stack.run_id}",
                 "compile_cache": f"{mount}/neuron-cache"}
        try:
            run = nemo_launcher.run_config(run_raw, paths=paths, pool=pool, key="nemo.run")
        except WorkloadConfigError as e:
            problems += e.problems
    if problems:
        raise WorkloadConfigError(problems)
    assert pool is not None and run is not None
    return NemoSettings(pool=pool_name, run=run, nodes=int(run["nodes"]), data=data, precompile=precompile,
                        tensorboard_pool=data.pool if tensorboard else None, deadline_seconds=deadline)


def mpijob(name: str, *, base: WorkloadBase, s: NemoSettings, mode: str, config_map: str,
           annotations: dict, pool: PoolScheduling) -> dict:
    """An MPIJob (kubeflow.org/v2beta1): one launcher on the CPU pool that starts one
    launch process per worker node; workers take whole trn1.32xlarge nodes with all their
    Neuron devices and EFA interfaces."""
    cfg, platform = base.config, base.platform
    env = common_env(platform, base.paths, neuron=True, hf_secret=base.hf_secret)
    cpu_pool = platform.pools[s.data.pool]
    launch = ["python", "-m", "trn_workloads.nemo.launch", "--config", RUN_CONFIG_FILE, "--mode", mode]
    launcher = container(name="launcher", image=base.image, env=env, mount_path=platform.storage.mount_path,
                         command=nemo_launcher.mpirun_command(s.nodes, launch),
                         resources=resources_for(cpu_pool, cpu="1", memory="2Gi"))
    worker = container(name="worker", image=base.image, env=env, mount_path=platform.storage.mount_path,
                       command=WORKER_SSHD, efa=True,
                       resources=resources_for(pool, neuron_devices=pool.neuron_devices_per_node, efa=pool.efa_per_node))
    component = f"{mode}"
    launcher_template = {"metadata": {"labels": labels(cfg, component), "annotations": dict(TRAINING_POD_ANNOTATIONS)},
                         "spec": pod_spec(platform=platform, pool=cpu_pool, containers=[launcher],
                                          service_account=base.service_account, run_config=config_map, shm_size="1Gi")}
    if mode == "train":
        # The step counter from NxD Training's TensorBoard events (exp_manager explicit_log_dir = run_dir), and
        # the pod whose deletion restarts the gang (workloads/progress.py).
        launcher_template["metadata"]["labels"] = scraped({**labels(cfg, component), **GANG_RESTART_LABEL})
        launcher_template["spec"]["initContainers"] = [progress_sidecar(
            image=base.image, source=["--tensorboard", s.run["run_dir"]], mount_path=platform.storage.mount_path,
            pool=cpu_pool)]
    return {
        "apiVersion": "kubeflow.org/v2beta1", "kind": "MPIJob",
        "metadata": {"name": name, "namespace": base.namespace, "labels": labels(cfg, component),
                     "annotations": annotations},
        "spec": {
            "slotsPerWorker": 1,
            "sshAuthMountPath": SSH_AUTH_MOUNT_PATH,
            "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3,
                          "activeDeadlineSeconds": s.deadline_seconds, "ttlSecondsAfterFinished": 86400},
            "mpiImplementation": "OpenMPI",
            "launcherCreationPolicy": "WaitForWorkersReady",
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "OnFailure", "template": launcher_template},
                "Worker": {"replicas": s.nodes, "restartPolicy": "OnFailure", "template": {
                    "metadata": {"labels": labels(cfg, component), "annotations": dict(TRAINING_POD_ANNOTATIONS)},
                    "spec": pod_spec(platform=platform, pool=pool, containers=[worker],
                                     service_account=base.service_account, run_config=config_map, shm_size="64Gi")}},
            },
        },
    }


class NemoPretrainWorkload(pulumi.ComponentResource):
    def __init__(self, name: str, *, base: WorkloadBase, settings: NemoSettings,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:workloads:NemoPretrain", name, None, opts)
        cfg, platform, s = base.config, base.platform, settings
        pool = platform.pools[s.pool]
        ns = base.namespace
        run_config = json_config_map(f"{cfg.stack}-run", namespace=ns, data=s.run, cfg=cfg, component="config",
                                     opts=base.run_opts())
        tokenizer_dir = s.run["tokenizer"]

        self.data = dataprep.job(f"{name}-data", base=base, data=s.data, tokenizer_dir=tokenizer_dir, image=base.image)

        previous: pulumi.Resource = self.data
        succeeded = wait_for("condition=Succeeded", s.deadline_seconds)
        if s.precompile:
            pre = mpijob(f"{cfg.stack}-precompile", base=base, s=s, mode="precompile",
                         config_map=run_config.metadata["name"], annotations=succeeded, pool=pool)
            previous = k8s.apiextensions.CustomResource(
                f"{name}-precompile", api_version=pre["apiVersion"], kind=pre["kind"], metadata=pre["metadata"],
                spec=pre["spec"], opts=base.run_opts(run_config, previous))
        train_name = f"{cfg.stack}-train"
        # Training runs for days: Pulumi records it once it is running, not when it ends.
        train = mpijob(train_name, base=base, s=s, mode="train", config_map=run_config.metadata["name"],
                       annotations=wait_for("condition=Running", 3600), pool=pool)
        self.train = k8s.apiextensions.CustomResource(
            f"{name}-train", api_version=train["apiVersion"], kind=train["kind"], metadata=train["metadata"],
            spec=train["spec"], opts=base.run_opts(run_config, previous))

        self.outputs: dict = {
            "followDataPrep": dataprep.follow_command(base),
            "followTraining": f"kubectl -n {ns} logs -f -l training.kubeflow.org/job-name={train_name},"
                              "training.kubeflow.org/job-role=launcher",
            "neuronTop": f"kubectl -n {ns} exec -it {train_name}-worker-0 -- neuron-top",
            "checkpoints": f"{s.run['run_dir']}/checkpoints",
        }
        if s.tensorboard_pool:
            self.outputs["tensorboard"] = base.tensorboard(name, logdir=s.run["run_dir"],
                                                           pool=platform.pools[s.tensorboard_pool])
        self.register_outputs(self.outputs)
