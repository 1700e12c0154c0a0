"""Printing verdicts and rules for the CLI; rules themselves live in the torch-free ``rules`` package."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from rules.engine import LEVELS, Rule, RulePackError, Verdict, apply_overrides, load_pack

LEVEL_STYLE = {"CLEAN": "bold green", "SUSPICIOUS": "bold yellow", "BACKDOORED": "bold red"}


def rule_options(function):
    """--rules, --replace-rules, --set and --fail-on, shared by every command that judges."""
    function = click.option("--fail-on", type=click.Choice(["SUSPICIOUS", "BACKDOORED", "never"], case_sensitive=False),
                            default="SUSPICIOUS", show_default=True,
                            help="Exit 1 when the verdict is at least this.")(function)
    function = click.option("--set", "overrides", multiple=True, metavar="RULE.FIELD=VALUE",
                            help="Tweak one rule, e.g. --set BD002.threshold=3 (repeatable).")(function)
    function = click.option("--replace-rules", is_flag=True, help="Use only --rules FILE, not the default pack.")(function)
    function = click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False),
                            help="TOML rule pack extending the default one (same id replaces).")(function)
    return function


def resolve_rules(rules_file: str | None, replace_rules: bool, overrides: tuple[str, ...]) -> tuple[Rule, ...]:
    """The rules a command judges with; raises ``RulePackError`` with a message for the user."""
    if replace_rules and not rules_file:
        raise RulePackError("--replace-rules needs --rules FILE")
    return apply_overrides(load_pack(rules_file, replace_default=replace_rules), overrides)


def fails(verdict: Verdict, fail_on: str) -> bool:
    return fail_on.upper() != "NEVER" and LEVELS.index(verdict.level) >= LEVELS.index(fail_on.upper())


def print_verdict(console: Console, verdict: Verdict, findings: dict[str, Any]) -> None:
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
    for trigger in findings["triggers"]:
        if trigger["trigger"] not in verdict.triggers_implicated:
            continue
        patching = trigger.get("patching") or {}
        heads = [f"L{s['layer']}H{s['head']}" for s in patching.get("steps", [])[: patching.get("heads_to_disable") or 0]]
        console.print(f"trigger {trigger['trigger']!r} -> {trigger['recovered_target']!r}"
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
