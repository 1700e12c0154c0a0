"""Judging, writing and printing one verdict: what ``scan``, ``repair``, ``judge``, ``report`` and fleets share.

The rule options every judging command takes, the outputs a verdict goes to
(checked for writability before any work), and writing the findings
document, the HTML report and SARIF. Torch-free, so ``bdscan judge`` and
``bdscan report`` work from a saved findings document on any machine.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import click

from rules.document import Document
from rules.engine import Rule, apply_overrides, judge, load_pack
from rules.verdict import FAIL_ON_CHOICES
from scanner.cli.app import EXIT_FINDING, EXIT_OK
from scanner.cli.terminal import print_findings, print_verdict, stderr_console, stdout_console
from scanner.files import check_writable, write_text_atomic
from scanner.findings import Findings


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

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_text_atomic(path, render_report(document, command=command_line(), generated_at=stamp))


def write_sarif(documents: list[Document], rules: tuple[Rule, ...], path: Path,
                failures: list[tuple[str, str]] | None = None) -> None:
    """``reports.sarif.to_sarif``'s log at ``path``; ``failures``: (suspect, why) of suspects not scanned."""
    from reports.sarif import to_sarif
    from scanner import __version__

    log = to_sarif(documents, rules, version=__version__, command=command_line(), failures=failures or ())
    write_text_atomic(path, json.dumps(log, indent=2, ensure_ascii=False) + "\n")


def conclude(findings: Findings, rules: tuple[Rule, ...], outputs: Outputs, fail_on: str, *,
             quiet: bool = False, show_measurements: bool = False, verbose: bool = False) -> int:
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
            print_findings(console, document, verbose)
        print_verdict(console, document)
    return EXIT_FINDING if document.verdict.fails(fail_on) else EXIT_OK
