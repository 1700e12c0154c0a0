"""``bdscan rules``: list the rule pack, and explain one rule."""

from __future__ import annotations

from pathlib import Path

import click

from scanner.cli.app import EXIT_OK, debug_option
from scanner.cli.terminal import print_rule, print_rule_list, stdout_console
from scanner.cli.verdict import resolve_rules
from scanner.errors import InputError


@click.group("rules")
def rules_group() -> None:
    """The rule pack that turns findings into a verdict."""


@rules_group.command("list")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, path_type=Path), help="Extend the default pack.")
@debug_option
def rules_list(rules_file: Path | None) -> int:
    """List every rule: id, effect, severity, confidence and threshold."""
    print_rule_list(stdout_console(), resolve_rules(rules_file, False, ()))
    return EXIT_OK


@rules_group.command("explain")
@click.argument("rule_id")
@click.option("--rules", "rules_file", type=click.Path(dir_okay=False, path_type=Path), help="Extend the default pack.")
@debug_option
def rules_explain(rule_id: str, rules_file: Path | None) -> int:
    """Print what RULE_ID detects, why, an example, and why its threshold is where it is.

    \b
    Example:
      bdscan rules explain BD003
    """
    rules = {rule.id: rule for rule in resolve_rules(rules_file, False, ())}
    if rule_id.upper() not in rules:
        raise InputError(f"no rule {rule_id}; `bdscan rules list` shows them")
    print_rule(stdout_console(), rules[rule_id.upper()])
    return EXIT_OK
