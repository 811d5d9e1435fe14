"""Rehearse a workload stack: run its pods on this machine as the cluster would start them.

    trnctl rehearse <workload-stack> [--keep] [--only STEP] [--step-timeout S]

Renders the stack with its rehearsal overlay (trnctl/rehearse/overlay.py) and the platform stack it names,
then runs every pod of every step in apply order, each in its own bubblewrap sandbox on its own 127.0.x.y
(trnctl/rehearse/runner.py), and prints per pod: started, ready, exit status, and the log tail of a failure.
Workload stacks it references (llm-serve's finetuneStack) are rehearsed first, on the same shared volume.

Exit codes: 0 every pod did what its step awaits, 1 a pod failed (the line names the pod and step),
2 bad input (an unknown stack, a render that fails, a pod kind or volume it cannot run).
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from trnctl import exitcodes

REFERENCE_SUFFIX = "Stack"


def referenced_workload_stacks(stack: str) -> list[str]:
    """Workload stacks this stack's config names (keys ending in `Stack` other than platformStack)."""
    from trnctl.render import REPO_ROOT, _referenced_stacks, config_bag
    bag, _ = config_bag(REPO_ROOT / "workloads", stack)
    refs = _referenced_stacks("trn-workloads", bag)
    return [r.rsplit("/", 1)[-1] for r in refs if r.split("/")[1] == "trn-workloads"]


def rehearse(stack: str, *, keep: bool = False, only: str | None = None, step_timeout: float = 300.0,
             shared_dir: Path | None = None, out=print):
    """Rehearse `stack` (after the workload stacks it references, sharing one volume). Returns the results."""
    import shutil
    import tempfile

    from trnctl.rehearse import overlay
    from trnctl.rehearse.runner import Rehearsal

    results = []
    shared_tmp = None
    if shared_dir is None:
        shared_tmp = shared_dir = Path(tempfile.mkdtemp(prefix="trn-rehearse-shared-"))
    try:
        chain = [] if only else referenced_workload_stacks(stack)
        for name in [*chain, stack]:
            loaded = overlay.load(name)
            with Rehearsal(loaded, shared_dir=shared_dir, keep=keep, step_timeout=step_timeout) as r:
                result = r.run(only=only if name == stack else None)
                out(result.report())
                if keep:
                    out(f"kept {r.work} (shared volume {shared_dir})")
            results.append(result)
            if not result.ok:
                break
    finally:
        if shared_tmp is not None and not keep:
            shutil.rmtree(shared_tmp, ignore_errors=True)
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stack", help="workload stack, e.g. compile-usw2 (workloads/Pulumi.<stack>.yaml)")
    parser.add_argument("--keep", action="store_true", help="keep the pods' directories and the shared volume")
    parser.add_argument("--only", metavar="STEP", help="run one step only: its number or an object's name")
    parser.add_argument("--step-timeout", type=float, default=300.0, help="time bound of each step, seconds")


def run(args: argparse.Namespace) -> int:
    from infra.config import ConfigError
    from trnctl.render import REPO_ROOT, RenderError
    from trnctl.rehearse.runner import RehearsalError
    from trnctl.rehearse.sandbox import SandboxError
    from workloads.errors import WorkloadConfigError

    if not (REPO_ROOT / "workloads" / f"Pulumi.{args.stack}.yaml").exists():
        from stackfiles import stacks_in
        return exitcodes.bad_input(f"rehearse: {args.stack!r} is not a workload stack (no workloads/Pulumi."
                                   f"{args.stack}.yaml); workload stacks: {', '.join(stacks_in(REPO_ROOT / 'workloads'))}")

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)  # Ctrl-C is KeyboardInterrupt already; both unwind the cleanup
    try:
        results = rehearse(args.stack, keep=args.keep, only=args.only, step_timeout=args.step_timeout)
    except (ConfigError, RenderError, WorkloadConfigError) as exc:
        problems = getattr(exc, "problems", None) or str(exc).strip("'\"").splitlines()
        text = "; ".join(p.strip() for p in problems if p.strip()) or repr(exc)
        return exitcodes.bad_input(f"rehearse {args.stack}: the render fails: {text}")
    except (RehearsalError, SandboxError) as exc:
        return exitcodes.bad_input(f"rehearse {args.stack}: {exc}")
    except KeyboardInterrupt:
        print("rehearse: interrupted; every pod stopped and its directories removed", file=sys.stderr)
        return 130
    return exitcodes.OK if all(r.ok for r in results) else exitcodes.FINDINGS
