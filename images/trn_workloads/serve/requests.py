"""Turn a /predict body into arrays the model accepts, or a RequestError with a clear message.

Body: `{"inputs": [[...], ...]}` for a single-input model (rows, batch first), or
`{"inputs": {"<input name>": [[...], ...], ...}}` naming every input of a multi-input model.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from trn_workloads.compile.manifest import FLOAT_DTYPES, Manifest, TensorSpec


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def expected_layout(manifest: Manifest) -> list[dict[str, Any]]:
    return [{"name": s.name, "shape": ["n", *s.sample_shape], "dtype": s.dtype} for s in manifest.inputs]


def parse_predict_body(body: bytes, manifest: Manifest, max_rows: int) -> list[np.ndarray]:
    """Validate and convert; one array per manifest input, all with the same row count."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise RequestError(400, f"body is not valid JSON: {err.msg} (line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise RequestError(400, "body is not valid JSON: nested too deeply") from None
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError(422, 'body must be a JSON object with an "inputs" field')
    raw = payload["inputs"]
    names = [s.name for s in manifest.inputs]
    if len(manifest.inputs) == 1 and not isinstance(raw, dict):
        raw = {names[0]: raw}
    if not isinstance(raw, dict) or sorted(raw) != sorted(names):
        got = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise RequestError(422, f'"inputs" must be an object with keys {names}, got {got}')

    arrays = [_array(raw[spec.name], spec, max_rows) for spec in manifest.inputs]
    rows = {a.shape[0] for a in arrays}
    if len(rows) > 1:
        raise RequestError(422, f"inputs have different row counts {[a.shape[0] for a in arrays]}")
    return arrays


def _array(value: Any, spec: TensorSpec, max_rows: int) -> np.ndarray:
    expected = f"[n, {', '.join(map(str, spec.sample_shape))}]" if spec.sample_shape else "[n]"
    what = f"input {spec.name!r} expects shape {expected} of {spec.dtype} with n from 1 to {max_rows}"
    if not isinstance(value, list):
        raise RequestError(422, f"{what}, got a JSON {type(value).__name__}")
    boolean = _first_boolean(value)
    if boolean is not None:  # numpy would read true/false among numbers as 1/0
        raise RequestError(422, f"{what}, got booleans (true/false at {spec.name}{boolean})")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise RequestError(422, f"{what}, got ragged or mixed nested lists") from None
    if array.dtype.kind == "O":
        raise RequestError(422, f"{what}, got ragged or non-numeric nested lists")
    if array.shape[1:] != spec.sample_shape or array.ndim != len(spec.shape) or not 1 <= array.shape[0] <= max_rows:
        raise RequestError(422, f"{what}, got shape {list(array.shape)}")

    is_float = spec.dtype in FLOAT_DTYPES
    allowed_kinds = "iuf" if is_float else "iu"
    if array.dtype.kind not in allowed_kinds:
        got = {"b": "booleans", "U": "strings", "f": "non-integer numbers"}.get(array.dtype.kind, str(array.dtype))
        raise RequestError(422, f"{what}, got {got}")
    if is_float:
        with np.errstate(over="ignore"):  # overflow becomes inf, rejected just below
            array = array.astype(np.float32 if spec.dtype == "bfloat16" else spec.dtype)
        if not np.isfinite(array).all():
            raise RequestError(422, f"{what}, got NaN/Infinity or values out of {spec.dtype} range")
        return array
    info = np.iinfo(spec.dtype)
    if array.min() < info.min or array.max() > info.max:
        raise RequestError(422, f"{what}, got values out of {spec.dtype} range")
    return array.astype(spec.dtype)


def _first_boolean(value: Any) -> str | None:
    """Index path (e.g. "[0][2]") of the first JSON true/false in nested lists, None if there is none.
    Iterative: a body nested as deep as the JSON parser allows must not overflow the stack here."""
    stack = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, bool):
            return path
        if isinstance(item, list):
            stack.extend((f"{path}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None
