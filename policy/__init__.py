"""Guardrails: security and cost rules shared by the offline render and `pulumi preview --policy-pack policy`."""
