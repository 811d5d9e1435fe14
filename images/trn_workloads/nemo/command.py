"""Pure functions from a RunConfig to the environment and command line of one worker node.

Each trn1.32xlarge worker runs one `torchrun` with one process per NeuronCore; the MPIJob
launcher starts `python -m trn_workloads.nemo.launch` once per worker with mpirun, and
that process fills in its node rank and the rank-0 address, then execs the command built
here. Precompile mode wraps the same command in `neuron_parallel_compile` for a few
steps (graphs land in the shared compile cache); train mode runs the full schedule and
resumes from the last checkpoint in `<run_dir>/checkpoints` (exp_manager resume).

Nothing here edits files: every setting that the upstream scripts changed with `sed` or
environment variables is a Hydra override or an environment variable below.
"""
from __future__ import annotations

from trn_workloads.nemo.config import RunConfig

MODES = ("precompile", "train")
PRETRAINING_SCRIPT = "megatron_gpt_pretraining.py"
HYDRA_CONFIG_NAME = "megatron_llama_config"

# Per precision: (optimizer name, megatron_amp_O2, environment). bf16SR is the tutorial's
# default: weights and optimizer state in BF16 with stochastic rounding.
_PRECISION = {
    "bf16SR": ("adamw", False, {"XLA_USE_BF16": "1"}),
    "megatron_amp_O2": ("adamw", True, {"XLA_DOWNCAST_BF16": "1"}),
    "fp32_OptStates": ("adamw_fp32OptState", False, {"XLA_DOWNCAST_BF16": "1"}),
}

# What mpirun forwards from the launcher pod to the processes it starts on the workers
# (ssh does not carry the pod environment). build_env() sets everything else itself.
FORWARDED_ENV = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONUNBUFFERED", "TRN_BACKEND", "AWS_REGION",
                 "RUN_DIR", "HF_HOME", "NEURON_SDK_VERSION", "ARTIFACTS_BUCKET")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def build_env(cfg: RunConfig, mode: str) -> dict[str, str]:
    """Environment for torchrun and its workers (Neuron runtime, compiler, XLA, EFA)."""
    _check_mode(mode)
    _, _, precision_env = _PRECISION[cfg.precision]
    cores = str(cfg.cores_per_node)
    env = {
        # EFA through libfabric, with GPUDirect-style RDMA and fork safety (torch dataloaders fork).
        "FI_PROVIDER": "efa",
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "FI_EFA_FORK_SAFE": "1",
        "CCOM_SOCKET_IFNAME": "eth0",  # the pod network interface for the collectives' bootstrap
        # Compiler: transformer-tuned, LLM-training distribution strategy (the successor of
        # --distribution-strategy=nemo, retired after Neuron 2.15), cache on shared storage so
        # precompile fills it once for every worker and every later run.
        "NEURON_CC_FLAGS": ("--model-type transformer --distribution-strategy=llm-training "
                            f"--enable-mixed-precision-accumulation --cache_dir={cfg.compile_cache}"),
        "NEURON_COMPILE_CACHE_URL": cfg.compile_cache,
        # Runtime: all NeuronCores of the node (torchrun gives each process one of them).
        "NEURON_RT_NUM_CORES": cores,
        "TPU_NUM_DEVICES": cores,
        "TPU_CHIPS_PER_HOST_BOUNDS": cores,
        "NEURON_RT_EXEC_TIMEOUT": "10",
        "NEURON_RT_STOCHASTIC_ROUNDING_EN": "1",
        "NEURON_RT_ASYNC_EXEC_MAX_INFLIGHT_REQUESTS": "5",
        "NEURON_TRANSFER_WITH_STATIC_RING_OPS": "",
        "NEURON_FUSE_SOFTMAX": "1",
        **precision_env,
        "BUCKET_CAP_MB": "1024",
        "XLA_THREAD_POOL_SIZE": "4",
        "XLA_IO_THREAD_POOL_SIZE": "4",
        "TF_NUM_INTEROP_THREADS": "1024",
        # glibc creates an arena per thread; cap them or host memory balloons with 32 ranks.
        "MALLOC_ARENA_MAX": "128",
        "HYDRA_FULL_ERROR": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if mode == "precompile":
        # neuron_parallel_compile runs the graphs' compilations in parallel workers.
        env["NEURON_PARALLEL_COMPILE_MAX_RETRIES"] = "1"
    return env


def hydra_overrides(cfg: RunConfig, mode: str) -> list[str]:
    """Overrides of megatron_llama_config.yaml: model, parallelism, data, schedule, checkpoints."""
    _check_mode(mode)
    model = cfg.model
    optimizer, amp_o2, _ = _PRECISION[cfg.precision]
    training = mode == "train"
    steps = cfg.steps if training else cfg.precompile_steps
    log_dir = cfg.run_dir if training else f"{cfg.run_dir}/precompile"
    return [
        f"trainer.devices={cfg.cores_per_node}",
        f"trainer.num_nodes={cfg.num_nodes}",
        "trainer.max_epochs=null",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",  # validation only at the end
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.accumulate_grad_batches=1",  # Megatron accumulates itself: global / (micro * dp)
        "trainer.precision=32",
        f"model.megatron_amp_O2={amp_o2}",
        f"model.tokenizer.type={cfg.tokenizer}",
        f"model.micro_batch_size={cfg.micro_batch}",
        f"model.global_batch_size={cfg.global_batch}",
        f"model.tensor_model_parallel_size={cfg.tp}",
        f"model.pipeline_model_parallel_size={cfg.pp}",
        f"model.max_position_embeddings={cfg.seq_len}",
        f"model.encoder_seq_length={cfg.seq_len}",
        f"model.hidden_size={model.hidden_size}",
        f"model.ffn_hidden_size={model.ffn_hidden_size}",
        f"model.num_layers={model.num_layers}",
        f"model.num_attention_heads={model.num_attention_heads}",
        f"model.init_method_std={model.init_method_std}",
        "model.hidden_dropout=0",
        f"model.layernorm_epsilon={model.layernorm_epsilon}",
        f"model.seed={cfg.seed}",
        f"model.data.data_prefix=[1.0,{cfg.dataset_prefix}]",
        "model.data.num_workers=1",
        f"model.data.seq_length={cfg.seq_len}",
        f"model.optim.name={optimizer}",
        f"model.optim.lr={cfg.learning_rate}",
        "model.optim.betas=[0.9,0.95]",
        "model.optim.weight_decay=0.1",
        "model.optim.sched.name=CosineAnnealing",
        f"model.optim.sched.warmup_steps={cfg.warmup}",
        "model.optim.sched.constant_steps=0",
        f"model.optim.sched.min_lr={cfg.min_learning_rate}",
        "model.optim.capturable=True",
        "model.sequence_parallel=True",
        "model.activations_checkpoint_granularity=full",
        "model.activations_checkpoint_method=uniform",
        "model.activations_checkpoint_num_layers=1",
        "model.use_cpu_initialization=True",
        "+model.save_xser=True",
        "+model.load_xser=True",
        f"exp_manager.explicit_log_dir={log_dir}",
        f"exp_manager.create_tensorboard_logger={training}",
        f"exp_manager.create_checkpoint_callback={training}",
        # Resume from <run_dir>/checkpoints when a checkpoint exists; a first run starts fresh.
        f"exp_manager.resume_if_exists={training}",
        "exp_manager.resume_ignore_no_checkpoint=True",
        f"+exp_manager.checkpoint_callback_params.every_n_train_steps={cfg.checkpoint_every_n_steps}",
        f"exp_manager.checkpoint_callback_params.save_top_k={cfg.keep_checkpoints}",
        "exp_manager.checkpoint_callback_params.save_last=True",
    ]


def build_command(cfg: RunConfig, mode: str, *, node_rank: int = 0, master_addr: str = "localhost") -> list[str]:
    """The command one worker node runs: [neuron_parallel_compile] torchrun ... script overrides."""
    _check_mode(mode)
    if not 0 <= node_rank < cfg.num_nodes:
        raise ValueError(f"node_rank must be 0..{cfg.num_nodes - 1} for {cfg.num_nodes} node(s), got {node_rank}")
    torchrun = ["torchrun", f"--nproc_per_node={cfg.cores_per_node}", f"--nnodes={cfg.num_nodes}",
                f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={cfg.master_port}"]
    script = [f"{cfg.nemo_examples_dir}/{PRETRAINING_SCRIPT}", f"--config-path={cfg.nemo_examples_dir}/conf",
              f"--config-name={HYDRA_CONFIG_NAME}"]
    prefix = ["neuron_parallel_compile"] if mode == "precompile" else []
    return prefix + torchrun + script + hydra_overrides(cfg, mode)


def mpirun_command(nodes: int, launch: list[str], *, forward_env: tuple[str, ...] = FORWARDED_ENV) -> list[str]:
    """What the MPIJob launcher runs: one `launch` process per worker node (ranks = node ranks)."""
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    forwarded = [arg for name in forward_env for arg in ("-x", name)]
    return ["mpirun", "-np", str(nodes), "--map-by", "ppr:1:node", "--bind-to", "none",
            "--mca", "plm_rsh_no_tree_spawn", "1", "--tag-output", *forwarded, *launch]
