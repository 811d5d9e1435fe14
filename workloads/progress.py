"""What the platform's hang detection needs from a training workload: the step counter
`trn_training_steps_total` (for trainers that do not serve it themselves) and the label on
the one pod whose deletion restarts the whole gang from its newest checkpoint.

The counter comes from `python -m trn_workloads.progress` (images/trn_workloads/progress.py) in
a native sidecar (an init container with `restartPolicy: Always`, Kubernetes 1.29+: it runs
beside the main container and does not keep the pod from completing) of the pod that lives as
long as the training attempt. The platform's `TrainingGangHung` alert and its watchdog
(infra/monitoring/rules.py, infra/monitoring/watchdog.py) act on the counter.

GANG_RESTART_LABEL marks, per operator, the pod the watchdog deletes (each at its pinned tag):
- Volcano Job (titan): a pod deleted by anyone but the controller is a PodEvicted event
  (volcano-sh/volcano@v1.15.1 pkg/controllers/job/job_controller_handler.go deletePod), which
  the job's policy turns into RestartJob: every pod is killed and recreated, RetryCount + 1, and
  the job fails once RetryCount reaches maxRetry (pkg/controllers/job/state/running.go,
  restarting.go).
- MPIJob (nemo): the launcher. It is a batch Job with backoffLimit = runPolicy.backoffLimit
  (kubeflow/mpi-operator@v0.8.2 pkg/controller/mpi_job_controller.go newLauncherJob); the ranks
  on the workers are mpirun's children over ssh and end with it (Open MPI's orted: SIGCONT, SIGTERM,
  SIGKILL); a deleted launcher pod is replaced by the Job, a crashed mpirun (a rank died) is
  restarted in its pod (restartPolicy OnFailure), both under backoffLimit (the rule:
  trnctl/operators/kubernetes.py job_retry); the new mpirun starts every rank again and NxD Training
  resumes from the newest checkpoint (exp_manager resume_if_exists). Rehearsed, with steps lost
  measured, in tests/test_rehearse_nemo.py.
- RayCluster worker (ray): KubeRay recreates the deleted pod under a new generated name
  (trnctl/operators/kuberay.py replacement_worker_pods); Ray Train (V2, the default in 2.51.1)
  restarts its whole worker group from the newest reported checkpoint when a worker dies, up to
  RunConfig.failure_config.max_failures, waiting for the group to fit again (worker group start
  timeouts are retried without limit) (ray 2.51.1 python/ray/train/v2/_internal/execution/
  controller/controller.py, failure_handling/default.py; images/trn_workloads/ray_train/train.py).
  A stopped (hung) worker is marked dead by Ray Train itself only after its health-check poll
  hangs RAY_TRAIN_WORKER_HEALTH_CHECK_TIMEOUT_S (default 600 s; worker_group/worker_group.py
  poll_status): with the default trainingHangAfter (20m) Ray Train restarts a hung group itself after
  10 minutes and the watchdog is the backstop (a restart that hangs too); the rehearsal compresses the
  alert's window but not Ray Train's timeout, so there the watchdog acts. Past max_failures the Ray job
  fails and the RayJob's backoffLimit retries it: Retrying deletes the job's RayCluster and
  submitter and starts both again (ray-project/kuberay@v1.7.0 ray-operator/apis/ray/v1/
  rayjob_types.go "Each retry creates a new RayCluster", controllers/ray/rayjob_controller.go
  checkBackoffLimitAndUpdateStatusIfNeeded, deleteClusterResources); Ray Train resumes from the
  newest checkpoint under the same run name and storage path.
"""
from __future__ import annotations

from infra.monitoring.scrape import METRICS_PORT, SIDECAR_METRICS_PORT, WORKLOAD_SCRAPE_LABEL
from workloads.common import container, resources_for
from workloads.platform import PoolScheduling

GANG_RESTART_LABEL = {"trn-platform/gang-restart": "true"}  # infra/monitoring/watchdog.py selects it
PROGRESS_PORT = SIDECAR_METRICS_PORT  # images/trn_workloads/training_metrics.py METRICS_PORT


def progress_sidecar(*, image, source: list[str], mount_path: str, pool: PoolScheduling) -> dict:
    """The step counter for `source` (`["--jsonl", path]` or `["--tensorboard", dir]`), served on
    the port the workload PodMonitor scrapes (the pod also needs WORKLOAD_SCRAPE_LABEL)."""
    return container(name="progress", image=image, env=[], mount_path=mount_path,
                     command=["python", "-m", "trn_workloads.progress", *source, "--host", "0.0.0.0",
                              "--port", str(PROGRESS_PORT)],
                     resources=resources_for(pool, cpu="50m", memory="128Mi", cpu_limit="200m"),
                     ports=[{"name": METRICS_PORT, "containerPort": PROGRESS_PORT}], restartPolicy="Always")


def scraped(labels: dict[str, str]) -> dict[str, str]:
    return {**labels, **WORKLOAD_SCRAPE_LABEL}
