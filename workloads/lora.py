"""Llama LoRA finetuning with optimum-neuron: one Job on a trn1 pool that trains, merges,
evaluates (text-to-SQL executed in SQLite, base vs finetuned) and uploads the run to the
artifacts bucket. The finetune code is in the image; its run config comes from the stack
(a ConfigMap of JSON, never a script) and is validated by that code before `pulumi up`
creates anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stackfiles import ConfigReader
from workloads.common import (RUN_CONFIG_FILE, TRAINING_POD_ANNOTATIONS, WorkloadBase, check_devices, common_env, container, job_await,
                              json_config_map, labels, node_share, pod_spec, resources_for)
from workloads.config import WorkloadStackConfig
from workloads.entrypoints import finetune
from workloads.errors import WorkloadConfigError
from workloads.platform import Platform


@dataclass(frozen=True)
class LoraSettings:
    pool: str
    neuron_devices: int
    run: dict  # the finetune run config (validated)
    inspector_pool: str | None  # a small pod with /shared mounted, to look at results
    deadline_seconds: int
    backoff_limit: int


def parse(section: dict, *, platform: Platform, stack: WorkloadStackConfig) -> LoraSettings:
    problems: list[str] = []
    r = ConfigReader(section, "lora", problems)
    pool_name = r.get("pool", str, "trn1-efa")
    devices = r.get("neuronDevices", int, 16)
    run_raw = r.get("run", dict, None, required=True)
    inspector = r.get("inspector", bool, False)
    inspector_pool = r.get("inspectorPool", str, "cpu")
    deadline = r.get("deadlineSeconds", int, 24 * 3600)
    backoff = r.get("backoffLimit", int, 1, check=lambda v: None if 0 <= v <= 3 else "must be 0 to 3")
    r.finish()
    run = None
    base_model = ((run_raw or {}).get("model") or {}).get("base", "")
    if not stack.hf_token_set and not str(base_model).startswith("/"):
        problems.append(f"hfToken: required to download {base_model or 'the base model'} from Hugging Face; "
                        "set it with `pulumi config set --secret hfToken <token>` (or use a model directory on /shared)")
    try:
        pool = platform.pool(pool_name, key="lora.pool", accelerator=True)
        check_devices(pool, devices, "lora.neuronDevices", problems)
        if inspector:
            platform.pool(inspector_pool, key="lora.inspectorPool", accelerator=False)
        if run_raw is not None and not problems:
            mount = platform.storage.mount_path
            run = finetune.run_config(
                run_raw, pool=pool, devices=devices, key="lora.run",
                run_dir=f"{mount}/runs/{stack.stack}/{stack.run_id}",
                s3_uri=f"s3://{platform.artifacts_bucket}/workloads/{stack.stack}/{stack.run_id}")
    except WorkloadConfigError as e:
        problems += e.problems
    if problems:
        raise WorkloadConfigError(problems)
    return LoraSettings(pool=pool_name, neuron_devices=devices, run=run, deadline_seconds=deadline,
                        inspector_pool=inspector_pool if inspector else None, backoff_limit=backoff)


class LoraFinetuneWorkload(pulumi.ComponentResource):
    def __init__(self, name: str, *, base: WorkloadBase, settings: LoraSettings,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("trn:workloads:LoraFinetune", name, None, opts)
        cfg, platform, s = base.config, base.platform, settings
        pool = platform.pools[s.pool]
        ns = base.namespace
        run_config = json_config_map(f"{cfg.stack}-run", namespace=ns, data=s.run, cfg=cfg, component="config",
                                     opts=base.run_opts())
        job_name = f"{cfg.stack}-finetune"
        share = s.neuron_devices / pool.neuron_devices_per_node  # CPU and memory in proportion to the devices
        trainer = container(
            name="finetune", image=base.image, command=finetune.command(RUN_CONFIG_FILE),
            env=common_env(platform, base.paths, neuron=True, hf_secret=base.hf_secret),
            mount_path=platform.storage.mount_path,
            resources=resources_for(pool, neuron_devices=s.neuron_devices, cpu=node_share(pool, share)[0],
                                    memory=node_share(pool, share)[1]))
        self.job = k8s.batch.v1.Job(
            f"{name}-job", metadata={"name": job_name, "namespace": ns, "labels": labels(cfg, "finetune"),
                                     "annotations": job_await(s.deadline_seconds)},
            spec={"backoffLimit": s.backoff_limit, "activeDeadlineSeconds": s.deadline_seconds,
                  "ttlSecondsAfterFinished": 7 * 24 * 3600,
                  "template": {"metadata": {"labels": labels(cfg, "finetune"), "annotations": dict(TRAINING_POD_ANNOTATIONS)},
                               "spec": pod_spec(platform=platform, pool=pool, containers=[trainer],
                                                service_account=base.service_account, restart_policy="Never",
                                                run_config=run_config.metadata["name"], shm_size="32Gi")}},
            opts=base.run_opts(run_config))
        run_dir = s.run["output"]["run_dir"]
        self.outputs = {
            "followFinetune": f"kubectl -n {ns} logs -f job/{job_name}",
            "runDirOnFsx": run_dir,
            "evalReport": f"{run_dir}/eval.json",
            "artifactsUri": s.run["output"]["s3_uri"],
            "fetchResults": f"aws s3 cp {s.run['output']['s3_uri']}/ ./{cfg.stack}/ --recursive --exclude 'merged/*'",
        }
        if s.run["output"]["merge"]:
            # What llm-serve reads through a StackReference (with the exported `version`).
            self.outputs["mergedModelDir"] = f"{run_dir}/merged"
        if s.inspector_pool:
            self._inspector(name, base, s)
        self.register_outputs(self.outputs)

    def _inspector(self, name: str, base: WorkloadBase, s: LoraSettings) -> None:
        """A small read-only pod on the CPU pool with /shared mounted (the seed's utility pod)."""
        cfg, platform = base.config, base.platform
        pool = platform.pools[s.inspector_pool]
        pod_name = f"{cfg.stack}-inspect"
        shell = container(name="inspect", image=base.image, command=["sleep", "infinity"],
                          env=[{"name": "RUN_DIR", "value": s.run["output"]["run_dir"]}],
                          mount_path=platform.storage.mount_path,
                          resources=resources_for(pool, cpu="250m", memory="512Mi", cpu_limit="500m"))
        shell["volumeMounts"][0]["readOnly"] = True
        k8s.core.v1.Pod(f"{name}-inspect",
                        metadata={"name": pod_name, "namespace": base.namespace, "labels": labels(cfg, "inspect")},
                        spec=pod_spec(platform=platform, pool=pool, containers=[shell],
                                      service_account=base.service_account, shm_size="64Mi",
                                      terminationGracePeriodSeconds=5),
                        opts=base.run_opts())
        self.outputs["inspect"] = f"kubectl -n {base.namespace} exec -it {pod_name} -- bash -c 'ls -l $RUN_DIR'"
