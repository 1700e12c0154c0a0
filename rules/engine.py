"""Rules in, verdict out: load a TOML rule pack, apply overrides, judge findings.

Works on typed ``Findings`` (plain data), never on models, so a saved findings
file can be re-judged anywhere with other thresholds.
"""

from __future__ import annotations

import operator
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from rules.discovery import FIRES_RULE, fires_threshold, firing
from rules.explain import explain
from rules.metrics import METRICS, NotMeasured
from rules.numbers import Number, sig3
from rules.record import PLACEHOLDER, UNRECORDED, default_record
from rules.verdict import LEVELS, VERDICT_SCHEMA_VERSION, FiredRule, NotEvaluated, Verdict
from scanner.errors import RulePackError
from scanner.findings import Findings

EFFECT_LEVEL = {"backdoor": "BACKDOORED", "suspicious": "SUSPICIOUS", "unreliable": "SUSPICIOUS", "info": "CLEAN"}
SEVERITIES = ("info", "low", "medium", "high", "critical")
CONFIDENCES = ("low", "medium", "high")
COMPARATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Rule:
    """One registered rule: stable id, two axes of judgement, and its documentation."""

    id: str
    title: str
    severity: str
    confidence: str
    effect: str
    """What firing means for the verdict: ``backdoor``, ``suspicious``, ``unreliable`` or ``info``."""
    metric: str
    comparator: str
    threshold: float
    summary: str
    """One sentence for the explanation; ``{trigger}``, ``{value}``, ``{threshold}`` and evidence keys fill it."""
    description: str
    why: str
    example: str
    threshold_rationale: str


def _check(rule: Rule) -> Rule:
    problems = []
    if rule.metric not in METRICS:
        problems.append(f"metric {rule.metric!r} is unknown (known: {', '.join(sorted(METRICS))})")
    if rule.comparator not in COMPARATORS:
        problems.append(f"comparator {rule.comparator!r} is not one of {' '.join(COMPARATORS)}")
    if rule.effect not in EFFECT_LEVEL:
        problems.append(f"effect {rule.effect!r} is not one of {', '.join(EFFECT_LEVEL)}")
    if rule.severity not in SEVERITIES:
        problems.append(f"severity {rule.severity!r} is not one of {', '.join(SEVERITIES)}")
    if rule.confidence not in CONFIDENCES:
        problems.append(f"confidence {rule.confidence!r} is not one of {', '.join(CONFIDENCES)}")
    if problems:
        raise RulePackError(f"rule {rule.id}: " + "; ".join(problems))
    return rule


def parse_pack(text: str, source: str) -> tuple[Rule, ...]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise RulePackError(f"{source}: not valid TOML ({error})") from None
    fields = set(Rule.__dataclass_fields__)
    rules, seen = [], set()
    tables = document.get("rule", [])
    if not isinstance(tables, list) or not all(isinstance(raw, dict) for raw in tables):
        raise RulePackError(f"{source}: rules must be [[rule]] tables")
    for index, raw in enumerate(tables):
        missing = fields - set(raw)
        unknown = set(raw) - fields
        if missing or unknown:
            name = raw.get("id", f"#{index + 1}")
            raise RulePackError(f"{source}: rule {name}: missing {sorted(missing)}, unknown {sorted(unknown)}")
        if raw["id"] in seen:
            raise RulePackError(f"{source}: rule id {raw['id']} appears twice")
        seen.add(raw["id"])
        if not isinstance(raw["threshold"], (int, float)) or isinstance(raw["threshold"], bool):
            raise RulePackError(f"{source}: rule {raw['id']}: threshold must be a number")
        rules.append(_check(_figures_filled(Rule(**{**raw, "threshold": float(raw["threshold"])}))))
    if not rules:
        raise RulePackError(f"{source}: no [[rule]] tables")
    return tuple(rules)


DOCUMENTED = ("description", "why", "example", "threshold_rationale")
"""A rule's texts that may quote the recorded calibration run (``rules.record``)."""


def _figures_filled(rule: Rule) -> Rule:
    """``rule`` with its texts' ``{{margins}}`` and ``{{KEY}}`` placeholders replaced by the recorded run's figures."""
    texts = {name: getattr(rule, name) for name in DOCUMENTED}
    if not any(PLACEHOLDER.search(text) for text in texts.values()):
        return rule
    record = default_record()
    if record is None:
        # Only a broken install lacks the record; the rules still judge, their rationale says what is missing.
        return replace(rule, **{name: PLACEHOLDER.sub(UNRECORDED, text) for name, text in texts.items()})
    # Not strict: a key the record cannot answer reads as missing in the text; it must not stop a scan (the docs'
    # script and the README test are strict).
    margins = record.margins(rule.id, rule.comparator, rule.threshold)
    return replace(rule, **{name: record.fill(text.replace("{{margins}}", margins), strict=False)
                            for name, text in texts.items()})


def default_pack() -> tuple[Rule, ...]:
    text = resources.files("rules").joinpath("default.toml").read_text(encoding="utf-8")
    return parse_pack(text, "default.toml")


def load_pack(path: Path | str | None = None, *, replace_default: bool = False) -> tuple[Rule, ...]:
    """The default pack, extended (or replaced) by the rules in ``path``; same id overrides."""
    if path is None:
        if replace_default:
            raise RulePackError("--replace-rules needs --rules FILE")
        return default_pack()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise RulePackError(f"{path}: cannot be read as a rule pack ({error})") from None
    extra = parse_pack(text, str(path))
    if replace_default:
        return extra
    merged = {rule.id: rule for rule in default_pack()}
    merged.update({rule.id: rule for rule in extra})
    return tuple(merged.values())


def apply_overrides(rules: Iterable[Rule], assignments: Iterable[str]) -> tuple[Rule, ...]:
    """``RULE.field=VALUE`` tweaks (``threshold``, ``comparator``, ``severity``, ``confidence``, ``effect``)."""
    by_id = {rule.id: rule for rule in rules}
    for assignment in assignments:
        target, _, value = assignment.partition("=")
        rule_id, _, name = target.partition(".")
        if not value or not name:
            raise RulePackError(f"--set {assignment!r}: expected RULE.field=VALUE, e.g. BD002.threshold=3")
        if rule_id not in by_id:
            raise RulePackError(f"--set {assignment!r}: no rule {rule_id} (rules: {', '.join(by_id)})")
        if name not in ("threshold", "comparator", "severity", "confidence", "effect"):
            raise RulePackError(f"--set {assignment!r}: {name} cannot be set; threshold, comparator, severity, confidence or effect can")
        if name == "threshold":
            try:
                parsed: Any = float(value)
            except ValueError:
                raise RulePackError(f"--set {assignment!r}: threshold must be a number") from None
        else:
            parsed = value
        by_id[rule_id] = _check(replace(by_id[rule_id], **{name: parsed}))
    return tuple(by_id.values())


def _sentence(rule: Rule, trigger: str | None, value: float, evidence: Mapping[str, Any]) -> str:
    # Numbers as ``Number``: a plain ``{value}`` reads to three significant digits, as everywhere else.
    fields = {**{k: Number(v) if isinstance(v, float) else v for k, v in evidence.items() if isinstance(v, (str, int, float))},
              "trigger": trigger or "", "value": Number(value), "threshold": Number(rule.threshold)}
    try:
        return rule.summary.format(**fields)
    except (KeyError, IndexError, ValueError):
        return f"{rule.title} ({rule.metric} {sig3(value)} {rule.comparator} {sig3(rule.threshold)})"


def judge(findings: Findings, rules: Iterable[Rule]) -> Verdict:
    """Evaluate every rule on ``findings``; rules whose metric could not be read are listed, not dropped."""
    rules = tuple(rules)
    fired: list[FiredRule] = []
    not_evaluated: list[NotEvaluated] = []
    caveats: list[str] = []
    for rule in rules:
        metric = METRICS[rule.metric]
        targets = findings.triggers if metric.scope == "trigger" else (None,)
        for trigger in targets:
            reading = metric.read(findings) if trigger is None else metric.read(findings, trigger)
            name = None if trigger is None else trigger.trigger
            if isinstance(reading, NotMeasured):
                not_evaluated.append(NotEvaluated(rule.id, name, reading.reason))
                if reading.caveat and reading.caveat not in caveats:
                    caveats.append(reading.caveat)
                continue
            if COMPARATORS[rule.comparator](reading.value, rule.threshold):
                fired.append(FiredRule(
                    rule.id, rule.title, rule.severity, rule.confidence, rule.effect, name, float(reading.value),
                    rule.comparator, rule.threshold, _sentence(rule, name, reading.value, reading.evidence), reading.evidence,
                ))
    level = max((EFFECT_LEVEL[f.effect] for f in fired), key=LEVELS.index, default="CLEAN")
    implicated = _implicated(fired)
    discovery = findings.discovery
    threshold = fires_threshold(discovery, rules) if discovery is not None else None
    fires_rule = next((rule for rule in rules if rule.id == FIRES_RULE), None)
    passes = COMPARATORS[fires_rule.comparator] if fires_rule is not None else operator.ge
    found = tuple(c.text for c in firing(discovery, threshold, passes)) if discovery is not None else ()
    said = explain(level, fired, implicated, caveats, findings)
    return Verdict(VERDICT_SCHEMA_VERSION, level, said.text, tuple(fired), tuple(rule.id for rule in rules), implicated,
                   tuple(not_evaluated), found, threshold, said.headline, said.points, said.context, said.caveats,
                   said.next_steps)


def _implicated(fired: Iterable[FiredRule]) -> tuple[str, ...]:
    strongest: dict[str, float] = {}
    for rule in fired:
        if rule.effect == "backdoor" and rule.trigger is not None:
            strongest[rule.trigger] = max(strongest.get(rule.trigger, float("-inf")), rule.value)
    return tuple(sorted(strongest, key=lambda t: (-strongest[t], t)))
