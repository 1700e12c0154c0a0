"""Reading documents of the two schema versions before the current one: each step rewrites the parsed JSON of
one version into the next, so that a document a pipeline stored last month can still be judged and rendered.

A step only adds what the older version did not record, with the value its scan in effect used, and drops what
the newer one no longer holds; it never invents a measurement.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

Raw = dict[str, Any]


def _from_16(raw: Raw) -> Raw:
    """Version 17 adds a value, not a field: a probe's ``source`` may be ``enriched`` (sampled like the reference's
    fixed-answer probes). Earlier scans sampled no such probe: nothing to rewrite."""
    return raw


def _from_17(raw: Raw) -> Raw:
    """Version 18 records what every head patched at once did to the attack success
    (``PatchingFindings.all_heads_attack_success``, left None: not measured then) and why the heads were not patched
    one by one (``stopped``: empty, since every earlier scan patched them). Both are defaults: nothing to rewrite."""
    return raw


STEPS: dict[int, Callable[[Raw], Raw]] = {16: _from_16, 17: _from_17}
"""Version -> the step that rewrites it into the next one."""

READS = frozenset(STEPS)
"""The older versions this bdscan reads."""


def migrate(raw: Raw, current: int) -> Raw:
    """``raw`` (parsed JSON of a readable version) rewritten to version ``current``; the input is not changed."""
    version = raw.get("schema_version")
    if version == current:
        return raw
    raw = copy.deepcopy(raw)
    while version != current:
        raw = STEPS[version](raw)
        version += 1
        raw["schema_version"] = version
    return raw
