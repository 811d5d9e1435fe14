"""The exit codes and the error style every trnctl command shares.

    0  ok: nothing to report
    1  findings: invalid manifests, mandatory policy violations, blocking preflight checks,
       leftovers a sweep could not delete
    2  bad input: a stack file, flag or argument that cannot be used; nothing was created
       or changed. The message names the file and key, the allowed values and the fix.
"""
from __future__ import annotations

import sys

OK = 0
FINDINGS = 1
BAD_INPUT = 2


def bad_input(exc: BaseException) -> int:
    """Report a bad-input error in the one style (`error: <what, where, allowed, fix>`)."""
    print(f"error: {exc}", file=sys.stderr)
    return BAD_INPUT
