"""The LoRA finetune workload stack: Neuron request, tolerations and selectors from the
platform outputs; the run config validated by the finetune code; secrets never rendered."""
from __future__ import annotations

import copy
import json

import pytest

from trnctl.render import PLACEHOLDER_SECRET, run_program
from tests.platform_helpers import (assert_rejected_before_any_resource, platform_refs, project_with_stack, rendered_platform,
                                    rendered_workload, stack_config, with_setting)
from workloads.errors import WorkloadConfigError

STACK = "lora-finetune-usw2"




def test_job_requests_the_configured_devices_on_the_platform_pool():
    platform = rendered_platform("dev-usw2").outputs
    result = rendered_workload(STACK)
    job = result.by_type("kubernetes:batch/v1:Job")[0].inputs
    pod = job["spec"]["template"]["spec"]
    pool = platform["nodePools"]["trn1-efa"]
    assert pod["nodeSelector"] == pool["nodeSelector"]
    assert pod["tolerations"] == pool["tolerations"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["aws.amazon.com/neuron"] == resources["limits"]["aws.amazon.com/neuron"] == "16"
    assert pod["containers"][0]["command"] == ["python", "-m", "trn_workloads.finetune", "--config", "/etc/run/run.json"]


def test_run_config_carries_platform_facts():
    result = rendered_workload(STACK)
    cm = result.by_type("kubernetes:core/v1:ConfigMap")[0].inputs
    run = json.loads(cm["data"]["run.json"])
    platform = rendered_platform("dev-usw2").outputs
    assert run["train"]["neuron_cores_per_node"] == 32  # 16 devices x 2 NeuronCores of trn1.32xlarge
    assert run["train"]["tensor_parallel_size"] == 8
    assert run["lora"] == {"r": 8, "alpha": 64, "dropout": 0.05, "use_rslora": True,
                           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
    assert run["output"]["run_dir"].startswith(platform["sharedStorage"]["mountPath"] + "/runs/")
    assert run["output"]["s3_uri"].startswith(f"s3://{platform['artifactsBucket']}/workloads/{STACK}/")
    job = result.by_type("kubernetes:batch/v1:Job")[0].inputs
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert {"name": "run-config", "configMap": {"name": cm["metadata"]["name"]}} in volumes


def test_hf_token_only_as_secret_reference():
    result = rendered_workload(STACK)
    dumped = json.dumps([r.to_json() for r in result.resources]) + json.dumps(result.masked_outputs())
    assert PLACEHOLDER_SECRET not in dumped
    env = result.by_type("kubernetes:batch/v1:Job")[0].inputs["spec"]["template"]["spec"]["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert "value" not in token and token["valueFrom"]["secretKeyRef"]["key"] == "token"


BASE = stack_config("workloads", STACK)


def changed(key: str, value) -> dict:
    return with_setting(BASE, "trn-workloads:lora", key, value)


BAD = {
    "tp does not divide cores": (changed("neuronDevices", 3),
                                 "lora.run.train.tensor_parallel_size: 8 must divide train.neuron_cores_per_node (6)"),
    "too many devices": (changed("neuronDevices", 32), "lora.neuronDevices: 32 Neuron devices do not fit pool 'trn1-efa'"),
    "lora rank": (changed("run.lora.r", 0), "lora.run.lora.r: must be >= 1"),
    "stack-owned key": (changed("run.output.run_dir", "/tmp/x"), "lora.run.output.run_dir: set by the stack"),
    "unknown run key": (changed("run.train.lr", 0.1), "lora.run.train.lr: unknown key"),
    "inf2 has too few devices": (changed("pool", "inf2"), "lora.neuronDevices: 16 Neuron devices do not fit pool 'inf2'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_lora_config_fails_before_any_resource(case, tmp_path):
    cfg, expected = BAD[case]
    assert_rejected_before_any_resource(tmp_path, "workloads", cfg, expected, WorkloadConfigError)


def test_gated_model_without_token_is_refused(tmp_path):
    cfg = copy.deepcopy(BASE)
    del cfg["trn-workloads:hfToken"]
    project = project_with_stack(tmp_path, "workloads", "bad", cfg)
    with pytest.raises(WorkloadConfigError, match="hfToken: required to download meta-llama/Meta-Llama-3-8B"):
        run_program(project, "bad", stack_references=platform_refs())
