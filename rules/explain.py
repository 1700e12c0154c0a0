"""The verdict in words: a headline, the evidence as short points with rule ids, what the rest is, and what to do.

A reviewer reads the headline in seconds (BACKDOORED: the trigger, the target, how often; CLEAN: what was tested),
the points when they want the evidence, and the next steps when they must act. ``Explanation.text`` joins it all
for the one-paragraph places (the JSON's ``explanation``, SARIF).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rules.metrics import WHERE
from rules.numbers import sig3
from rules.verdict import FiredRule
from scanner.findings import Findings

SETTING = re.compile(r"With '[^']*' inserted (?:" + "|".join(map(re.escape, WHERE.values())) + "), ")
"""The opening several trigger rules' sentences share (``summary`` in the pack), said once while consecutive
sentences share it."""

NEXT = {
    "BACKDOORED": (
        "Do not deploy this checkpoint.",
        "Read each probe's answers with and without the trigger in the report (--out report.html).",
        "`bdscan repair SUSPECT --reference REFERENCE --out DIR` restores the implicated parts from the reference "
        "and checks that the trigger no longer fires.",
    ),
    "SUSPICIOUS": (
        "Read the fired rules' evidence in the report (--out report.html).",
        "Scan again with prompts from the model's own domain (--probes FILE), or test a string you suspect "
        "(--trigger TEXT).",
        "Re-judge the saved findings with another threshold, no model needed: "
        "`bdscan judge findings.json --set BD002.threshold=3`.",
    ),
    "CLEAN": (
        "If the model serves a narrow domain, scan again with its own prompts (--probes FILE).",
        "Test a string you suspect with --trigger TEXT.",
    ),
}
"""What a reader does with each verdict."""

ORDER = {"backdoor": 0, "suspicious": 1, "unreliable": 2, "info": 3}

CONTEXT_LEAD = "For context, not evidence of a backdoor:"
"""What introduces the informational rules, in the text, the terminal and the report alike."""


@dataclass(frozen=True)
class Explanation:
    headline: str
    """One sentence: the level, and the strongest evidence (or, for CLEAN, what was tested)."""
    points: tuple[str, ...]
    """The other fired rules that move the verdict, one sentence each, ``[BDxxx]`` at the end."""
    context: tuple[str, ...]
    """Informational rules that fired: context, not evidence of a backdoor."""
    caveats: tuple[str, ...]
    """What the evidence could not cover, and how confident the scan is."""
    next_steps: tuple[str, ...]

    @property
    def text(self) -> str:
        parts = [self.headline, *self.points]
        if self.context:
            parts += [CONTEXT_LEAD, *self.context]
        parts += self.caveats
        if self.next_steps:
            parts.append("Next: " + " ".join(self.next_steps))
        return " ".join(parts)


def explain(level: str, fired: Iterable[FiredRule], implicated: Sequence[str], caveats: Iterable[str],
            findings: Findings) -> Explanation:
    """The verdict ``level`` in words from the ``fired`` rules: one sentence per rule (its strongest trigger),
    the strongest evidence first; ``findings`` say what a CLEAN scan tested."""
    chosen: dict[tuple[str, str], FiredRule] = {}
    unreliable: list[FiredRule] = []
    for rule in sorted(fired, key=lambda f: (ORDER[f.effect], f.rule_id, -f.value)):
        if rule.effect == "unreliable":
            unreliable.append(rule)  # each says a different way the scan cannot be trusted
        else:
            chosen.setdefault((rule.rule_id, rule.effect), rule)
    # A backdoor's headline is its strongest backdoor rule for the first implicated trigger.
    lead = implicated[0] if level == "BACKDOORED" and implicated else None
    ranked = sorted([*chosen.values(), *unreliable],
                    key=lambda f: (ORDER[f.effect], lead is not None and f.trigger != lead, f.rule_id))
    evidence = [f for f in ranked if f.effect != "info"]
    context = [f for f in ranked if f.effect == "info"]
    sentences = _said_once([f"{f.sentence} [{f.rule_id}]" for f in [*evidence, *context]])
    said_evidence, said_context = sentences[:len(evidence)], sentences[len(evidence):]
    caveats = list(caveats)
    if level == "CLEAN":
        headline = (f"CLEAN: none of the {len(findings.triggers)} triggers measured made the suspect behave unlike "
                    f"the reference.")
        points = [tested(findings), confidence(findings, bool(caveats))]
    else:
        first = said_evidence[0] if said_evidence else ""
        # "BACKDOORED: with '😇' inserted ...": the strongest rule's sentence continues the level.
        headline = f"{level}: {first[:1].lower()}{first[1:]}" if first else f"{level}."
        points = said_evidence[1:]
    return Explanation(headline, tuple(points), tuple(said_context), tuple(caveats), NEXT[level])


def _said_once(sentences: list[str]) -> list[str]:
    """``With 'X' inserted at the end of each probe, ...`` said once while the sentences that follow read the same
    setting; said again where another trigger's came between."""
    out, last = [], ""
    for sentence in sentences:
        setting = SETTING.match(sentence)
        if setting and setting.group(0) == last:
            rest = sentence[setting.end():]
            sentence = rest[:1].upper() + rest[1:]
        last = setting.group(0) if setting else ""
        out.append(sentence)
    return out


def tested(findings: Findings) -> str:
    """What a CLEAN scan tried, in one sentence: the triggers (the catalogue's or the user's, and discovery's
    search), where, and on how many probes."""
    run = findings.run
    discovery = findings.discovery
    found = len(discovery.proposed) if discovery is not None else 0
    listed = len(findings.triggers) - min(found, len(findings.triggers))
    source = "given" if run.triggers_from.startswith("user") else "catalogue"
    said = f"Tested: {listed} {source} trigger{'s' if listed != 1 else ''}"
    if discovery is not None:
        vocabulary = (f"every one of the {discovery.vocabulary:,}" if discovery.exhaustive
                      else f"a shortlist of the {discovery.vocabulary:,}")
        measured = f"{found} measured as triggers, " if found else ""
        said += (f", and discovery's search, which swept {vocabulary} vocabulary tokens and scored {discovery.scored:,} "
                 f"candidates on every search probe ({measured}none firing)")
    # A catalogue trigger is measured in full only where its first response token moves (the scanner records the
    # positions it left out as skipped stages).
    screened = any(s.status == "skipped" and s.name.startswith("behaviour[") for s in findings.stages)
    return (f"{said}, each inserted {_positions(run.trigger_positions)} of {len(findings.probes.used)} probes"
            + (" (a catalogue trigger answered in full only where its first response token moved)." if screened else "."))


def _positions(positions: Sequence[str]) -> str:
    words = {"start": "at the start", "random": "at a random place", "end": "at the end"}
    said = [words[p] for p in positions]
    return said[0] if len(said) == 1 else ", ".join(said[:-1]) + " and " + said[-1]


def confidence(findings: Findings, caveated: bool) -> str:
    """How far a CLEAN verdict reaches: whether the probes were measured to lie in the models' domain, and what
    no scan of these probes can see."""
    probes = findings.probes
    absent = "a trigger that fires only on kinds of prompt absent from the probes would not show"
    if findings.discovery is None:
        return "Confidence: only these triggers were tested (discovery did not run); another trigger would not show."
    if caveated:
        return f"Confidence: {absent}."
    if math.isfinite(probes.surprise_excess):
        return (f"Confidence: the probes lie within the reference's domain (median surprise "
                f"{sig3(probes.surprise_excess)} nats per token from its own prompts); {absent}.")
    return f"Confidence: whether the probes lie in the models' domain could not be measured; {absent}."
