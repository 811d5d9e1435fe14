"""The HTTP API.

    GET  /healthz   readiness: 200 once the model is loaded, 503 while loading or after a failed load
    GET  /livez     liveness: 200 unless the model failed to load (500, so the kubelet restarts the pod)
    GET  /stats     requests and model calls so far
    POST /predict   {"inputs": [[...], ...]} -> {"model": name, "outputs": [[...], ...]}

The model loads in a background thread after start-up, so probes get answers meanwhile.
Errors: 400 bad JSON, 413 body over max_body_bytes, 422 wrong structure/shape/dtype,
503 not loaded yet or max_queued_requests already waiting (with Retry-After), 500 model
failure; the body is {"error": message, "expected": layout}.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from trn_workloads.serve.batching import DynamicBatcher, QueueFull
from trn_workloads.serve.config import ServeConfig
from trn_workloads.serve.model import LoadedModel, load_model
from trn_workloads.serve.requests import RequestError, expected_layout, parse_predict_body

log = logging.getLogger(__name__)

# Seconds a client told "queue full" should wait: a full queue drains in a few model calls.
RETRY_AFTER_S = 1


class _State:
    def __init__(self):
        self.model: LoadedModel | None = None
        self.batcher: DynamicBatcher | None = None
        self.load_error: str | None = None


def create_app(config: ServeConfig, load: Callable[[], LoadedModel] | None = None) -> FastAPI:
    """`load` defaults to loading config.model_uri; tests pass their own to observe the model."""
    load = load or (lambda: load_model(config.model_uri, config.cache_dir))
    state = _State()

    async def load_in_background():
        try:
            model = await asyncio.to_thread(load)
        except Exception as err:  # reported by /healthz and /livez; the pod gets restarted
            log.exception("loading the model from %s failed", config.model_uri)
            state.load_error = f"{type(err).__name__}: {err}"
            return
        max_batch = config.max_batch_size or model.manifest.batch_size
        state.batcher = DynamicBatcher(model.predict, max_batch_size=max_batch, max_wait_ms=config.max_wait_ms,
                                       max_queued=config.max_queued_requests)
        state.batcher.start()
        state.model = model
        log.info("ready: %s, max batch %d rows, max wait %.1f ms", model.manifest.model_name, max_batch, config.max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        loader = asyncio.create_task(load_in_background())
        yield
        loader.cancel()
        await asyncio.gather(loader, return_exceptions=True)
        if state.batcher is not None:
            await state.batcher.stop()

    app = FastAPI(title="trn-workloads model server", lifespan=lifespan)

    @app.get("/healthz")
    async def healthz():
        if state.model is not None:
            m = state.model.manifest
            return {"status": "ready", "model": m.model_name, "backend": m.backend, "batch_size": m.batch_size}
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=503)
        return JSONResponse({"status": "loading"}, status_code=503)

    @app.get("/livez")
    async def livez():
        if state.load_error is not None:
            return JSONResponse({"status": "failed", "error": state.load_error}, status_code=500)
        return {"status": "alive"}

    @app.get("/stats")
    async def stats():
        batcher = state.batcher
        return {"requests": batcher.requests if batcher else 0, "batches": batcher.batches if batcher else 0,
                "rejected": batcher.rejected if batcher else 0, "model_calls": state.model.calls if state.model else 0}

    @app.post("/predict")
    async def predict(request: Request):
        model, batcher = state.model, state.batcher
        if model is None or batcher is None:
            return JSONResponse({"error": "model is not loaded yet"}, status_code=503)
        layout = expected_layout(model.manifest)
        try:
            body = await _read_body(request, config.max_body_bytes)
            inputs = parse_predict_body(body, model.manifest, batcher.max_batch_size)
        except RequestError as err:
            return JSONResponse({"error": err.message, "expected": layout}, status_code=err.status)
        try:
            outputs = await batcher.submit(inputs)
        except QueueFull as err:
            return JSONResponse({"error": f"server busy: {err} (max_queued_requests); retry later",
                                 "expected": layout}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        except Exception as err:
            return JSONResponse({"error": f"model call failed: {type(err).__name__}: {err}"}, status_code=500)
        named = {spec.name: out.tolist() for spec, out in zip(model.manifest.outputs, outputs)}
        return {"model": model.manifest.model_name,
                "outputs": next(iter(named.values())) if len(named) == 1 else named}

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = RequestError(413, f"body is larger than the limit of {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():  # also bounds chunked bodies without a Content-Length
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
