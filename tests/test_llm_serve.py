"""The llm-serve workload stack: vLLM on an inf2 pool from the platform outputs, the model
from a rendered lora-finetune stack (StackReference chain), KEDA ScaledObject validated
against its CRD schema, config errors named before any resource."""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import posixpath

import pytest

from infra import versions
from stackfiles import raw_from_bag
from trnctl.render import (PLACEHOLDER_SECRET, _referenced_stacks, _render_references, config_bag, policy_violations,
                          run_program, validate)
from tests.platform_helpers import REPO, project_with_stack, rendered_platform, stack_config, with_setting
from trnctl.operators import hpa
from workloads import config as workload_config
from workloads import llm_serve
from workloads.errors import WorkloadConfigError
from workloads.platform import parse_platform_outputs

STACK = "llm-serve-usw2"
FINETUNE = "lora-finetune-usw2"
PLATFORM_REF = "organization/trn-platform/dev-usw2"
FINETUNE_REF = f"organization/trn-workloads/{FINETUNE}"
def platform_outputs(*, monitoring: bool = True) -> dict:
    """The rendered dev-usw2 outputs; monitoring=False: as a platform deployed without monitoring."""
    outputs = copy.deepcopy(rendered_platform("dev-usw2").outputs)
    assert outputs["monitoring"]["prometheusUrl"].startswith("http://")
    if not monitoring:
        del outputs["monitoring"]
    return outputs


def refs(*, finetune_version: str | None = None, monitoring: bool = True, tmp_path=None) -> dict:
    platform = {PLATFORM_REF: {"outputs": platform_outputs(monitoring=monitoring),
                               "secret": sorted(rendered_platform("dev-usw2").secret_outputs)}}
    finetune = rendered_finetune() if finetune_version is None else finetune_at(finetune_version, platform, tmp_path)
    return {**platform, FINETUNE_REF: {"outputs": finetune.outputs, "secret": sorted(finetune.secret_outputs)}}


@functools.lru_cache(maxsize=None)
def rendered_finetune():
    platform = {PLATFORM_REF: {"outputs": platform_outputs(), "secret": []}}
    return run_program(REPO / "workloads", FINETUNE, stack_references=platform)


def finetune_at(version: str, platform_refs: dict, tmp_path):
    cfg = copy.deepcopy(stack_config("workloads", FINETUNE))
    cfg["trn-workloads:version"] = version
    directory = tmp_path / f"finetune-{version}"
    directory.mkdir()
    project = project_with_stack(directory, "workloads", FINETUNE, cfg)
    return run_program(project, FINETUNE, stack_references=platform_refs)


@functools.lru_cache(maxsize=None)
def rendered_serve():
    return run_program(REPO / "workloads", STACK, stack_references=refs())


def deployment(result) -> dict:
    return result.by_type("kubernetes:apps/v1:Deployment")[0].inputs


def vllm_container(result) -> dict:
    return deployment(result)["spec"]["template"]["spec"]["containers"][0]


# --------------------------------------------------------------------------- render


def test_stack_renders_validates_strictly_and_passes_policy():
    result = rendered_serve()
    report = validate(result)
    assert report.ok, report.summary()
    kinds = {obj["kind"] for _, obj in result.manifests}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "Secret", "ServiceAccount"} <= kinds
    assert not report.skipped  # the ScaledObject was checked against infra/schemas, not skipped
    assert [v for v in policy_violations(result) if v.severity == "mandatory"] == []


def test_scaled_object_fails_its_crd_schema_when_wrong():
    """The CRD schema (and its CEL rule) really checks the ScaledObject we render."""
    from trnctl.validation import validate_objects

    obj = next(o for _, o in rendered_serve().manifests if o["kind"] == "ScaledObject")
    bad = copy.deepcopy(obj)
    bad["spec"]["minReplicaCount"], bad["spec"]["maxReplicaCount"] = 5, 2
    typo = copy.deepcopy(obj)
    typo["spec"]["triggers"][0]["metricTyp"] = "AverageValue"
    assert validate_objects([("ok", obj)], "1.34").ok
    assert not validate_objects([("min>max", bad)], "1.34").ok
    assert not validate_objects([("typo", typo)], "1.34").ok


def test_keda_schema_and_chart_come_from_the_pinned_release():
    schema = json.loads((REPO / "infra/schemas/keda.sh_v1alpha1_scaledobject.json").read_text())
    assert f"@ v{versions.KEDA_VERSION} " in schema["x-source"]
    platform = rendered_platform("dev-usw2")
    keda = next(r for r in platform.by_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "keda")
    assert keda.inputs["version"] == versions.KEDA_VERSION
    assert keda.inputs["repositoryOpts"]["repo"] == versions.KEDA_CHART_REPO
    assert keda.inputs["values"]["nodeSelector"] == {"trn-platform/pool": "system"}


def test_pods_land_on_the_pool_with_neuron_devices_from_the_platform_outputs():
    platform = platform_outputs()
    pool = platform["nodePools"]["inf2"]
    pod = deployment(rendered_serve())["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == pool["nodeSelector"]
    assert pod["tolerations"] == pool["tolerations"]
    resources = pod["containers"][0]["resources"]
    # tensor parallel 2 = the 2 NeuronCores of one Inferentia2 device
    assert resources["requests"]["aws.amazon.com/neuron"] == resources["limits"]["aws.amazon.com/neuron"] == "1"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["NEURON_RT_NUM_CORES"] == "2"
    assert env["VLLM_NEURON_FRAMEWORK"] == "neuronx-distributed-inference"
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)["persistentVolumeClaim"]["claimName"]
    assert claim == platform["sharedStorage"]["pvcName"]


def test_vllm_serves_the_merged_finetune_output_with_the_configured_shape():
    finetune = rendered_finetune().outputs
    c = vllm_container(rendered_serve())
    assert c["image"] == llm_serve.vllm_pins("xla")["image"]
    assert f"-sdk{rendered_platform('dev-usw2').outputs['neuronSdkVersion']}-" in c["image"]  # the platform's SDK
    cmd = c["command"]
    assert cmd[:3] == ["vllm", "serve", finetune["mergedModelDir"]]
    assert finetune["mergedModelDir"] == finetune["runDirOnFsx"] + "/merged"
    opts = dict(zip(cmd[3::2], cmd[4::2]))
    assert opts["--tensor-parallel-size"] == "2" and opts["--max-model-len"] == "2048"
    assert opts["--max-num-seqs"] == "4" and opts["--served-model-name"] == "sql-llama3-8b"
    assert opts["--host"] == "0.0.0.0"
    assert json.loads(opts["--override-neuron-config"]) == {
        "enable_bucketing": True, "context_encoding_buckets": [512, 1024, 2048],
        "token_generation_buckets": [512, 1024, 2048]}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["NEURON_COMPILED_ARTIFACTS"].startswith("/shared/neuron-cache/vllm/")


def test_probes_are_sized_for_compile_time_and_metrics_port_is_scraped():
    result = rendered_serve()
    c = vllm_container(result)
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": 8000}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert c["livenessProbe"]["httpGet"]["path"] == c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["ports"] == [{"name": "metrics", "containerPort": 8000}]
    labels = deployment(result)["spec"]["template"]["metadata"]["labels"]
    assert labels["trn-platform/scrape"] == "true"


def test_the_platforms_workload_pod_monitor_scrapes_the_vllm_pods():
    platform = rendered_platform("dev-usw2")
    monitors = [r.inputs for r in platform.by_type("kubernetes:monitoring.coreos.com/v1:PodMonitor")]
    template = deployment(rendered_serve())["spec"]["template"]
    ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    scraping = [m for m in monitors if set(m["spec"]["selector"].get("matchLabels", {}).items())
                <= set(template["metadata"]["labels"].items()) and m["spec"]["selector"].get("matchLabels")]
    assert scraping, "no PodMonitor of the platform selects the vLLM pods"
    assert {e["port"] for e in scraping[0]["spec"]["podMetricsEndpoints"]} <= ports
    assert scraping[0]["spec"]["namespaceSelector"] == {"any": True}


def test_only_a_cluster_ip_service_and_a_port_forward_command():
    result = rendered_serve()
    services = result.by_type("kubernetes:core/v1:Service")
    assert len(services) == 1 and services[0].inputs["spec"]["type"] == "ClusterIP"
    assert not any("nodePort" in p for p in services[0].inputs["spec"]["ports"])
    assert not result.by_type("kubernetes:networking.k8s.io/v1:Ingress")
    name, ns = services[0].inputs["metadata"]["name"], services[0].inputs["metadata"]["namespace"]
    assert result.outputs["portForward"] == f"kubectl -n {ns} port-forward service/{name} 8000:8000"
    pdb = result.by_type("kubernetes:policy/v1:PodDisruptionBudget")[0].inputs["spec"]
    assert pdb["selector"] == deployment(result)["spec"]["selector"] and pdb["maxUnavailable"] == 1


def test_api_key_only_as_a_secret_reference():
    result = rendered_serve()
    dumped = json.dumps([r.to_json() for r in result.resources]) + json.dumps(result.masked_outputs())
    assert PLACEHOLDER_SECRET not in dumped
    key = next(e for e in vllm_container(result)["env"] if e["name"] == "VLLM_API_KEY")
    assert "value" not in key and key["valueFrom"]["secretKeyRef"]["key"] == llm_serve.API_KEY_SECRET_KEY
    assert "--api-key" not in vllm_container(result)["command"]


def scaled_object(result) -> dict:
    return result.by_type("kubernetes:keda.sh/v1alpha1:ScaledObject")[0].inputs


def test_scaled_object_scales_on_requests_in_flight_from_the_platform_prometheus():
    result = rendered_serve()
    so = scaled_object(result)
    dep = deployment(result)
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": dep["metadata"]["name"]}
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"]) == (1, 3)
    trigger = so["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["serverAddress"] == platform_outputs()["monitoring"]["prometheusUrl"]
    query = trigger["metadata"]["query"]
    assert llm_serve.RUNNING_METRIC in query and llm_serve.WAITING_METRIC in query
    assert f'namespace="{dep["metadata"]["namespace"]}"' in query
    assert trigger["metadata"]["threshold"] == "4"  # maxNumSeqs of the stack file: a full replica
    assert so["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 1, "behavior": "currentReplicasIfHigher"}


def test_a_missing_metric_is_an_error_that_triggers_the_fallback():
    """kedacore/keda@v2.20.2 pkg/scalers/prometheus_scaler.go ExecutePromQuery: an empty result is
    0 without error unless ignoreNullValues is false; only an error counts towards the fallback
    (pkg/fallback/fallback.go). So: no `or vector(0)`, and ignoreNullValues false."""
    trigger = scaled_object(rendered_serve())["spec"]["triggers"][0]["metadata"]
    assert "vector(" not in trigger["query"]
    assert trigger["ignoreNullValues"] == "false"


def test_no_cooldown_period_where_keda_never_reads_it():
    """KEDA reads cooldownPeriod only in scaleToZeroOrIdle (kedacore/keda@v2.20.2
    pkg/scaling/executor/scale_scaledobjects.go), reached with minReplicaCount 0 or an
    idleReplicaCount; scale-down pacing with minReplicaCount >= 1 is the HPA behavior's window."""
    spec = scaled_object(rendered_serve())["spec"]
    assert spec["minReplicaCount"] >= 1 and "idleReplicaCount" not in spec
    assert "cooldownPeriod" not in spec
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 600


DEPLOYMENT_POD = "llm-serve-usw2-6d4f9b7c8-{}"  # ReplicaSet pod names: <deployment>-<hash>-<suffix>
# (replicas now, requests running per replica, requests waiting per replica) -> replicas the HPA
# chooses, with maxNumSeqs 4 and min/max 1/3 of the stack file.
LOAD_LEVELS = {
    "all full, queue drained: keep them": ((3, 4, 0), 3),
    "full and queueing: grow (to max)": ((2, 4, 3), 3),
    "one full, a little queue: add one": ((1, 4, 2), 2),
    "within the HPA tolerance: no change": ((3, 4, 0.25), 3),  # 12.75 / 12 = 1.06
    "light load: shrink": ((3, 1, 0), 1),
    "idle: min replicas": ((2, 0, 0), 1),
}


def load_series(pods: int, running: float, waiting: float) -> list[dict]:
    """What Prometheus holds for `pods` replicas (labels as the workload PodMonitor adds them),
    plus another Deployment's pod in the namespace that must not count."""
    series = []
    for i in range(pods):
        pod = f'namespace="ml-shared", pod="{DEPLOYMENT_POD.format(f"p{i}")}", model_name="m"'
        series += [{"series": f"{llm_serve.RUNNING_METRIC}{{{pod}}}", "values": f"{running}x10"},
                   {"series": f"{llm_serve.WAITING_METRIC}{{{pod}}}", "values": f"{waiting}x10"}]
    other = 'namespace="ml-shared", pod="other-serve-6d4f9b7c8-zz", model_name="m"'
    series += [{"series": f"{llm_serve.RUNNING_METRIC}{{{other}}}", "values": "100x10"},
               {"series": f"{llm_serve.WAITING_METRIC}{{{other}}}", "values": "100x10"}]
    return series


def test_hpa_replicas_for_load_levels(tmp_path):
    """The rendered query, evaluated by promtool on each load level, gives the value KEDA hands
    the HPA; the HPA's AverageValue rule (trnctl/operators/hpa.py, from kubernetes
    replica_calculator.go) turns it into replicas. The old waiting-only query scaled a full
    fleet down to minReplicas as soon as its queue drained."""
    from tests.test_monitoring_rules import promtool

    spec = scaled_object(rendered_serve())["spec"]
    trigger = spec["triggers"][0]["metadata"]
    tests = []
    for name, ((pods, running, waiting), _) in LOAD_LEVELS.items():
        total = pods * (running + waiting)
        tests.append({"name": name, "interval": "1m", "input_series": load_series(pods, running, waiting),
                      "promql_expr_test": [{"expr": trigger["query"], "eval_time": "5m",
                                            "exp_samples": [{"labels": "{}", "value": total}]}]})
    tests.append({"name": "no vLLM series: empty result (an error for KEDA, so the fallback applies)",
                  "interval": "1m", "input_series": [{"series": 'up{job="x"}', "values": "1x10"}],
                  "promql_expr_test": [{"expr": trigger["query"], "eval_time": "5m", "exp_samples": []}]})
    (tmp_path / "rules.yaml").write_text("groups: []\n")
    (tmp_path / "tests.yaml").write_text(json.dumps({"rule_files": ["rules.yaml"], "tests": tests}))
    proc = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    chosen = {name: hpa.external_average_value_replicas(
        pods * (running + waiting), float(trigger["threshold"]), pods,
        min_replicas=spec["minReplicaCount"], max_replicas=spec["maxReplicaCount"])
        for name, ((pods, running, waiting), _) in LOAD_LEVELS.items()}
    assert chosen == {name: expected for name, (_, expected) in LOAD_LEVELS.items()}


def test_hpa_rule_matches_the_upstream_formula():
    # ceil(13 / 4) = 4 outside the tolerance; 11 / (4 x 3) = 0.92 within 0.1 keeps 3; clamped to max.
    assert hpa.external_average_value_replicas(13, 4, 2, min_replicas=1, max_replicas=10) == 4
    assert hpa.external_average_value_replicas(11, 4, 3, min_replicas=1, max_replicas=10) == 3
    assert hpa.external_average_value_replicas(40, 4, 3, min_replicas=1, max_replicas=5) == 5
    assert hpa.external_average_value_replicas(0, 4, 3, min_replicas=2, max_replicas=5) == 2


# --------------------------------------------------------------------------- working directory

# What the vLLM image gives a container that sets no workingDir, and who owns it:
# aws-neuron/deep-learning-containers@2.26.1 vllm/inference/0.9.1/Dockerfile.neuronx clones the fork to
# /opt/vllm as root (no USER, no chown) and ends on `WORKDIR /opt/vllm`.
IMAGE_WORKDIR, IMAGE_WORKDIR_OWNER = "/opt/vllm", 0


def writable_by_pod(pod: dict, container: dict, path: str) -> bool:
    """Can the container's user create files at `path`? The longest volumeMount covering it decides:
    an emptyDir is created mode 0777 (kubernetes pkg/volume/emptydir/empty_dir.go), read-only mounts
    are not writable; outside every mount the image's directory is writable only by its owner."""
    uid = container.get("securityContext", {}).get("runAsUser", pod["securityContext"]["runAsUser"])
    covering = [m for m in container["volumeMounts"]
                if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    if not covering:
        return path.startswith(IMAGE_WORKDIR) and uid == IMAGE_WORKDIR_OWNER
    mount = max(covering, key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return "emptyDir" in volume and not mount.get("readOnly", False)


def render_hugging_face(tmp_path, hub: str = "meta-llama/Meta-Llama-3-8B-Instruct"):
    cfg = changed("model", {"huggingFace": hub, "parametersBillion": 8.0})
    cfg["trn-workloads:hfToken"] = {"secure": "v1:REPLACE"}
    project = project_with_stack(tmp_path, "workloads", STACK, cfg)
    return run_program(project, STACK, stack_references=refs())


def test_hugging_face_model_is_saved_in_a_writable_working_directory(tmp_path):
    """The Neuron loader saves a Hugging Face model to `local-models/<id>` relative to the
    working directory (upstreaming-to-vllm@dd417b3 neuronx_distributed.py); the pod's user must
    be able to write there, with room for the float32 weights it saves."""
    result = render_hugging_face(tmp_path)
    assert validate(result).ok
    pod = deployment(result)["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["command"][2] == "meta-llama/Meta-Llama-3-8B-Instruct"
    cwd = c.get("workingDir", IMAGE_WORKDIR)
    saved = posixpath.join(cwd, llm_serve.LOADER_SAVE_DIR, c["command"][2])
    assert writable_by_pod(pod, c, saved), f"{saved} is not writable by uid {pod['securityContext']['runAsUser']}"
    mount = max((m for m in c["volumeMounts"] if saved.startswith(m["mountPath"] + "/")), key=lambda m: len(m["mountPath"]))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    size_gib = int(volume["emptyDir"]["sizeLimit"].removesuffix("Gi"))
    assert size_gib * 2**30 >= 8e9 * 4  # 8B float32 parameters
    assert c["resources"]["requests"]["ephemeral-storage"] == volume["emptyDir"]["sizeLimit"]
    assert "ephemeral-storage" not in c["resources"]["limits"]


def test_the_image_workdir_alone_is_not_writable():
    """The check can fail: without a workingDir the loader would write under root's /opt/vllm."""
    pod = copy.deepcopy(deployment(rendered_serve())["spec"]["template"]["spec"])
    c = pod["containers"][0]
    del c["workingDir"]
    assert not writable_by_pod(pod, c, posixpath.join(IMAGE_WORKDIR, "local-models", "org/model"))
    assert writable_by_pod(pod, c, posixpath.join(llm_serve.WORK_DIR, "local-models", "org/model"))


def test_a_finetuned_model_on_fsx_needs_only_a_small_working_directory():
    pod = deployment(rendered_serve())["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["workingDir"] == llm_serve.WORK_DIR and writable_by_pod(pod, c, llm_serve.WORK_DIR + "/x")
    volume = next(v for v in pod["volumes"] if v["name"] == llm_serve.WORK_VOLUME)
    assert volume["emptyDir"] == {"sizeLimit": f"{llm_serve.WORK_DIR_MIN_GIB}Gi"}


# --------------------------------------------------------------------------- StackReference chain


def test_offline_render_answers_the_finetune_reference_by_rendering_that_stack():
    bag, _ = config_bag(REPO / "workloads", STACK)
    assert _referenced_stacks("trn-workloads", bag) == {PLATFORM_REF: "platformStack", FINETUNE_REF: "llmServe.model.finetuneStack"}
    answered = _render_references(REPO / "workloads", "trn-workloads", bag, STACK)
    assert set(answered) == {PLATFORM_REF, FINETUNE_REF}
    finetune = answered[FINETUNE_REF]["outputs"]
    assert finetune["workload"] == "lora-finetune"
    assert finetune["mergedModelDir"].endswith("/merged")
    assert "nodePools" in answered[PLATFORM_REF]["outputs"]


def test_a_new_finetune_version_rolls_the_deployment(tmp_path):
    before = rendered_serve()
    after = run_program(REPO / "workloads", STACK, stack_references=refs(finetune_version="1.1.0", tmp_path=tmp_path))
    old, new = (deployment(r)["spec"]["template"] for r in (before, after))
    assert old["metadata"]["annotations"]["trn-platform/model-version"] == "1.0.0"
    assert new["metadata"]["annotations"]["trn-platform/model-version"] == "1.1.0"
    assert new["spec"]["containers"][0]["command"][2].endswith("/v1-1-0/merged")
    # New weights never load graphs compiled for the old ones.
    assert (old["metadata"]["annotations"]["trn-platform/compile-cache-key"]
            != new["metadata"]["annotations"]["trn-platform/compile-cache-key"])
    assert after.outputs["modelVersion"] == "1.1.0"


def test_compile_cache_key_changes_with_everything_compiled_in():
    s = parse(BASE)
    key = llm_serve.compile_cache_key(s, "2.26.1")
    assert key == llm_serve.compile_cache_key(parse(BASE), "2.26.1")  # stable across runs
    serving = s.serving
    variants = [
        dataclasses.replace(s, serving=dataclasses.replace(serving, max_model_len=4096)),
        dataclasses.replace(s, serving=dataclasses.replace(serving, max_num_seqs=8)),
        dataclasses.replace(s, serving=dataclasses.replace(serving, context_buckets=(1024, 2048))),
        dataclasses.replace(s, serving=dataclasses.replace(serving, tensor_parallel_size=1)),
        dataclasses.replace(s, model=dataclasses.replace(s.model, version="1.0.1")),
    ]
    keys = {llm_serve.compile_cache_key(v, "2.26.1") for v in variants} | {llm_serve.compile_cache_key(s, "2.27.0")}
    assert key not in keys and len(keys) == len(variants) + 1


# --------------------------------------------------------------------------- config errors


@functools.lru_cache(maxsize=None)
def _platform():
    return parse_platform_outputs(PLATFORM_REF, platform_outputs(), kubeconfig=None)


def stack_cfg(cfg: dict, secret_keys=frozenset({"trn-workloads:apiKey"})):
    bag = {k: v if isinstance(v, str) else json.dumps(v) for k, v in cfg.items()
           if not (isinstance(v, dict) and set(v) == {"secure"})}
    bag.update({k: PLACEHOLDER_SECRET for k, v in cfg.items() if isinstance(v, dict) and set(v) == {"secure"}})
    raw, _ = raw_from_bag(bag, "trn-workloads")
    return workload_config.parse(raw, stack=STACK, secret_keys=set(secret_keys))


def parse(cfg: dict, *, platform=None, outputs: dict | None = None):
    """llm_serve.parse on `cfg` with StackReference answers from `outputs` (pure: no program)."""
    answers = {FINETUNE_REF: rendered_finetune().outputs, PLATFORM_REF: platform_outputs(), **(outputs or {})}
    stack = stack_cfg(cfg)
    return llm_serve.parse(stack.section, platform=platform or _platform(), stack=stack,
                           read_stack=lambda name, keys: {k: answers[name][k] for k in keys if k in answers[name]})


BASE = stack_config("workloads", STACK)


def changed(key: str, value) -> dict:
    return with_setting(BASE, "trn-workloads:llmServe", key, value)


def test_the_stack_file_parses_to_the_expected_settings():
    s = parse(BASE)
    assert (s.pool, s.track, s.neuron_devices) == ("inf2", "xla", 1)
    assert s.model.finetune_stack == FINETUNE_REF and s.model.version == "1.0.0"
    assert s.autoscaling.prometheus_url == platform_outputs()["monitoring"]["prometheusUrl"]
    assert (s.autoscaling.min_replicas, s.autoscaling.max_replicas, s.autoscaling.requests_per_replica) == (1, 3, 4)


BAD = {
    "tp over the node's cores": (changed("tensorParallelSize", 4),
                                 "llmServe.tensorParallelSize: 2 Neuron devices do not fit pool 'inf2'"),
    "tp not a power of two": (changed("tensorParallelSize", 3), "llmServe.tensorParallelSize: must be 1, 2, 4"),
    "model too big for the devices": (changed("model.parametersBillion", 30.0),
                                      "llmServe.tensorParallelSize: 30B parameters"),
    "kv cache too big": (changed("maxNumSeqs", 64), "KV cache for maxModelLen 2048 x maxNumSeqs 64"),
    "largest bucket": (changed("contextBuckets", [512, 1024]),
                       "llmServe.contextBuckets: the largest bucket must equal maxModelLen (2048)"),
    "buckets not increasing": (changed("tokenGenBuckets", [1024, 512, 2048]),
                               "llmServe.tokenGenBuckets: must be strictly increasing"),
    "over the pool at max replicas": (changed("autoscaling.maxReplicas", 4),
                                      "llmServe.autoscaling.maxReplicas: 4 replicas (+1 during a rolling update)"),
    "min above max": (changed("autoscaling", {"minReplicas": 3, "maxReplicas": 2}),
                      "llmServe.autoscaling.minReplicas: 3 is above maxReplicas 2"),
    "scale from zero": (changed("autoscaling.minReplicas", 0), "llmServe.autoscaling.minReplicas: must be >= 1"),
    "cpu pool": (changed("pool", "cpu"), "llmServe.pool: pool 'cpu' is a CPU pool"),
    "unknown pool": (changed("pool", "inf9"), "llmServe.pool: pool 'inf9' does not exist"),
    "both model sources": (changed("model.huggingFace", "meta-llama/Meta-Llama-3-8B-Instruct"),
                           "llmServe.model: set exactly one of finetuneStack"),
    "unknown key": (changed("maxModelLength", 4096), "llmServe.maxModelLength: unknown key"),
    "host memory": (changed("memoryGiB", 512), "llmServe.cpu/memoryGiB: 8 vCPU / 512 GiB do not fit"),
    "dtype": (changed("dtype", "float32"), "llmServe.dtype"),
    "old autoscaling key": (changed("autoscaling.waitingRequestsPerReplica", 4),
                            "llmServe.autoscaling.waitingRequestsPerReplica: no longer used"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_is_a_named_error(case):
    cfg, expected = BAD[case]
    with pytest.raises(WorkloadConfigError) as err:
        parse(cfg)
    assert expected in str(err.value)


def test_hugging_face_model_needs_the_hf_token():
    cfg = copy.deepcopy(BASE)
    cfg["trn-workloads:llmServe"]["model"] = {"huggingFace": "meta-llama/Meta-Llama-3-8B-Instruct"}
    with pytest.raises(WorkloadConfigError) as err:
        parse(cfg)
    assert "hfToken: required to download meta-llama/Meta-Llama-3-8B-Instruct" in str(err.value)
    cfg["trn-workloads:hfToken"] = {"secure": "v1:x"}
    s = llm_serve.parse(stack_cfg(cfg, {"trn-workloads:apiKey", "trn-workloads:hfToken"}).section,
                        platform=_platform(), stack=stack_cfg(cfg, {"trn-workloads:apiKey", "trn-workloads:hfToken"}),
                        read_stack=lambda name, keys: {"monitoring": platform_outputs()["monitoring"]})
    assert s.model.path == "meta-llama/Meta-Llama-3-8B-Instruct" and s.model.finetune_stack is None


def test_finetune_stack_must_be_a_merged_lora_finetune_stack():
    compile_outputs = {"workload": "compile", "version": "1.0.0"}
    with pytest.raises(WorkloadConfigError, match="is a 'compile' stack; it must be a lora-finetune stack"):
        parse(BASE, outputs={FINETUNE_REF: compile_outputs})
    unmerged = {k: v for k, v in rendered_finetune().outputs.items() if k != "mergedModelDir"}
    with pytest.raises(WorkloadConfigError, match="exports no mergedModelDir; set lora.run.output.merge: true"):
        parse(BASE, outputs={FINETUNE_REF: unmerged})


def test_a_platform_without_monitoring_is_an_autoscaling_error():
    with pytest.raises(WorkloadConfigError) as err:
        parse(BASE, outputs={PLATFORM_REF: platform_outputs(monitoring=False)})
    assert "llmServe.autoscaling: platform stack organization/trn-platform/dev-usw2 exports no " \
           "monitoring.prometheusUrl" in str(err.value)


def test_native_track_pool_is_refused_until_its_backend_is_wired():
    inf2 = _platform().pools["inf2"]
    trn2 = dataclasses.replace(inf2, name="trn2", instance_types=["trn2.48xlarge"], neuron_devices_per_node=16,
                               neuron_cores_per_node=128, lnc=1, track="native")  # as the platform exports it
    platform = dataclasses.replace(_platform(), pools={**_platform().pools, "trn2": trn2})
    with pytest.raises(WorkloadConfigError) as err:
        parse(changed("pool", "trn2"), platform=platform)
    assert "llmServe.pool: pool 'trn2' (trn2.48xlarge) is on Neuron track 'native'; llm-serve supports tracks: xla" \
        in str(err.value)


def test_api_key_must_be_a_secret():
    cfg = copy.deepcopy(BASE)
    cfg["trn-workloads:apiKey"] = "plain-text-key"
    with pytest.raises(WorkloadConfigError, match="apiKey: must be a secret"):
        stack_cfg(cfg, secret_keys=set())


def test_bad_config_stops_the_program_before_any_resource(tmp_path):
    project = project_with_stack(tmp_path, "workloads", "bad", changed("tensorParallelSize", 8))
    with pytest.raises(WorkloadConfigError) as err:
        run_program(project, "bad", stack_references=refs())
    assert "llmServe.tensorParallelSize" in str(err.value)
    assert err.value.registered_resources == 0


def test_native_track_passes_neuron_overrides_in_additional_config():
    """The vLLM Neuron plugin reads additional_config["override_neuron_config"]
    (vllm-project/vllm-neuron@0.2.0 neuronx_distributed_model_loader.py), not `neuron_config`."""
    serving = parse(BASE).serving
    flag, value = llm_serve.TRACK_OPTIONS["native"](serving)
    assert flag == "--additional-config"
    assert json.loads(value) == {"override_neuron_config": {
        "enable_bucketing": True, "context_encoding_buckets": [512, 1024, 2048],
        "token_generation_buckets": [512, 1024, 2048]}}
    # the xla fork takes the same overrides through its own flag
    assert llm_serve.TRACK_OPTIONS["xla"](serving) == ["--override-neuron-config",
                                                       json.dumps(json.loads(value)["override_neuron_config"],
                                                                  separators=(",", ":"))]


def test_native_vllm_neuron_pin_is_the_plugin_at_its_git_branch():
    """The DLC recipe installs the plugin from vllm-project/vllm-neuron branch release-<version>
    (aws-neuron/deep-learning-containers@2.32.0 vllm/inference/0.24.0.1.1.0/Dockerfile.neuronx);
    its version is <vLLM>.<plugin> (Neuron 2.31.0 component index)."""
    pin = versions.neuron_track("native")["vllm_neuron"]
    assert pin["repository"] == "https://github.com/vllm-project/vllm-neuron.git"
    assert pin["branch"] == f"release-{pin['version']}"
    assert pin["version"].startswith(pin["vllm"] + ".") and len(pin["version"].split(".")) == 6
    assert llm_serve.serving_tracks() == ("xla",)  # native: flags ready, image not confirmed for SDK 2.34
