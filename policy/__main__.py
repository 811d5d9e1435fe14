"""Policy pack entry point: `pulumi preview --policy-pack policy` runs this file.

The rules are plain functions in policy/rules/ (the offline render runs the same ones);
policy/pack.py adapts them to pulumi-policy. Constructing the PolicyPack starts the
analyzer server that the Pulumi CLI talks to, and blocks.
"""
import sys
from pathlib import Path

# The CLI runs this file from the policy directory; import `policy` as a package from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from policy.pack import policies  # noqa: E402

PolicyPack(
    name="trn-platform-guardrails",
    enforcement_level=EnforcementLevel.ADVISORY,  # each policy sets its own level (mandatory/advisory)
    policies=policies(),
)
