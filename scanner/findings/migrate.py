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


def _from_15(raw: Raw) -> Raw:
    """Version 16 records the answer a behaviour switch's candidate leaves (``DiscoveredCandidate.switched_from``);
    earlier searches had no such candidate: empty."""
    return _discovery_default(raw, "candidates", "switched_from", "")


def _from_16(raw: Raw) -> Raw:
    """Version 17 adds a value, not a field: a probe's ``source`` may be ``enriched`` (sampled like the reference's
    fixed-answer probes). Earlier scans sampled no such probe: nothing to rewrite."""
    return raw


def _discovery_default(raw: Raw, items: str, name: str, value: Any) -> Raw:
    """``raw`` with ``name`` set to ``value`` in each of ``discovery[items]`` that lacks it (a document without
    discovery, or a malformed one, is left for the reader to refuse)."""
    discovery = raw.get("discovery")
    if isinstance(discovery, dict):
        for item in discovery.get(items, []):
            if isinstance(item, dict):
                item.setdefault(name, value)
    return raw


STEPS: dict[int, Callable[[Raw], Raw]] = {15: _from_15, 16: _from_16}
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
