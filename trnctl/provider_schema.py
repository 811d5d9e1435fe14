"""Check recorded resource inputs against the providers' schemas, as `pulumi up` would.

The mock runtime accepts any input, so a misspelled nested key or a value of the wrong type
would only fail against a real provider. This module checks every recorded resource of the
aws, eks, kubernetes and docker-build packages against the schema of the installed (pinned)
SDK: unknown property names at every nesting level, missing required inputs, wrong types
and values outside an enum.

No provider `schema.json` ships in the installed wheels (only `pulumi-plugin.json`), so the
schema is derived from the generated SDK code, which is generated from that schema:

* the type token -> class map is the `resource_modules` / `resource_packages` JSON each
  package's `__init__.py` hands to `_utilities.register` (the same map the runtime uses);
* a resource's inputs are the getters of the args class its `_internal_init` builds
  (`__props__ = VpcArgs.__new__(VpcArgs)`), named on the wire by `pulumi.getter(name=...)`;
  a value `_internal_init` sets without a getter goes on the wire untranslated and is
  allowed with any value (none at the pinned versions);
* nested objects are the `@pulumi.input_type` classes in those getters' annotations,
  required properties are the args constructors' parameters without a default, enums are
  `str` Enum classes or `Literal[...]` (a `Union[str, SomeEnum]` admits any string, as the
  schema's `oneOf` does). Values the SDK fills in itself (the Helm Release's `compat`,
  Kubernetes `apiVersion`/`kind`) are on the wire, so they are checked, never missing; a
  schema-required input the SDK defaults (docker-build `CacheFromS3.region` from
  `$AWS_REGION`) has a default in the constructor and is not required here. At the pinned
  versions the required parameters are exactly those `_internal_init` raises "Missing
  required property" for, in every resource of the four packages (one renamed parameter,
  lightsail's `resource_name_`, aside);
* provider resources (`pulumi:providers:*`) carry non-string inputs JSON-encoded on the
  wire (the SDK applies `pulumi.runtime.to_json`): they are decoded before checking.

Kubernetes custom resources (`kubernetes:<group>/<version>:<Kind>` with no SDK class) and
`apiextensions.k8s.io` types are checked as wrappers only (apiVersion, kind, metadata): their
bodies are validated against CRD schemas by trnctl/validation.py.

Checked against the published schemas: every resource's input names and required inputs
(and, for docker-build, every object type) agree with pulumi/pulumi-docker-build v0.0.22
(eb787fa, provider/cmd/pulumi-resource-docker-build/schema.json) except that `region`, and
with pulumi/pulumi-eks 7bf0c1b (a commit after v4.3.0; provider/cmd/pulumi-resource-eks/schema.json).

Values the mock cannot know (`[unknown]`), assets, archives and resource references pass as
any value; a secret is checked by its inner value (the engine sees through the envelope), a
masked one (`[secret]`, as in resources.json) passes. Schemas are derived lazily per resource
type and nested type and cached per process.
"""
from __future__ import annotations

import difflib
import enum
import importlib
import importlib.util
import inspect
import json
import re
import sys
import types
import typing
from abc import ABC, abstractmethod
from collections import abc
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc

from stackfiles.records import SECRET_MASK

# Package name in a type token -> (Python module, distribution). Other packages (trn:
# components, pulumi:pulumi:StackReference, ...) are not checked.
PACKAGES = {
    "aws": ("pulumi_aws", "pulumi-aws"),
    "eks": ("pulumi_eks", "pulumi-eks"),
    "kubernetes": ("pulumi_kubernetes", "pulumi-kubernetes"),
    "docker-build": ("pulumi_docker_build", "pulumi-docker-build"),
}
UNKNOWN_VALUES = ("[unknown]", rpc.UNKNOWN)   # trnctl/mocks.py records unknowns as "[unknown]"
# Kubernetes groups whose object bodies trnctl/validation.py checks against their own schemas.
WRAPPER_ONLY_GROUPS = ("apiextensions.k8s.io/",)


@dataclass(frozen=True)
class Issue:
    type: str            # "aws:eks/nodeGroup:NodeGroup"
    name: str            # the Pulumi resource name
    path: str            # "scalingConfig.minSize", "" for the resource itself
    problem: str         # "unknown property", "missing required property", "wrong type", ...
    allowed: str         # the allowed names, type or values
    suggestion: str | None = None

    def __str__(self) -> str:
        where = f" at {self.path}" if self.path else ""
        text = f"{self.type} {self.name}{where}: {self.problem}; allowed: {self.allowed}"
        return text + (f"; did you mean {self.suggestion!r}?" if self.suggestion else "")


# --------------------------------------------------------------------------- schema nodes


class Node(ABC):
    """One node of a derived schema: what a value at this place may be."""

    @abstractmethod
    def describe(self) -> str:
        """The allowed values, as an error message names them."""


class AnyNode(Node):
    def describe(self) -> str:
        return "any value"


ANY = AnyNode()


@dataclass(frozen=True, eq=False)
class Primitive(Node):
    kind: str   # string, integer, number, boolean

    def describe(self) -> str:
        return self.kind

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool):
            return self.kind == "boolean"
        if self.kind == "string":
            return isinstance(value, str)
        if self.kind == "integer":
            return isinstance(value, int)
        if self.kind == "number":
            return isinstance(value, (int, float))
        return False


PRIMITIVES = {str: Primitive("string"), int: Primitive("integer"), float: Primitive("number"),
              bool: Primitive("boolean")}


@dataclass(frozen=True, eq=False)
class EnumNode(Node):
    values: tuple
    name: str

    def describe(self) -> str:
        return f"one of {', '.join(repr(v) for v in self.values)}"


@dataclass(frozen=True, eq=False)
class ArrayNode(Node):
    item: Node

    def describe(self) -> str:
        return f"list of {self.item.describe()}"


@dataclass(frozen=True, eq=False)
class MapNode(Node):
    value: Node

    def describe(self) -> str:
        return f"map of {self.value.describe()}"


@dataclass(frozen=True, eq=False)
class UnionNode(Node):
    members: tuple[Node, ...]

    def describe(self) -> str:
        return " or ".join(m.describe() for m in self.members)


class ObjectNode(Node):
    """An object type: its properties (wire names), the required ones, names allowed with
    any value, and names whose value is JSON-encoded on the wire."""

    def __init__(self, name: str, properties: Mapping[str, Node], required: Iterable[str] = (),
                 extra: Iterable[str] = (), json_encoded: Iterable[str] = ()):
        self.name = name
        self._properties = dict(properties)
        self._required = frozenset(required)
        self.extra = frozenset(extra)
        self.json_encoded = frozenset(json_encoded)

    @property
    def properties(self) -> Mapping[str, Node]:
        return self._properties

    @property
    def required(self) -> frozenset[str]:
        return self._required

    def describe(self) -> str:
        return f"object {self.name}"


class InputTypeNode(ObjectNode):
    """An `@pulumi.input_type` class, resolved on first use (the SDKs hold thousands)."""

    def __init__(self, cls: type):
        super().__init__(cls.__name__, {})
        self.cls = cls

    @cached_property
    def properties(self) -> Mapping[str, Node]:  # type: ignore[override]
        return {wire: node_for(hint) for wire, hint in _getter_hints(self.cls).items()}

    @cached_property
    def required(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset(_required_inputs(self.cls))


# --------------------------------------------------------------------------- from the SDK


def _getters(cls: type) -> dict[str, tuple[str, property]]:
    """Python name -> (wire name, property) of an input type's `pulumi.getter`s."""
    found: dict[str, tuple[str, property]] = {}
    for base in reversed(cls.__mro__):
        for py_name, attr in vars(base).items():
            wire = getattr(getattr(attr, "fget", None), "_pulumi_name", None)
            if isinstance(attr, property) and wire:
                found[py_name] = (wire, attr)
    return found


def _module_globals(cls: type) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        module = sys.modules.get(base.__module__)
        if module is not None:
            names.update(vars(module))
    return names


def _getter_hints(cls: type) -> dict[str, Any]:
    """Wire name -> resolved return annotation of each getter."""
    globalns = _module_globals(cls)
    localns = {"Output": pulumi.Output, "T": type(None)}
    hints: dict[str, Any] = {}
    for wire, prop in _getters(cls).values():
        try:
            hints[wire] = typing.get_type_hints(prop.fget, globalns=globalns, localns=localns).get("return", Any)
        except (NameError, AttributeError, TypeError):
            hints[wire] = Any   # an annotation the SDK itself cannot resolve: accept any value
    return hints


def _required_inputs(cls: type) -> list[str]:
    """Wire names of the constructor parameters without a default."""
    wire = {py: w for py, (w, _) in _getters(cls).items()}
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [wire.get(p.name, p.name) for p in params if p.default is inspect.Parameter.empty and p.kind not in variadic]


def _is_typed_dict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def node_for(tp: Any) -> Node:
    """The schema node for a resolved SDK annotation."""
    if isinstance(tp, typing.ForwardRef) or tp is Any or tp is object:
        return ANY
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _union_node(args)
    if origin is typing.Literal:
        return EnumNode(tuple(args), "literal")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return EnumNode(tuple(m.value for m in tp), tp.__name__)
    if tp in PRIMITIVES:
        return PRIMITIVES[tp]
    if origin in (list, abc.Sequence, tuple) or tp in (list, tuple):
        return ArrayNode(node_for(args[0]) if args else ANY)
    if origin in (dict, abc.Mapping) or tp is dict:
        return MapNode(node_for(args[1]) if len(args) == 2 else ANY)
    if isinstance(tp, type) and pulumi._types.is_input_type(tp):
        return _input_type_node(tp)
    if _is_typed_dict(tp):
        args_cls = _module_globals(tp).get(tp.__name__.removesuffix("Dict"))
        if isinstance(args_cls, type) and pulumi._types.is_input_type(args_cls):
            return _input_type_node(args_cls)
    return ANY   # assets, archives, resource references, Output without a type


def _union_node(args: tuple) -> Node:
    def is_plumbing(a: Any) -> bool:   # Input[T] = Union[T, Awaitable[T], Output[T]]; Optional adds None
        return a is type(None) or a is pulumi.Output or typing.get_origin(a) in (
            abc.Awaitable, typing.Awaitable, pulumi.Output)

    members = [a for a in args if not is_plumbing(a)]
    if any(isinstance(a, type) and pulumi._types.is_input_type(a) for a in members):
        # Union[XArgs, XArgsDict] and InputType[T] = Union[T, Mapping[str, Any]] both mean XArgs.
        members = [a for a in members if not (_is_typed_dict(a) or typing.get_origin(a) is abc.Mapping
                                              and typing.get_args(a)[1:] == (Any,))]
    nodes: list[Node] = []
    for member in members:
        node = node_for(member)
        if node is ANY:
            return ANY
        if not any(node is n for n in nodes):
            nodes.append(node)
    if not nodes:
        return ANY
    return nodes[0] if len(nodes) == 1 else UnionNode(tuple(nodes))


@cache
def _input_type_node(cls: type) -> InputTypeNode:
    return InputTypeNode(cls)


@cache
def package_types(package: str) -> dict[str, tuple[str, str]]:
    """Type token -> (module, class name) of every resource of a package, from the JSON its
    `__init__.py` registers with the runtime (`_utilities.register(resource_modules=...)`)."""
    module = PACKAGES[package][0]
    source = importlib.util.find_spec(module).origin
    text = Path(source).read_text(encoding="utf-8")
    tokens: dict[str, tuple[str, str]] = {}
    for key in ("resource_modules", "resource_packages"):
        match = re.search(key + r'="""(.*?)"""', text, re.DOTALL)
        for entry in json.loads(match.group(1)) if match else []:
            if "classes" in entry:
                tokens.update({tok: (entry["fqn"], cls) for tok, cls in entry["classes"].items()})
            else:
                tokens[entry["token"]] = (entry["fqn"], entry["class"])
    return tokens


def package_versions() -> dict[str, str]:
    """The installed SDK version each schema is derived from."""
    return {pkg: metadata.version(dist) for pkg, (_, dist) in PACKAGES.items()}


def _package_of(token: str) -> str | None:
    parts = token.split(":")
    package = parts[2] if parts[:2] == ["pulumi", "providers"] and len(parts) == 3 else parts[0]
    return package if package in PACKAGES else None


_PROPS_CLASS = re.compile(r"__props__ = (\w+)\.__new__\(")
_PROPS_SET = re.compile(r'__props__\.__dict__\["(\w+)"\] = (.*)')


@cache
def resource_schema(token: str) -> ObjectNode | None:
    """The input schema of a resource type, None if the type is not in the SDK."""
    package = _package_of(token)
    entry = package_types(package).get(token) if package else None
    if entry is None:
        return _custom_resource_schema(token) if package == "kubernetes" else None
    cls = getattr(importlib.import_module(entry[0]), entry[1])
    source = inspect.getsource(cls._internal_init)
    args_cls = _module_globals(cls)[_PROPS_CLASS.search(source).group(1)]
    node = _input_type_node(args_cls)
    py_names = set(_getters(args_cls))
    assigned = _PROPS_SET.findall(source)
    # Inputs set without an args getter (e.g. by the SDK itself) go on the wire untranslated.
    extra = {k for k, v in assigned if k not in py_names and v.strip() != "None"}
    wire = {py: w for py, (w, _) in _getters(args_cls).items()}
    json_encoded = {wire.get(k, k) for k, v in assigned if "pulumi.runtime.to_json" in v}
    properties = dict(node.properties)
    if token.split(":")[1].startswith(WRAPPER_ONLY_GROUPS) and "spec" in properties:
        properties["spec"] = ANY
    return ObjectNode(token, properties, node.required, extra, json_encoded)


def _custom_resource_schema(token: str) -> ObjectNode:
    """A Kubernetes custom resource: apiVersion and kind as the token says, metadata as
    ObjectMeta; the body is trnctl/validation.py's (CRD schemas)."""
    from pulumi_kubernetes.apiextensions import CustomResourceArgs
    from pulumi_kubernetes.meta.v1 import ObjectMetaArgs

    _, api_version, kind = token.split(":")
    base = _input_type_node(CustomResourceArgs)
    properties = {**base.properties, "apiVersion": EnumNode((api_version,), "apiVersion"),
                  "kind": EnumNode((kind,), "kind"), "metadata": _input_type_node(ObjectMetaArgs)}
    return ObjectNode(f"CustomResource {token}", properties, base.required, extra={"spec"})


# --------------------------------------------------------------------------- checking


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_$][\w$-]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    def __init__(self, token: str, name: str):
        self.token, self.name = token, name
        self.issues: list[Issue] = []

    def issue(self, path: str, problem: str, allowed: str, suggestion: str | None = None) -> None:
        self.issues.append(Issue(self.token, self.name, path, problem, allowed, suggestion))

    def check(self, node: Node, value: Any, path: str) -> None:
        if value is None or node is ANY:
            return
        if isinstance(value, str) and value in UNKNOWN_VALUES + (SECRET_MASK,):
            return
        if isinstance(value, dict) and rpc._special_sig_key in value:
            if value[rpc._special_sig_key] in (rpc._special_secret_sig, rpc._special_output_value_sig):
                self.check(node, value.get("value"), path)
            return   # assets, archives and resource references
        if isinstance(node, Primitive):
            if not node.accepts(value):
                self.issue(path, f"wrong type: {type(value).__name__} {_shown(value)}", node.kind)
        elif isinstance(node, EnumNode):
            if value not in node.values:
                close = difflib.get_close_matches(str(value), [str(v) for v in node.values], n=1)
                self.issue(path, f"value {_shown(value)} is not allowed", node.describe(),
                           close[0] if close else None)
        elif isinstance(node, ArrayNode):
            if not isinstance(value, list):
                self.issue(path, f"wrong type: {type(value).__name__} {_shown(value)}", node.describe())
                return
            for i, item in enumerate(value):
                self.check(node.item, item, f"{path}[{i}]")
        elif isinstance(node, MapNode):
            if not isinstance(value, dict):
                self.issue(path, f"wrong type: {type(value).__name__} {_shown(value)}", node.describe())
                return
            for key, item in value.items():
                self.check(node.value, item, _join(path, key))
        elif isinstance(node, ObjectNode):
            self.check_object(node, value, path)
        elif isinstance(node, UnionNode):
            self.check_union(node, value, path)

    def check_object(self, node: ObjectNode, value: Any, path: str) -> None:
        if not isinstance(value, dict):
            self.issue(path, f"wrong type: {type(value).__name__} {_shown(value)}", node.describe())
            return
        names = node.properties
        for key, item in value.items():
            if key in names:
                if key in node.json_encoded and isinstance(item, str) and not _is_string(names[key]):
                    try:
                        item = json.loads(item)
                    except ValueError:
                        self.issue(_join(path, key), f"not JSON-encoded: {_shown(item)}", names[key].describe())
                        continue
                self.check(names[key], item, _join(path, key))
            elif key not in node.extra:
                self.issue(_join(path, key), f"unknown property of {node.name}",
                           ", ".join(sorted(names)) or "(none)", _closest_name(key, names))
        for key in sorted(node.required):
            if value.get(key) is None:
                self.issue(_join(path, key), f"missing required property of {node.name}",
                           names[key].describe() if key in names else "any value")

    def check_union(self, node: UnionNode, value: Any, path: str) -> None:
        attempts = []
        for member in node.members:
            trial = _Checker(self.token, self.name)
            trial.check(member, value, path)
            if not trial.issues:
                return
            attempts.append((member, trial.issues))
        # Report the member of the value's shape (a dict against the object type, ...).
        shaped = [issues for member, issues in attempts if not _wrong_shape(member, value)]
        if len(shaped) == 1:
            self.issues += shaped[0]
        else:
            self.issue(path, f"wrong type: {type(value).__name__} {_shown(value)}", node.describe())


def _closest_name(key: str, names: Iterable[str]) -> str | None:
    """The wire name meant: the camelCase of a Python name (a dict that bypassed the SDK's
    translation), else the closest spelling."""
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)
    if camel != key and camel in names:
        return camel
    close = difflib.get_close_matches(key, list(names), n=1, cutoff=0.6)
    return close[0] if close else None


def _is_string(node: Node) -> bool:
    return isinstance(node, Primitive) and node.kind == "string"


def _wrong_shape(node: Node, value: Any) -> bool:
    if isinstance(node, (ObjectNode, MapNode)):
        return not isinstance(value, dict)
    if isinstance(node, ArrayNode):
        return not isinstance(value, list)
    return isinstance(value, (dict, list))


def _fields(resource: Any) -> tuple[str, str, dict]:
    if isinstance(resource, dict):   # resources.json form
        return resource["type"], resource["name"], resource.get("inputs") or {}
    return resource.type, resource.name, resource.inputs


def check_resources(recorded: Iterable[Any]) -> list[Issue]:
    """Every provider-schema problem of the recorded resources (stackfiles.records.RecordedResource,
    or their resources.json dicts); resources of other packages are not checked."""
    issues: list[Issue] = []
    for resource in recorded:
        token, name, inputs = _fields(resource)
        package = _package_of(token)
        if package is None:
            continue
        checker = _Checker(token, name)
        schema = resource_schema(token)
        if schema is None:
            close = difflib.get_close_matches(token, list(package_types(package)), n=1)
            checker.issue("", f"not a resource type of {PACKAGES[package][1]} {package_versions()[package]}",
                          "the SDK's registered types", close[0] if close else None)
        else:
            checker.check_object(schema, inputs, "")
        issues += checker.issues
    return issues


def summary(recorded: Iterable[Any], issues: list[Issue]) -> str:
    tokens = [t for t, _, _ in map(_fields, recorded) if _package_of(t)]
    versions = ", ".join(f"{PACKAGES[p][1]} {v}" for p, v in package_versions().items())
    return (f"provider schemas ({versions}): {len(tokens)} resources of {len(set(tokens))} types, "
            f"{len(issues)} issue(s)")
