"""NeMo-style Llama pretraining launcher on NxD Training: presets, run-config validation, the
generated NxD Training YAML, command lines and environment (golden values)."""
from __future__ import annotations

import json
import shlex

import pytest
import yaml

from trn_workloads.nemo import (MODES, PRESETS, ConfigError, RunConfig, build_command, build_env, load_run_config,
                                mpirun_command, nxdt_config, write_nxdt_config)
from trn_workloads.nemo import launch
from trn_workloads.nemo.config import PRECISIONS
from trn_workloads.nemo.launch import main as launch_main
from trn_workloads.nemo.launch import master_address, node_rank
from trn_workloads.nemo.nxdt import COMPILER_FLAGS, PRECISION_ENV, RUNTIME_SETTINGS, config_path, config_yaml

PATHS = {"tokenizer": "/shared/tokenizers/llama", "dataset_prefix": "/shared/data/llama/corpus_text_document",
         "run_dir": "/shared/runs/llama/run-1", "compile_cache": "/shared/neuron-cache"}
ORCHESTRATOR = "/opt/nxdt/examples/training_orchestrator.py"
# Facts of NxD Training 1.6.0 (aws-neuron/neuronx-distributed-training, commit
# 9169aa03f39efd4eb02da63891a7ed98defb1714):
# the precision types examples/training_orchestrator.py (process_config) accepts (any other raises on every rank),
# the ones for which src/neuronx_distributed_training/lightning_modules/model/base.py turns on FP32 master weights
# and gradient accumulation, and the steps the orchestrator precompiles with COMPILE=1.
UPSTREAM_ORCHESTRATOR_PRECISIONS = {"bf16SR", "mixed_precision", "mixed_precision_SR", "fp32", "manual", "autocast"}
UPSTREAM_MASTER_WEIGHT_PRECISIONS = {"mixed_precision", "mixed_precisionSR", "autocast"}
UPSTREAM_PRECOMPILE_STEPS = 10


def cfg(**overrides) -> RunConfig:
    return load_run_config({**PATHS, **overrides})


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_llama2_7b_preset_matches_the_tutorial():
    run = cfg(preset="llama2-7b")
    assert (run.num_nodes, run.tp, run.pp, run.seq_len, run.global_batch, run.micro_batch) == (4, 8, 1, 4096, 256, 1)
    assert (run.cores_per_node, run.efa_interfaces, run.model.instance_type) == (32, 8, "trn1.32xlarge")
    assert run.world_size == 128 and run.data_parallel_size == 16 and run.gradient_accumulation == 16


def test_llama2_7b_train_command_runs_the_orchestrator_on_the_generated_yaml():
    run = cfg(preset="llama2-7b", steps=1000, checkpoint_every_n_steps=100)
    command = build_command(run, "train", node_rank=3, master_addr="llama-train-worker-0.llama-train.ns.svc")
    assert command == ["torchrun", "--nproc_per_node=32", "--nnodes=4", "--node_rank=3",
                       "--master_addr=llama-train-worker-0.llama-train.ns.svc", "--master_port=41000",
                       ORCHESTRATOR, "--config-path=/shared/runs/llama/run-1/nxdt-config", "--config-name=train"]
    assert str(config_path(run, "train")) == "/shared/runs/llama/run-1/nxdt-config/train.yaml"


def test_llama2_7b_train_config():
    run = cfg(preset="llama2-7b", steps=1000, checkpoint_every_n_steps=100, keep_checkpoints=3)
    c = flatten(nxdt_config(run, "train"))
    assert c["model_source"] == "megatron" and c["seed"] == 1234
    assert (c["trainer.devices"], c["trainer.num_nodes"], c["trainer.max_steps"]) == (32, 4, 1000)
    assert c["trainer.max_epochs"] == -1 and c["trainer.val_check_interval"] == 1000
    strategy = nxdt_config(run, "train")["distributed_strategy"]
    assert (strategy["tensor_model_parallel_size"], strategy["pipeline_model_parallel_size"],
            strategy["zero1"], strategy["sequence_parallel"]) == (8, 1, True, True)
    assert (c["data.global_batch_size"], c["data.micro_batch_size"], c["data.seq_length"]) == (256, 1, 4096)
    assert c["data.data_prefix"] == [1.0, "/shared/data/llama/corpus_text_document"]
    assert c["data.data_impl"] == "mmap" and c["data.index_mapping_dir"] == "/shared/runs/llama/run-1/index_mapping"
    assert (c["data.tokenizer.library"], c["data.tokenizer.type"]) == ("huggingface", "/shared/tokenizers/llama")
    assert (c["model.encoder_seq_length"], c["model.max_position_embeddings"]) == (4096, 4096)
    assert (c["model.hidden_size"], c["model.ffn_hidden_size"], c["model.num_layers"], c["model.num_attention_heads"],
            c["model.num_kv_heads"]) == (4096, 11008, 32, 32, 32)
    assert (c["model.normalization"], c["model.position_embedding_type"], c["model.activation"],
            c["model.has_bias"]) == ("rmsnorm", "rope", "swiglu", False)
    assert (c["model.optim.name"], c["model.optim.lr"], c["model.optim.betas"]) == ("adamw", 3e-4, [0.9, 0.95])
    assert (c["model.optim.sched.name"], c["model.optim.sched.warmup_steps"],
            c["model.optim.sched.min_lr"]) == ("CosineAnnealing", 10, 3e-5)
    assert c["exp_manager.explicit_log_dir"] == "/shared/runs/llama/run-1"
    assert c["exp_manager.resume_if_exists"] is True and c["exp_manager.resume_ignore_no_checkpoint"] is True
    assert c["exp_manager.create_checkpoint_callback"] is True and c["exp_manager.create_tensorboard_logger"] is True
    assert c["exp_manager.checkpoint_callback_params.every_n_train_steps"] == 100
    assert c["exp_manager.checkpoint_callback_params.save_top_k"] == 3
    assert c["exp_manager.checkpoint_callback_params.model_parallel_size"] == 8
    # A resumed run finds its place in the data from consumed_samples in the checkpoint name.
    assert "{consumed_samples}" in c["exp_manager.checkpoint_callback_params.filename"]
    assert c["precision.type"] == "mixed_precision"
    assert c["compiler_flags"] == "--model-type transformer --distribution-strategy=llm-training"
    assert c["compiler_cache_url"] == "/shared/neuron-cache"
    assert run.checkpoint_dir == "/shared/runs/llama/run-1/checkpoints"


def test_precompile_wraps_few_steps_in_neuron_parallel_compile_with_the_training_graphs():
    run = cfg(preset="llama2-7b")
    command = build_command(run, "precompile")
    assert command[0] == "neuron_parallel_compile" and command[1:8] == build_command(run, "train")[:7]
    assert command[-1] == "--config-name=precompile"
    pre, train = flatten(nxdt_config(run, "precompile")), flatten(nxdt_config(run, "train"))
    # NxD Training's own precompile runs 10 steps (training_orchestrator.py: COMPILE=1 -> max_steps = 10).
    assert pre["trainer.max_steps"] == UPSTREAM_PRECOMPILE_STEPS == 10
    assert pre["exp_manager.explicit_log_dir"] == "/shared/runs/llama/run-1/precompile"
    assert not (pre["exp_manager.create_checkpoint_callback"] or pre["exp_manager.create_tensorboard_logger"]
                or pre["exp_manager.resume_if_exists"])
    # Only steps and bookkeeping differ, so the cached graphs are the ones training needs.
    differing = {key for key in train if pre[key] != train[key]}
    assert pre.keys() == train.keys()
    assert differing == {"trainer.max_steps", "trainer.val_check_interval", "exp_manager.explicit_log_dir",
                         "exp_manager.create_tensorboard_logger", "exp_manager.create_checkpoint_callback",
                         "exp_manager.resume_if_exists"}


def test_small_preset_runs_on_one_node():
    run = cfg(preset="small")
    assert run.num_nodes == 1 and run.data_parallel_size == 4 and run.gradient_accumulation == 16
    assert build_command(run, "train") == ["torchrun", "--nproc_per_node=32", "--nnodes=1", "--node_rank=0",
                                           "--master_addr=localhost", "--master_port=41000", ORCHESTRATOR,
                                           "--config-path=/shared/runs/llama/run-1/nxdt-config",
                                           "--config-name=train"]
    c = flatten(nxdt_config(run, "train"))
    assert (c["model.hidden_size"], c["model.num_layers"], c["model.num_attention_heads"],
            c["model.encoder_seq_length"]) == (2048, 16, 16, 2048)
    assert (c["trainer.num_nodes"], c["distributed_strategy.tensor_model_parallel_size"],
            c["data.global_batch_size"]) == (1, 8, 64)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("mode", MODES)
def test_every_preset_and_mode_gives_a_complete_yaml(preset, mode):
    run = cfg(preset=preset)
    tree = nxdt_config(run, mode)
    assert list(tree)[:9] == ["name", "model_source", "seed", "trainer", "exp_manager", "distributed_strategy",
                              "data", "model", "precision"]
    assert yaml.safe_load(config_yaml(run, mode)) == tree  # what Hydra reads is what we built
    assert all(value is not None or key.endswith(("exp_dir", "resume_from_checkpoint", "check_val_every_n_epoch",
                                                  "kv_channels", "model", "vocab_file", "merge_file", "delimiter"))
               for key, value in flatten(tree).items())
    prefix = ["neuron_parallel_compile"] if mode == "precompile" else []
    assert build_command(run, mode)[:len(prefix) + 1] == prefix + ["torchrun"]


@pytest.mark.parametrize("mode", MODES)
def test_environment_for_neuron_efa_and_xla(mode):
    run = cfg(preset="llama2-7b")
    env = build_env(run, mode)
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1" and env["FI_EFA_FORK_SAFE"] == "1"
    assert env["NEURON_CC_FLAGS"] == "--cache_dir=/shared/neuron-cache"  # the orchestrator appends COMPILER_FLAGS
    assert env["NEURON_COMPILE_CACHE_URL"] == "/shared/neuron-cache"
    # mixed_precision (the default): BF16 compute downcast from FP32 master weights, no stochastic rounding.
    assert (env["XLA_USE_BF16"], env["XLA_DOWNCAST_BF16"], env["NEURON_RT_STOCHASTIC_ROUNDING_EN"]) == ("0", "1", "0")
    assert env["MALLOC_ARENA_MAX"] == "128" and env["XLA_DISABLE_FUNCTIONALIZATION"] == "0"
    assert ("NEURON_PARALLEL_COMPILE_MAX_RETRIES" in env) == (mode == "precompile")
    assert "NEURON_RT_NUM_CORES" not in env  # torch-neuronx gives each torchrun process its own core
    assert all(isinstance(v, str) for v in env.values())
    # The orchestrator exports these from the YAML only where unset: both must say the same.
    tree = nxdt_config(run, mode)
    for name, (variable, _) in RUNTIME_SETTINGS.items():
        assert env[variable] == str(tree[name]), name
    assert (env["NEURON_FUSE_SOFTMAX"] == "1") == tree["model"]["fusions"]["softmax"]


@pytest.mark.parametrize("precision, expected", [
    ("mixed_precision", ("0", "1", "0")),
    ("bf16SR", ("1", "0", "1")), ("fp32", ("0", "0", "0"))])
def test_precision_sets_yaml_type_and_xla_environment(precision, expected):
    assert set(PRECISION_ENV) == set(PRECISIONS)
    run = cfg(preset="llama2-7b", precision=precision)
    env = build_env(run, "train")
    assert (env["XLA_USE_BF16"], env["XLA_DOWNCAST_BF16"], env["NEURON_RT_STOCHASTIC_ROUNDING_EN"]) == expected
    assert nxdt_config(run, "train")["precision"] == {"type": precision}
    assert COMPILER_FLAGS not in env["NEURON_CC_FLAGS"]  # added once, by the orchestrator


def test_every_offered_precision_runs_in_the_orchestrator_with_what_its_environment_implies():
    """Each precision passes NxD Training's orchestrator, and the ones that keep BF16 compute over FP32
    weights (XLA_DOWNCAST_BF16=1) also get the library's FP32 master weights."""
    for precision in PRECISIONS:
        assert precision in UPSTREAM_ORCHESTRATOR_PRECISIONS, precision
        if PRECISION_ENV[precision]["XLA_DOWNCAST_BF16"] == "1":
            assert precision in UPSTREAM_MASTER_WEIGHT_PRECISIONS, precision


def test_precompile_defaults_to_the_steps_upstream_precompiles():
    assert cfg().precompile_steps == UPSTREAM_PRECOMPILE_STEPS


def test_overrides_replace_preset_values():
    run = cfg(preset="llama2-7b", nodes=2, global_batch_size=64, seq_length=2048, lr=1e-4, min_lr=1e-5)
    c = flatten(nxdt_config(run, "train"))
    assert c["trainer.num_nodes"] == 2 and c["data.global_batch_size"] == 64
    assert c["model.encoder_seq_length"] == 2048 and c["data.seq_length"] == 2048 and c["model.optim.lr"] == 1e-4
    assert "--nnodes=2" in build_command(run, "train")
    assert run.data_parallel_size == 8 and run.gradient_accumulation == 8
    assert run.resolved()["nodes"] == 2 and run.resolved()["data_parallel_size"] == 8


def test_mpirun_starts_one_launch_per_node():
    launch_cmd = ["python", "-m", "trn_workloads.nemo.launch", "--config", "/etc/run/run.json", "--mode", "train"]
    command = mpirun_command(4, launch_cmd)
    assert command[:3] == ["mpirun", "-np", "4"] and command[-len(launch_cmd):] == launch_cmd
    assert "ppr:1:node" in command and ["-x", "TRN_BACKEND"] == command[command.index("TRN_BACKEND") - 1:][:2]
    assert ["-x", "MASTER_ADDR"] == command[command.index("MASTER_ADDR") - 1:][:2]
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        mpirun_command(0, launch_cmd)


def test_bad_mode_and_node_rank_are_refused():
    run = cfg(preset="llama2-7b")
    with pytest.raises(ValueError, match="mode must be one of precompile, train, got 'eval'"):
        build_command(run, "eval")
    with pytest.raises(ValueError, match="mode must be one of precompile, train"):
        nxdt_config(run, "eval")
    with pytest.raises(ValueError, match="node_rank must be 0..3 for 4 node"):
        build_command(run, "train", node_rank=4)


@pytest.mark.parametrize("change, message", [
    ({"preset": "llama3-405b"}, "run.preset: must be one of llama2-7b, small, tiny, got 'llama3-405b'"),
    ({"nodes": 0}, "run.nodes: must be an integer >= 1, got 0"),
    ({"nodes": "4"}, "run.nodes: must be an integer >= 1, got '4'"),
    ({"tensor_parallel_size": 3}, "run.tensor_parallel_size: must be one of 1, 2, 4, 8, 16, 32, got 3"),
    ({"neuron_cores_per_node": 24, "tensor_parallel_size": 16},
     "run.tensor_parallel_size: 16 must divide the 24 NeuronCores of a node"),
    ({"seq_length": 4100}, r"run.seq_length: 4100 must be divisible by tensor_parallel_size \(8\)"),
    ({"pipeline_parallel_size": 3}, "run.pipeline_parallel_size: 3 must divide the 32 layers of llama2-7b"),
    ({"nodes": 1, "tensor_parallel_size": 32, "pipeline_parallel_size": 2},
     r"run.nodes: data-parallel degree = nodes \* neuron_cores_per_node / \(tensor_parallel_size \* "
     r"pipeline_parallel_size\) = 1 \* 32 / \(32 \* 2\) must be a whole number >= 1"),
    ({"global_batch_size": 100}, "run.global_batch_size: 100 must be divisible by micro_batch_size \\* "
                                 "data-parallel degree = 1 \\* 16 = 16"),
    ({"micro_batch_size": 0}, "run.micro_batch_size: must be an integer >= 1"),
    ({"precision": "megatron_amp_O2"},
     "run.precision: must be one of mixed_precision, bf16SR, fp32, got 'megatron_amp_O2'"),
    # Neither spelling of mixed precision with stochastic rounding works end to end in NxD Training 1.6.0.
    ({"precision": "mixed_precisionSR"}, "run.precision: must be one of mixed_precision, bf16SR, fp32, got "),
    ({"precision": "mixed_precision_SR"}, "run.precision: must be one of mixed_precision, bf16SR, fp32, got "),
    ({"lr": 0}, "run.lr: must be a number > 0"),
    ({"min_lr": 1.0}, r"run.min_lr: must be <= lr \(0.0003\), got 1.0"),
    ({"steps": 100, "checkpoint_every_n_steps": 500}, "run.checkpoint_every_n_steps: 500 is more than steps"),
    ({"steps": 2, "checkpoint_every_n_steps": 1, "precompile_steps": 3},
     r"run.precompile_steps: 3 is more than steps \(2\)"),
    ({"steps": 5, "checkpoint_every_n_steps": 1}, r"run.precompile_steps: 10 is more than steps \(5\)"),
    ({"run_dir": "runs/x"}, "run.run_dir: must be an absolute path"),
    ({"nxdt_examples_dir": "examples"}, "run.nxdt_examples_dir: must be an absolute path"),
    ({"dataset_prefix": "/shared/data/a,b"}, "run.dataset_prefix: must not contain spaces, commas"),
    ({"tokenizer": "/shared/${oops}"}, "run.tokenizer: must not contain"),
    ({"dataset_prefix": "/shared/data/c_text_document.bin"}, "run.dataset_prefix: is the prefix without .bin/.idx"),
    ({"master_port": 80}, "run.master_port: must be a port number 1024-65535"),
    ({"nemo_examples_dir": "/opt/x"}, "run.nemo_examples_dir: unknown setting"),
    ({"stepz": 10}, "run.stepz: unknown setting"),
])
def test_invalid_config_names_the_field(change, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config({**PATHS, **change})


def test_missing_path_is_named():
    data = dict(PATHS)
    del data["compile_cache"]
    with pytest.raises(ConfigError, match="run.compile_cache: required setting is missing"):
        load_run_config(data)


def test_pool_limit_is_checked_with_the_callers_key():
    assert load_run_config({**PATHS, "nodes": 4}, max_nodes=4).num_nodes == 4
    with pytest.raises(ConfigError, match="nemo.run.nodes: 4 nodes exceed the pool limit of 2"):
        load_run_config({**PATHS}, max_nodes=2, key="nemo.run")


def test_presets_are_consistent():
    for name, preset in PRESETS.items():
        run = cfg(preset=name)
        assert run.data_parallel_size >= 1 and run.gradient_accumulation >= 1, name
        assert preset.hidden_size % preset.num_attention_heads == 0, name
        assert preset.num_attention_heads % preset.num_kv_heads == 0, name


def test_rank_comes_from_open_mpi_and_master_from_the_forwarded_env():
    """What a rank sees comes from mpirun (tests/test_operators_mpi.py derives it from the MPIJob's pods)."""
    run = cfg(preset="llama2-7b")
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
           "MASTER_ADDR": "llama-worker-0.llama.ns.svc"}
    assert node_rank(run, env) == 1 and master_address(run, env) == "llama-worker-0.llama.ns.svc"
    with pytest.raises(ConfigError, match="mpirun started 2 processes but the run config has nodes=4"):
        node_rank(run, {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="one process per node"):
        node_rank(run, {**env, "OMPI_COMM_WORLD_LOCAL_RANK": "1"})
    with pytest.raises(ConfigError, match="OMPI_COMM_WORLD_RANK is not set"):
        node_rank(run, {})
    with pytest.raises(ConfigError, match="MASTER_ADDR is not set"):
        master_address(run, {"OMPI_COMM_WORLD_RANK": "1"})
    assert node_rank(cfg(preset="small"), {}) == 0 and master_address(cfg(preset="small"), {}) == "localhost"


def test_write_nxdt_config_is_atomic_and_repeatable(tmp_path):
    run = cfg(preset="small", run_dir=str(tmp_path / "run"))
    path = write_nxdt_config(run, "train")
    assert path == tmp_path / "run" / "nxdt-config" / "train.yaml"
    assert path.read_text() == config_yaml(run, "train")
    assert write_nxdt_config(run, "train") == path  # a second node writes the same bytes over it
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.yaml"]  # no temporary files left
    assert yaml.safe_load(path.read_text())["exp_manager"]["explicit_log_dir"] == str(tmp_path / "run")


def _mpi_free_env(monkeypatch, tmp_path):
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)


def test_cli_dry_run_prints_yaml_env_and_command_and_writes_nothing(tmp_path, capsys, monkeypatch):
    _mpi_free_env(monkeypatch, tmp_path)
    run_dir = tmp_path / "run"
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**PATHS, "run_dir": str(run_dir), "preset": "small", "steps": 50,
                                  "checkpoint_every_n_steps": 10}))

    assert launch_main(["--config", str(config), "--mode", "train", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert "export FI_PROVIDER=efa" in out
    shown_yaml = "\n".join(line[4:] for line in out.splitlines() if line.startswith("#   "))
    assert yaml.safe_load(shown_yaml)["trainer"]["max_steps"] == 50
    command = shlex.split(out[out.index("\ntorchrun") + 1:].replace("\\\n", " "))
    assert command[0] == "torchrun" and command[-1] == "--config-name=train"
    assert f"--config-path={run_dir}/nxdt-config" in command
    assert not run_dir.exists()


def test_cli_rejects_bad_config_and_missing_inputs_on_the_cpu_path(tmp_path, capsys, monkeypatch):
    _mpi_free_env(monkeypatch, tmp_path)
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**PATHS, "preset": "small", "global_batch_size": 6}))
    assert launch_main(["--config", str(config), "--mode", "train"]) == 2
    assert f"--config {config}: run.global_batch_size: 6 must be divisible" in capsys.readouterr().err

    config.write_text("{not json")
    assert launch_main(["--config", str(config), "--mode", "train"]) == 2
    assert "not valid JSON" in capsys.readouterr().err

    config.write_text(json.dumps({**PATHS, "preset": "small", "run_dir": str(tmp_path / "run")}))
    assert launch_main(["--config", str(config), "--mode", "train"]) == 2  # TRN_BACKEND=cpu: the stand-in
    assert "_text_document.bin" in capsys.readouterr().err  # it reads the dataset, which is not there
    assert not (tmp_path / "run").exists()


def test_on_neuron_the_launcher_writes_the_yaml_then_execs_torchrun(tmp_path, monkeypatch):
    """The Neuron branch up to the exec: the YAML torchrun will read exists, the env is merged."""
    _mpi_free_env(monkeypatch, tmp_path)
    run_dir = tmp_path / "run"
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**PATHS, "run_dir": str(run_dir), "preset": "small"}))
    execs = []

    def fake_exec(file, args, env):
        execs.append((file, args, env, (run_dir / "nxdt-config" / "precompile.yaml").read_text()))
        raise SystemExit(0)  # execvpe does not return

    monkeypatch.setattr(launch.accel, "is_neuron", lambda: True)
    monkeypatch.setattr(launch.os, "execvpe", fake_exec)
    with pytest.raises(SystemExit):
        launch_main(["--config", str(config), "--mode", "precompile"])

    [(file, args, env, written)] = execs
    run = load_run_config(json.loads(config.read_text()))
    assert file == "neuron_parallel_compile" and args == build_command(run, "precompile")
    assert written == config_yaml(run, "precompile")
    assert env["NEURON_CC_FLAGS"] == build_env(run, "precompile")["NEURON_CC_FLAGS"] and "PATH" in env


def test_cpu_stand_in_meets_every_rank_at_rank0(tmp_path):
    """On the CPU path each node writes the YAML, finds its inputs and (precompile: no training) meets rank 0 at
    MASTER_ADDR:master_port. Training is tests/test_nemo_standin.py."""
    import threading

    from tests.loopback import free_port
    from trn_workloads.nemo import standin

    data = tmp_path / "data" / "corpus_text_document"
    data.parent.mkdir()
    for suffix in (".bin", ".idx"):
        data.with_name(data.name + suffix).write_bytes(b"x")
    (tmp_path / "tok").mkdir()
    run = load_run_config({**PATHS, "preset": "llama2-7b", "nodes": 3, "tensor_parallel_size": 8,
                           "global_batch_size": 12, "dataset_prefix": str(data), "tokenizer": str(tmp_path / "tok"),
                           "run_dir": str(tmp_path / "run"), "master_port": free_port()})
    results: dict[int, object] = {}

    def node(rank: int) -> None:
        try:
            standin.run(run, "precompile", rank=rank, master="127.0.0.1", timeout=20)
            results[rank] = "ok"
        except Exception as err:  # reported below
            results[rank] = err

    threads = [threading.Thread(target=node, args=(r,)) for r in (2, 1, 0)]  # workers before rank 0 listens
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: "ok", 1: "ok", 2: "ok"}
    assert (tmp_path / "run" / "nxdt-config" / "precompile.yaml").read_text() == config_yaml(run, "precompile")
    with pytest.raises(standin.RendezvousError, match="could not reach rank 0"):
        standin.rendezvous("127.0.0.1", free_port(), 1, 2, timeout=1)
    with pytest.raises(standin.RendezvousError, match="1 of 2 ranks arrived"):
        standin.rendezvous("127.0.0.1", free_port(), 0, 2, timeout=1)
