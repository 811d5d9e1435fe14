"""NeMo launcher: presets, run-config validation, command lines and environment (golden keys)."""
from __future__ import annotations

import json
import shlex

import pytest

from trn_workloads.nemo import PRESETS, ConfigError, RunConfig, build_command, build_env, load_run_config, mpirun_command
from trn_workloads.nemo.launch import main as launch_main
from trn_workloads.nemo.launch import master_address, node_rank

PATHS = {"tokenizer": "/shared/tokenizers/llama", "dataset_prefix": "/shared/data/llama/corpus_text_document",
         "run_dir": "/shared/runs/llama/run-1", "compile_cache": "/shared/neuron-cache"}


def cfg(**overrides) -> RunConfig:
    return load_run_config({**PATHS, **overrides})


def overrides_of(command: list[str]) -> dict[str, str]:
    return dict(part.split("=", 1) for part in command if "=" in part and not part.startswith("--"))


def test_llama2_7b_preset_matches_the_tutorial():
    run = cfg(preset="llama2-7b")
    assert (run.num_nodes, run.tp, run.pp, run.seq_len, run.global_batch, run.micro_batch) == (4, 8, 1, 4096, 256, 1)
    assert (run.cores_per_node, run.efa_interfaces, run.model.instance_type) == (32, 8, "trn1.32xlarge")
    assert run.world_size == 128 and run.data_parallel_size == 16 and run.gradient_accumulation == 16


def test_llama2_7b_train_command():
    run = cfg(preset="llama2-7b", steps=1000, checkpoint_every_n_steps=100)
    command = build_command(run, "train", node_rank=3, master_addr="llama-train-worker-0.llama-train.ns.svc")

    assert command[:7] == ["torchrun", "--nproc_per_node=32", "--nnodes=4", "--node_rank=3",
                           "--master_addr=llama-train-worker-0.llama-train.ns.svc", "--master_port=41000",
                           f"{run.nemo_examples_dir}/megatron_gpt_pretraining.py"]
    assert "--config-name=megatron_llama_config" in command
    o = overrides_of(command)
    assert o["trainer.devices"] == "32" and o["trainer.num_nodes"] == "4" and o["trainer.max_steps"] == "1000"
    assert o["model.tensor_model_parallel_size"] == "8" and o["model.pipeline_model_parallel_size"] == "1"
    assert o["model.global_batch_size"] == "256" and o["model.micro_batch_size"] == "1"
    assert o["model.encoder_seq_length"] == "4096" and o["model.data.seq_length"] == "4096"
    assert (o["model.hidden_size"], o["model.ffn_hidden_size"], o["model.num_layers"],
            o["model.num_attention_heads"]) == ("4096", "11008", "32", "32")
    assert o["model.data.data_prefix"] == "[1.0,/shared/data/llama/corpus_text_document]"
    assert o["model.tokenizer.type"] == "/shared/tokenizers/llama"
    assert o["model.optim.lr"] == "0.0003" and o["model.optim.sched.min_lr"] == "3e-05"
    assert o["exp_manager.explicit_log_dir"] == "/shared/runs/llama/run-1"
    assert o["exp_manager.resume_if_exists"] == "True" and o["exp_manager.resume_ignore_no_checkpoint"] == "True"
    assert o["exp_manager.create_checkpoint_callback"] == "True"
    assert o["exp_manager.create_tensorboard_logger"] == "True"
    assert o["+exp_manager.checkpoint_callback_params.every_n_train_steps"] == "100"
    assert o["model.megatron_amp_O2"] == "False" and o["model.optim.name"] == "adamw"
    assert run.checkpoint_dir == "/shared/runs/llama/run-1/checkpoints"


def test_precompile_wraps_few_steps_in_neuron_parallel_compile():
    run = cfg(preset="llama2-7b")
    command = build_command(run, "precompile")
    assert command[0] == "neuron_parallel_compile" and command[1] == "torchrun"
    o = overrides_of(command)
    assert o["trainer.max_steps"] == "3"
    assert o["exp_manager.create_checkpoint_callback"] == "False"
    assert o["exp_manager.create_tensorboard_logger"] == "False"
    assert o["exp_manager.resume_if_exists"] == "False"
    assert o["exp_manager.explicit_log_dir"] == "/shared/runs/llama/run-1/precompile"
    # Same model and parallelism as training, so the cached graphs are the ones training needs.
    train = overrides_of(build_command(run, "train"))
    for key in ("model.tensor_model_parallel_size", "model.global_batch_size", "model.encoder_seq_length",
                "model.hidden_size", "trainer.num_nodes", "model.micro_batch_size"):
        assert o[key] == train[key]


@pytest.mark.parametrize("mode", ["train", "precompile"])
def test_environment_for_neuron_efa_and_xla(mode):
    env = build_env(cfg(preset="llama2-7b"), mode)
    assert env["FI_PROVIDER"] == "efa" and env["FI_EFA_USE_DEVICE_RDMA"] == "1" and env["FI_EFA_FORK_SAFE"] == "1"
    assert env["NEURON_CC_FLAGS"].split() == ["--model-type", "transformer", "--distribution-strategy=llm-training",
                                              "--enable-mixed-precision-accumulation",
                                              "--cache_dir=/shared/neuron-cache"]
    assert env["NEURON_COMPILE_CACHE_URL"] == "/shared/neuron-cache"
    assert env["NEURON_RT_NUM_CORES"] == "32" and env["XLA_USE_BF16"] == "1" and "XLA_DOWNCAST_BF16" not in env
    assert env["MALLOC_ARENA_MAX"] == "128"
    assert all(isinstance(v, str) for v in env.values())


def test_amp_o2_precision_switches_env_and_overrides():
    run = cfg(preset="llama2-7b", precision="megatron_amp_O2")
    env = build_env(run, "train")
    assert env["XLA_DOWNCAST_BF16"] == "1" and "XLA_USE_BF16" not in env
    assert overrides_of(build_command(run, "train"))["model.megatron_amp_O2"] == "True"


def test_small_preset_runs_on_one_node():
    run = cfg(preset="small")
    assert run.num_nodes == 1 and run.data_parallel_size == 4 and run.gradient_accumulation == 16
    command = build_command(run, "train")
    assert "--nnodes=1" in command and "--master_addr=localhost" in command
    o = overrides_of(command)
    assert (o["model.hidden_size"], o["model.num_layers"], o["model.encoder_seq_length"]) == ("2048", "16", "2048")
    assert o["trainer.num_nodes"] == "1" and o["model.tensor_model_parallel_size"] == "8"
    assert build_env(run, "train")["NEURON_RT_NUM_CORES"] == "32"


def test_overrides_replace_preset_values():
    run = cfg(preset="llama2-7b", nodes=2, global_batch_size=64, seq_length=2048, lr=1e-4, min_lr=1e-5)
    o = overrides_of(build_command(run, "train"))
    assert o["trainer.num_nodes"] == "2" and o["model.global_batch_size"] == "64"
    assert o["model.encoder_seq_length"] == "2048" and o["model.optim.lr"] == "0.0001"
    assert run.data_parallel_size == 8 and run.gradient_accumulation == 8
    assert run.resolved()["nodes"] == 2 and run.resolved()["data_parallel_size"] == 8


def test_mpirun_starts_one_launch_per_node():
    launch = ["python", "-m", "trn_workloads.nemo.launch", "--config", "/etc/run/run.json", "--mode", "train"]
    command = mpirun_command(4, launch)
    assert command[:3] == ["mpirun", "-np", "4"] and command[-len(launch):] == launch
    assert "ppr:1:node" in command and ["-x", "TRN_BACKEND"] == command[command.index("TRN_BACKEND") - 1:][:2]
    with pytest.raises(ValueError, match="nodes must be >= 1"):
        mpirun_command(0, launch)


@pytest.mark.parametrize("change, message", [
    ({"preset": "llama3-405b"}, "run.preset: must be one of llama2-7b, small, got 'llama3-405b'"),
    ({"nodes": 0}, "run.nodes: must be an integer >= 1, got 0"),
    ({"nodes": "4"}, "run.nodes: must be an integer >= 1, got '4'"),
    ({"tensor_parallel_size": 3}, "run.tensor_parallel_size: must be one of 1, 2, 4, 8, 16, 32, got 3"),
    ({"neuron_cores_per_node": 24, "tensor_parallel_size": 16},
     "run.tensor_parallel_size: 16 must divide the 24 NeuronCores of a node"),
    ({"pipeline_parallel_size": 3}, "run.pipeline_parallel_size: 3 must divide the 32 layers of llama2-7b"),
    ({"nodes": 1, "tensor_parallel_size": 32, "pipeline_parallel_size": 2},
     r"run.nodes: data-parallel degree = nodes \* neuron_cores_per_node / \(tensor_parallel_size \* "
     r"pipeline_parallel_size\) = 1 \* 32 / \(32 \* 2\) must be a whole number >= 1"),
    ({"global_batch_size": 100}, "run.global_batch_size: 100 must be divisible by micro_batch_size \\* "
                                 "data-parallel degree = 1 \\* 16 = 16"),
    ({"micro_batch_size": 0}, "run.micro_batch_size: must be an integer >= 1"),
    ({"precision": "fp16"}, "run.precision: must be one of bf16SR, megatron_amp_O2, fp32_OptStates, got 'fp16'"),
    ({"lr": 0}, "run.lr: must be a number > 0"),
    ({"min_lr": 1.0}, r"run.min_lr: must be <= lr \(0.0003\), got 1.0"),
    ({"steps": 100, "checkpoint_every_n_steps": 500}, "run.checkpoint_every_n_steps: 500 is more than steps"),
    ({"run_dir": "runs/x"}, "run.run_dir: must be an absolute path"),
    ({"dataset_prefix": "/shared/data/a,b"}, "run.dataset_prefix: must not contain spaces, commas"),
    ({"dataset_prefix": "/shared/data/c_text_document.bin"}, "run.dataset_prefix: is the prefix without .bin/.idx"),
    ({"master_port": 80}, "run.master_port: must be a port number 1024-65535"),
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


def test_rank_and_master_come_from_mpi(tmp_path):
    run = cfg(preset="llama2-7b")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# workers\nllama-worker-0.llama.ns.svc slots=1\nllama-worker-1.llama.ns.svc slots=1\n")
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_MCA_orte_default_hostfile": str(hostfile)}
    assert node_rank(run, env) == 1
    assert master_address(run, env) == "llama-worker-0.llama.ns.svc"
    assert master_address(run, {**env, "MASTER_ADDR": "10.0.0.5"}) == "10.0.0.5"
    with pytest.raises(ConfigError, match="mpirun started 2 processes but the run config has nodes=4"):
        node_rank(run, {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="OMPI_COMM_WORLD_RANK is not set"):
        node_rank(run, {})
    assert node_rank(cfg(preset="small"), {}) == 0


def test_cli_dry_run_prints_env_and_command(tmp_path, capsys, monkeypatch):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**PATHS, "preset": "small", "steps": 50, "checkpoint_every_n_steps": 10}))
    monkeypatch.delenv("OMPI_COMM_WORLD_RANK", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("OMPI_MCA_orte_default_hostfile", str(tmp_path / "absent"))

    assert launch_main(["--config", str(config), "--mode", "train", "--dry-run"]) == 0

    out = capsys.readouterr().out
    assert "export FI_PROVIDER=efa" in out
    command = shlex.split(out[out.index("\ntorchrun") + 1:].replace("\\\n", " "))
    assert command[0] == "torchrun" and "trainer.max_steps=50" in command


def test_cli_rejects_bad_config_and_refuses_to_train_off_neuron(tmp_path, capsys):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({**PATHS, "preset": "small", "global_batch_size": 6}))
    assert launch_main(["--config", str(config), "--mode", "train"]) == 2
    assert f"--config {config}: run.global_batch_size: 6 must be divisible" in capsys.readouterr().err

    config.write_text("{not json")
    assert launch_main(["--config", str(config), "--mode", "train"]) == 2
    assert "not valid JSON" in capsys.readouterr().err

    config.write_text(json.dumps({**PATHS, "preset": "small"}))
    assert launch_main(["--config", str(config), "--mode", "train"]) == 2  # TRN_BACKEND=cpu in tests
    assert "training needs the Neuron backend" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
