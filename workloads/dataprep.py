"""The data step of the pretraining workloads whose trainers read a Megatron indexed dataset
(nemo-pretrain on trn1, titan-pretrain on trn2): its `data` config section, the
`python -m trn_workloads.dataprep` command, and the CPU-pool Job that runs it before training.

Each workload runs it with its own image (every such image carries trn_workloads.dataprep) and
its own Neuron-free env; the Job's output prefix + "_text_document" is what the trainer reads.
"""
from __future__ import annotations

from dataclasses import dataclass

import pulumi_kubernetes as k8s

from stackfiles import ConfigReader
from workloads.common import WorkloadBase, common_env, container, job_await, labels, pod_spec, resources_for
from workloads.config import WorkloadStackConfig
from workloads.errors import WorkloadConfigError
from workloads.platform import Platform

# The suffix the data prep appends to --output-prefix (images/trn_workloads/dataprep: <prefix>_text_document.bin/.idx).
DATASET_SUFFIX = "_text_document"
JOB_DEADLINE_SECONDS = 24 * 3600


@dataclass(frozen=True)
class DataSettings:
    tokenizer: str
    inputs: tuple[str, ...]
    json_key: str
    on_bad_record: str
    pool: str
    workers: int
    output_prefix: str  # on FSx, without the _text_document suffix

    @property
    def dataset_prefix(self) -> str:
        return f"{self.output_prefix}{DATASET_SUFFIX}"


def parse(raw: dict, *, key: str, platform: Platform, stack: WorkloadStackConfig, default_tokenizer: str,
          problems: list[str]) -> DataSettings:
    """The `<key>` section (e.g. `nemo.data`); problems are appended, never raised."""
    d = ConfigReader(raw, key, problems)
    mount = platform.storage.mount_path
    data = DataSettings(
        tokenizer=d.get("tokenizer", str, default_tokenizer),
        inputs=d.str_list("inputs", required=True),
        json_key=d.get("jsonKey", str, "text"),
        on_bad_record=d.get("onBadRecord", str, "fail", allowed=("fail", "skip")),
        pool=d.get("pool", str, "cpu"),
        workers=d.get("workers", int, 16, check=lambda v: None if 1 <= v <= 192 else "must be 1 to 192"),
        output_prefix=d.get("outputPrefix", str, f"{mount}/data/{stack.stack}/corpus"),
    )
    d.finish()
    if not stack.hf_token_set and not data.tokenizer.startswith("/"):
        problems.append(f"hfToken: required to download tokenizer {data.tokenizer} from Hugging Face; set it with "
                        f"`pulumi config set --secret hfToken <token>` (or point {key}.tokenizer at a directory on /shared)")
    try:
        platform.pool(data.pool, key=f"{key}.pool", accelerator=False)
    except WorkloadConfigError as e:
        problems += e.problems
    return data


def command(data: DataSettings, tokenizer_dir: str) -> list[str]:
    cmd = ["python", "-m", "trn_workloads.dataprep", "--tokenizer", data.tokenizer, "--save-tokenizer", tokenizer_dir,
           "--json-key", data.json_key, "--output-prefix", data.output_prefix, "--workers", str(data.workers),
           "--on-bad-record", data.on_bad_record]
    for item in data.inputs:
        cmd += ["--input", item]
    return cmd


def job(name: str, *, base: WorkloadBase, data: DataSettings, tokenizer_dir: str, image) -> k8s.batch.v1.Job:
    """The data prep Job `<stack>-data` on the CPU pool, under `base`; later steps depend on it."""
    cfg, platform = base.config, base.platform
    cpu_pool = platform.pools[data.pool]
    prep = container(name="dataprep", image=image, command=command(data, tokenizer_dir),
                     env=common_env(platform, base.paths, neuron=False, hf_secret=base.hf_secret),
                     mount_path=platform.storage.mount_path,
                     resources=resources_for(cpu_pool, cpu=str(min(data.workers, cpu_pool.schedulable_millicpu_per_node // 1000)),
                                             memory="16Gi"))
    return k8s.batch.v1.Job(
        name, metadata={"name": job_name(cfg), "namespace": base.namespace, "labels": labels(cfg, "data"),
                        # the steps that read the corpus wait as long as the Job may run
                        "annotations": job_await(JOB_DEADLINE_SECONDS)},
        spec={"backoffLimit": 3, "activeDeadlineSeconds": JOB_DEADLINE_SECONDS, "ttlSecondsAfterFinished": 7 * 24 * 3600,
              "template": {"metadata": {"labels": labels(cfg, "data")},
                           "spec": pod_spec(platform=platform, pool=cpu_pool, containers=[prep],
                                            service_account=base.service_account, restart_policy="Never",
                                            shm_size="1Gi")}},
        opts=base.run_opts())


def tokenizer_dir(mount: str, stack: str) -> str:
    """Where the data step saves the tokenizer it used (--save-tokenizer), next to the corpus on FSx."""
    return f"{mount}/tokenizers/{stack}"


def job_name(cfg: WorkloadStackConfig) -> str:
    return f"{cfg.stack}-data"


def follow_command(base: WorkloadBase) -> str:
    return f"kubectl -n {base.namespace} logs -f job/{job_name(base.config)}"

