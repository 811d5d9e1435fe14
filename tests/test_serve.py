"""The model server: request parsing, batching, and a real uvicorn server driven over HTTP."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import httpx
import numpy as np
import pytest
import torch
import uvicorn

from trn_workloads import artifacts
from trn_workloads.compile import cli, housing_mlp
from trn_workloads.compile.manifest import Manifest, TensorSpec
from trn_workloads.serve import model as serve_model
from trn_workloads.serve.app import create_app
from trn_workloads.serve.batching import DynamicBatcher, QueueFull
from trn_workloads.serve.config import ServeConfig, load_config
from trn_workloads.serve.requests import RequestError, parse_predict_body
from tests.loopback import free_port

REPO = Path(__file__).resolve().parents[1]
COMPILED_BATCH = 8


@pytest.fixture(scope="module")
def housing(tmp_path_factory):
    """A trained and compiled housing MLP: (artifact dir, eager model, some feature rows)."""
    root = tmp_path_factory.mktemp("housing")
    csv_path = housing_mlp.write_synthetic_csv(root / "data.csv", rows=300, seed=2)
    checkpoint = housing_mlp.train(housing_mlp.TrainConfig(csv=str(csv_path), output_dir=str(root / "train"), epochs=2))
    out = root / "compiled"
    cli.compile_model(cli.CompileConfig(model="housing-mlp", output_dir=str(out), checkpoint=str(checkpoint),
                                        example_input=str(root / "train" / housing_mlp.EXAMPLE_INPUT_FILE),
                                        batch_size=COMPILED_BATCH))
    rows, _ = housing_mlp.load_csv(csv_path)
    return out, housing_mlp.load_checkpoint(checkpoint), rows


def _eager(model, rows: torch.Tensor) -> list[list[float]]:
    with torch.no_grad():
        return model(rows).tolist()


@contextlib.contextmanager
def running(app):
    """Real uvicorn on a free loopback port in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_ready(client: httpx.Client, timeout: float = 10) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/healthz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.02)


# --- config ----------------------------------------------------------------------------

def test_config_env_then_cli_overrides():
    env = {"TRN_SERVE_MODEL_URI": "s3://b/m/", "TRN_SERVE_PORT": "9000", "TRN_SERVE_MAX_WAIT_MS": "2.5"}
    config = load_config(["--port", "9001", "--max-batch-size", "16"], environ=env)
    assert config == ServeConfig(model_uri="s3://b/m/", port=9001, max_wait_ms=2.5, max_batch_size=16)
    assert load_config([], environ={"TRN_SERVE_MODEL_URI": "/fsx/m"}).port == 8080


@pytest.mark.parametrize(
    "env, argv, message",
    [
        ({}, [], r"model_uri is required \(--model-uri or \$TRN_SERVE_MODEL_URI\)"),
        ({"TRN_SERVE_MODEL_URI": "x", "TRN_SERVE_PORT": "http"}, [], r"\$TRN_SERVE_PORT='http' is not a valid int"),
        ({"TRN_SERVE_MODEL_URI": "x"}, ["--port", "0"], r"port must be 1..65535"),
        ({"TRN_SERVE_MODEL_URI": "x", "TRN_SERVE_MAX_BATCH_SIZE": "0"}, [], r"max_batch_size must be >= 1"),
        ({"TRN_SERVE_MODEL_URI": "x", "TRN_SERVE_MAX_WAIT_MS": "-1"}, [], r"max_wait_ms must be 0..10000"),
        ({"TRN_SERVE_MODEL_URI": "x", "TRN_SERVE_MAX_QUEUED_REQUESTS": "0"}, [], r"max_queued_requests must be >= 1"),
    ],
)
def test_config_errors(env, argv, message):
    with pytest.raises(ValueError, match=message):
        load_config(argv, environ=env)


# --- request parsing -------------------------------------------------------------------

def _manifest(*inputs: TensorSpec, batch: int = 4) -> Manifest:
    return Manifest(model_name="m", batch_size=batch, inputs=inputs,
                    outputs=(TensorSpec("output0", (batch, 1), "float32"),), backend="cpu", tracer="torch.jit.trace",
                    neuron_sdk_version=None, compiler_version=None, compiler_args=(), torch_version="x",
                    source="state_dict", source_sha256="a", model_sha256="b", created_at="t")


FEATURES = _manifest(TensorSpec("features", (4, 3), "float32"))


def test_parse_single_input_rows():
    (array,) = parse_predict_body(b'{"inputs": [[1, 2, 3.5], [4, 5, 6]]}', FEATURES, max_rows=4)
    assert array.dtype == np.float32 and array.tolist() == [[1, 2, 3.5], [4, 5, 6]]


def test_parse_named_multi_input():
    manifest = _manifest(TensorSpec("ids", (4, 2), "int64"), TensorSpec("dense", (4, 1), "bfloat16"))
    ids, dense = parse_predict_body(json.dumps({"inputs": {"ids": [[1, 2]], "dense": [[0.5]]}}).encode(), manifest, 4)
    assert (ids.dtype, dense.dtype) == (np.int64, np.float32)  # bfloat16 is cast from float32 in torch
    with pytest.raises(RequestError, match=r"keys \['ids', 'dense'\], got \['ids'\]"):
        parse_predict_body(b'{"inputs": {"ids": [[1, 2]]}}', manifest, 4)
    with pytest.raises(RequestError, match=r"different row counts \[1, 2\]"):
        parse_predict_body(b'{"inputs": {"ids": [[1, 2]], "dense": [[0.5], [1]]}}', manifest, 4)
    with pytest.raises(RequestError, match=r"'ids' expects shape \[n, 2\] of int64 .*got non-integer numbers"):
        parse_predict_body(b'{"inputs": {"ids": [[1, 2.5]], "dense": [[0.5]]}}', manifest, 4)
    with pytest.raises(RequestError, match=r"'ids' expects shape \[n, 2\] of int64 .*true/false at ids\[0\]\[0\]"):
        parse_predict_body(b'{"inputs": {"ids": [[true, 2]], "dense": [[0.5]]}}', manifest, 4)


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b'{"inputs": [[1, 2, 3]', 400, r"not valid JSON: .*line 1 column"),
        (b"\xff\xfe", 400, r"not UTF-8 JSON|not valid JSON"),
        (b"[1, 2]", 422, r'JSON object with an "inputs" field'),
        (b'{"inputs": "abc"}', 422, r"expects shape \[n, 3\] of float32 with n from 1 to 4, got a JSON str"),
        (b'{"inputs": [[1, 2]]}', 422, r"expects shape \[n, 3\].*got shape \[1, 2\]"),
        (b'{"inputs": [1, 2, 3]}', 422, r"got shape \[3\]"),
        (b'{"inputs": []}', 422, r"got shape \[0\]"),
        (b'{"inputs": [[1,2,3],[1,2,3],[1,2,3],[1,2,3],[1,2,3]]}', 422, r"n from 1 to 4, got shape \[5, 3\]"),
        (b'{"inputs": [[1, 2], [3, 4, 5]]}', 422, r"ragged"),
        (b'{"inputs": [["a", "b", "c"]]}', 422, r"of float32 .*got strings"),
        (b'{"inputs": [[true, false, true]]}', 422, r"got booleans"),
        # Mixed with numbers, numpy would read them as 1.0/0.0: refused too, naming the input and where.
        (b'{"inputs": [[1.5, true, 3]]}', 422,
         r"input 'features' expects .*got booleans \(true/false at features\[0\]\[1\]\)"),
        (b'{"inputs": [[1, 2, 3], [4, 5, false]]}', 422, r"got booleans \(true/false at features\[1\]\[2\]\)"),
        (b'{"inputs": [[1, null, 3]]}', 422, r"non-numeric"),
        (b'{"inputs": [[1, NaN, 3]]}', 422, r"NaN/Infinity"),
        (b'{"inputs": [[1, 1e39, 3]]}', 422, r"out of float32 range"),
        (b"[" * 100_000 + b"]" * 100_000, 400, r"not valid JSON"),
    ],
)
def test_parse_rejects_bad_bodies(body, status, message):
    with pytest.raises(RequestError, match=message) as caught:
        parse_predict_body(body, FEATURES, max_rows=4)
    assert caught.value.status == status


# --- batching and the model runner ------------------------------------------------------

def test_batcher_groups_concurrent_requests_and_splits_results():
    seen: list[int] = []

    def double(inputs):
        seen.append(inputs[0].shape[0])
        return [inputs[0] * 2]

    async def scenario():
        batcher = DynamicBatcher(double, max_batch_size=4, max_wait_ms=50)
        batcher.start()
        sizes = [1, 1, 2, 1, 3, 1, 1]  # 10 rows; the 3-row request does not fit after 4 and waits
        requests = [np.full((n, 2), i, dtype=np.float32) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(batcher.submit([r]) for r in requests))
        await batcher.stop()
        return requests, results, batcher

    requests, results, batcher = asyncio.run(scenario())
    for request, (result,) in zip(requests, results):
        np.testing.assert_array_equal(result, request * 2)
    assert sum(seen) == 10 and max(seen) <= 4 and len(seen) == 3
    assert (batcher.requests, batcher.batches) == (7, 3)


def test_batcher_reports_model_errors_and_keeps_serving():
    calls = []

    def flaky(inputs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("device busy")
        return [inputs[0] + 1]

    async def scenario():
        batcher = DynamicBatcher(flaky, max_batch_size=8, max_wait_ms=1)
        batcher.start()
        with pytest.raises(RuntimeError, match="device busy"):
            await batcher.submit([np.zeros((1, 1))])
        (result,) = await batcher.submit([np.zeros((1, 1))])
        with pytest.raises(ValueError, match="9 rows exceed max_batch_size 8"):
            await batcher.submit([np.zeros((9, 1))])
        await batcher.stop()
        return result

    assert asyncio.run(scenario()).tolist() == [[1.0]]


def test_pad_rows():
    padded = serve_model.pad_rows(torch.ones(3, 2), 8)
    assert padded.shape == (8, 2) and padded[:3].eq(1).all() and padded[3:].eq(0).all()
    assert serve_model.pad_rows(torch.ones(8, 2), 8).shape == (8, 2)


def test_loaded_model_runs_fixed_size_chunks(housing):
    artifact, eager, rows = housing
    loaded = serve_model.load_model(str(artifact), cache_dir="unused")
    seen_shapes = []
    traced = loaded.module
    loaded.module = lambda x: (seen_shapes.append(tuple(x.shape)), traced(x))[1]
    (out,) = loaded.predict([rows[:11].numpy()])  # 11 rows = a full chunk of 8 + 3 padded to 8
    assert seen_shapes == [(8, 11), (8, 11)] and loaded.calls == 2
    np.testing.assert_allclose(out, _eager(eager, rows[:11]), rtol=1e-5, atol=1e-6)


def test_load_model_rejects_tampered_artifact(housing, tmp_path):
    artifact, _, _ = housing
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "manifest.json").write_bytes((artifact / "manifest.json").read_bytes())
    (copy / "model.pt").write_bytes((artifact / "model.pt").read_bytes() + b"x")
    with pytest.raises(ValueError, match=r"model.pt: sha256 .* does not match the manifest's model_sha256"):
        serve_model.load_model(str(copy), cache_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        serve_model.load_model(str(tmp_path / "nope"), cache_dir=tmp_path)


def test_load_model_refuses_neuron_artifact_on_cpu(housing, tmp_path):
    artifact, _, _ = housing
    copy = tmp_path / "neuron"
    copy.mkdir()
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest.update(backend="neuron", tracer="torch_neuronx.trace")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    (copy / "model.pt").write_bytes((artifact / "model.pt").read_bytes())
    with pytest.raises(RuntimeError, match="compiled for Neuron"):
        serve_model.load_model(str(copy), cache_dir=tmp_path)


def test_load_model_from_s3(aws_env, housing, tmp_path):
    artifact, eager, rows = housing
    boto3.client("s3").create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    artifacts.upload_dir(artifact, "s3://models/housing/v1")
    loaded = serve_model.load_model("s3://models/housing/v1", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "model.pt").is_file()
    (out,) = loaded.predict([rows[:3].numpy()])
    np.testing.assert_allclose(out, _eager(eager, rows[:3]), rtol=1e-5, atol=1e-6)


# --- the HTTP server -------------------------------------------------------------------

def test_http_health_predict_batching_and_bad_requests(housing):
    artifact, eager, rows = housing
    release = threading.Event()
    loaded_models = []

    def gated_load():
        release.wait(timeout=30)  # lets the test see the server before the model is there
        loaded = serve_model.load_model(str(artifact), cache_dir="unused")
        loaded_models.append(loaded)
        return loaded

    config = ServeConfig(model_uri=str(artifact), max_wait_ms=30, max_body_bytes=8192)
    with running(create_app(config, load=gated_load)) as url, httpx.Client(base_url=url, timeout=10) as client:
        before = client.get("/healthz")
        assert (before.status_code, before.json()) == (503, {"status": "loading"})
        assert client.get("/livez").status_code == 200
        assert client.post("/predict", json={"inputs": rows[:1].tolist()}).status_code == 503

        release.set()
        ready = _wait_ready(client)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "model": "housing-mlp", "backend": "cpu", "batch_size": COMPILED_BATCH}

        single = client.post("/predict", json={"inputs": rows[:2].tolist()})
        assert single.status_code == 200 and single.json()["model"] == "housing-mlp"
        np.testing.assert_allclose(single.json()["outputs"], _eager(eager, rows[:2]), rtol=1e-5, atol=1e-6)

        # 24 concurrent one-row requests: the batcher must serve them with far fewer model calls.
        calls_before = loaded_models[0].calls

        async def concurrent():
            async with httpx.AsyncClient(base_url=url, timeout=10) as aclient:
                return await asyncio.gather(*(aclient.post("/predict", json={"inputs": [rows[i].tolist()]})
                                              for i in range(24)))

        responses = asyncio.run(concurrent())
        assert [r.status_code for r in responses] == [200] * 24
        predicted = [r.json()["outputs"][0] for r in responses]
        np.testing.assert_allclose(predicted, _eager(eager, rows[:24]), rtol=1e-5, atol=1e-6)
        model_calls = loaded_models[0].calls - calls_before
        assert 3 <= model_calls < 24  # at most 8 rows per compiled call
        assert client.get("/stats").json()["model_calls"] == loaded_models[0].calls

        bad = [
            (b'{"inputs": [[1, 2', 400, "not valid JSON"),
            (json.dumps({"inputs": [[1.0] * 10]}).encode(), 422, "expects shape [n, 11] of float32"),
            (json.dumps({"inputs": [["x"] * 11]}).encode(), 422, "got strings"),
            (json.dumps({"inputs": [[True] * 11]}).encode(), 422, "got booleans"),
            (json.dumps({"inputs": [[1.0] * 11] * 9}).encode(), 422, "n from 1 to 8, got shape [9, 11]"),
            (json.dumps({"rows": []}).encode(), 422, '"inputs" field'),
            (json.dumps({"inputs": [[1.0] * 11] * 200}).encode(), 413, "larger than the limit of 8192 bytes"),
        ]
        for body, status, message in bad:
            response = client.post("/predict", content=body, headers={"content-type": "application/json"})
            assert response.status_code == status, (body[:40], response.text)
            assert message in response.json()["error"]
            if status != 400:
                assert response.json()["expected"] == [{"name": "features", "shape": ["n", 11], "dtype": "float32"}]

        # A chunked body has no Content-Length; the limit still holds while streaming.
        chunked = client.post("/predict", content=iter([b'{"inputs": [' + b"1.0," * 3000, b"1.0]}"]))
        assert chunked.status_code == 413

        assert client.get("/healthz").status_code == 200
        again = client.post("/predict", json={"inputs": rows[5:6].tolist()})
        np.testing.assert_allclose(again.json()["outputs"], _eager(eager, rows[5:6]), rtol=1e-5, atol=1e-6)


def test_batcher_refuses_requests_beyond_its_queue_bound():
    entered, release = threading.Event(), threading.Event()

    def gated(inputs):
        entered.set()
        release.wait(timeout=30)
        return [inputs[0]]

    async def scenario():
        batcher = DynamicBatcher(gated, max_batch_size=1, max_wait_ms=0, max_queued=2)
        batcher.start()
        running_one = asyncio.ensure_future(batcher.submit([np.zeros((1, 1))]))
        for _ in range(2000):  # the worker takes it and blocks in the model call
            if entered.is_set():
                break
            await asyncio.sleep(0.005)
        waiting = [asyncio.ensure_future(batcher.submit([np.full((1, 1), i)])) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            await batcher.submit([np.zeros((1, 1))])
        release.set()
        results = await asyncio.gather(running_one, *waiting)
        await batcher.stop()
        return results, batcher

    results, batcher = asyncio.run(scenario())
    assert [r[0].item() for r in results] == [0, 0, 1]
    assert (batcher.requests, batcher.rejected) == (3, 1)


def test_http_burst_beyond_the_queue_gets_503_with_retry_after(housing):
    """A bounded burst on 127.0.0.1 against a model call that is held: max_queued_requests wait, the
    rest are answered at once with 503 + Retry-After; once the model runs again the queued ones succeed."""
    artifact, eager, rows = housing
    release = threading.Event()

    def load_gated():
        loaded = serve_model.load_model(str(artifact), cache_dir="unused")
        module = loaded.module

        def held(*chunk):
            release.wait(timeout=30)
            return module(*chunk)

        loaded.module = held
        return loaded

    burst, queued = 10, 3
    config = ServeConfig(model_uri=str(artifact), max_batch_size=1, max_wait_ms=0, max_queued_requests=queued)
    with running(create_app(config, load=load_gated)) as url, httpx.Client(base_url=url, timeout=10) as client:
        assert _wait_ready(client).status_code == 200

        async def scenario():
            async with httpx.AsyncClient(base_url=url, timeout=30) as aclient:
                tasks = [asyncio.ensure_future(aclient.post("/predict", json={"inputs": [rows[i].tolist()]}))
                         for i in range(burst)]
                # At most 1 running + `queued` waiting can be held; the others must come back before the release.
                done: set = set()
                for _ in range(200):
                    if len(done) >= burst - 1 - queued:
                        break
                    finished, _pending = await asyncio.wait(tasks, timeout=0.05)
                    done = finished
                release.set()
                return await asyncio.gather(*tasks)

        responses = asyncio.run(scenario())
        statuses = [r.status_code for r in responses]
        busy = [r for r in responses if r.status_code == 503]
        assert set(statuses) == {200, 503} and queued <= statuses.count(200) <= queued + 1, statuses
        for response in busy:
            assert response.headers["retry-after"] == "1"
            assert "server busy" in response.json()["error"] and "max_queued_requests" in response.json()["error"]
        for i, response in enumerate(responses):
            if response.status_code == 200:
                np.testing.assert_allclose(response.json()["outputs"], _eager(eager, rows[i:i + 1]), rtol=1e-5,
                                           atol=1e-6)
        assert client.get("/stats").json()["rejected"] == len(busy)
        again = client.post("/predict", json={"inputs": [rows[0].tolist()]})
        assert again.status_code == 200


def test_http_failed_load_reports_unhealthy(tmp_path):
    config = ServeConfig(model_uri=str(tmp_path / "missing"), cache_dir=str(tmp_path))
    with running(create_app(config)) as url, httpx.Client(base_url=url, timeout=10) as client:
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        health = client.get("/healthz")
        assert health.status_code == 503 and "does not exist" in health.json()["error"]
        assert client.get("/livez").status_code == 500
        assert client.post("/predict", json={"inputs": [[0.0] * 11]}).status_code == 503


def test_cli_serves_artifact_from_s3_in_a_subprocess(aws_env, housing, tmp_path):
    """`python -m trn_workloads.serve` as the Deployment runs it, reading the artifact from S3."""
    artifact, eager, rows = housing
    boto3.client("s3").create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    artifacts.upload_dir(artifact, "s3://models/housing/")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'images'}", "TRN_SERVE_MODEL_URI": "s3://models/housing/",
           "TRN_SERVE_PORT": str(port), "TRN_SERVE_HOST": "127.0.0.1", "TRN_SERVE_CACHE_DIR": str(tmp_path / "cache")}
    process = subprocess.Popen([sys.executable, "-m", "trn_workloads.serve"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, process.stdout.read().decode()
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/healthz").status_code == 200:
                        break
                assert time.monotonic() < deadline, "server did not become ready"
                time.sleep(0.1)
            response = client.post("/predict", json={"inputs": rows[:4].tolist()})
            np.testing.assert_allclose(response.json()["outputs"], _eager(eager, rows[:4]), rtol=1e-5, atol=1e-6)
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stdout.close()
