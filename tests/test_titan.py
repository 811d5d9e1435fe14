"""The TorchTitan workload stack: a Volcano Job gang on the trn2 pool of the dev-trn2-use2
platform stack (native Neuron track), sized from the pool's logical NeuronCores at its LNC,
checked before any resource is created."""
from __future__ import annotations

import json

import pytest

from trnctl.render import policy_violations, run_program, validate
from tests.platform_helpers import (platform_refs, project_with_stack, rendered_platform, rendered_workload,
                                    stack_config, with_setting)
from workloads.errors import WorkloadConfigError

STACK = "titan-pretrain-use2"
PLATFORM_STACK = "dev-trn2-use2"
BASE = stack_config("workloads", STACK)


@pytest.fixture(scope="module")
def rendered():
    return rendered_workload(STACK)


def rejected(tmp_path, config: dict, refs: dict | None = None) -> str:
    """The program fails on `config` with a workload config error and registers nothing."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    project = project_with_stack(tmp_path, "workloads", "bad", config)
    with pytest.raises(WorkloadConfigError) as err:
        run_program(project, "bad", stack_references=refs or platform_refs(PLATFORM_STACK))
    assert err.value.registered_resources == 0
    return str(err.value)


def trn2_pool(name: str = "trn2-efa") -> dict:
    return rendered_platform(PLATFORM_STACK).outputs["nodePools"][name]


def test_gang_job_takes_whole_trn2_nodes(rendered):
    report = validate(rendered)
    assert report.issues == [] and report.checked["batch.volcano.sh/v1alpha1/Job"] == 1
    assert policy_violations(rendered) == []
    (job,) = rendered.by_type("kubernetes:batch.volcano.sh/v1alpha1:Job")
    spec = job.inputs["spec"]
    assert spec["schedulerName"] == "volcano" and spec["minAvailable"] == 4
    assert spec["plugins"] == {"pytorch": ["--master=master", "--worker=worker", "--port=23456"], "svc": []}
    assert [(t["name"], t["replicas"]) for t in spec["tasks"]] == [("master", 1), ("worker", 3)]
    pool = trn2_pool()
    assert pool["lnc"] == 2 and pool["neuronCoresPerNode"] == 64 and pool["track"] == "native"
    for task in spec["tasks"]:
        pod = task["template"]["spec"]
        assert pod["nodeSelector"] == pool["nodeSelector"] and pod["tolerations"] == pool["tolerations"]
        assert pod["restartPolicy"] == "Never" and pod["activeDeadlineSeconds"] == 14 * 24 * 3600
        (c,) = pod["containers"]
        assert c["resources"]["limits"]["aws.amazon.com/neuron"] == "16"
        assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == "16"
        assert "--nproc-per-node=64" in c["command"] and "--nnodes=$(WORLD_SIZE)" in c["command"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["NEURON_LOGICAL_NC_CONFIG"] == "2" and env["NEURON_SDK_VERSION"] == "2.34.0"
        # TorchNeuron's NEFF cache on FSx; the PyTorch/XLA-era cache settings belong to the xla track only.
        assert env["TORCH_NEURONX_NEFF_CACHE_DIR"] == "/shared/neff-cache"
        assert "NEURON_COMPILE_CACHE_URL" not in env and "NEURON_CC_FLAGS" not in env
        claim = rendered_platform(PLATFORM_STACK).outputs["sharedStorage"]["pvcName"]
        assert {"name": "shared", "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]
    assert rendered.outputs["worldSize"] == 256
    master, worker = (t["template"] for t in spec["tasks"])
    assert master["metadata"]["labels"]["trn-platform/scrape"] == "true"  # rank 0 serves the training metrics
    assert master["spec"]["containers"][0]["ports"] == [{"name": "metrics", "containerPort": 9400}]
    assert "trn-platform/scrape" not in worker["metadata"]["labels"] and "ports" not in worker["spec"]["containers"][0]


def test_the_cost_estimate_counts_every_pod_of_the_gang(rendered):
    from trnctl.cost import _replicated_pod_specs

    (job,) = rendered.by_type("kubernetes:batch.volcano.sh/v1alpha1:Job")
    manifest = {"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", **job.inputs}
    pods = _replicated_pod_specs(manifest)
    assert [n for n, _ in pods] == [1, 3]
    assert {spec["nodeSelector"]["trn-platform/pool"] for _, spec in pods} == {"trn2-efa"}


def test_tensorboard_reads_the_run_logs_on_the_cpu_pool(rendered):
    (board,) = rendered.by_type("kubernetes:apps/v1:Deployment")
    pod = board.inputs["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == rendered_platform(PLATFORM_STACK).outputs["nodePools"]["cpu"]["nodeSelector"]
    assert pod["containers"][0]["command"][:3] == ["tensorboard", "--logdir", rendered.outputs["tensorboardLogs"]]
    assert rendered.by_type("kubernetes:core/v1:Service")[0].inputs["spec"]["type"] == "ClusterIP"
    assert "port-forward" in rendered.outputs["tensorboard"]


def test_run_config_is_sized_from_the_pool(rendered):
    run = json.loads(rendered.by_type("kubernetes:core/v1:ConfigMap")[0].inputs["data"]["run.json"])
    assert run["nodes"] == 4 and run["processes_per_node"] == 64 and run["tensor_parallel_size"] == 8
    assert run["run_dir"] == "/shared/runs/titan-pretrain-use2/v1-0-0"
    assert run["dataset_prefix"] == "/shared/data/llama3-corpus/corpus_text_document"
    assert run["compile_cache"] == "/shared/neff-cache"
    assert run["compile"] is False  # eager: no SimpleFSDP here (item 13)
    from trn_workloads.training_metrics import METRICS_PORT

    assert run["metrics_port"] == METRICS_PORT


def test_the_trainer_and_the_pod_name_the_same_neff_cache_variable():
    from trn_workloads.titan import train
    from workloads.common import NEFF_CACHE_ENV

    assert train.NEFF_CACHE_ENV == NEFF_CACHE_ENV == "TORCH_NEURONX_NEFF_CACHE_DIR"


def test_the_xla_track_keeps_its_compile_cache_settings():
    from tests.platform_helpers import rendered_workload as render

    nemo = render("nemo-pretrain-usw2")
    workers = [r for r in nemo.by_type("kubernetes:kubeflow.org/v2beta1:MPIJob")][0].inputs["spec"]["mpiReplicaSpecs"]
    env = {e["name"]: e.get("value") for e in workers["Worker"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NEURON_COMPILE_CACHE_URL"] == "/shared/neuron-cache" and env["NEURON_CC_FLAGS"] == "--cache_dir=/shared/neuron-cache"
    assert "TORCH_NEURONX_NEFF_CACHE_DIR" not in env


def test_the_data_step_writes_the_corpus_training_reads_before_training_starts(rendered):
    """Issue 23 item 12: the titan stack runs the NeMo workload's data prep Job itself."""
    (data,) = rendered.by_type("kubernetes:batch/v1:Job")
    (job,) = rendered.by_type("kubernetes:batch.volcano.sh/v1alpha1:Job")
    assert data.urn in job.depends_on  # Pulumi creates the gang once the data Job has completed
    assert data.inputs["metadata"]["name"] == f"{STACK}-data"
    # pulumi-kubernetes waits 10 minutes for a Job unless told otherwise: as long as the Job may run.
    assert data.inputs["metadata"]["annotations"]["pulumi.com/timeoutSeconds"] == str(data.inputs["spec"]["activeDeadlineSeconds"])
    pod = data.inputs["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == rendered_platform(PLATFORM_STACK).outputs["nodePools"]["cpu"]["nodeSelector"]
    (prep,) = pod["containers"]
    cmd = prep["command"]
    assert cmd[:3] == ["python", "-m", "trn_workloads.dataprep"]
    assert cmd[cmd.index("--tokenizer") + 1] == "meta-llama/Meta-Llama-3-8B"
    run = json.loads(rendered.by_type("kubernetes:core/v1:ConfigMap")[0].inputs["data"]["run.json"])
    assert run["dataset_prefix"] == cmd[cmd.index("--output-prefix") + 1] + "_text_document"
    assert rendered.outputs["datasetPrefix"] == run["dataset_prefix"]
    # The same image as the trainer (the titan image carries trn_workloads.dataprep), no Neuron env.
    trainer = job.inputs["spec"]["tasks"][0]["template"]["spec"]["containers"][0]
    assert prep["image"] == trainer["image"]
    env = {e["name"]: e.get("value") for e in prep["env"]}
    assert env["TRN_BACKEND"] == "cpu" and "HF_TOKEN" in env
    assert "aws.amazon.com/neuron" not in prep["resources"]["limits"]
    assert "logs -f job/" in rendered.outputs["followDataPrep"]


def test_the_data_step_is_the_one_nemo_runs():
    """One data step for both workloads: same Job shape and command from the same parsed section."""
    from tests.platform_helpers import rendered_workload as render

    def shape(result):
        (data,) = result.by_type("kubernetes:batch/v1:Job")
        c = data.inputs["spec"]["template"]["spec"]["containers"][0]
        flags = [a for a in c["command"] if a.startswith("--")]
        return c["name"], c["command"][:3], flags, sorted(data.inputs["spec"]), data.inputs["metadata"]["annotations"]

    assert shape(render("nemo-pretrain-usw2")) == shape(render(STACK))


def titan(key, value) -> dict:
    return with_setting(BASE, "trn-workloads:titan", key, value)


def without_data(cfg: dict) -> dict:
    cfg["trn-workloads:titan"].pop("data")
    return cfg


def test_data_step_config_errors(tmp_path):
    both = rejected(tmp_path / "both", titan("datasetPrefix", "/shared/data/x_text_document"))
    assert "titan.datasetPrefix: titan.data writes the corpus to /shared/data/llama3-corpus/corpus_text_document" in both
    neither = rejected(tmp_path / "neither", without_data(titan("nodes", 4)))
    assert "titan: no corpus; add titan.data" in neither
    no_token = titan("nodes", 4)
    no_token.pop("trn-workloads:hfToken")
    assert "(or point titan.data.tokenizer at a directory on /shared)" in rejected(tmp_path / "token", no_token)
    assert "titan.data.pool: pool 'trn2-efa' is an accelerator pool" in rejected(tmp_path / "pool", titan("data.pool", "trn2-efa"))
    assert "titan.data.inputs: required key is missing" in rejected(tmp_path / "inputs", titan("data", {"pool": "cpu"}))


def test_a_stack_reading_a_prepared_corpus_runs_no_data_step(tmp_path):
    cfg = without_data(titan("datasetPrefix", "/shared/data/elsewhere/corpus_text_document"))
    project = project_with_stack(tmp_path, "workloads", "prepared", cfg)
    result = run_program(project, "prepared", stack_references=platform_refs(PLATFORM_STACK))
    assert result.by_type("kubernetes:batch/v1:Job") == [] and "followDataPrep" not in result.outputs
    run = json.loads(result.by_type("kubernetes:core/v1:ConfigMap")[0].inputs["data"]["run.json"])
    assert run["dataset_prefix"] == "/shared/data/elsewhere/corpus_text_document"


@pytest.mark.parametrize("key,value,message", [
    ("nodes", 5, "titan.run.nodes: 5 nodes exceed the pool's limit of 4"),
    ("run.tensor_parallel_size", 3, "titan.run.tensor_parallel_size: 3 does not divide the 64 NeuronCores of a node"),
    ("run.fsdp_size", 7, "titan.run.fsdp_size: fsdp_size 7 x tensor_parallel_size 8 must equal the world size 256"),
    ("run.processes_per_node", 8, "titan.run.processes_per_node: set by the stack"),
    ("run.model_flavor", "7B", "allowed values: debugmodel, 1B, 3B, 8B, 70B, 405B"),
    ("pool", "cpu", "titan.pool: pool 'cpu' is a CPU pool; allowed values: trn2-block, trn2-dev, trn2-efa"),
    ("pool", "nope", "titan.pool: pool 'nope' does not exist"),
    ("tensorboardPool", "trn2-efa", "titan.tensorboardPool: pool 'trn2-efa' is an accelerator pool; allowed values: cpu"),
])
def test_bad_titan_config_fails_before_any_resource(tmp_path, key, value, message):
    assert message in rejected(tmp_path, titan(key, value))


@pytest.mark.slow
def test_the_rendered_job_passes_checkov(rendered, tmp_path):
    from tests.test_checkov import failed_checks, run_checkov
    from trnctl.render import write_outputs

    import yaml

    write_outputs(rendered, tmp_path / STACK)
    write_outputs(rendered_platform(PLATFORM_STACK), tmp_path / "platform")  # its namespace NetworkPolicy
    for f in tmp_path.glob("*/helm/*"):
        f.unlink()
    # The Job skips the pod checks checkov cannot see through (spec.tasks): each task's pod
    # template must pass them as a batch/v1 Job of its own.
    (job,) = rendered.by_type("kubernetes:batch.volcano.sh/v1alpha1:Job")
    for task in job.inputs["spec"]["tasks"]:
        as_batch = {"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": f"task-{task['name']}", "namespace": job.inputs["metadata"]["namespace"],
                                 # as every EFA pod of the other workloads (MPIJob, RayCluster)
                                 "annotations": {"checkov.io/skip1": "CKV_K8S_25=EFA needs IPC_LOCK to pin RDMA memory"}},
                    "spec": {"template": task["template"]}}
        (tmp_path / f"task-{task['name']}.yaml").write_text(yaml.safe_dump(as_batch))
    reports = run_checkov(tmp_path)
    assert sum((r.get("summary") or {}).get("resource_count", 0) for r in reports) >= 3
    failed = failed_checks(reports)
    assert failed == [], "\n".join(f"{f['check_id']} {f['check_name']} {f['resource']}" for f in failed)


def test_building_the_image_needs_the_fork_commit(tmp_path):
    """image.build: the titan image installs TorchTitan Neuron at the commit images/neuron-sdk.json pins."""
    from infra import versions

    cfg = json.loads(json.dumps(BASE))
    cfg["trn-workloads:image"]["build"] = True
    if versions.neuron_track("native")["torchtitan_neuron_source"]["commit"] is None:
        message = rejected(tmp_path, cfg)
        assert "image.build: the titan image installs TorchTitan Neuron 0.2.2+neuron.1" in message
        assert "tracks.native.torchtitan_neuron_source.commit is None" in message
    else:  # a recorded commit reaches the build as a build arg
        from workloads.common import build_args

        commit = versions.neuron_track("native")["torchtitan_neuron_source"]["commit"]
        assert build_args("titan")["TORCHTITAN_NEURON_COMMIT"] == commit
