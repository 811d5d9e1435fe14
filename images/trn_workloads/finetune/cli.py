"""`python -m trn_workloads.finetune --config run.json`: one finetuning run from a JSON/YAML config.

Exit status: 0 done; 2 the config or the data is bad (nothing was written); 1 anything else.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from trn_workloads.finetune.config import ConfigError, load_config
from trn_workloads.finetune.records import BadRecordsError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trn_workloads.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="run config (.json, .yaml or .yml)")
    parser.add_argument("--check", action="store_true",
                        help="validate the config and print it resolved with defaults; do not run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0

    from trn_workloads.finetune.run import run

    try:
        result = run(cfg)
    except (ConfigError, BadRecordsError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {"run_dir": str(result.run_dir), "uploaded_to": result.uploaded_to,
               "final_loss": result.losses[-1] if result.losses else None}
    if result.eval_report:
        summary["eval"] = {k: result.eval_report[k] for k in ("finetuned", "base") if k in result.eval_report}
    print(json.dumps(summary, indent=2))
    return 0
