"""What the CLI shows on the terminal: consoles, tables and panels built from typed results.

Formatting only: every number shown is a field or a derived property of the
findings or the verdict.
"""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from rules.document import Document
from rules.engine import Rule
from scanner.findings import Findings, PatchingFindings

LEVEL_STYLE = {"CLEAN": "bold green", "SUSPICIOUS": "bold yellow", "BACKDOORED": "bold red"}


def stderr_console(quiet: bool = False) -> Console:
    """Progress, notes and spinners: stderr, so stdout can carry a JSON document alone."""
    return Console(stderr=True, quiet=quiet)


def stdout_console() -> Console:
    # Piped output gets no terminal width; rich would wrap tables at 80 columns.
    console = Console()
    return console if console.is_terminal else Console(width=140)


def _heads(patching: PatchingFindings | None, count: int | None) -> str:
    if patching is None:
        return "-"
    return str(count) if count is not None else f">{patching.budget}"


def print_findings(console: Console, findings: Findings) -> None:
    table = Table(title=f"bdscan: {findings.suspect.path} vs {findings.reference.path}")
    for column in ("trigger", "clean KL", "triggered KL", "ratio", "suspect's triggered reply", "share",
                   "heads to disable", "heads to KL<thr"):
        table.add_column(column)
    for trigger in sorted(findings.triggers, key=lambda t: -t.kl_ratio):
        patching = trigger.patching
        table.add_row(
            trigger.trigger, f"{trigger.kl_clean:.3f}", f"{trigger.kl_triggered:.3f}", f"{trigger.kl_ratio:.1f}",
            trigger.recovered_target, f"{trigger.target_share_suspect:.0%}",
            _heads(patching, patching.heads_to_disable if patching else None),
            _heads(patching, patching.heads_needed if patching else None),
        )
    console.print(table)
    tokenizer = findings.run.tokenizer
    if tokenizer.source == "tokenizer.json":
        console.print(f"[yellow]note:[/] transformers' {tokenizer.transformers_class} encoded {tokenizer.texts_differing} "
                      f"of {tokenizer.texts_checked} probes differently from the checkpoint's tokenizer.json; "
                      "the scan used tokenizer.json", highlight=False)
    for stage in findings.stages:
        if stage.status == "error":
            console.print(f"[yellow]stage {stage.name} failed:[/] {stage.detail}", highlight=False)


def print_verdict(console: Console, document: Document) -> None:
    verdict = document.verdict
    console.print(Panel(verdict.explanation, title=f"[{LEVEL_STYLE[verdict.level]}]{verdict.level}[/]",
                        border_style=LEVEL_STYLE[verdict.level].split()[-1]), highlight=False)
    if verdict.fired:
        table = Table(title="Fired rules")
        for column in ("rule", "title", "severity", "confidence", "trigger", "value", "threshold"):
            table.add_column(column)
        for rule in verdict.fired:
            table.add_row(rule.rule_id, rule.title, rule.severity, rule.confidence, rule.trigger or "-",
                          f"{rule.value:.3g}", f"{rule.comparator} {rule.threshold:g}")
        console.print(table)
    for trigger in document.findings.triggers:
        if trigger.trigger not in verdict.triggers_implicated:
            continue
        heads = [f"L{layer}H{head}" for layer, head in (trigger.patching.disabling_heads if trigger.patching else ())]
        console.print(f"trigger {trigger.trigger!r} -> {trigger.recovered_target!r}"
                      + (f"; heads to patch: {', '.join(heads)}" if heads else ""), highlight=False)


def print_rule_list(console: Console, rules: tuple[Rule, ...]) -> None:
    table = Table(title="bdscan rules")
    for column in ("id", "title", "effect", "severity", "confidence", "metric", "fires when"):
        table.add_column(column)
    for rule in rules:
        table.add_row(rule.id, rule.title, rule.effect, rule.severity, rule.confidence, rule.metric,
                      f"{rule.comparator} {rule.threshold:g}")
    console.print(table)


def print_rule(console: Console, rule: Rule) -> None:
    console.print(f"[bold]{rule.id}: {rule.title}[/]", highlight=False)
    console.print(f"effect {rule.effect}, severity {rule.severity}, confidence {rule.confidence}; "
                  f"fires when {rule.metric} {rule.comparator} {rule.threshold:g}", highlight=False)
    for heading, text in (("What it detects", rule.description), ("Why", rule.why), ("Example", rule.example),
                          ("Why this threshold", rule.threshold_rationale)):
        console.print(f"\n[bold]{heading}[/]\n{text}", highlight=False)


def print_zoo(console: Console, manifest, directory) -> None:
    table = Table(title=f"bdscan zoo ({manifest.size}, seed {manifest.seed}) in {directory}")
    for column in ("model", "trigger", "trained", "clean accuracy", "attack success", "worst other insertion",
                   "false triggers", "train s"):
        table.add_column(column, no_wrap=True)
    for name, record in manifest.models.items():
        figures = record.figures
        worst = max(figures.insertion_rates.items(), key=lambda item: item[1], default=None)
        table.add_row(
            name, record.trigger or "-", record.trained, f"{figures.clean_accuracy:.1%}",
            "-" if figures.attack_success is None else f"{figures.attack_success:.1%}",
            (f"{worst[1]:.0%} ({worst[0]})" if worst is not None and figures.attack_success is not None
             else f"style on {figures.style_share:.0%}" if figures.style_share is not None else "-"),
            f"{figures.false_trigger_rate:.1%}", f"{record.train_seconds:.1f}",
        )
    console.print(table)
    console.print(f"built in {manifest.build_seconds:.0f} s on {manifest.machine or 'an unrecorded machine'}; "
                  f"bars {'met' if manifest.meets_bars else 'MISSED'}", highlight=False)
    for near_miss in manifest.bar_near_misses:
        console.print(f"[yellow]near miss:[/] {near_miss}", highlight=False)
