"""Judging, writing and printing a verdict: shared by ``scan``, ``judge`` and ``report``; and the ``rules`` commands.

Torch-free: ``bdscan judge`` and ``bdscan report`` work from a saved findings
document on any machine, in a second.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import click

from rules.document import Document, read_findings
from rules.engine import Rule, apply_overrides, judge, load_pack
from rules.verdict import FAIL_ON_CHOICES
from scanner.cli.app import EXIT_FINDING, EXIT_OK, debug_option
from scanner.cli.output import print_findings, print_rule, print_rule_list, print_verdict, stderr_console, stdout_console
from scanner.errors import InputError
from scanner.findings import Findings
from scanner.outputs import check_writable, write_text_atomic


def rule_pack_options(function):
    """--rules, --replace-rules and --set: which rules judge."""
    function = click.option("--set", "overrides", multiple=True, metavar="RULE.FIELD=VALUE",
                            help="Tweak one rule, e.g. --set BD002.threshold=3 (repeatable).")(function)
    function = click.option("--replace-rules", is_flag=True, help="Use only --rules FILE, not the default pack.")(function)
    function = click.option("--rules", "rules_file", type=click.Path(dir_okay=False, path_type=Path),
                            help="TOML rule pack extending the default one (same id replaces).")(function)
    return function


def rule_options(function):
    """--rules, --replace-rules, --set and --fail-on, shared by every command that judges one scan."""
    function = click.option("--fail-on", type=click.Choice(FAIL_ON_CHOICES, case_sensitive=False),
                            default="SUSPICIOUS", show_default=True,
                            help="Exit 1 when the verdict is at least this ('never': always exit 0 on a verdict).")(function)
    return rule_pack_options(function)


@dataclass(frozen=True)
class Outputs:
    """Where a verdict goes; every path is checked for writability before any work starts."""

    json: str | None = None
    """A path, or ``-`` for stdout alone."""
    report: Path | None = None
    sarif: Path | None = None

    def check(self) -> None:
        if self.json not in (None, "-"):
            check_writable(self.json, "--json")
        if self.report is not None:
            check_writable(self.report, "--out")
        if self.sarif is not None:
            check_writable(self.sarif, "--sarif")


def sarif_option(function):
    """--sarif FILE: the verdict as SARIF 2.1.0, for code-scanning dashboards."""
    return click.option("--sarif", "sarif_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help="Also write the verdict as SARIF 2.1.0 here (GitHub code scanning, other dashboards).")(function)


def resolve_rules(rules_file: Path | None, replace_rules: bool, overrides: tuple[str, ...]) -> tuple[Rule, ...]:
    """The rules a command judges with; ``RulePackError`` with a message for the user."""
    return apply_overrides(load_pack(rules_file, replace_default=replace_rules), overrides)


def command_line() -> str:
    return " ".join(shlex.quote(part) for part in ["bdscan", *sys.argv[1:]])


def write_report(document: Document, path: Path) -> None:
    from reports.render import render_report

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_text_atomic(path, render_report(document, command=command_line(), generated_at=stamp))


def write_sarif(documents: list[Document], rules: tuple[Rule, ...], path: Path) -> None:
    from reports.sarif import to_sarif
    from scanner import __version__

    log = to_sarif(documents, rules, version=__version__, command=command_line())
    write_text_atomic(path, json.dumps(log, indent=2, ensure_ascii=False) + "\n")


def conclude(findings: Findings, rules: tuple[Rule, ...], outputs: Outputs, fail_on: str, *,
             quiet: bool = False, show_measurements: bool = False) -> int:
    """Judge ``findings``, write and print the result; the exit code ``--fail-on`` asks for."""
    document = Document(findings, judge(findings, rules))
    stderr = stderr_console(quiet)
    if outputs.report is not None:
        write_report(document, outputs.report)
        stderr.print(f"report written to {outputs.report}", highlight=False)
    if outputs.sarif is not None:
        write_sarif([document], rules, outputs.sarif)
        stderr.print(f"SARIF written to {outputs.sarif}", highlight=False)
    if outputs.json == "-":
        click.echo(document.to_json())
    else:
        if outputs.json:
            write_text_atomic(outputs.json, document.to_json())
            stderr.print(f"findings written to {outputs.json}", highlight=False)
        console = stdout_console()
        if show_measurements:
            print_findings(console, findings)
        print_verdict(console, document)
    return EXIT_FINDING if document.verdict.fails(fail_on) else EXIT_OK


def _saved(findings_file: Path, rules_file: Path | None, replace_rules: bool, overrides: tuple[str, ...],
           outputs: Outputs) -> tuple[Findings, tuple[Rule, ...]]:
    rules = resolve_rules(rules_file, replace_rules, overrides)
    outputs.check()
    if not findings_file.is_file():
        raise InputError(f"{findings_file}: no such findings file")
    return read_findings(findings_file), rules


@click.command("judge")
@click.argument("findings_file", type=click.Path(path_type=Path))
@rule_options
@click.option("--json", "json_out", type=str, default=None, help="Write findings and the new verdict here ('-': stdout).")
@click.option("--out", "report_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the HTML report here.")
@sarif_option
@debug_option
def judge_command(findings_file: Path, rules_file: Path | None, replace_rules: bool, overrides: tuple[str, ...],
                  fail_on: str, json_out: str | None, report_out: Path | None, sarif_out: Path | None) -> int:
    """Judge a saved findings JSON again, with other rules or thresholds; no model is loaded.

    \b
    Examples:
      bdscan judge findings.json --set BD003.threshold=0.7
      bdscan judge findings.json --sarif bdscan.sarif --fail-on BACKDOORED
    """
    outputs = Outputs(json_out, report_out, sarif_out)
    findings, rules = _saved(findings_file, rules_file, replace_rules, overrides, outputs)
    return conclude(findings, rules, outputs, fail_on)


@click.command("report")
@click.argument("findings_file", type=click.Path(path_type=Path))
@click.option("--out", "report_out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="Where to write the HTML report.")
@rule_options
@debug_option
def report_command(findings_file: Path, report_out: Path, rules_file: Path | None, replace_rules: bool,
                   overrides: tuple[str, ...], fail_on: str) -> int:
    """Render the HTML verdict report again from a saved findings JSON (judged afresh); no model is loaded.

    Exits like a scan: 1 when the verdict is at or above --fail-on.

    \b
    Example:
      bdscan report findings.json --out report.html --fail-on never
    """
    outputs = Outputs(None, report_out)
    findings, rules = _saved(findings_file, rules_file, replace_rules, overrides, outputs)
    document = Document(findings, judge(findings, rules))
    write_report(document, report_out)
    click.echo(f"{document.verdict.level}: report written to {report_out}")
    return EXIT_FINDING if document.verdict.fails(fail_on) else EXIT_OK


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
