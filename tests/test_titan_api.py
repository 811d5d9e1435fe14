"""Issue 22 item 12: every TorchTitan name the trainer uses goes through one module
(trn_workloads/titan/titan_api.py), whose check the titan image build runs against the pinned
fork commit. Here the check runs against stand-in torchtitan trees (a fitting one, the 0.2.2-era
layout, one whose ParallelDims has no spmd_backend); tests/test_titan_train.py runs it against
the real torchtitan of .venv-titan."""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.platform_helpers import REPO

TITAN = REPO / "images" / "trn_workloads" / "titan"
DOCKERFILE = REPO / "images" / "titan" / "Dockerfile"

# A torchtitan tree with the names and signatures of pytorch/torchtitan main of 2026-08 (PyPI 0.3.0),
# reduced to what the check reads.
FITTING = {
    "torchtitan/__init__.py": "",
    "torchtitan/components/__init__.py": "",
    "torchtitan/components/checkpointer/__init__.py": "",
    "torchtitan/components/checkpointer/base.py": "class ModelWrapper:\n    def __init__(self, model): pass\n",
    "torchtitan/components/optimizer/__init__.py": "",
    "torchtitan/components/optimizer/utils.py": ("def get_flat_optim_state_dict(optimizer): pass\n"
                                                 "def init_optim_state(optimizer): pass\n"
                                                 "def load_flat_optim_state_dict(optimizer, state_dict): pass\n"),
    "torchtitan/config/__init__.py": textwrap.dedent("""\
        from dataclasses import dataclass
        @dataclass
        class CompileConfig:
            enable: bool = False
            backend: str = "inductor"
        @dataclass
        class ParallelismConfig:
            data_parallel_shard_degree: int = -1
            tensor_parallel_degree: int = 1
            spmd_backend: str = "partial_dtensor"
        @dataclass
        class TrainingConfig:
            local_batch_size: int = 8
            seq_len: int = 2048
            mixed_precision_param: str = "bfloat16"
            mixed_precision_reduce: str = "float32"
        """),
    "torchtitan/distributed/__init__.py": "from torchtitan.distributed.parallel_dims import ParallelDims\n",
    "torchtitan/distributed/parallel_dims.py": textwrap.dedent("""\
        from __future__ import annotations
        from dataclasses import dataclass
        from typing import Literal
        device_type = "cuda"
        @dataclass
        class ParallelDims:
            dp_replicate: int
            dp_shard: int
            cp: int
            tp: int
            pp: int
            ep: int
            world_size: int
            spmd_backend: Literal["partial_dtensor", "full_dtensor", "spmd_types"] = "partial_dtensor"
        """),
    "torchtitan/distributed/utils.py": ("def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,"
                                        " foreach=None, pp_mesh=None, ep_enabled=False): pass\n"),
    "torchtitan/models/__init__.py": "",
    "torchtitan/models/common/__init__.py": "",
    "torchtitan/models/common/attention.py": textwrap.dedent("""\
        from dataclasses import dataclass
        class ScaledDotProductAttention:
            @dataclass(kw_only=True)
            class Config:
                pass
        """),
    "torchtitan/models/llama3/__init__.py": textwrap.dedent("""\
        def model_registry(flavor, attn_backend="flex", tp_gemm_backend="default", converters=None): pass
        def parallelize_llama(model, *, parallel_dims, training, parallelism, compile_config, ac_config, dump_folder): pass
        """),
}


def tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def check(root: Path) -> subprocess.CompletedProcess:
    """`python -m trn_workloads.titan.titan_api` as the image build runs it, with `root` as the only torchtitan."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(REPO / "images")])}
    return subprocess.run([sys.executable, "-m", "trn_workloads.titan.titan_api"], env=env, capture_output=True,
                          text=True, timeout=60, cwd=root)


def test_a_fitting_torchtitan_passes(tmp_path):
    proc = check(tree(tmp_path, FITTING))
    assert proc.returncode == 0, proc.stderr
    assert "12 symbols and 9 call signatures fit the trainer" in proc.stdout


def test_the_0_2_2_layout_fails_naming_every_missing_name(tmp_path):
    """pytorch/torchtitan v0.2.2 (73a0e6979): components/checkpoint.py and components/optimizer.py
    modules, a TOML JobConfig instead of config.CompileConfig, no model_registry."""
    old = {k: v for k, v in FITTING.items() if not k.startswith(("torchtitan/components/", "torchtitan/config/",
                                                                 "torchtitan/models/llama3/"))}
    old |= {"torchtitan/components/__init__.py": "", "torchtitan/components/checkpoint.py": "class ModelWrapper: pass\n",
            "torchtitan/components/optimizer.py": "def build_optimizers(): pass\n",
            "torchtitan/config/__init__.py": "class JobConfig: pass\n",
            "torchtitan/models/llama3/__init__.py": "def parallelize_llama(model, parallel_dims, job_config): pass\n"}
    proc = check(tree(tmp_path, old))
    assert proc.returncode == 1
    for name in ("torchtitan.components.checkpointer.base.ModelWrapper", "torchtitan.components.optimizer.utils.init_optim_state",
                 "torchtitan.config.CompileConfig", "torchtitan.models.llama3.model_registry"):
        assert name in proc.stderr, name
    assert "tracks.native.torchtitan_neuron_source" in proc.stderr


def test_parallel_dims_without_spmd_backend_fails(tmp_path):
    files = dict(FITTING)
    files["torchtitan/distributed/parallel_dims.py"] = re.sub(r"\n    spmd_backend: .*\n", "\n",
                                                              files["torchtitan/distributed/parallel_dims.py"])
    proc = check(tree(tmp_path, files))
    assert proc.returncode == 1
    assert "ParallelDims(dp_replicate, dp_shard, cp, tp, pp, ep, world_size, spmd_backend)" in proc.stderr
    assert "unexpected keyword argument 'spmd_backend'" in proc.stderr


def test_spmd_backend_without_partial_dtensor_fails(tmp_path):
    files = dict(FITTING)
    files["torchtitan/distributed/parallel_dims.py"] = files["torchtitan/distributed/parallel_dims.py"].replace(
        'Literal["partial_dtensor", "full_dtensor", "spmd_types"] = "partial_dtensor"', 'Literal["spmd_types"] = "spmd_types"')
    proc = check(tree(tmp_path, files))
    assert proc.returncode == 1 and "ParallelDims(spmd_backend='partial_dtensor'): not among" in proc.stderr


def test_a_renamed_keyword_fails(tmp_path):
    files = dict(FITTING)
    files["torchtitan/models/llama3/__init__.py"] = files["torchtitan/models/llama3/__init__.py"].replace(
        "compile_config,", "compile,")
    proc = check(tree(tmp_path, files))
    assert proc.returncode == 1 and "parallelize_llama(" in proc.stderr and "compile_config" in proc.stderr


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_titan_api_imports_torchtitan_and_it_lists_every_name_the_trainer_uses():
    from trn_workloads.titan import titan_api

    for path in sorted(TITAN.glob("*.py")):
        if path.name != "titan_api.py":
            assert not {m for m in imported_modules(path) if m.split(".")[0] == "torchtitan"}, path.name
    listed = {name for _, name in titan_api.SYMBOLS}
    used = set(re.findall(r"\bapi\.([A-Za-z_]\w*)", (TITAN / "train.py").read_text()))
    assert used and used <= listed, used - listed


def test_the_image_installs_the_pinned_fork_commit_and_runs_the_check_on_it():
    text = DOCKERFILE.read_text()
    install = text.index('{repo}/archive/{commit}.tar.gz')
    copy = text.index("COPY trn_workloads /opt/workloads/trn_workloads")
    assert install < copy < text.index("RUN python3 -m trn_workloads.titan.titan_api") < text.index("USER 1000")
    assert "ARG TORCHTITAN_NEURON_COMMIT" in text and "ARG TORCHTITAN_NEURON_REPOSITORY" in text
    # The base image no longer has to bring torchtitan, and nothing holds it to a base version.
    assert 'version("torchtitan")' not in text and "torchtitan|" not in text


def test_build_args_carry_the_fork_commit(monkeypatch):
    from infra import versions
    from workloads import common
    from workloads.errors import WorkloadConfigError

    native = versions.neuron_track("native")
    source = native["torchtitan_neuron_source"]
    assert source["repository"] == "https://github.com/aws-neuron/torchtitan-neuron"
    if source["commit"] is None:  # not readable here: building must stop, naming the key
        with pytest.raises(WorkloadConfigError, match=r"tracks\.native\.torchtitan_neuron_source\.commit is None"):
            common.build_args("titan")
    commit = "0123456789abcdef0123456789abcdef01234567"
    # The TorchNeuron training DLC may not be pinned yet either (test_tracks.py): give one.
    base_images = {**native["base_images"], "training": "registry.example/torchneuron-training:test"}
    pinned = {**native, "base_images": base_images, "torchtitan_neuron_source": {**source, "commit": commit}}
    monkeypatch.setattr(common.versions, "neuron_track", lambda name: pinned if name == "native" else versions.neuron_track(name))
    args = common.build_args("titan")
    assert args["TORCHTITAN_NEURON_COMMIT"] == commit and args["TORCHTITAN_NEURON_REPOSITORY"] == source["repository"]
    assert args["BASE_IMAGE"] == base_images["training"]
    monkeypatch.setattr(common.versions, "neuron_track",
                        lambda name: {**pinned, "torchtitan_neuron_source": {**source, "commit": "main"}})
    with pytest.raises(WorkloadConfigError, match="'main', not a 40-hex commit"):
        common.build_args("titan")
