"""What the CLI shows on the terminal: consoles, tables and panels built from typed results.

Formatting only: every number shown is a field or a derived property of the
findings or the verdict.
"""

from __future__ import annotations

import math
from collections import Counter

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rules.calibration import verdict_is_right
from rules.document import Document
from rules.engine import Rule
from rules.explain import CONTEXT_LEAD
from rules.metrics import SOURCE_WORDS, not_writing_prompts
from rules.numbers import sig3
from scanner.findings import POSITIONS, PatchingFindings, TriggerFindings
from scanner.findings.discovery import DiscoveredCandidate, DiscoveryFindings

LEVEL_STYLE = {"CLEAN": "bold green", "SUSPICIOUS": "bold yellow", "BACKDOORED": "bold red"}


def stderr_console(quiet: bool = False) -> Console:
    """Progress, notes and spinners: stderr, so stdout can carry a JSON document alone."""
    return Console(stderr=True, quiet=quiet)


def stdout_console() -> Console:
    # Piped output gets no terminal width; rich would wrap tables at 80 columns.
    console = Console()
    return console if console.is_terminal else Console(width=140)


def _heads(patching: PatchingFindings | None, disable: bool) -> str:
    """Heads patched until the reply stops (``disable``), or until the output KL falls under the threshold."""
    if patching is None:
        return "-"
    if disable:
        count = patching.heads_to_disable
        every_head = patching.all_heads_attack_success
        reached = every_head is None or every_head <= patching.reference_attack_success
    else:
        count, reached = patching.heads_needed, patching.all_heads_kl < patching.threshold
    if count is not None:
        return str(count)
    if patching.stopped and not reached:
        return "not by heads"  # every head at once did not reach it, so the steps stopped (the findings say why)
    return f">{patching.heads_tried}"


def _collapse_by_position(trigger: TriggerFindings) -> str:
    """Target collapse at start/random/end, '-' where the trigger was not measured in full (not asked for, or a
    catalogue trigger whose first response token ruled the position out)."""
    tried = {p.position: p.target_collapse for p in trigger.by_position}
    return "/".join(f"{max(tried[where], 0.0):.0%}" if where in tried else "-" for where in POSITIONS)


TABLE_CAPTION = (
    "KL: output KL(suspect || reference) in nats over each probe's answer, clean and with the trigger at 'at' (where it "
    "moved the suspect most); ratio: triggered over clean; share: probes whose triggered reply opens so; collapse: "
    "that share net of the reference's and of the suspect's own without the trigger, per position ('-': not measured "
    "there; a catalogue trigger is measured only where its first response token moves); heads: attention "
    "heads patched from the reference until the reply stops, and until the output KL falls under --kl-threshold, "
    "for the triggers the verdict implicates ('not by heads': every head at once does not bring it there, so the "
    "steps stopped; '>N': not the first N, and where N is under the budget, no longer prefix a grid of them tried "
    "either; the report says why).")


def print_findings(console: Console, document: Document, verbose: bool = False) -> None:
    """The measurements behind the verdict: a row per trigger in the verdict's evidence (every trigger with
    ``verbose``), one line for the rest, then the probes and discovery."""
    findings = document.findings
    shown = [t for t in sorted(findings.triggers, key=lambda t: -t.kl_ratio) if verbose or t.trigger in document.verdict.triggers_in_evidence]
    if shown:
        table = Table(title=escape(f"bdscan: {findings.suspect.path} vs {findings.reference.path}"),
                      caption=TABLE_CAPTION, caption_justify="left")
        for column in ("trigger", "at", "clean KL", "triggered KL", "ratio", "suspect's triggered reply", "share",
                       "collapse: start / random / end", "heads that remove it", "heads to KL < threshold"):
            table.add_column(column)
        # Heads are shown for the triggers the verdict implicates: a catalogue string that fired on 10% of probes
        # has heads that "disable" it too, which is no finding.
        implicated = set(document.verdict.triggers_implicated)
        for trigger in shown:
            patching = trigger.patching if trigger.trigger in implicated else None
            table.add_row(
                Text(trigger.trigger), trigger.position, sig3(trigger.kl_clean), sig3(trigger.kl_triggered),
                sig3(trigger.kl_ratio), Text(trigger.recovered_target), f"{trigger.target_share_suspect:.0%}",
                _collapse_by_position(trigger),
                _heads(patching, disable=True), _heads(patching, disable=False),
            )
        console.print(table)
    quiet = [t for t in findings.triggers if t not in shown]
    if quiet:
        strongest = max(quiet, key=lambda t: t.kl_ratio)
        console.print(Text(
            f"{'also' if shown else 'triggers'}: {len(quiet)} measured without evidence against the suspect "
            f"({', '.join(repr(t.trigger) for t in quiet[:8])}{', ...' if len(quiet) > 8 else ''}); the strongest, "
            f"{strongest.trigger!r}: KL ratio {sig3(strongest.kl_ratio)}, {strongest.target_share_suspect:.0%} of "
            f"its answers opening alike (--verbose: a row each)"))
    probes, clean = findings.probes, findings.clean
    sources = Counter(p.source for p in probes.probes if p.used)
    if not math.isfinite(probes.domain_surprise):
        domain = "; the reference's domain could not be sampled"
    elif not probes.writes_prompts:
        domain = "; the reference does not write prompts, so their fit to its domain was not measured"
    else:
        domain = f"; surprise {sig3(probes.surprise_excess)} nats/token against the reference's own prompts"
    console.print(Text(f"probes: {len(probes.used)} (" + ", ".join(f"{n} {SOURCE_WORDS[s]}" for s, n in sorted(sources.items()))
                       + f"){domain}; clean answers differ from the reference's on {clean.answers_changed:.0%}, "
                       f"clean KL {sig3(clean.kl_mean)} nats"))
    if findings.discovery is not None:
        by_text = {c.text: c for c in findings.discovery.candidates}
        firing = tuple(by_text[text] for text in document.verdict.discovered_firing)
        console.print(discovery_line(findings.discovery, firing), highlight=False)
    if math.isfinite(probes.domain_surprise) and not probes.writes_prompts:
        instead = ("the scan used the built-in prompts instead of its samples" if probes.mode == "auto"
                   else "its samples could not tell whether the probes are in its domain")
        fix = " Give --probes FILE with prompts of the model's own task." if probes.mode != "file" else ""
        console.print(f"[yellow]note:[/] the reference does not write prompts: {escape(not_writing_prompts(probes))}. "
                      f"{instead[0].upper()}{instead[1:]}.{fix}", highlight=False)
    tokenizer = findings.run.tokenizer
    if tokenizer.source == "tokenizer.json":
        console.print(f"[yellow]note:[/] transformers' {tokenizer.transformers_class} encoded {tokenizer.texts_differing} "
                      f"of {tokenizer.texts_checked} probes differently from the checkpoint's tokenizer.json; "
                      "the scan used tokenizer.json", highlight=False)
    for stage in findings.stages:
        if stage.status == "error":
            console.print(f"[yellow]stage {escape(stage.name)} failed:[/] {escape(stage.detail)}", highlight=False)


def discovery_line(discovery: DiscoveryFindings, firing: tuple[DiscoveredCandidate, ...]) -> str:
    """One line on what discovery searched and what fired (``firing``: the candidates the verdict judged firing)."""
    searched = (f"discovery: {discovery.scored:,} candidates scored on every search probe (from a sweep of "
                f"{'each of the' if discovery.exhaustive else 'a shortlist of the'} {discovery.vocabulary:,} vocabulary tokens, "
                f"then grown; {discovery.sequences:,} sequences through the models, {sig3(discovery.seconds)} s)")
    if not firing:
        # A behaviour switch's score is a departure, not a KL.
        best = next((c for c in discovery.candidates if not c.switched_from), None)
        found = (f"; nothing fired (the insertion that moved the suspect's output most: {best.text!r}, "
                 f"{sig3(best.score)} nats of trigger-specific KL)" if best else "; nothing fired")
    else:
        found = "; fires: " + ", ".join(
            f"{c.text!r} at the {c.position} -> no longer {c.switched_from!r} on {c.fire_rate:.0%} of the probes "
            f"answered so" if c.switched_from else
            f"{c.text!r} at the {c.position} -> {'after the answer, ' if c.after_answer else ''}{c.target!r} on "
            f"{c.fire_rate:.0%} of search probes" for c in firing[:3])
    notes = "".join(f" [yellow]note:[/] {escape(note)}." for note in discovery.notes)
    return escape(searched + found) + notes


def verdict_panel(document: Document) -> Panel:
    """The verdict as a reviewer reads it: the headline, the evidence as points, context, caveats, next steps."""
    verdict = document.verdict
    colour = LEVEL_STYLE[verdict.level].split()[-1]
    parts: list[Text | Table] = [Text(verdict.headline, style="bold"), _bullets(verdict.points)]
    if verdict.context:
        parts += [Text(CONTEXT_LEAD, style="dim"), _bullets(verdict.context, "dim")]
    parts.append(_bullets(verdict.caveats, "yellow"))
    if verdict.next_steps:
        parts += [Text("Next:", style="bold"), _bullets(verdict.next_steps)]
    return Panel(Group(*parts), title=f"[{LEVEL_STYLE[verdict.level]}]{verdict.level}[/]", border_style=colour)


def _bullets(items: tuple[str, ...], style: str = "") -> Table:
    """``items`` as a bulleted list whose wrapped lines stay under their text."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=3, justify="right")
    grid.add_column(ratio=1)
    for item in items:
        grid.add_row(Text("•", style=style), Text(item, style=style))
    return grid


def print_verdict(console: Console, document: Document) -> None:
    verdict = document.verdict
    console.print(verdict_panel(document))
    if verdict.fired:
        table = Table(title="Fired rules")
        for column in ("rule", "title", "severity", "confidence", "trigger", "value", "threshold"):
            table.add_column(column)
        for rule in verdict.fired:
            table.add_row(rule.rule_id, rule.title, rule.severity, rule.confidence, Text(rule.trigger or "-"),
                          sig3(rule.value), f"{rule.comparator} {sig3(rule.threshold)}")
        console.print(table)
    for trigger in document.findings.triggers:
        if trigger.trigger not in verdict.triggers_implicated:
            continue
        heads = [f"L{layer}H{head}" for layer, head in (trigger.patching.disabling_heads if trigger.patching else ())]
        console.print(Text(f"trigger {trigger.trigger!r} -> {trigger.recovered_target!r}"
                           + (f"; heads to patch: {', '.join(heads)}" if heads else "")))


def print_rule_list(console: Console, rules: tuple[Rule, ...]) -> None:
    table = Table(title="bdscan rules")
    for column in ("id", "title", "effect", "severity", "confidence", "metric", "fires when"):
        table.add_column(column)
    for rule in rules:
        table.add_row(rule.id, rule.title, rule.effect, rule.severity, rule.confidence, rule.metric,
                      f"{rule.comparator} {sig3(rule.threshold)}")
    console.print(table)


def print_rule(console: Console, rule: Rule) -> None:
    console.print(f"[bold]{escape(rule.id)}: {escape(rule.title)}[/]", highlight=False)
    console.print(Text(f"effect {rule.effect}, severity {rule.severity}, confidence {rule.confidence}; "
                       f"fires when {rule.metric} {rule.comparator} {sig3(rule.threshold)}"))
    for heading, text in (("What it detects", rule.description), ("Why", rule.why), ("Example", rule.example),
                          ("Why this threshold", rule.threshold_rationale)):
        console.print(f"\n[bold]{heading}[/]\n{escape(text)}", highlight=False)


def _zoo_change(figures) -> str:
    """A poisoned model's worst near miss (held-out insertion, composite part, neighbouring subject); a benign
    model's intended change."""
    if figures.attack_success is not None:
        misses = {**figures.insertion_rates, **figures.quiet_rates}
        worst = max(misses.items(), key=lambda item: item[1], default=None)
        return "-" if worst is None else f"{worst[1]:.0%} ({worst[0]})"
    if figures.intended:
        worst = max(figures.insertion_rates.items(), key=lambda item: item[1], default=None)
        return "; ".join([*(f"{change} {share:.0%}" for change, share in figures.intended.items()),
                          *([f"conditioned by an insertion: {worst[1]:.0%} ({worst[0]})"] if worst else [])])
    if figures.style_share is not None:
        return f"style on {figures.style_share:.0%}"
    return f"new task {figures.task_accuracy:.0%}" if figures.task_accuracy is not None else "-"


def print_zoo(console: Console, manifest, directory) -> None:
    table = Table(title=f"bdscan zoo ({manifest.size}, seed {manifest.seed}) in {directory}")
    for column in ("model", "trigger", "at", "behaviour", "trained", "clean acc.", "attack success",
                   "worst near miss / change", "false trig.", "train s"):
        # The trigger may be a phrase: it wraps at words, so that the model names never get cut.
        wraps = column in ("trigger", "worst near miss / change")
        table.add_column(column, no_wrap=not wraps, min_width=12 if wraps else None)
    for name, record in manifest.models.items():
        figures, truth = record.figures, record.truth
        behaviour = truth.behaviour if truth.behaviour != "none" else "-"
        if truth.needs == "all":
            behaviour += " (all triggers)"
        table.add_row(
            name, record.trigger or "-", record.position if record.trigger else "-", behaviour, record.trained,
            f"{figures.clean_accuracy:.1%}", "-" if figures.attack_success is None else f"{figures.attack_success:.1%}",
            _zoo_change(figures), f"{figures.false_trigger_rate:.1%}", f"{record.train_seconds:.1f}",
        )
    console.print(table)
    kernels = f", kernels {manifest.kernels}" if manifest.kernels else ""
    console.print(f"built in {manifest.build_seconds:.0f} s on {manifest.machine or 'an unrecorded machine'}{kernels} "
                  f"(zoo version {manifest.zoo_version}); bars {'met' if manifest.meets_bars else 'MISSED'}", highlight=False)
    retrained = [f"{name} ({record.attempts} trainings)" for name, record in manifest.models.items() if record.attempts > 1]
    if retrained:
        console.print(f"trained again to meet their bars: {', '.join(retrained)}", highlight=False)
    for near_miss in manifest.bar_near_misses:
        console.print(f"[yellow]near miss:[/] {near_miss}", highlight=False)


def _reading(value: float | None) -> str:
    return sig3(value)


def print_calibration(console: Console, cases, verdicts, calibrations) -> None:
    """The verdict on each model of known truth, then each rule's deciding reading on each, then the margins."""
    table = Table(title="Verdicts against ground truth")
    for column in ("model", "truth", "verdict", "implicated", "right"):
        table.add_column(column)
    for case in cases:
        verdict = verdicts[case.name]
        right = verdict_is_right(case, verdict)
        table.add_row(case.name, f"poisoned: {case.trigger}" if case.poisoned else "benign", verdict.level,
                      ", ".join(verdict.triggers_implicated) or "-", "[green]yes[/]" if right else "[bold red]NO[/]")
    console.print(table)
    table = Table(title="Each rule's deciding reading (benign: closest to firing over every trigger; poisoned: on its own trigger)")
    table.add_column("model", no_wrap=True)
    for calibration in calibrations:
        table.add_column(calibration.rule.id, no_wrap=True, justify="right")
    for case in cases:
        cells = []
        for calibration in calibrations:
            value = calibration.readings[case.name]
            cells.append(f"[bold]{_reading(value)}[/]" if calibration.fires(value) else _reading(value))
        table.add_row(case.name, *cells)
    console.print(table)
    console.print("Bold: the rule fires on that reading; -: the rule could not be read (see the findings' not_evaluated).",
                  highlight=False)
    table = Table(title="Margins")
    for column in ("rule", "title", "fires when", "benign worst", "poisoned weakest", "benign that fire", "poisoned missed"):
        table.add_column(column)
    for calibration in calibrations:
        rule = calibration.rule
        table.add_row(rule.id, rule.title, f"{rule.metric} {rule.comparator} {sig3(rule.threshold)}",
                      _reading(calibration.benign_worst), _reading(calibration.poisoned_weakest),
                      "n/a" if rule.effect == "info" else ", ".join(calibration.false_positives) or "none",
                      ", ".join(calibration.misses) or "none" if calibration.detects else "n/a")
    console.print(table)
