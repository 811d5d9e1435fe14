"""Neuron compile workload: a Job traces a model for Neuron on a trn1/inf2 pool and puts the
artifact in S3; optionally a Deployment + Service (+ HPA) serves it on inf2.

Pulumi waits for the Job to complete before it creates the Deployment, so a compile
failure stops the rollout instead of serving a missing artifact.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stackfiles import ConfigReader
from workloads.common import (TRAINING_POD_ANNOTATIONS, WorkloadBase, check_devices, common_env, container, job_await,
                              labels, pod_spec, resources_for, rollout_await)
from workloads.config import WorkloadStackConfig
from workloads.errors import WorkloadConfigError
from workloads.platform import Platform

BUILTIN_MODELS = ("resnet50", "housing-mlp")
SERVE_PORT = 8080


@dataclass(frozen=True)
class ServeSettings:
    pool: str
    replicas: int
    neuron_devices: int
    max_batch: int
    max_wait_ms: int
    max_queued_requests: int  # the server answers 503 + Retry-After beyond this many waiting requests
    hpa_max_replicas: int  # 0: no HPA
    hpa_cpu_percent: int


@dataclass(frozen=True)
class CompileSettings:
    model: str
    pool: str
    neuron_devices: int
    batch_size: int
    input_shape: tuple[int, ...]  # one example's shape, without the batch dimension; () = model default
    checkpoint: str | None  # weights on FSx or s3:// (housing-mlp / custom models)
    train_csv: str | None  # housing-mlp only: train on this CSV first (the seed's CPU training step)
    compiler_args: str
    backoff_limit: int
    deadline_seconds: int
    serve: ServeSettings | None
    s3_prefix: str  # s3://bucket/workloads/<stack>/<model>/<version>


def parse(section: dict, *, platform: Platform, stack: WorkloadStackConfig) -> CompileSettings:
    problems: list[str] = []
    r = ConfigReader(section, "compile", problems)
    model = r.get("model", str, "housing-mlp",
                  check=lambda v: None if v in BUILTIN_MODELS or ":" in v else
                  f"allowed values: {', '.join(BUILTIN_MODELS)} or <module>:<attr> of an nn.Module factory")
    pool_name = r.get("pool", str, "trn1-single")
    devices = r.get("neuronDevices", int, 1)
    batch = r.get("batchSize", int, 1, check=lambda v: None if 1 <= v <= 256 else "must be 1 to 256")
    shape = r.get("inputShape", list, [])
    checkpoint = r.get("checkpoint", str, None)
    train_csv = r.get("trainCsv", str, None)
    compiler_args = r.get("compilerArgs", str, "")
    backoff = r.get("backoffLimit", int, 2, check=lambda v: None if 0 <= v <= 5 else "must be 0 to 5")
    deadline = r.get("deadlineSeconds", int, 3600, check=lambda v: None if 60 <= v <= 86400 else "must be 60 to 86400")
    serve_raw = r.get("serve", dict, None)
    r.finish()
    if not all(isinstance(d, int) and d > 0 for d in shape):
        problems.append(f"compile.inputShape: {shape!r} must be a list of positive integers (one example, no batch dimension)")
    if ":" in model and not shape:
        problems.append(f"compile.inputShape: required for a <module>:<attr> model ({model})")
    if train_csv and model != "housing-mlp":
        problems.append("compile.trainCsv: only the housing-mlp model has a training step")
    if train_csv and checkpoint:
        problems.append("compile.checkpoint: leave it out when compile.trainCsv trains the model in this run")
    try:
        pool = platform.pool(pool_name, key="compile.pool", accelerator=True)
        check_devices(pool, devices, "compile.neuronDevices", problems)
    except WorkloadConfigError as e:
        problems += e.problems
    serve = None
    if serve_raw is not None:
        s = ConfigReader(serve_raw, "compile.serve", problems)
        serve = ServeSettings(
            pool=s.get("pool", str, "inf2"),
            replicas=s.get("replicas", int, 1, check=lambda v: None if 1 <= v <= 32 else "must be 1 to 32"),
            neuron_devices=s.get("neuronDevices", int, 1), max_batch=s.get("maxBatch", int, 8),
            max_wait_ms=s.get("maxWaitMs", int, 5),
            max_queued_requests=s.get("maxQueuedRequests", int, 64,
                                      check=lambda v: None if 1 <= v <= 10_000 else "must be 1 to 10000"),
            hpa_max_replicas=s.get("hpaMaxReplicas", int, 0), hpa_cpu_percent=s.get("hpaCpuPercent", int, 70))
        s.finish()
        try:
            spool = platform.pool(serve.pool, key="compile.serve.pool", accelerator=True)
            check_devices(spool, serve.neuron_devices, "compile.serve.neuronDevices", problems)
            if max(serve.replicas, serve.hpa_max_replicas) > spool.max_nodes * spool.neuron_devices_per_node // serve.neuron_devices:
                problems.append(f"compile.serve.replicas: {max(serve.replicas, serve.hpa_max_replicas)} replicas do not fit "
                                f"pool {serve.pool!r} at its limit ({spool.max_nodes} nodes)")
        except WorkloadConfigError as e:
            problems += e.problems
        if serve.hpa_max_replicas and serve.hpa_max_replicas < serve.replicas:
            problems.append("compile.serve.hpaMaxReplicas: must be 0 (no autoscaling) or >= replicas")
    if problems:
        raise WorkloadConfigError(problems)
    model_key = model.replace(":", "-").replace(".", "-").lower()
    return CompileSettings(model=model, pool=pool_name, neuron_devices=devices, batch_size=batch,
                           input_shape=tuple(shape), checkpoint=checkpoint, train_csv=train_csv,
                           compiler_args=compiler_args, backoff_limit=backoff,
                           deadline_seconds=deadline, serve=serve,
                           s3_prefix=f"s3://{platform.artifacts_bucket}/workloads/{stack.stack}/{model_key}/{stack.version}")


def train_command(s: CompileSettings, train_dir: str) -> list[str]:
    """The seed's CPU training step for the housing MLP (runs as an init container)."""
    return ["python", "-m", "trn_workloads.compile.housing_mlp", "train", "--csv", s.train_csv,
            "--output-dir", train_dir]


def compile_command(s: CompileSettings, output_dir: str, train_dir: str) -> list[str]:
    cmd = ["python", "-m", "trn_workloads.compile", "--model", s.model, "--batch-size", str(s.batch_size),
           "--output-dir", output_dir, "--s3-uri", f"{s.s3_prefix}/"]
    if s.input_shape:
        cmd += ["--input-shape", ",".join(map(str, s.input_shape))]
    if s.train_csv:
        cmd += ["--checkpoint", f"{train_dir}/housing_mlp.pt", "--example-input", f"{train_dir}/example_input.pt"]
    elif s.checkpoint:
        cmd += ["--checkpoint", s.checkpoint]
    if s.compiler_args:
        cmd += ["--compiler-args", s.compiler_args]
    return cmd


def serve_command(s: CompileSettings) -> list[str]:
    assert s.serve is not None
    return ["python", "-m", "trn_workloads.serve", "--model-uri", f"{s.s3_prefix}/", "--port", str(SERVE_PORT),
            "--max-batch-size", str(s.serve.max_batch), "--max-wait-ms", str(s.serve.max_wait_ms),
            "--max-queued-requests", str(s.serve.max_queued_requests)]


class CompileWorkload(pulumi.ComponentResource):
    def __init__(self, name: str, *, base: WorkloadBase, settings: CompileSettings,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:workloads:Compile", name, None, opts)
        cfg, platform, s = base.config, base.platform, settings
        pool = platform.pools[s.pool]
        job_name = f"{cfg.stack}-compile"
        env = common_env(platform, base.paths, neuron=True, hf_secret=base.hf_secret)
        train_dir = f"{base.paths.run_dir}/housing-mlp"
        main = container(name="compile", image=base.image,
                         command=compile_command(s, f"{base.paths.run_dir}/model", train_dir),
                         env=env, mount_path=platform.storage.mount_path,
                         resources=resources_for(pool, neuron_devices=s.neuron_devices, cpu="2", memory="8Gi",
                                                 cpu_limit="4"))
        init = []
        if s.train_csv:
            # CPU training needs no Neuron device: the init container asks for none.
            init.append(container(name="train", image=base.image, command=train_command(s, train_dir), env=env,
                                  mount_path=platform.storage.mount_path,
                                  resources=resources_for(pool, cpu="2", memory="4Gi", cpu_limit="4")))
        self.job = k8s.batch.v1.Job(
            f"{name}-job",
            metadata={"name": job_name, "namespace": base.namespace, "labels": labels(cfg, "compile"),
                      "annotations": job_await(s.deadline_seconds)},
            spec={"backoffLimit": s.backoff_limit, "activeDeadlineSeconds": s.deadline_seconds,
                  "ttlSecondsAfterFinished": 7 * 24 * 3600,
                  "template": {"metadata": {"labels": labels(cfg, "compile"), "annotations": dict(TRAINING_POD_ANNOTATIONS)},
                               "spec": pod_spec(platform=platform, pool=pool, containers=[main],
                                                service_account=base.service_account, restart_policy="Never",
                                                **({"initContainers": init} if init else {}))}},
            opts=base.run_opts())
        self.outputs: dict = {
            "artifactUri": f"{s.s3_prefix}/model.pt",
            "manifestUri": f"{s.s3_prefix}/manifest.json",
            "followCompile": f"kubectl -n {base.namespace} logs -f job/{job_name}",
            "fetchArtifact": f"aws s3 cp {s.s3_prefix}/ ./{cfg.stack}-model/ --recursive",
        }
        if s.serve:
            self._serve(name, base, s)
        self.register_outputs(self.outputs)

    def _serve(self, name: str, base: WorkloadBase, s: CompileSettings) -> None:
        cfg, platform, serve = base.config, base.platform, s.serve
        pool = platform.pools[serve.pool]
        app = f"{cfg.stack}-serve"
        selector = {"app.kubernetes.io/instance": cfg.stack, "app.kubernetes.io/component": "serve"}
        probe = {"httpGet": {"path": "/healthz", "port": SERVE_PORT}, "periodSeconds": 5, "failureThreshold": 3}
        server = container(name="serve", image=base.image_for("serve"), command=serve_command(s),
                           env=common_env(platform, base.paths, neuron=True, hf_secret=None),
                           mount_path=platform.storage.mount_path,
                           resources=resources_for(pool, neuron_devices=serve.neuron_devices, cpu="1", memory="4Gi",
                                                   cpu_limit="2"),
                           ports=[{"name": "http", "containerPort": SERVE_PORT}],
                           readinessProbe=probe, livenessProbe={**probe, "initialDelaySeconds": 60},
                           startupProbe={**probe, "failureThreshold": 60})
        deployment = k8s.apps.v1.Deployment(
            f"{name}-serve",
            metadata={"name": app, "namespace": base.namespace, "labels": labels(cfg, "serve"),
                      "annotations": rollout_await(server)},
            spec={"replicas": serve.replicas, "selector": {"matchLabels": selector},
                  "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                  "template": {"metadata": {"labels": {**labels(cfg, "serve"), **selector}},
                               "spec": pod_spec(platform=platform, pool=pool, containers=[server],
                                                service_account=base.service_account, shm_size="1Gi",
                                                # Service links would inject TRN_SERVE_*-like variables.
                                                enableServiceLinks=False)}},
            opts=base.run_opts(self.job))
        k8s.core.v1.Service(
            f"{name}-serve", metadata={"name": app, "namespace": base.namespace, "labels": labels(cfg, "serve")},
            spec={"type": "ClusterIP", "selector": selector,
                  "ports": [{"name": "http", "port": 80, "targetPort": SERVE_PORT}]},
            opts=base.run_opts(deployment))
        if serve.hpa_max_replicas:
            k8s.autoscaling.v2.HorizontalPodAutoscaler(
                f"{name}-serve", metadata={"name": app, "namespace": base.namespace, "labels": labels(cfg, "serve")},
                spec={"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": app},
                      "minReplicas": serve.replicas, "maxReplicas": serve.hpa_max_replicas,
                      "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                          "type": "Utilization", "averageUtilization": serve.hpa_cpu_percent}}}]},
                opts=base.run_opts(deployment))
        self.outputs.update({
            "serviceUrl": f"http://{app}.{base.namespace}.svc.cluster.local/predict",
            "portForward": f"kubectl -n {base.namespace} port-forward service/{app} 8080:80",
        })
