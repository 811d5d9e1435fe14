"""Example values left in a stack file that `pulumi up` would use as written (issue 23 item 3).

The example stack files ship values that render fine but must be replaced before a deploy:
an API endpoint CIDR from a documentation range (it locks everyone out), alert addresses at
example.com (nobody gets the alerts), a `secure:` value that is not ciphertext (Pulumi cannot
decrypt it), and ids the file itself marks `# replace ...` (an example Capacity Block id).
`trnctl render` lists them under its summary; `trnctl preflight` fails on them, before it
needs any credentials.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from stackfiles.files import stack_file

# Address blocks reserved for documentation: RFC 5737 section 3 (IPv4 TEST-NET-1/2/3) and
# RFC 3849 (IPv6 2001:db8::/32). No real client ever has these addresses.
DOCUMENTATION_NETWORKS = tuple(ipaddress.ip_network(n) for n in
                               ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"))
# Second-level domains reserved for examples (RFC 2606 section 3) and the .example TLD (section 2).
_EXAMPLE_EMAIL = re.compile(r"^[^@\s]+@(?:[^@\s]+\.)?(?:example\.(?:com|net|org)|[^@\s]+\.example)$", re.I)
# Pulumi's passphrase secrets are `v1:<base64 nonce>:<base64 ciphertext>` (pulumi/pulumi
# sdk/go/common/resource/config/crypt.go, symmetricCrypter.EncryptValue); Pulumi Cloud's are one
# base64 string. Anything else under `secure:` cannot be decrypted.
_B64 = r"[A-Za-z0-9+/]+={0,2}"
_PASSPHRASE_SECRET = re.compile(rf"^v1:{_B64}:{_B64}$")
_REPLACE_COMMENT = re.compile(r"#.*\breplace\b", re.I)


@dataclass(frozen=True)
class Placeholder:
    key: str  # <namespace>:<path>, e.g. trn-platform:endpoint.publicAccessCidrs[0]
    value: str
    why: str
    fix: str

    def line(self) -> str:
        return f"{self.key} = {self.value}: {self.why}; {self.fix}"


def find_placeholders(project_dir: Path, stack: str) -> list[Placeholder]:
    """The placeholders of `Pulumi.<stack>.yaml`, in file order (the file was read before, so
    it parses; nothing here raises on a file read_stack_bag accepted)."""
    path = stack_file(project_dir, stack)
    text = path.read_text()
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines = text.splitlines()
    config = _mapping_get(root, "config")
    out: list[Placeholder] = []
    if isinstance(config, yaml.MappingNode):
        for key_node, value_node in config.value:
            _walk(str(key_node.value), value_node, lines, out)
    return out


def _mapping_get(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if k.value == key:
                return v
    return None


def _walk(key: str, node: yaml.Node, lines: list[str], out: list[Placeholder]) -> None:
    if isinstance(node, yaml.MappingNode):
        secure = _mapping_get(node, "secure")
        if secure is not None and len(node.value) == 1 and isinstance(secure, yaml.ScalarNode):
            value = str(secure.value)
            if not _is_ciphertext(value):
                name = key.partition(":")[2]
                out.append(Placeholder(key, f"secure: {value}", "not a Pulumi secret (no ciphertext): Pulumi cannot "
                                       "decrypt it", f"set it: pulumi config set --secret {name} <value>"))
            return
        for k, v in node.value:
            _walk(f"{key}.{k.value}", v, lines, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(f"{key}[{i}]", item, lines, out)
    elif isinstance(node, yaml.ScalarNode):
        found = _scalar_placeholder(key, str(node.value), lines[node.start_mark.line])
        if found:
            out.append(found)


def _scalar_placeholder(key: str, value: str, line: str) -> Placeholder | None:
    path = key.partition(":")[2]
    network = _network(value)
    if network is not None and any(network.version == doc.version and network.overlaps(doc) for doc in DOCUMENTATION_NETWORKS):
        return Placeholder(key, value, "a documentation address range (RFC 5737/3849) that no real client has",
                           f"pulumi config set --path '{path}' <your egress IP>/32 "
                           "(curl -s https://checkip.amazonaws.com)")
    if _EXAMPLE_EMAIL.match(value):
        return Placeholder(key, value, "an example address (RFC 2606): nobody receives it",
                           f"pulumi config set --path '{path}' <your address>")
    if _REPLACE_COMMENT.search(line.split(value, 1)[-1] if value in line else line):
        comment = line[line.index("#"):].lstrip("# ").strip()
        return Placeholder(key, value, f"an example value (the stack file says: {comment})",
                           f"pulumi config set --path '{path}' <your value>, or remove it")
    return None


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


def _is_ciphertext(value: str) -> bool:
    if _PASSPHRASE_SECRET.match(value):
        return True
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return bool(value)
