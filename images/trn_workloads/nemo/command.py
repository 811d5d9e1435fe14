"""Pure functions from a RunConfig to the environment and command line of one worker node.

Each trn1.32xlarge worker runs one `torchrun` with one process per NeuronCore, each
running NxD Training's `training_orchestrator.py` on the YAML that `nxdt.nxdt_config`
generates (written to `<run_dir>/nxdt-config/<mode>.yaml` by the launcher). The MPIJob
launcher starts `python -m trn_workloads.nemo.launch` once per worker with mpirun; that
process fills in its node rank and the rank-0 address, writes the YAML, then execs the
command built here. Precompile mode wraps the same command in `neuron_parallel_compile`
for a few steps (graphs land in the shared compile cache); train mode runs the full
schedule and resumes from the newest checkpoint in `<run_dir>/checkpoints`.

The command mirrors NxD Training's examples/train.sh (torchrun per node, optional
neuron_parallel_compile prefix, --config-path/--config-name) and the environment its
train_setup.sh sets for MPI runs on EKS, at the commit images/nemo/Dockerfile pins:
  https://github.com/aws-neuron/neuronx-distributed-training/blob/9169aa03f39efd4eb02da63891a7ed98defb1714/examples/train.sh
  https://github.com/aws-neuron/neuronx-distributed-training/blob/9169aa03f39efd4eb02da63891a7ed98defb1714/examples/train_setup.sh
"""
from __future__ import annotations

from trn_workloads.nemo.config import RunConfig
from trn_workloads.nemo.nxdt import PRECISION_ENV, RUNTIME_SETTINGS, check_mode, config_name

ORCHESTRATOR = "training_orchestrator.py"

# What mpirun forwards from the launcher pod to the processes it starts on the workers
# (ssh does not carry the pod environment). build_env() sets everything else itself. MASTER_ADDR is
# set in the launcher by trn_workloads.nemo.mpirun from the hostfile only the launcher has.
FORWARDED_ENV = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONUNBUFFERED", "TRN_BACKEND", "AWS_REGION",
                 "RUN_DIR", "HF_HOME", "NEURON_SDK_VERSION", "ARTIFACTS_BUCKET", "MASTER_ADDR")


def build_env(cfg: RunConfig, mode: str) -> dict[str, str]:
    """Environment for torchrun and its workers (EFA, compile cache, XLA precision, runtime)."""
    check_mode(mode)
    env = {
        # EFA through libfabric, with device RDMA and fork safety (torch dataloaders fork).
        "FI_PROVIDER": "efa",
        "FI_EFA_USE_DEVICE_RDMA": "1",
        "FI_EFA_FORK_SAFE": "1",
        "CCOM_SOCKET_IFNAME": "eth0",  # the pod network interface for the collectives' bootstrap
        # Compile cache on shared storage, so precompile fills it once for every worker and every
        # later run. It must be in the environment: neuron_parallel_compile reads it before the
        # orchestrator starts. The orchestrator appends the YAML's compiler_flags and the
        # precision's flag to NEURON_CC_FLAGS (nxdt.COMPILER_FLAGS).
        "NEURON_CC_FLAGS": f"--cache_dir={cfg.compile_cache}",
        "NEURON_COMPILE_CACHE_URL": cfg.compile_cache,
        # What the orchestrator derives from precision.type, fusions.softmax and the runtime
        # settings of the YAML; set here from the same tables, so both agree.
        **PRECISION_ENV[cfg.precision],
        **{variable: str(value) for variable, value in RUNTIME_SETTINGS.values()},
        "NEURON_FUSE_SOFTMAX": "1",
        "NEURON_EXPERIMENTAL_COMPRESS_RG": "0",
        # Functionalization on, as NxD Training's train_setup.sh keeps it (it closes a ZeRO-1
        # convergence gap).
        "XLA_DISABLE_FUNCTIONALIZATION": "0",
        # glibc creates an arena per thread; cap them or host memory balloons with 32 ranks.
        "MALLOC_ARENA_MAX": "128",
        "HYDRA_FULL_ERROR": "1",
        "PYTHONUNBUFFERED": "1",
    }
    if mode == "precompile":
        # COMPILE=1 is not exported: the orchestrator would then force trainer.max_steps = 10 over the
        # YAML's precompile_steps (whose default is that same 10) and nothing else changes for us.
        # neuron_parallel_compile runs the graphs' compilations in parallel workers; one retry.
        env["NEURON_PARALLEL_COMPILE_MAX_RETRIES"] = "1"
    return env


def build_command(cfg: RunConfig, mode: str, *, node_rank: int = 0, master_addr: str = "localhost") -> list[str]:
    """The command one worker node runs:
    [neuron_parallel_compile] torchrun ... training_orchestrator.py --config-path --config-name."""
    check_mode(mode)
    if not 0 <= node_rank < cfg.num_nodes:
        raise ValueError(f"node_rank must be 0..{cfg.num_nodes - 1} for {cfg.num_nodes} node(s), got {node_rank}")
    torchrun = ["torchrun", f"--nproc_per_node={cfg.cores_per_node}", f"--nnodes={cfg.num_nodes}",
                f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={cfg.master_port}"]
    orchestrator = [f"{cfg.nxdt_examples_dir}/{ORCHESTRATOR}", f"--config-path={cfg.nxdt_config_dir}",
                    f"--config-name={config_name(mode)}"]
    prefix = ["neuron_parallel_compile"] if mode == "precompile" else []
    return prefix + torchrun + orchestrator


def mpirun_command(nodes: int, launch: list[str], *, forward_env: tuple[str, ...] = FORWARDED_ENV) -> list[str]:
    """What the MPIJob launcher runs: one `launch` process per worker node (ranks = node ranks)."""
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    forwarded = [arg for name in forward_env for arg in ("-x", name)]
    return ["mpirun", "-np", str(nodes), "--map-by", "ppr:1:node", "--bind-to", "none",
            "--mca", "plm_rsh_no_tree_spawn", "1", "--tag-output", *forwarded, *launch]
