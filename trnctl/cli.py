"""trnctl: the offline and AWS-side tools around the two Pulumi programs.

    trnctl render    <stack>  run a stack under Pulumi's mock runtime, write and validate what it creates
    trnctl validate  <path>   validate Kubernetes manifests (built-in kinds strict, CRDs with CEL rules)
    trnctl preflight <stack>  read-only AWS checks before `pulumi up` (capacity, quotas, reservations, images)
    trnctl sweep     <stack>  list (and with --yes delete) what a failed `pulumi destroy` left behind
    trnctl cost      <stack>  the hourly cost estimate of a platform or workload stack
    trnctl rehearse  <stack>  run a workload stack's pods here, each in its own sandbox, in apply order

Exit codes: 0 ok, 1 findings (invalid manifests, policy violations, blocking checks,
leftovers a sweep could not delete), 2 bad input (the message names the file and key, the allowed values, the fix).
"""
from __future__ import annotations

import argparse
import sys

from trnctl import cost, preflight, rehearse, render, sweep, validation

COMMANDS = {
    "render": (render, "render a stack offline, validate every manifest, run the policy rules"),
    "validate": (validation, "validate a folder or file of Kubernetes manifests"),
    "preflight": (preflight, "read-only AWS checks before `pulumi up`"),
    "sweep": (sweep, "clean up what a failed `pulumi destroy` left behind (dry run unless --yes)"),
    "cost": (cost, "hourly cost estimate of a platform or workload stack"),
    "rehearse": (rehearse, "run a workload stack's pods on this machine as the cluster would start them"),
}


def version() -> str:
    """This checkout's version (pyproject.toml) and the Neuron SDK pins its images use."""
    import tomllib
    from pathlib import Path

    from infra import versions

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    tracks = ", ".join(f"{t} {versions.neuron_track(t)['neuron_sdk']}" for t in versions.NEURON_TRACKS)
    return f"trnctl {project['version']} ({project['name']}; Neuron SDK tracks: {tracks})"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="trnctl", description=__doc__.split("\n\n")[0],
                                  epilog="exit codes: 0 ok, 1 findings, 2 bad input",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=version())
    sub = top.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).split("\n\n")[0],
                           epilog="exit codes: 0 ok, 1 findings, 2 bad input")
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
