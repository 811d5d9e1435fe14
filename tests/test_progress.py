"""The step counter of Ray Train and NxD Training jobs (images/trn_workloads/progress.py): read
from Ray Train's metrics.jsonl and from TensorBoard event files. The event files here are
written with the protobuf library from the `Event` fields of TensorFlow's event.proto and
framed as TFRecords with their CRC32C checksums, independently of the reader under test."""
from __future__ import annotations

import json
import struct
import urllib.request

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from prometheus_client import generate_latest

from tests.loopback import free_port
from trn_workloads import progress


def _event_class():
    """`Event` with the fields of tensorflow/core/util/event.proto used here (summary as bytes:
    the reader must skip it without knowing its type)."""
    f = descriptor_pb2.FileDescriptorProto(name="trn_test_event.proto", package="trntest")
    m = f.message_type.add(name="Event")
    T = descriptor_pb2.FieldDescriptorProto
    for name, number, typ in (("wall_time", 1, T.TYPE_DOUBLE), ("step", 2, T.TYPE_INT64),
                              ("file_version", 3, T.TYPE_STRING), ("summary", 5, T.TYPE_BYTES)):
        m.field.add(name=name, number=number, type=typ, label=T.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("trntest.Event"))


Event = _event_class()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", _masked(length)) + payload + struct.pack("<I", _masked(payload))


def test_crc32c_matches_the_standard_check_value():
    assert _crc32c(b"123456789") == 0xE3069283  # RFC 3720 / iSCSI CRC32C check value


def event_file(path, steps):
    records = [tfrecord(Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString())]
    for s in steps:
        records.append(tfrecord(Event(wall_time=1.7e9 + s, step=s, summary=b"\x0a\x05\x0a\x03abc").SerializeToString()))
    path.write_bytes(b"".join(records))


def test_latest_step_is_the_newest_event_file_and_skips_a_partly_written_record(tmp_path):
    import os
    (tmp_path / "version_0").mkdir()
    first = tmp_path / "version_0" / "events.out.tfevents.1.host.1.0"
    event_file(first, range(1, 44))  # the first attempt, hung at 43
    os.utime(first, (1000, 1000))
    assert progress.latest_step_tensorboard(tmp_path) == 43
    second = tmp_path / "events.out.tfevents.2.host.1.0"  # restarted from the checkpoint at step 30
    event_file(second, [])
    os.utime(second, (2000, 2000))
    assert progress.latest_step_tensorboard(tmp_path) is None  # nothing logged by the new attempt yet
    event_file(second, [31, 32, 33])
    os.utime(second, (2000, 2000))
    assert progress.latest_step_tensorboard(tmp_path) == 33
    with open(second, "ab") as f:
        f.write(tfrecord(Event(step=34).SerializeToString())[:-6])  # being written
    os.utime(second, (2000, 2000))
    assert progress.latest_step_tensorboard(tmp_path) == 33
    assert progress.latest_step_tensorboard(tmp_path / "empty") is None
    (tmp_path / "checkpoints" / "deep").mkdir(parents=True)  # not searched: two levels down
    deep = tmp_path / "checkpoints" / "deep" / "events.out.tfevents.3.host.1.0"
    event_file(deep, [99])
    os.utime(deep, (3000, 3000))
    assert progress.latest_step_tensorboard(tmp_path) == 33


def test_event_step_of_large_and_missing_steps():
    assert progress.event_step(Event(step=2**40).SerializeToString()) == 2**40
    assert progress.event_step(Event(file_version="brain.Event:2").SerializeToString()) is None


def test_last_step_of_ray_metrics_jsonl(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert progress.last_step_jsonl(path) is None
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 20, 30)) + '{"step": 4')
    assert progress.last_step_jsonl(path) == 30


def test_counter_counts_steps_done_while_watching_including_the_redone_ones():
    p = progress.Progress()
    # 500: what the files show at start (an earlier attempt, the precompile run): a position, no steps of this attempt
    p.observe(None)
    p.observe(500)
    assert "trn_training_steps_total 0.0" in generate_latest(p.registry).decode()  # no first step yet: no hang alert
    for step in (500, 520, 480, None, 530):  # 480: restarted from the checkpoint at 480, 20 steps redone
        p.observe(step)
    assert "trn_training_steps_total 70.0" in generate_latest(p.registry).decode()  # 20 + 50


def test_served_over_http(tmp_path):
    """The sidecar's endpoint, as Prometheus scrapes it (a thread, bounded by the test)."""
    from prometheus_client import start_http_server
    p = progress.Progress()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=p.registry)
    try:
        p.observe(0)
        p.observe(7)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert "trn_training_steps_total 7.0" in body
    finally:
        server.shutdown()
        thread.join(timeout=5)
