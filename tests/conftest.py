"""Shared fixtures: a moto server on loopback (real boto3 over HTTP) and CPU-only workloads."""
from __future__ import annotations

import os

import pytest
from tests.loopback import free_port

# Workload code under test always takes the CPU path here (see images/trn_workloads/accel.py).
os.environ.setdefault("TRN_BACKEND", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def moto_server():
    """moto's HTTP server on 127.0.0.1; yields its endpoint URL.

    Tests reach it with ordinary boto3 clients (`endpoint_url=...`), never patched functions.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_server, monkeypatch):
    """Credentials, region and endpoint for boto3 clients pointed at the moto server.

    Resets moto's state after each test so tests do not see each other's resources.
    """
    import requests

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    yield moto_server
    requests.post(f"{moto_server}/moto-api/reset", timeout=10)


# Process-wide settings that code under test sets for itself (trn_workloads.dataprep.tokenization
# set_tokenizer_threads writes both: the tokenizers library reads them from the environment). Restored after
# every test, so they do not reach later tests and the servers they start (the vLLM server saw
# RAYON_NUM_THREADS=1 after the data-prep tests).
_PROCESS_SETTINGS = ("RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")


@pytest.fixture(autouse=True)
def _restore_process_settings():
    saved = {k: os.environ.get(k) for k in _PROCESS_SETTINGS}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
