"""Render a stack offline: run its Pulumi program under the mock runtime, write what it
would create, validate every Kubernetes object and every provider input (against the pinned
SDKs' schemas, trnctl/provider_schema.py), run the policy rules, print a summary.

    python -m trnctl.render <project-dir> <stack> --out <dir>

`<project-dir>` is `.` for the platform and `workloads` for workload stacks. A workload
stack's StackReference to the platform is answered by rendering that platform stack of
this repository first, so the two can never disagree offline.

Writes `<dir>/resources.json`, `<dir>/manifests/*.yaml`, `<dir>/helm/*.yaml` (chart,
version and values of each Helm release), `<dir>/outputs.json`; exits non-zero on an
invalid config, an invalid manifest, a provider input the provider would reject or a
mandatory policy violation.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import runpy
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.config import PROJECT as PLATFORM_PROJECT
from infra.config import load_stack_file
from stackfiles import ConfigError, stack_argument, stack_file, stacks_in
from trnctl import exitcodes

REPO_ROOT = Path(__file__).resolve().parent.parent

# Resource types that are Kubernetes objects the program creates directly (manifests);
# charts and kustomizations are listed under helm/ and resources.json instead.
NOT_MANIFESTS = ("kubernetes:helm.sh/", "kubernetes:yaml/", "kubernetes:kustomize/", "pulumi:providers:")
PLACEHOLDER_SECRET = "render-placeholder-secret"


@dataclass
class RenderResult:
    project: str
    stack: str
    resources: list  # list[RecordedResource]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    manifests: list[tuple[str, dict]] = field(default_factory=list)
    kube_version: str | None = None

    def by_type(self, typ: str) -> list:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name: str):
        matches = [r for r in self.resources if r.type == typ and r.name == name]
        if len(matches) != 1:
            raise KeyError(f"expected one {typ} named {name!r}, found {len(matches)}")
        return matches[0]

    def masked_outputs(self) -> dict[str, Any]:
        from stackfiles.records import SECRET_MASK
        return {k: (SECRET_MASK if k in self.secret_outputs else v) for k, v in self.outputs.items()}


class RenderError(Exception):
    pass


# --------------------------------------------------------------------------- project files


def read_project(project_dir: Path) -> dict[str, Any]:
    path = Path(project_dir) / "Pulumi.yaml"
    if not path.exists():
        raise RenderError(f"{path} not found: <project-dir> must be '.' (platform) or 'workloads'")
    return yaml.safe_load(path.read_text())


def config_bag(project_dir: Path, stack: str) -> tuple[dict[str, str], list[str]]:
    """The stack file as Pulumi hands it to a program: JSON strings for objects, and the
    list of secret keys. Encrypted values cannot be decrypted offline: a placeholder
    stands in, marked secret, so secret handling is exercised for real."""
    from stackfiles import read_stack_bag

    bag: dict[str, str] = {}
    secrets: list[str] = []
    for key, value in read_stack_bag(project_dir, stack).items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            bag[key] = PLACEHOLDER_SECRET
            secrets.append(key)
        elif isinstance(value, str):
            bag[key] = value
        else:
            bag[key] = json.dumps(value)
    return bag, secrets


# --------------------------------------------------------------------------- running


def run_program(project_dir: Path, stack: str, *, stack_references: dict | None = None) -> RenderResult:
    """Run the project's Pulumi program for `stack` under the recording mocks."""
    import pulumi
    from pulumi.runtime import settings as pulumi_settings
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from trnctl.mocks import RecordingMocks, RecordingMonitor

    project_dir = Path(project_dir).resolve()
    project = read_project(project_dir)
    name = project["name"]
    main = project_dir / project.get("main", ".") / "__main__.py"
    bag, secret_keys = config_bag(project_dir, stack)
    region = bag.get("aws:region", "us-west-2")
    if name == PLATFORM_PROJECT:
        # The stack file as the offline tools (cost, preflight, sweep) read it: the program only
        # sees strings and would accept what they refuse (an unquoted kubernetesVersion: 1.34).
        try:
            load_stack_file(project_dir, stack)
        except ConfigError as exc:
            exc.registered_resources = 0  # stopped before the program ran
            raise

    if stack_references is None:
        stack_references = _render_references(project_dir, name, bag, stack)

    # Each program run gets a fresh event loop: the SDK creates futures on the current
    # loop, and a caller may have closed its own (asyncio.run does).
    asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks(region=region, stack_references=stack_references)
    monitor = RecordingMonitor(mocks)
    pulumi_settings.ROOT.set(None)  # a fresh root Stack per program run
    pulumi.runtime.set_mocks(mocks, project=name, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(bag, secret_keys)

    try:
        _sync_await(run_pulumi_func(lambda: runpy.run_path(str(main), run_name="__main__")))
    except Exception as exc:
        # Tests check that bad config stops the program before anything is registered.
        exc.registered_resources = len(monitor.recorded)
        raise

    root = pulumi_settings.get_root_resource()
    outputs, secret_outputs = _resolve_outputs(getattr(root, "outputs", {}) or {})
    # Registrations arrive in whatever order the program's outputs resolve; sorted by URN,
    # every render of the same program and config writes the same bytes.
    recorded = sorted(monitor.recorded, key=lambda r: r.urn)
    result = RenderResult(project=name, stack=stack, resources=recorded, outputs=outputs,
                          secret_outputs=secret_outputs)
    result.kube_version = outputs.get("kubernetesVersion") or _kube_version_from_refs(stack_references)
    result.manifests = extract_manifests(recorded)
    return result


def _resolve_outputs(raw: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    from pulumi import Output
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    values: dict[str, Any] = {}
    secret: set[str] = set()

    async def collect():
        for key, value in raw.items():
            out = Output.from_input(value)
            values[key] = await out.future()
            if await out.is_secret():
                secret.add(key)

    _sync_await(run_pulumi_func(collect))
    return values, secret


def _render_references(project_dir: Path, project: str, bag: dict[str, str], stack_name: str) -> dict[str, dict]:
    """Answer the program's StackReferences by rendering the stacks of this repository they
    name: the platform stack (`platformStack`) and any workload stack a section names under
    a key ending in `Stack` (llm-serve's `llmServe.model.finetuneStack`), which in turn
    renders its own references (platform -> lora-finetune -> llm-serve)."""
    from workloads.errors import WorkloadConfigError

    refs: dict[str, dict] = {}
    for ref, key in _referenced_stacks(project, bag).items():
        org_project, _, stack = ref.rpartition("/")
        if org_project.endswith(f"/{project}") or org_project == project:
            # Another stack of this project: from the same directory when its file is there
            # (tests copy a project to tmp), else from the repository's workload stacks.
            source = project_dir if (project_dir / f"Pulumi.{stack}.yaml").exists() else REPO_ROOT / "workloads"
            if not stack_file(source, stack).exists():
                raise WorkloadConfigError([f"{key}: {ref!r} names workload stack {stack!r}, which does not exist (no "
                                           f"{stack_file(source, stack)}); workload stacks here: "
                                           f"{', '.join(stacks_in(source)) or 'none'}"], stack=stack_name)
            rendered = run_program(source, stack)
        else:
            if not stack_file(REPO_ROOT, stack).exists():
                raise WorkloadConfigError([f"platformStack: platform stack {stack!r} does not exist (no "
                                           f"{stack_file(REPO_ROOT, stack)}); platform stacks here: "
                                           f"{', '.join(stacks_in(REPO_ROOT)) or 'none'}"], stack=stack_name)
            rendered = run_program(REPO_ROOT, stack, stack_references={})
        refs[ref] = {"outputs": rendered.outputs, "secret": sorted(rendered.secret_outputs)}
    return refs


def _referenced_stacks(project: str, bag: dict[str, str]) -> dict[str, str]:
    """Stack references the config names -> the key naming each (for messages about it)."""
    found: dict[str, str] = {}
    if bag.get(f"{project}:platformStack"):
        found[bag[f"{project}:platformStack"]] = "platformStack"

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("Stack") and isinstance(value, str) and value.count("/") == 2:
                    found.setdefault(value, f"{where}.{key}")
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    for key, value in bag.items():
        if key.startswith(f"{project}:") and value[:1] == "{":
            try:
                walk(json.loads(value), key.removeprefix(f"{project}:"))
            except ValueError:
                continue
    return found


def _kube_version_from_refs(refs: dict[str, dict]) -> str | None:
    for data in refs.values():
        if "kubernetesVersion" in data["outputs"]:
            return data["outputs"]["kubernetesVersion"]
    return None


# --------------------------------------------------------------------------- manifests


def extract_manifests(resources: list) -> list[tuple[str, dict]]:
    """Every Kubernetes object as (relative file name, object), secrets masked."""
    from stackfiles.records import mask_secrets

    out = []
    for r in resources:
        if not r.type.startswith("kubernetes:") or r.type.startswith(NOT_MANIFESTS):
            continue
        obj = mask_secrets(r.inputs)
        obj = {k: v for k, v in obj.items() if v is not None}
        if obj.get("kind") == "Secret":
            obj = _mask_secret_data(obj, r.state)
        kind = obj.get("kind", r.type.rsplit(":", 1)[-1])
        meta = obj.get("metadata") or {}
        ns = meta.get("namespace")
        fname = "-".join(p for p in (ns, kind.lower(), meta.get("name") or r.name) if p)
        out.append((f"{_safe(fname)}.yaml", obj))
    return out


def _mask_secret_data(obj: dict, state: dict) -> dict:
    """Keep a Secret's keys (so it validates and reviews) and mask every value; Pulumi may
    have masked the whole map already, the unmasked state still names the keys."""
    from stackfiles.records import SECRET_MASK
    obj = dict(obj)
    for key in ("data", "stringData"):
        if key in obj:
            names = state.get(key) if isinstance(state.get(key), dict) else obj[key]
            obj[key] = {k: SECRET_MASK for k in (names if isinstance(names, dict) else {"value": None})}
    return obj


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


RENDER_FILES = ("resources.json", "outputs.json")
RENDER_DIRS = ("manifests", "helm")


def clear_outputs(out_dir: Path) -> None:
    """Remove what an earlier render wrote to `out_dir` (only those files: `--out .` is safe),
    so a failed render never leaves another render's files looking current."""
    out_dir = Path(out_dir)
    for name in RENDER_DIRS:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in RENDER_FILES:
        (out_dir / name).unlink(missing_ok=True)


def write_outputs(result: RenderResult, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    clear_outputs(out_dir)
    (out_dir / "manifests").mkdir(parents=True, exist_ok=True)
    (out_dir / "helm").mkdir(parents=True, exist_ok=True)
    (out_dir / "resources.json").write_text(json.dumps([r.to_json() for r in result.resources], indent=2, default=str))
    (out_dir / "outputs.json").write_text(json.dumps(result.masked_outputs(), indent=2, default=str))
    for fname, obj in result.manifests:
        (out_dir / "manifests" / fname).write_text(yaml.safe_dump(obj, sort_keys=False))
    from stackfiles.records import mask_secrets
    for r in result.resources:
        if r.type == "kubernetes:helm.sh/v3:Release":
            i = mask_secrets(r.inputs)
            doc = {"release": i.get("name", r.name), "namespace": i.get("namespace"), "chart": i.get("chart"),
                   "version": i.get("version"), "repository": (i.get("repositoryOpts") or {}).get("repo"),
                   "values": i.get("values", {})}
            (out_dir / "helm" / f"{_safe(r.name)}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


# --------------------------------------------------------------------------- checks


def validate(result: RenderResult):
    from trnctl.validation import validate_objects
    return validate_objects([(f"manifests/{f}", o) for f, o in result.manifests], result.kube_version or "1.34")


def policy_violations(result: RenderResult) -> list:
    from policy.rules import evaluate, resources_from_records
    return evaluate(resources_from_records([r.to_json() for r in result.resources]), result.masked_outputs())


def summary(result: RenderResult) -> str:
    counts = collections.Counter(r.type for r in result.resources)
    lines = [f"{result.project}/{result.stack}: {len(result.resources)} resources, {len(result.manifests)} Kubernetes objects"]
    for typ, n in sorted(counts.items()):
        lines.append(f"  {n:3d}  {typ}")
    pools = [r for r in result.resources if r.type == "kubernetes:karpenter.sh/v1:NodePool"]
    if pools:
        lines.append("node pools:")
        for r in pools:
            spec = r.inputs["spec"]
            reqs = {q["key"]: q["values"] for q in spec["template"]["spec"]["requirements"] if "values" in q}
            types = ",".join(reqs.get("node.kubernetes.io/instance-type", []))
            zones = ",".join(reqs.get("topology.k8s.aws/zone-id", [])) or "any"
            lines.append(f"  {r.inputs['metadata']['name']:<14} {types:<40} AZ IDs {zones:<19} limits {spec.get('limits')}")
    from infra.monitoring import summary_lines  # releases, rule counts, monitors, dashboards

    lines += summary_lines(result.resources)
    return "\n".join(lines)


def render_stack(project_dir: Path, stack: str, out_dir: Path, *, check: bool = True) -> tuple[RenderResult, list[str]]:
    """Render, write and check a stack. Returns the result and a list of blocking problems.
    An earlier render in `out_dir` is removed first: on an error nothing stale is left."""
    clear_outputs(Path(out_dir))
    result = run_program(Path(project_dir), stack)
    write_outputs(result, Path(out_dir))
    problems: list[str] = []
    if check:
        report = validate(result)
        print(report.summary())
        problems += [f"invalid manifest {i.source} ({i.kind} {i.name}) at {i.path}: {i.message}" for i in report.issues]
        from trnctl import provider_schema
        schema_issues = provider_schema.check_resources(result.resources)
        print(provider_schema.summary(result.resources, schema_issues))
        problems += [f"provider schema: {i}" for i in schema_issues]
        violations = policy_violations(result)
        from policy.rules import format_report
        from policy.rules.base import RULES
        mandatory = sum(v.severity == "mandatory" for v in violations)
        print(f"policy rules (policy/rules): {len(RULES)} rules over {len(result.resources)} resources, "
              f"{mandatory} mandatory and {len(violations) - mandatory} advisory violation(s)")
        if violations:
            print(format_report(violations))
        problems += [f"policy {v.rule} ({v.severity}) on {v.resource}: {v.message}" for v in violations
                     if v.severity == "mandatory"]
    return result, problems


def find_project_dir(stack: str, root: Path = REPO_ROOT) -> Path:
    """The project a stack file belongs to: the platform (repository root) or `workloads/`."""
    candidates = [d for d in (root, root / "workloads") if (d / f"Pulumi.{stack}.yaml").exists()]
    if len(candidates) == 1:
        return candidates[0]
    stacks = sorted(stacks_in(root) + stacks_in(root / "workloads"))
    raise RenderError(f"stack {stack!r}: no Pulumi.{stack}.yaml in {root} or {root / 'workloads'}; "
                      f"stacks here: {', '.join(stacks)}; or pass --project-dir")


def resolve_stack(value: str, project_dir: Path | None) -> tuple[str, Path]:
    """The stack name and its project from what the user typed: a name (the project is found
    from it) or a stack file path such as Pulumi.dev-usw2.yaml (the project is its folder)."""
    stack, folder = stack_argument(value)
    if project_dir is None and folder is not None:
        if not stack_file(folder, stack).exists():
            raise RenderError(f"{value}: no such stack file; stacks here: {', '.join(stack_listing())}")
        project_dir = folder
    return stack, Path(project_dir) if project_dir else find_project_dir(stack)


def stack_listing(root: Path = REPO_ROOT) -> list[str]:
    """Every stack of the repository, as `trnctl render` takes them."""
    return stacks_in(root) + stacks_in(root / "workloads")


def list_stacks(command: str, root: Path = REPO_ROOT) -> int:
    """A bare `trnctl <command>`: the stacks it could take, and exit 2 (no stack named)."""
    print(f"platform stacks (Pulumi.<stack>.yaml): {', '.join(stacks_in(root)) or 'none'}")
    print(f"workload stacks (workloads/Pulumi.<stack>.yaml): {', '.join(stacks_in(root / 'workloads')) or 'none'}")
    return exitcodes.bad_input(RenderError(f"name a stack, e.g. trnctl {command} dev-usw2 (or its file, Pulumi.dev-usw2.yaml)"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stack", nargs="?", help="stack name or its file, e.g. dev-usw2, Pulumi.dev-usw2.yaml or "
                                                 "compile-usw2; without it, the stacks are listed")
    parser.add_argument("--project-dir", type=Path, default=None,
                        help="the stack's project: '.' (platform) or 'workloads'; found from the stack name by default")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default build/render/<stack>; with --all, the folder of one per stack)")
    parser.add_argument("--no-check", action="store_true", help="write files without validation and policy checks")
    parser.add_argument("--all", action="store_true",
                        help="every platform and workload stack of the repository, going on after a failure, "
                             "then a table (stack, resources, findings, placeholders, $/h)")


@dataclass
class StackOutcome:
    """One stack of `trnctl render --all`: what its render found (the summary table's row)."""
    stack: str
    code: int
    resources: int | None = None
    findings: int | None = None
    placeholders: int | None = None
    per_hour: float | None = None
    seconds: float = 0.0
    note: str = ""


def render_and_report(project_dir: Path, stack: str, out: Path, *, check: bool) -> StackOutcome:
    """Render one stack and print what `trnctl render <stack>` prints; the outcome for --all."""
    from stackfiles.placeholders import find_placeholders

    try:
        result, problems = render_stack(project_dir, stack, out, check=check)
    except ConfigError as exc:
        return StackOutcome(stack, exitcodes.bad_input(exc), note="bad input")
    print(summary(result))
    print(placeholder_summary(project_dir, stack))
    estimate = cost_summary(result, project_dir)
    if estimate:
        print(estimate)
    print(f"wrote {out}/resources.json, {out}/outputs.json, {len(result.manifests)} manifests")
    if problems:
        print(f"\n{len(problems)} blocking problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
    from trnctl import cost

    return StackOutcome(stack, exitcodes.FINDINGS if problems else exitcodes.OK, len(result.resources), len(problems),
                        len(find_placeholders(Path(project_dir), stack)), cost.hourly(result, Path(project_dir)),
                        note="findings" if problems else "ok")


def render_all(out_root: Path, *, check: bool, root: Path = REPO_ROOT) -> int:
    """Every stack, one after another, with a `[i/n] stack ...` header; a failure is recorded and
    the next stack rendered; the exit code is the worst of them (0 only when all are clean)."""
    import time
    import traceback

    stacks = [(root, s) for s in stacks_in(root)] + [(root / "workloads", s) for s in stacks_in(root / "workloads")]
    outcomes = []
    for i, (project_dir, stack) in enumerate(stacks, 1):
        print(f"\n[{i}/{len(stacks)}] {stack} ...", flush=True)
        started = time.monotonic()
        try:
            outcome = render_and_report(project_dir, stack, Path(out_root) / stack, check=check)
        except Exception:  # noqa: BLE001 - a crash of one stack must not hide the others
            traceback.print_exc()
            outcome = StackOutcome(stack, exitcodes.FINDINGS, note="crashed (traceback above)")
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)
        sys.stdout.flush()
    print("\n" + render_all_table(outcomes))
    failed = [o.stack for o in outcomes if o.code != exitcodes.OK]
    print(f"{len(outcomes) - len(failed)} of {len(outcomes)} stacks rendered clean"
          + (f"; not clean: {', '.join(failed)}" if failed else ""))
    return max((o.code for o in outcomes), default=exitcodes.OK)


def render_all_table(outcomes: list[StackOutcome]) -> str:
    def cell(value, fmt="{}"):
        return "-" if value is None else fmt.format(value)

    head = f"{'stack':<22} {'resources':>9} {'findings':>8} {'placeholders':>12} {'$/h':>9} {'seconds':>7}  result"
    rows = [f"{o.stack:<22} {cell(o.resources):>9} {cell(o.findings):>8} {cell(o.placeholders):>12} "
            f"{cell(o.per_hour, '{:,.2f}'):>9} {o.seconds:>7.1f}  {o.note}" for o in outcomes]
    return "\n".join([head, "-" * len(head), *rows])


def run(args: argparse.Namespace) -> int:
    from infra.config import ConfigError
    if args.all:
        if args.stack:
            return exitcodes.bad_input(RenderError(f"--all renders every stack: leave out {args.stack!r}"))
        return render_all(args.out or Path("build") / "render", check=not args.no_check)
    if not args.stack:
        return list_stacks("render")
    try:
        stack, project_dir = resolve_stack(args.stack, args.project_dir)
    except (ConfigError, RenderError) as exc:
        return exitcodes.bad_input(exc)
    out = args.out or Path("build") / "render" / stack
    return render_and_report(project_dir, stack, out, check=not args.no_check).code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trnctl render", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def placeholder_summary(project_dir: Path, stack: str) -> str:
    """Example values of the stack file that `pulumi up` would use as written; preflight fails on them."""
    from stackfiles.placeholders import find_placeholders

    found = find_placeholders(Path(project_dir), stack)
    if not found:
        return "placeholders: none (no example value left in the stack file)"
    lines = [f"placeholders: {len(found)} example value(s) that `pulumi up` would use as written "
             f"(the render passes; `trnctl preflight` fails on them):"]
    return "\n".join(lines + [f"  - {p.line()}" for p in found])


def cost_summary(result: RenderResult, project_dir: Path) -> str | None:
    try:
        from trnctl import cost
    except ImportError:
        return None
    try:
        return cost.summary_for_render(result, Path(project_dir))
    except cost.PriceError as err:  # a type without a list price (Trn3): the render stands, the estimate does not
        return f"cost: not estimated: {err}"

