"""The record format of a rendered stack: one `RecordedResource` per registered resource,
written to `resources.json` by the render and read back by the policy rules and tests.
Secret values never reach a record: they are masked as "[secret]"."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pulumi.runtime import rpc

SECRET_MASK = "[secret]"


@dataclass
class RecordedResource:
    type: str
    name: str
    urn: str
    inputs: dict[str, Any]
    parent: str | None
    depends_on: list[str]
    custom: bool
    state: dict[str, Any] = field(default_factory=dict)
    # Resource options that change what the engine does (customTimeouts, deleteBeforeReplace,
    # ignoreChanges, protect, retainOnDelete, replaceOnChanges, deletedWith), as the SDK sent them in
    # the RegisterResourceRequest (trnctl/mocks.py, resource_options); only those set.
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"type": self.type, "name": self.name, "urn": self.urn, "inputs": mask_secrets(self.inputs),
               "parent": self.parent or None, "dependsOn": self.depends_on, "custom": self.custom}
        if self.options:
            out["options"] = self.options
        return out


def mask_secrets(value: Any) -> Any:
    """Replace Pulumi secret envelopes (as the monitor deserializes them) with a mask."""
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return SECRET_MASK
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def unwrap_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        if value.get(rpc._special_sig_key) == rpc._special_secret_sig:
            return unwrap_secrets(value.get("value"))
        return {k: unwrap_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v) for v in value]
    return value
