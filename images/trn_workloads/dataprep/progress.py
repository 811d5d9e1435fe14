"""Progress of a run: documents, tokens, tokens/s, input bytes done of the total, percent, ETA.

On a terminal: one bar redrawn in place on stderr. Otherwise (a Kubernetes Job's log):
a `progress:` log line every `interval_s` seconds. Always a `done:` line at the end.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

log = logging.getLogger("trn_workloads.dataprep.pipeline")

BAR_WIDTH = 28
BAR_REDRAW_S = 0.5


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, total_bytes: int, interval_s: float, *, stream: TextIO | None = None,
                 tty: bool | None = None) -> None:
        self.total_bytes = max(total_bytes, 0)
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.start = self.last = time.monotonic()

    def fields(self, documents: int, tokens: int, input_bytes: int) -> dict[str, str]:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        fraction = min(input_bytes / self.total_bytes, 1.0) if self.total_bytes else 0.0
        rate = input_bytes / elapsed
        eta = (self.total_bytes - input_bytes) / rate if rate > 0 and self.total_bytes else None
        return {"documents": str(documents), "tokens": str(tokens), "tokens/s": f"{tokens / elapsed:.0f}",
                "bytes": f"{input_bytes}/{self.total_bytes}", "percent": f"{100 * fraction:.1f}",
                "eta": _eta(max(eta, 0.0) if eta is not None else None)}

    def update(self, documents: int, tokens: int, input_bytes: int, bad_records: int) -> None:
        now = time.monotonic()
        if now - self.last < (BAR_REDRAW_S if self.tty else self.interval_s):
            return
        self.last = now
        f = self.fields(documents, tokens, input_bytes)
        if self.tty:
            done = int(BAR_WIDTH * float(f["percent"]) / 100)
            self.stream.write(f"\r[{'#' * done}{'.' * (BAR_WIDTH - done)}] {f['percent']:>5}% "
                              f"{documents:,} docs {tokens:,} tokens {float(f['tokens/s']):,.0f} tok/s "
                              f"ETA {f['eta']}  ")
            self.stream.flush()
        else:
            log.info("progress: documents=%s tokens=%s tokens/s=%s bytes=%s percent=%s eta=%s bad_records=%d",
                     f["documents"], f["tokens"], f["tokens/s"], f["bytes"], f["percent"], f["eta"], bad_records)

    def done(self, documents: int, tokens: int, input_bytes: int, bad_records: int) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
        f = self.fields(documents, tokens, input_bytes)
        log.info("done: documents=%s tokens=%s tokens/s=%s bytes=%s seconds=%.1f bad_records=%d",
                 f["documents"], f["tokens"], f["tokens/s"], f["bytes"], time.monotonic() - self.start, bad_records)
