"""Ray Train Llama pretraining on KubeRay, gang-scheduled by Volcano.

Three RayJobs, data -> precompile -> train, each with its own `rayClusterSpec` (head on the
CPU pool, one worker group on the trn1 EFA pool) in a Volcano Queue sized for exactly this
gang; KubeRay creates each job's cluster, gang-schedules it through a Volcano PodGroup and
deletes it when the job ends (`shutdownAfterJobFinishes`). `pulumi up` waits for each to
finish before submitting the next; data, the compile cache and checkpoints live on FSx, so
each step picks up where the previous one left off. The dashboard is reachable only by
`kubectl port-forward`.

Why not one RayCluster and RayJobs with `clusterSelector`: KubeRay v1.7.0 with the
operator's `batchScheduler.name: volcano` refuses those ("gang scheduling does not support
RayJob ... referencing an existing RayCluster") and requeues them forever
(ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/batchscheduler/volcano/
volcano_scheduler.go handleRayJob; trnctl.operators.kuberay.admission_problems).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stackfiles import ConfigReader
from workloads.common import (RUN_CONFIG_FILE, TRAINING_POD_ANNOTATIONS, WorkloadBase, common_env, container, json_config_map,
                              labels, pod_spec, resources_for, wait_for)
from workloads.config import WorkloadStackConfig
from workloads.errors import WorkloadConfigError
from workloads.entrypoints import ray_train
from trnctl.operators import kuberay
from workloads.platform import Platform, PoolScheduling
from workloads.progress import GANG_RESTART_LABEL, progress_sidecar, scraped

DASHBOARD_PORT = kuberay.DASHBOARD_PORT
HEAD_CPU, HEAD_MEMORY_GIB = 4, 16
# RayJob backoffLimit of the train job (ray-project/kuberay@v1.7.0 rayjob_types.go: "Specifies the number of
# retries before marking this job failed. Each retry creates a new RayCluster."); each resumes from the newest
# checkpoint.
TRAIN_RESUBMISSIONS = 2


@dataclass(frozen=True)
class RaySettings:
    pool: str
    head_pool: str
    workers: int
    run: dict  # the training code's run config as JSON (validated by that code)
    data_inputs: tuple[str, ...]
    tokenizer: str
    deadline_seconds: int


def parse(section: dict, *, platform: Platform, stack: WorkloadStackConfig) -> RaySettings:
    problems: list[str] = []
    r = ConfigReader(section, "ray", problems)
    pool_name = r.get("pool", str, "trn1-efa")
    head_pool = r.get("headPool", str, "cpu")
    workers = r.get("workers", int, 2, check=lambda v: None if 1 <= v <= 64 else "must be 1 to 64")
    run_raw = r.get("run", dict, {})
    inputs = r.str_list("dataInputs", required=True)
    tokenizer = r.get("tokenizer", str, "meta-llama/Llama-2-7b-hf")
    # each step's RayJob activeDeadlineSeconds (an int32 KubeRay requires positive: trnctl/operators/kuberay.py)
    deadline = r.get("deadlineSeconds", int, 7 * 24 * 3600,
                     check=lambda v: None if 1 <= v <= kuberay.RAYJOB_DEADLINE_MAX
                     else f"must be 1 to {kuberay.RAYJOB_DEADLINE_MAX} seconds")
    r.finish()
    pool = None
    try:
        pool = platform.pool(pool_name, key="ray.pool", accelerator=True)
        platform.pool(head_pool, key="ray.headPool", accelerator=False)
        if workers > pool.max_nodes:
            problems.append(f"ray.workers: {workers} worker nodes exceed pool {pool_name!r} limit of {pool.max_nodes} nodes")
        if workers > 1 and not pool.efa_per_node:
            problems.append(f"ray.pool: {pool_name!r} has no EFA; more than one worker node needs an EFA pool")
    except WorkloadConfigError as e:
        problems += e.problems
    if not stack.hf_token_set and not tokenizer.startswith("/"):
        problems.append(f"hfToken: required to download tokenizer {tokenizer} from Hugging Face; set it with "
                        "`pulumi config set --secret hfToken <token>` (or point ray.tokenizer at a directory on /shared)")
    run = None
    if pool is not None:
        mount = platform.storage.mount_path
        paths = {"data_dir": f"{mount}/data/{stack.stack}/blocks", "run_dir": f"{mount}/runs/{stack.stack}",
                 "tokenizer": f"{mount}/tokenizers/{stack.stack}", "compile_cache": f"{mount}/neuron-cache",
                 "run_name": stack.run_id}
        try:
            run = ray_train.run_config(run_raw, paths=paths, pool=pool, workers=workers, key="ray.run")
        except WorkloadConfigError as e:
            problems += e.problems
    if problems:
        raise WorkloadConfigError(problems)
    return RaySettings(pool=pool_name, head_pool=head_pool, workers=workers, run=run, data_inputs=inputs,
                       tokenizer=tokenizer, deadline_seconds=deadline)


def gang_resources(pool: PoolScheduling, workers: int) -> dict:
    """Requests of the whole gang (head + workers): the Queue's capability is exactly this."""
    cpu = HEAD_CPU + workers * (pool.schedulable_millicpu_per_node // 1000)  # node_share: whole cores
    memory = HEAD_MEMORY_GIB * 1024 + workers * pool.schedulable_memory_mib_per_node
    out = {"cpu": str(cpu), "memory": f"{memory}Mi", "aws.amazon.com/neuron": str(workers * pool.neuron_devices_per_node)}
    if pool.efa_per_node:
        out["vpc.amazonaws.com/efa"] = str(workers * pool.efa_per_node)
    return out


def worker_resources(pool: PoolScheduling) -> dict:
    return resources_for(pool, neuron_devices=pool.neuron_devices_per_node, efa=pool.efa_per_node)


def worker_resources_param(pool: PoolScheduling) -> str:
    """The worker group's `rayStartParams.resources`: compact JSON in single quotes. KubeRay v1.7.0 pastes each
    value unquoted into `ray start ... --%s=%s` run by `/bin/bash -c`, so unquoted JSON is split at its space and
    stripped of its double quotes; KubeRay quotes the resources it adds itself the same way (`'%s'`).
    source: ray-project/kuberay@v1.7.0:ray-operator/controllers/ray/common/pod.go (convertParamMap,
    addWellKnownAcceleratorResources)"""
    return "'" + json.dumps({"neuron_cores": pool.neuron_cores_per_node}, separators=(",", ":")) + "'"


class RayPretrainWorkload(pulumi.ComponentResource):
    def __init__(self, name: str, *, base: WorkloadBase, settings: RaySettings,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:workloads:RayPretrain", name, None, opts)
        cfg, platform, s = base.config, base.platform, settings
        pool, head_pool = platform.pools[s.pool], platform.pools[s.head_pool]
        ns = base.namespace
        queue_name = f"{cfg.stack}-gang"
        run_config = json_config_map(f"{cfg.stack}-run", namespace=ns, data=s.run, cfg=cfg, component="config",
                                     opts=base.run_opts())
        config_map = run_config.metadata["name"]

        self.queue = k8s.apiextensions.CustomResource(
            f"{name}-queue", api_version="scheduling.volcano.sh/v1beta1", kind="Queue",
            metadata={"name": queue_name, "labels": labels(cfg, "queue")},
            spec={"weight": 1, "reclaimable": False, "capability": gang_resources(pool, s.workers)},
            opts=base.run_opts())

        head_env = common_env(platform, base.paths, neuron=False, hf_secret=base.hf_secret)
        worker_env = common_env(platform, base.paths, neuron=True, hf_secret=base.hf_secret)
        head = container(name="ray-head", image=base.image, command=[], env=head_env,
                         mount_path=platform.storage.mount_path,
                         resources=resources_for(head_pool, cpu=str(HEAD_CPU), memory=f"{HEAD_MEMORY_GIB}Gi"),
                         ports=[{"name": "gcs", "containerPort": kuberay.GCS_PORT},
                                {"name": kuberay.DASHBOARD_PORT_NAME, "containerPort": DASHBOARD_PORT},
                                {"name": "client", "containerPort": kuberay.CLIENT_PORT}])
        worker = container(name="ray-worker", image=base.image, command=[], env=worker_env,
                           mount_path=platform.storage.mount_path, resources=worker_resources(pool), efa=True)
        for c in (head, worker):
            del c["command"]  # KubeRay generates the `ray start` command from rayStartParams
        # KubeRay v1.7.0 copies the RayJob's labels to the cluster it creates and names the PodGroup's queue
        # from `volcano.sh/queue-name` (volcano_scheduler.go createPodGroup, AddMetadataToChildResource).
        job_labels = {kuberay.VOLCANO_QUEUE_LABEL: queue_name}
        # The RayJob's `<job>-head-svc` (the dashboard's port-forward target) selects the head by
        # `app.kubernetes.io/name: kuberay`, KubeRay's default pod label, which a template value would override
        # (kuberay@v1.7.0 common/job.go BuildHeadServiceForRayJob, common/pod.go labelPod): leave it to KubeRay.
        head_labels = {k: v for k, v in labels(cfg, "ray-head").items() if k != "app.kubernetes.io/name"}
        cluster_spec = {
            "rayVersion": ray_train.ray_version(),
            "enableInTreeAutoscaling": False,
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": {"metadata": {"labels": head_labels, "annotations": dict(TRAINING_POD_ANNOTATIONS)},
                             "spec": pod_spec(platform=platform, pool=head_pool, containers=[head],
                                              service_account=base.service_account, run_config=config_map,
                                              shm_size="4Gi")}},
            "workerGroupSpecs": [{
                "groupName": s.pool, "replicas": s.workers, "minReplicas": s.workers, "maxReplicas": s.workers,
                "rayStartParams": {"resources": worker_resources_param(pool)},
                # A worker's deletion restarts Ray Train's worker group (workloads/progress.py); the stack's
                # RayJobs run one after the other, so the running one's workers are the ones selected.
                "template": {"metadata": {"labels": {**labels(cfg, "ray-worker"), **GANG_RESTART_LABEL},
                                          "annotations": dict(TRAINING_POD_ANNOTATIONS)},
                             "spec": pod_spec(platform=platform, pool=pool, containers=[worker],
                                              service_account=base.service_account, run_config=config_map,
                                              shm_size="64Gi")}}],
        }

        previous: pulumi.Resource = self.queue
        data_cpus = pool.schedulable_millicpu_per_node // 1000  # whole CPUs Ray sees on a worker
        steps = [("data", ray_train.data_entrypoint(RUN_CONFIG_FILE, s.data_inputs, s.tokenizer, s.run["tokenizer"],
                                                    data_cpus), "Complete", "cpu"),
                 ("precompile", ray_train.train_entrypoint(RUN_CONFIG_FILE, precompile=True), "Complete", "neuron"),
                 ("train", ray_train.train_entrypoint(RUN_CONFIG_FILE, precompile=False), "Running", "neuron")]
        self.jobs: dict[str, k8s.apiextensions.CustomResource] = {}
        for step, entrypoint, wait_state, backend in steps:
            job_name = f"{cfg.stack}-{step}"
            submitter = container(name="ray-job-submitter", image=base.image, command=[], env=head_env,
                                  mount_path=platform.storage.mount_path,
                                  resources=resources_for(head_pool, cpu="500m", memory="1Gi"))
            del submitter["command"]  # KubeRay sets `ray job submit ...`
            submitter_pod = {"metadata": {"labels": labels(cfg, f"{step}-submitter")},
                             "spec": pod_spec(platform=platform, pool=head_pool, containers=[submitter],
                                              restart_policy="Never", service_account=base.service_account,
                                              shm_size="64Mi")}
            retries = {}
            if step == "train":
                # The submitter lives as long as the Ray job (K8sJobMode): the step counter from world rank 0's
                # metrics.jsonl runs beside it. A failed train job is retried on a new cluster and resumes from
                # the newest checkpoint, at most TRAIN_RESUBMISSIONS times (workloads/progress.py).
                submitter_pod["metadata"]["labels"] = scraped(submitter_pod["metadata"]["labels"])
                submitter_pod["spec"]["initContainers"] = [progress_sidecar(
                    image=base.image, source=["--jsonl", f"{s.run['run_dir']}/{s.run['run_name']}/metrics.jsonl"],
                    mount_path=platform.storage.mount_path, pool=head_pool)]
                retries = {"backoffLimit": TRAIN_RESUBMISSIONS}
            self.jobs[step] = previous = k8s.apiextensions.CustomResource(
                f"{name}-{step}", api_version="ray.io/v1", kind="RayJob",
                metadata={"name": job_name, "namespace": ns, "labels": {**labels(cfg, step), **job_labels},
                          "annotations": wait_for(f"jsonpath={{.status.jobDeploymentStatus}}={wait_state}",
                                                  s.deadline_seconds if wait_state == "Complete" else 3600)},
                spec={"entrypoint": " ".join(entrypoint), "submissionMode": "K8sJobMode",
                      # KubeRay fails the step (DeadlineExceeded) once it has run this long, node launch included,
                      # so `pulumi up`'s wait for Complete (same bound) ends too (trnctl/operators/kuberay.py).
                      "activeDeadlineSeconds": s.deadline_seconds,
                      # The driver runs on the CPU head; driver and workers must agree on the backend.
                      "runtimeEnvYAML": f"env_vars:\n  TRN_BACKEND: {backend}\n",
                      "rayClusterSpec": cluster_spec,
                      # The gang's nodes go back to zero as soon as the step ends; FSx keeps its outputs.
                      "shutdownAfterJobFinishes": True,
                      "submitterPodTemplate": submitter_pod, **retries},
                opts=base.run_opts(previous, run_config))

        self.outputs = {
            # the train RayJob's own head Service (stable name; its cluster's name has a random suffix)
            "rayDashboard": f"kubectl -n {ns} port-forward service/{kuberay.rayjob_service_name(f'{cfg.stack}-train')} "
                            f"{DASHBOARD_PORT}:{DASHBOARD_PORT}  # then open http://localhost:{DASHBOARD_PORT}",
            "followTraining": f"kubectl -n {ns} logs -f -l job-name={cfg.stack}-train",
            "rayPods": f"kubectl -n {ns} get pods -l {kuberay.IS_RAY_NODE_LABEL}=yes,app.kubernetes.io/instance={cfg.stack}",
            "checkpoints": f"{s.run['run_dir']}/{s.run['run_name']}",
            "volcanoQueue": queue_name,
        }
        self.register_outputs(self.outputs)
