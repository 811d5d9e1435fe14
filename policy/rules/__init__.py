"""Security and cost guardrails as plain functions over resource records.

The offline render (`trnctl render`) and `pulumi preview --policy-pack policy`
run exactly these functions: the render builds `Resource` records from what its mock
runtime recorded, the policy pack (policy/pack.py) from what the Pulumi engine sends.

    violations = evaluate(resources, outputs)
    print(format_report(violations))

A rule is either a *resource rule* (one resource in, violations out) or a *stack rule*
(all resources and the stack outputs in: used where a check needs two resources, such as
a bucket and its public access block). Each rule has an id, a severity ("mandatory":
the render and `pulumi preview` fail; "advisory": reported only), what it checks, why,
and how to fix it; policy/README.md lists them. Allowed exceptions, each with its reason,
live in policy/exceptions.yaml.

Values that are not known before deployment (IDs, ARNs at preview) arrive as the string
"[unknown]"; rules treat them as "set, value unknown" and never fail on them.

Layout: `base` (records, registration, evaluation), `exceptions` (policy/exceptions.yaml),
`helpers` (shared predicates), and one module per domain: `nodes`, `iam`, `data`,
`kubernetes`. Importing this package registers every rule, in that order.
"""
# The domain modules register their rules on import; their public names are re-exported
# so callers keep using `rules.<name>`.
from policy.rules.base import *  # noqa: F401,F403
from policy.rules.exceptions import *  # noqa: F401,F403
from policy.rules.helpers import *  # noqa: F401,F403
from policy.rules.nodes import *  # noqa: F401,F403
from policy.rules.iam import *  # noqa: F401,F403
from policy.rules.data import *  # noqa: F401,F403
from policy.rules.kubernetes import *  # noqa: F401,F403
