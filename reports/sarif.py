"""SARIF 2.1.0: the verdicts of one or more scans in the format code-scanning dashboards read.

A pure function of judged documents and the rule pack that judged them: one run, the pack's rules as the
tool's ``rules`` metadata, one result per fired rule per scanned model, located at the model's path.
GitHub code scanning shows ``properties.security-severity`` and ``properties.precision``; both are filled
from each rule's severity and confidence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from rules.document import Document
from rules.engine import Rule

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"

LEVEL = {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}
"""SARIF ``level`` per rule severity."""
SECURITY_SEVERITY = {"critical": "9.5", "high": "8.0", "medium": "5.5", "low": "3.0", "info": "0.0"}
"""GitHub's ``security-severity`` (a CVSS-like score as a string) per rule severity: critical from 9.0, high from
7.0, medium from 4.0, low below."""
PRECISION = {"high": "high", "medium": "medium", "low": "low"}
"""GitHub's ``precision`` per rule confidence."""


def _rule_descriptor(rule: Rule) -> dict[str, Any]:
    help_text = (f"{rule.why}\n\nExample: {rule.example}\n\nFires when {rule.metric} {rule.comparator} {rule.threshold:g}. "
                 f"Why this threshold: {rule.threshold_rationale}")
    return {
        "id": rule.id,
        "name": "".join(word.capitalize() for word in rule.title.replace("-", " ").split()),
        "shortDescription": {"text": rule.title},
        "fullDescription": {"text": rule.description},
        "help": {"text": help_text},
        "defaultConfiguration": {"level": LEVEL[rule.severity]},
        "properties": {
            "tags": ["security", "model-backdoor", rule.effect],
            "precision": PRECISION[rule.confidence],
            "security-severity": SECURITY_SEVERITY[rule.severity],
            "effect": rule.effect,
            "confidence": rule.confidence,
        },
    }


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def to_sarif(documents: Sequence[Document], rules: Sequence[Rule], *, version: str, command: str | None = None,
             failures: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The SARIF log (as plain JSON data) for ``documents``, judged with ``rules``; ``failures``, (suspect path,
    why it was not scanned) of a fleet's suspects that have no document, make the invocation unsuccessful with an
    error notification each, so a dashboard cannot read a suspect nobody scanned as one with no finding."""
    index = {rule.id: i for i, rule in enumerate(rules)}
    results = []
    for document in documents:
        findings, verdict = document.findings, document.verdict
        location = {"physicalLocation": {"artifactLocation": {"uri": findings.suspect.path}}}
        for fired in verdict.fired:
            result: dict[str, Any] = {
                "ruleId": fired.rule_id,
                "level": LEVEL.get(fired.severity, "warning"),
                "message": {"text": fired.sentence},
                "locations": [location],
                # Stable across runs of the same model: a dashboard tracks one finding, not one per scan.
                "partialFingerprints": {"bdscanFinding/v1": _fingerprint(fired.rule_id, fired.trigger or "",
                                                                         findings.suspect.sha256)},
                "properties": {
                    "verdict": verdict.level,
                    "trigger": fired.trigger,
                    "value": fired.value,
                    "comparator": fired.comparator,
                    "threshold": fired.threshold,
                    "confidence": fired.confidence,
                    "effect": fired.effect,
                    "security-severity": SECURITY_SEVERITY.get(fired.severity, "5.5"),
                    "reference": findings.reference.path,
                    "suspectSha256": findings.suspect.sha256,
                },
            }
            if fired.rule_id in index:
                result["ruleIndex"] = index[fired.rule_id]
            results.append(result)
    invocation: dict[str, Any] = {"executionSuccessful": not failures}
    if command:
        invocation["commandLine"] = command
    if failures:
        invocation["toolExecutionNotifications"] = [
            {"level": "error", "message": {"text": f"{suspect}: not scanned: {why}"},
             "locations": [{"physicalLocation": {"artifactLocation": {"uri": suspect}}}]}
            for suspect, why in failures]
    return {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {"name": "bdscan", "version": version, "semanticVersion": version,
                                "rules": [_rule_descriptor(rule) for rule in rules]}},
            "invocations": [invocation],
            "results": results,
            "properties": {"verdicts": [*({"suspect": d.findings.suspect.path, "level": d.verdict.level} for d in documents),
                                        *({"suspect": suspect, "level": "NOT SCANNED", "error": why}
                                          for suspect, why in failures)]},
        }],
    }
