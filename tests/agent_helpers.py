"""Agents shipped as code in a ConfigMap (infra/agent_code.py): run them the way their pod does."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def import_with_standard_library_only(tmp_path: Path, code: tuple[dict, list[dict]], module: str) -> subprocess.CompletedProcess:
    """Lay out the ConfigMap's files as its volume items put them and import `module` with `python -S -I`
    (no site-packages), as in an image where nothing of ours is installed."""
    cm, items = code
    for item in items:
        (tmp_path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / item["path"]).write_text(cm["data"][item["key"]])
    return subprocess.run([sys.executable, "-S", "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import {module}"],
                          capture_output=True, text=True, timeout=60)
