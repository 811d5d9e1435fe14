"""Models of today's stacks for the cluster-model tests, and one-object edits of them."""
from __future__ import annotations

import copy
import functools
from typing import Callable

from tests.platform_helpers import rendered_platform, rendered_workload
from trnctl.cluster import Model, Render, obj_id, render_from_result


@functools.lru_cache(maxsize=None)
def platform_render(stack: str) -> Render:
    return render_from_result(rendered_platform(stack))


@functools.lru_cache(maxsize=None)
def workload_render(stack: str) -> Render:
    return render_from_result(rendered_workload(stack))


def model(platform: str, *workloads: str) -> Model:
    """A fresh model (its own copies of the renders: tests edit them)."""
    return Model(copy.deepcopy(platform_render(platform)), [copy.deepcopy(workload_render(w)) for w in workloads])


def edit(m: Model, object_id: str, change: Callable[[dict], None]) -> Model:
    """A copy of `m` with the rendered object `object_id` ("Kind ns/name") changed by `change`
    (`m` itself is left as it was)."""
    m = Model(copy.deepcopy(m.platform), copy.deepcopy(m.workloads))
    hits = [o for r in m.renders for o in r.objects if obj_id(o) == object_id]
    assert len(hits) == 1, f"{object_id}: {len(hits)} objects; have {sorted(obj_id(o) for r in m.renders for o in r.objects)}"
    change(hits[0])
    return Model(m.platform, m.workloads)


def rules(findings, prefix: str) -> list:
    return [f for f in findings if f.rule.startswith(prefix)]


def mandatory(findings) -> list:
    return [f for f in findings if f.severity == "mandatory"]
