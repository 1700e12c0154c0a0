"""``bdscan judge`` and ``bdscan report``: judge a saved findings document again, and render its report again.

Torch-free: no model is loaded, so both work from a findings JSON on any machine, in a second.
"""

from __future__ import annotations

from pathlib import Path

import click

from rules.document import Document
from rules.engine import Rule, judge
from scanner.cli.app import EXIT_FINDING, EXIT_OK, debug_option
from scanner.cli.verdict import Outputs, conclude, resolve_rules, rule_options, sarif_option, write_report
from scanner.errors import InputError
from scanner.findings import Findings, read_findings


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
