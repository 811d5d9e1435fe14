"""Offline validation of every Kubernetes object the Pulumi programs create.

    trnctl validate DIR [--kube-version 1.34] [--allow-unknown-kinds]

When DIR holds render directories (`trnctl render` output with resources.json, e.g. build/render
after `make render-all`), the cluster model (trnctl/cluster) also runs over each platform render
and the workload renders that reference it.

Two sources of truth, both bundled so that a clone validates with no cluster:

* built-in kinds (Deployment, StorageClass, ...) use the Kubernetes OpenAPI schemas that the
  `kubernetes-validate` package ships for each minor version, in strict mode (unknown fields
  are errors, as with `kubectl --validate=strict`); their metadata gets the API server's name
  and label syntax checks, which those schemas leave out;
* custom resources (Karpenter, MPIJob, Ray, Volcano, PyTorchJob) use the CRD-derived JSON
  schemas in `infra/schemas/` (see the README there), after doing what the API server does on
  create: drop `null` map values unless `nullable`, fill schema `default`s, then check the
  structure, list-type `map` key uniqueness, and the CEL `x-kubernetes-validations` rules
  (rules that read `oldSelf` only apply to updates and are skipped).

An object of a kind with neither schema is an issue (we validate everything we create) unless
`allow_unknown_kinds`; a known custom kind at an apiVersion we have no schema for (e.g. the
removed karpenter.sh/v1beta1) is always an issue. Compiled schema validators and CEL programs
are cached per process, so re-validating a render costs milliseconds per object.
"""
from __future__ import annotations

import argparse
import copy
import difflib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "infra" / "schemas"
MANIFEST_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ValidationIssue:
    source: str          # file (and line of the document) or object id
    kind: str            # "karpenter.sh/v1/NodePool"
    name: str            # "namespace/name", or "name" for cluster-scoped objects
    path: str            # "spec.template.spec.requirements[0].operator"
    message: str
    rule: str | None = None  # the CEL rule text when a CEL rule failed

    def __str__(self) -> str:
        text = f"{self.source}: {self.kind} {self.name}: {self.path}: {self.message}"
        return text + (f"  [CEL: {self.rule}]" if self.rule else "")


@dataclass
class ValidationReport:
    checked: dict[str, int] = field(default_factory=dict)   # objects validated, per kind
    issues: list[ValidationIssue] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)        # kinds with no schema
    cel_evaluated: int = 0
    cel_transition_skipped: int = 0                         # rules reading oldSelf (updates only)
    kube_version: str = ""                                  # the minor version validated against

    @property
    def ok(self) -> bool:
        return not self.issues

    def summary(self) -> str:
        objects = sum(self.checked.values())
        bad_objects = len({(i.source, i.kind, i.name) for i in self.issues})
        line = (f"validation (Kubernetes {self.kube_version}): {objects} objects of {len(self.checked)} kinds, "
                f"{len(self.issues)} issue(s) in {bad_objects} object(s); CEL rules: {self.cel_evaluated} "
                f"evaluated, {self.cel_transition_skipped} transition rules (oldSelf) skipped")
        if self.skipped:
            line += f"\n  no schema (not validated): {', '.join(self.skipped)}"
        return line


class KubeVersionError(ValueError):
    pass


class SchemaSetError(ValueError):
    """The schema folder itself is broken (duplicate kinds, missing group/version/kind)."""


# --------------------------------------------------------------------------- Kubernetes version


@lru_cache(maxsize=1)
def supported_kube_versions() -> tuple[str, ...]:
    """Minor versions that kubernetes-validate bundles schemas for, oldest first."""
    from kubernetes_validate.utils import all_versions
    return tuple(dict.fromkeys(_minor_of(v) for v in all_versions()))


def _minor_of(version: str) -> str:
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+].*)?", version.strip())
    if not match:
        raise KubeVersionError(f"kube_version {version!r} is not a Kubernetes version like '1.33' or 'v1.33.2'")
    return f"{match.group(1)}.{match.group(2)}"


def kube_minor(version: str) -> str:
    """'v1.33.2' -> '1.33'; a clear error when no bundled schema set matches exactly (a
    silent fallback to an older set would accept fields the cluster rejects, or vice versa)."""
    minor = _minor_of(str(version))
    supported = supported_kube_versions()
    if minor not in supported:
        raise KubeVersionError(f"kube_version {version!r}: no bundled Kubernetes schemas for {minor}; "
                               f"supported: {', '.join(supported)} (kubernetes-validate)")
    return minor


# --------------------------------------------------------------------------- schemas


def _split_api_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def kind_id(api_version: str, kind: str) -> str:
    """'karpenter.sh/v1/NodePool', 'v1/ConfigMap', 'apps/v1/Deployment'."""
    return f"{api_version}/{kind}"


def _list_map_keys(validator, keys, instance, schema):
    """x-kubernetes-list-type: map -> list entries must be unique by their key fields."""
    import jsonschema
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(instance, list):
        return
    first_index: dict[tuple, int] = {}
    for i, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in first_index:
            named = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
            yield jsonschema.ValidationError(
                f"duplicate entry [{i}] with {named} (same as [{first_index[key]}]): "
                f"entries must be unique by {list(keys)}", path=[i])
        else:
            first_index[key] = i


@lru_cache(maxsize=1)
def _crd_validator_class():
    from jsonschema import Draft7Validator, validators
    return validators.extend(Draft7Validator, {"x-kubernetes-list-map-keys": _list_map_keys})


@dataclass(frozen=True)
class CrdSchema:
    file: str
    schema: dict
    validator: Any  # a compiled Draft 7 validator (with the list-map-keys keyword)


@lru_cache(maxsize=None)
def crd_schemas(schema_dir: Path = SCHEMA_DIR) -> dict[tuple[str, str], CrdSchema]:
    """(apiVersion, kind) -> schema, for every *.json in `schema_dir`."""
    table: dict[tuple[str, str], CrdSchema] = {}
    for path in sorted(Path(schema_dir).glob("*.json")):
        schema = json.loads(path.read_text())
        gvks = schema.get("x-kubernetes-group-version-kind")
        if not gvks:
            raise SchemaSetError(f"{path}: no x-kubernetes-group-version-kind")
        for gvk in gvks:
            api_version = f"{gvk['group']}/{gvk['version']}" if gvk.get("group") else gvk["version"]
            key = (api_version, gvk["kind"])
            if key in table:
                raise SchemaSetError(f"{path}: {kind_id(*key)} is also defined by {table[key].file}")
            table[key] = CrdSchema(path.name, schema, _crd_validator_class()(schema))
    return table


def _builtin_schema_dir(minor: str) -> Path:
    import kubernetes_validate
    return Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{minor}.0-local-strict"


_API_VERSION = re.compile(r"([a-z0-9.-]+/)?v[0-9a-z]+")
_KIND = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def _builtin_file_name(api_version: str, kind: str) -> str:
    # kubernetes-validate's naming: apps/v1 Deployment -> deployment-apps-v1.json,
    # v1 ConfigMap -> configmap-v1.json, rbac.authorization.k8s.io/v1 Role -> role-rbac-v1.json
    group, version = _split_api_version(api_version)
    short_group = group.split(".")[0]
    return f"{kind.lower()}-{short_group}-{version}.json" if group else f"{kind.lower()}-{version}.json"


def _declares_kind(schema: dict, api_version: str, kind: str) -> bool:
    # The file name drops the group's domain (ray.io/v1 -> "ray-v1"), so a custom group could
    # collide with a built-in one: only the schema's own group/version/kind is proof.
    group, version = _split_api_version(api_version)
    return any(g.get("group", "") == group and g.get("version") == version and g.get("kind") == kind
               for g in schema.get("x-kubernetes-group-version-kind", []))


@lru_cache(maxsize=None)
def _builtin_registry(minor: str):
    from referencing import Registry, Resource
    definitions = json.loads((_builtin_schema_dir(minor) / "_definitions.json").read_text())
    return Resource.from_contents(definitions) @ Registry()


@lru_cache(maxsize=None)
def builtin_validator(minor: str, api_version: str, kind: str):
    """A compiled strict validator for a built-in kind of Kubernetes `minor`, or None."""
    from jsonschema import Draft202012Validator
    from referencing import Resource
    if not (_API_VERSION.fullmatch(api_version) and _KIND.fullmatch(kind)):
        return None  # nothing that could name a file outside the schema folder
    path = _builtin_schema_dir(minor) / _builtin_file_name(api_version, kind)
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    if not _declares_kind(schema, api_version, kind):
        return None
    registry = Resource.from_contents(schema) @ _builtin_registry(minor)
    return Draft202012Validator(schema, registry=registry)


@lru_cache(maxsize=None)
def _builtin_api_versions(minor: str, kind: str) -> tuple[str, ...]:
    """Every apiVersion under which Kubernetes `minor` serves a built-in `kind`."""
    if not _KIND.fullmatch(kind):
        return ()
    found = []
    for path in _builtin_schema_dir(minor).glob(f"{kind.lower()}-*.json"):
        for gvk in json.loads(path.read_text()).get("x-kubernetes-group-version-kind", []):
            if gvk.get("kind") == kind:
                found.append(f"{gvk['group']}/{gvk['version']}" if gvk.get("group") else gvk["version"])
    return tuple(sorted(set(found)))


# --------------------------------------------------------------------------- create semantics


def prune_nulls_and_default(obj: Any, schema: Any) -> Any:
    """What the API server does to a custom resource before validating it: drop map entries
    whose value is null (unless the field is `nullable`), then fill missing fields that have a
    schema `default`, recursively (array items and map values included). Returns a new object."""
    if not isinstance(schema, dict):
        schema = {}
    if isinstance(obj, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        extra = extra if isinstance(extra, dict) else {}
        out = {k: v for k, v in obj.items() if v is not None or props.get(k, extra).get("nullable")}
        for key, sub in props.items():
            if key not in out and isinstance(sub, dict) and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        return {k: prune_nulls_and_default(v, props.get(k, extra)) for k, v in out.items()}
    if isinstance(obj, list):
        items = schema.get("items")
        return [prune_nulls_and_default(v, items) for v in obj]
    return obj


# Name syntax the API server enforces on built-in kinds (their OpenAPI schemas do not say).
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
QUALIFIED_NAME = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                            r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")

# kind -> (rule name, pattern, max length); every other built-in kind: DNS-1123 subdomain.
NAME_RULES = {
    "Namespace": ("a DNS-1123 label", DNS1123_LABEL, 63),
    "Service": ("a DNS-1035 label", DNS1035_LABEL, 63),
    # RBAC names are path segments: "eks:node-manager" is fine
    **{k: ("a path segment (no '/' or '%')", re.compile(r"[^/%]+"), 253)
       for k in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")},
}


def metadata_problems(meta: Any, kind: str) -> list[tuple[str, str]]:
    """(path, message) for ObjectMeta values the API server would reject on a built-in kind."""
    if not isinstance(meta, dict):
        return [("metadata", "metadata must be a mapping with at least a name")]
    problems = []
    name = meta.get("name")
    if name is None and not meta.get("generateName"):
        problems.append(("metadata", "metadata.name is required"))
    elif name is not None:
        what, pattern, max_len = NAME_RULES.get(kind, ("a DNS-1123 subdomain", DNS1123_SUBDOMAIN, 253))
        if not isinstance(name, str) or not pattern.fullmatch(name) or len(name) > max_len:
            problems.append(("metadata.name", f"{name!r} is not a valid {kind} name: must be {what}, "
                                              f"at most {max_len} characters"))
    namespace = meta.get("namespace")
    if namespace is not None and not (isinstance(namespace, str) and DNS1123_LABEL.fullmatch(namespace)):
        problems.append(("metadata.namespace", f"{namespace!r} is not a DNS-1123 label"))
    for field_name, check_value in (("labels", True), ("annotations", False)):
        entries = meta.get(field_name)
        for key, value in (entries.items() if isinstance(entries, dict) else ()):  # else: a schema error
            where = f"metadata.{field_name}.{key}"
            if not QUALIFIED_NAME.fullmatch(str(key)) or len(str(key)) > 317:
                problems.append((where, f"key {key!r} is not a qualified name ([prefix/]name)"))
            # value types are the OpenAPI schema's business; the syntax of label values is not
            if check_value and isinstance(value, str) and (len(value) > 63 or not LABEL_VALUE.fullmatch(value)):
                problems.append((where, f"label value {value!r} is invalid: at most 63 characters, "
                                        "alphanumerics with '-', '_', '.' inside"))
    return problems


# --------------------------------------------------------------------------- CEL rules


def _k8s_cel_functions() -> dict:
    """The Kubernetes CEL library functions the CRD rules use that cel-python lacks."""
    from celpy import celtypes
    String, Int, List = celtypes.StringType, celtypes.IntType, celtypes.ListType

    def split(text, separator, limit=None):
        limit = -1 if limit is None else int(limit)
        if limit == 0:
            return List([])
        parts = str(text).split(str(separator)) if limit < 0 else str(text).split(str(separator), limit - 1)
        return List([String(p) for p in parts])

    def find(text, pattern):  # first match, "" when none
        match = re.search(str(pattern), str(text))
        return String(match.group(0) if match else "")

    def find_all(text, pattern, limit=-1):
        matches = [String(m.group(0)) for m in re.finditer(str(pattern), str(text))]
        return List(matches if int(limit) < 0 else matches[:int(limit)])

    def index_of(text, sub, start=0):
        return Int(str(text).find(str(sub), int(start)))

    def substring(text, start, end=None):
        return String(str(text)[int(start):None if end is None else int(end)])

    return {
        "split": split, "find": find, "findAll": find_all, "indexOf": index_of, "substring": substring,
        "lastIndexOf": lambda text, sub: Int(str(text).rfind(str(sub))),
        "lowerAscii": lambda text: String(str(text).lower()),
        "upperAscii": lambda text: String(str(text).upper()),
        "trim": lambda text: String(str(text).strip()),
        "replace": lambda text, old, new, n=-1: String(str(text).replace(str(old), str(new), int(n))),
        "join": lambda items, sep="": String(str(sep).join(str(x) for x in items)),
    }


@lru_cache(maxsize=None)
def cel_program(rule: str):
    """Compile a CEL rule once per process; raises celpy.CELParseError on bad syntax."""
    import celpy
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=_k8s_cel_functions())


@dataclass(frozen=True)
class CelFailure:
    path: tuple
    rule: str
    message: str
    raised: bool  # the rule errored (e.g. no such key) rather than returning false


def _schemas_with_rules(instance: Any, schema: dict, path: tuple) -> Iterator[tuple[tuple, dict, Any]]:
    """(path, schema node, value) for every present value whose schema has CEL rules."""
    if schema.get("x-kubernetes-validations"):
        yield path, schema, instance
    if isinstance(instance, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = props.get(key, extra)
            if isinstance(sub, dict):
                yield from _schemas_with_rules(value, sub, path + (key,))
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for i, value in enumerate(instance):
            yield from _schemas_with_rules(value, schema["items"], path + (i,))


@lru_cache(maxsize=65536)
def rule_outcome(rule: str, value_json: str) -> str | None:
    """None when `rule` holds for the JSON value, "false" when it does not, else the error
    text. Memoized on the value: rendered objects repeat the same sub-values (requirements,
    selector terms) and cel-python's interpreter costs about a millisecond per evaluation."""
    import celpy
    from celpy import celtypes
    try:
        result = cel_program(rule).evaluate({"self": celpy.json_to_cel(json.loads(value_json))})
    except Exception as exc:  # celpy raises some runtime errors instead of returning them
        result = exc
    if isinstance(result, Exception):
        return str(result.args[0] if result.args else result).splitlines()[0]
    return None if isinstance(result, (bool, celtypes.BoolType)) and bool(result) else "false"


def cel_failures(instance: Any, schema: dict) -> tuple[list[CelFailure], int, int]:
    """Evaluate every CEL rule that applies to `instance` on create.
    Returns (failures, rules evaluated, transition rules skipped)."""
    failures, evaluated, transition = [], 0, 0
    for path, node, value in _schemas_with_rules(instance, schema, ()):
        value_json = json.dumps(value, sort_keys=True)
        for spec in node["x-kubernetes-validations"]:
            rule = spec["rule"]
            if "oldSelf" in rule:  # compares with the stored object: only meaningful on update
                transition += 1
                continue
            evaluated += 1
            outcome = rule_outcome(rule, value_json)
            if outcome == "false":
                failures.append(CelFailure(path, rule, spec.get("message") or "failed rule", raised=False))
            elif outcome is not None:
                failures.append(CelFailure(path, rule, f"rule could not be evaluated: {outcome}", raised=True))
    return failures, evaluated, transition


# --------------------------------------------------------------------------- messages


def format_path(parts: Iterable) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<root>"


def describe(error) -> tuple[str, str]:
    """(path, readable message) for a jsonschema error; unknown fields get a did-you-mean."""
    import jsonschema
    path = format_path(error.absolute_path)
    unknown_fields = error.validator == "additionalProperties" and error.validator_value is False
    if unknown_fields and isinstance(error.instance, dict):
        allowed = sorted((error.schema.get("properties") or {}).keys())
        unknown = sorted(set(error.instance) - set(allowed))
        hints = [f"did you mean {close[0]!r}?" for close in
                 (difflib.get_close_matches(u, allowed, n=1) for u in unknown) if close]
        hint = f" ({'; '.join(hints)})" if hints else ""
        return path, f"unknown field(s) {unknown}{hint}; allowed: {allowed}"
    if error.validator in ("anyOf", "oneOf") and error.context:
        if all(sub.validator == "type" for sub in error.context):  # int-or-string and friends
            types = " or ".join(sorted({str(sub.validator_value) for sub in error.context}))
            return path, f"{error.instance!r} is not of type {types}"
        return path, jsonschema.exceptions.best_match(error.context).message
    return path, error.message


# --------------------------------------------------------------------------- one object


@dataclass
class _ObjectResult:
    kind: str
    problems: list[tuple[str, str, str | None]]  # (path, message, CEL rule)
    validated: bool = True       # a schema was found and applied
    unknown_kind: bool = False   # no schema for any version of this kind
    cel_evaluated: int = 0
    cel_transition_skipped: int = 0


def _check_custom(obj: dict, crd: CrdSchema) -> _ObjectResult:
    instance = prune_nulls_and_default(obj, crd.schema)
    structural = [describe(e) for e in crd.validator.iter_errors(instance)]
    failures, evaluated, transition = cel_failures(instance, crd.schema)
    # A rule that errors on a value of the wrong type only repeats a structural problem.
    cel = [(format_path(f.path), f.message, f.rule) for f in failures if not (f.raised and structural)]
    problems = [(p, m, None) for p, m in structural] + cel
    return _ObjectResult("", problems, cel_evaluated=evaluated, cel_transition_skipped=transition)


def _check_builtin(obj: dict, validator, kind: str) -> _ObjectResult:
    problems = [(*describe(e), None) for e in validator.iter_errors(obj)]
    problems += [(p, m, None) for p, m in metadata_problems(obj.get("metadata"), kind)]
    return _ObjectResult("", problems)


def _no_schema(api_version: str, kind: str, minor: str) -> tuple[str, bool]:
    """(message, stale version) for an object whose (apiVersion, kind) has no schema; a stale
    version is a known kind at an apiVersion nothing serves (any more)."""
    crds = crd_schemas()
    group, _ = _split_api_version(api_version)
    same_kind = sorted(av for av, k in crds if k == kind and _split_api_version(av)[0] == group)
    same_kind += [av for av in _builtin_api_versions(minor, kind) if _split_api_version(av)[0] == group]
    if same_kind:
        return (f"{kind} is not served as {api_version!r}; schemas exist only for {same_kind} "
                f"(removed or stale version?)"), True
    kinds_in_group = sorted({k for av, k in crds if _split_api_version(av)[0] == group})
    close = difflib.get_close_matches(kind, kinds_in_group, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"no schema for {kind_id(api_version, kind)}{hint}: neither a built-in kind of Kubernetes "
            f"{minor} nor a CRD in infra/schemas/"), False


def check_object(obj: Any, minor: str) -> _ObjectResult:
    if not isinstance(obj, dict) or not isinstance(obj.get("apiVersion"), str) or not isinstance(obj.get("kind"), str):
        return _ObjectResult("?", [("<root>", "not a Kubernetes object: a mapping with string apiVersion "
                                              "and kind is required", None)], validated=False)
    api_version, kind = obj["apiVersion"], obj["kind"]
    crd = crd_schemas().get((api_version, kind))
    if crd is not None:
        result = _check_custom(obj, crd)
    elif (validator := builtin_validator(minor, api_version, kind)) is not None:
        result = _check_builtin(obj, validator, kind)
    else:
        message, stale = _no_schema(api_version, kind, minor)
        result = _ObjectResult("", [("<root>", message, None)], validated=False, unknown_kind=not stale)
    result.kind = kind_id(api_version, kind)
    return result


def _object_name(obj: Any) -> str:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return "?"
    name = str(meta.get("name") or meta.get("generateName") or "?")
    return f"{meta['namespace']}/{name}" if meta.get("namespace") else name


# --------------------------------------------------------------------------- public API


def validate_objects(objs: Iterable[tuple[str, Any]], kube_version: str, *,
                     allow_unknown_kinds: bool = False) -> ValidationReport:
    """Validate (source, object) pairs against Kubernetes `kube_version` ("1.33", "v1.33.2").

    A kind with no schema at all is an issue unless `allow_unknown_kinds` (then it is only
    listed in `skipped`); raises KubeVersionError for a version with no bundled schemas."""
    minor = kube_minor(kube_version)
    report = ValidationReport(kube_version=minor)
    checked: Counter = Counter()
    skipped: dict[str, None] = {}
    for source, obj in objs:
        result = check_object(obj, minor)
        report.cel_evaluated += result.cel_evaluated
        report.cel_transition_skipped += result.cel_transition_skipped
        if result.validated:
            checked[result.kind] += 1
        elif result.unknown_kind:
            skipped[result.kind] = None
            if allow_unknown_kinds:
                continue
        name = _object_name(obj)
        report.issues += [ValidationIssue(source, result.kind, name, path, message, rule)
                          for path, message, rule in result.problems]
    report.checked = dict(sorted(checked.items()))
    report.skipped = list(skipped)
    return report


def load_manifests(path: Path) -> tuple[list[tuple[str, Any]], list[ValidationIssue]]:
    """(source, object) for every document in every *.yaml/*.yml under `path` (a file or a
    folder, recursively), and an issue for each file that does not parse. `kind: *List`
    documents are expanded. Sources are relative to `path`, with the document's start line
    when a file holds more than one."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or folder")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in MANIFEST_SUFFIXES
                                                  and not _render_helm_doc(p))
    objects: list[tuple[str, Any]] = []
    unreadable: list[ValidationIssue] = []
    for file in files:
        rel = file.name if file == root else file.relative_to(root).as_posix()
        try:
            docs = _documents_with_lines(file.read_text())
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            message = " ".join(str(exc).split())
            unreadable.append(ValidationIssue(rel, "?", "?", "<file>", f"cannot parse YAML: {message}"))
            continue
        for line, doc in docs:
            source = rel if len(docs) == 1 else f"{rel}:{line}"
            is_list = isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List")
            if is_list and isinstance(doc.get("items"), list):
                objects += [(f"{source} items[{i}]", item) for i, item in enumerate(doc["items"])]
            else:
                objects.append((source, doc))
    return objects, unreadable


def _render_helm_doc(path: Path) -> bool:
    """helm/*.yaml of a render directory: chart, version and values of a release, not an object."""
    return path.parent.name == "helm" and (path.parent.parent / "resources.json").exists()


def _documents_with_lines(text: str) -> list[tuple[int, Any]]:
    """(1-based start line, document) for each non-empty YAML document."""
    loader = yaml.SafeLoader(text)
    docs = []
    try:
        while loader.check_node():
            node = loader.get_node()
            doc = loader.construct_document(node)
            if doc is not None:
                docs.append((node.start_mark.line + 1, doc))
    finally:
        loader.dispose()
    return docs


def validate_dir(path: Path, kube_version: str, *, allow_unknown_kinds: bool = False) -> ValidationReport:
    """Validate every document of every *.yaml/*.yml under `path`; a file that does not parse
    is an issue naming the file and line."""
    minor = kube_minor(kube_version)  # fail on a bad version before reading anything
    objects, unreadable = load_manifests(Path(path))
    report = validate_objects(objects, minor, allow_unknown_kinds=allow_unknown_kinds)
    report.issues = unreadable + report.issues
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from infra import versions
    default_version = versions.SUPPORTED_KUBERNETES_VERSIONS[-1]
    parser.add_argument("path", type=Path, help="folder (searched recursively) or file of YAML manifests")
    parser.add_argument("--kube-version", default=default_version,
                        help=f"Kubernetes version of the built-in kinds (default {default_version})")
    parser.add_argument("--allow-unknown-kinds", action="store_true",
                        help="list kinds with no schema instead of failing on them")


def run(args: argparse.Namespace) -> int:
    from trnctl import exitcodes
    try:
        report = validate_dir(args.path, args.kube_version, allow_unknown_kinds=args.allow_unknown_kinds)
    except (FileNotFoundError, KubeVersionError, SchemaSetError) as exc:
        return exitcodes.bad_input(exc)
    for issue in report.issues:
        print(issue)
    for kind, count in report.checked.items():
        print(f"  {count:4d}  {kind}")
    print(report.summary())
    cluster_ok = run_cluster_model(args.path)
    return exitcodes.OK if report.ok and cluster_ok else exitcodes.FINDINGS


def run_cluster_model(path: Path) -> bool:
    """The cluster model (trnctl/cluster) over every render directory under `path` (those with a
    resources.json: `build/render` after `make render-all`), each platform render with the workload
    renders that reference it. True when no mandatory finding."""
    from trnctl import cluster
    renders = [cluster.render_from_dir(d) for d in cluster.find_renders(Path(path))]
    ok = True
    for model in cluster.models_for(renders):
        findings = cluster.check(model)
        stacks = ", ".join(r.stack for r in model.renders)
        print(f"cluster model over {stacks}: " + cluster.format_findings(findings).removeprefix("cluster model: "))
        ok = ok and not any(f.severity == cluster.MANDATORY for f in findings)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trnctl validate", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))
