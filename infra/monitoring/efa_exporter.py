"""EFA counters for Prometheus: runs next to neuron-monitor on every Neuron node.

node-exporter's infiniband collector reads the standard InfiniBand port counters, which EFA
devices do not provide: EFA publishes its statistics as `hw_counters` files under
/sys/class/infiniband/<device>/ports/<port>/ (the names the CloudWatch agent turns into its
node_efa_* metrics: amazon-cloudwatch-agent translator/translate/otel/exporter/awsemf/
kubernetes.go, commit ab55b8daa204e95c42c0267ee5aa49ec3b3a7317). This script reads those files
on every scrape and serves them as counters `efa_<name>_total{device, port}`. It runs in the
neuron-monitor image (Python 3 and prometheus_client, which neuron-monitor-prometheus.py needs)
and is mounted from a ConfigMap; the platform's tests run it against a generated sysfs tree.

    python3 efa_exporter.py --port 8001 --sysfs /host/sys
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY, CounterMetricFamily

# hw_counters this exporter publishes (EFA driver port statistics).
COUNTERS = {
    "rx_bytes": "bytes received",
    "tx_bytes": "bytes sent",
    "rx_drops": "received packets dropped",
    "rdma_read_bytes": "bytes read by RDMA read operations",
    "rdma_write_bytes": "bytes written by RDMA write operations",
    "rdma_write_recv_bytes": "bytes received by RDMA write operations",
    "retrans_bytes": "bytes retransmitted",
    "retrans_pkts": "packets retransmitted",
    "retrans_timeout_events": "retransmission timeouts",
    "impaired_remote_conn_events": "connections to a remote peer marked impaired",
    "unresponsive_remote_events": "remote peers that stopped responding",
}


def read_counters(sysfs: Path) -> dict[tuple[str, str], dict[str, int]]:
    """(device, port) -> {counter: value} for every EFA port found under `sysfs`."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    for hw in sorted((Path(sysfs) / "class" / "infiniband").glob("*/ports/*/hw_counters")):
        device, port = hw.parent.parent.parent.name, hw.parent.name
        values = {}
        for name in COUNTERS:
            try:
                values[name] = int((hw / name).read_text().strip())
            except (OSError, ValueError):
                continue  # a counter this driver version does not have
        if values:
            found[(device, port)] = values
    return found


class EfaCollector:
    def __init__(self, sysfs: Path):
        self.sysfs = Path(sysfs)

    def collect(self):
        ports = read_counters(self.sysfs)
        for name, help_text in COUNTERS.items():
            family = CounterMetricFamily(f"efa_{name}", f"EFA {help_text} (hw_counters/{name})",
                                         labels=["device", "port"])
            for (device, port), values in ports.items():
                if name in values:
                    family.add_metric([device, port], values[name])
            yield family


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--address", default="0.0.0.0")  # noqa: S104 - scraped by Prometheus over the pod network
    parser.add_argument("--sysfs", type=Path, default=Path("/sys"))
    args = parser.parse_args(argv)
    REGISTRY.register(EfaCollector(args.sysfs))
    start_http_server(args.port, addr=args.address)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
