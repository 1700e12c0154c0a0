"""``bdscan scan`` with several suspects: one reference, a findings document and a report per suspect, an index
page, a summary table, and an exit code for the whole fleet."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from rules.document import Document, FleetEntry
from rules.engine import Rule, judge
from scanner.cli.app import EXIT_ERROR, EXIT_FINDING, EXIT_OK
from scanner.cli.judging import write_report, write_sarif
from scanner.cli.output import LEVEL_STYLE, stderr_console, stdout_console
from scanner.cli.progress import RichProgress
from scanner.fleet import FleetResult, scan_fleet
from scanner.inputs.fleet import output_names
from scanner.options import ScanOptions
from scanner.outputs import write_text_atomic


def run_fleet(suspects: list[Path], reference: str, options: ScanOptions, rules: tuple[Rule, ...], out_dir: Path,
              sarif: Path | None, fail_on: str, *, keep_going: bool, quiet: bool) -> int:
    """Scan every suspect, writing each one's files as it ends (an interrupted run keeps what it finished)."""
    names = output_names(suspects)
    out_dir.mkdir(parents=True, exist_ok=True)
    stderr = stderr_console(quiet)
    entries: list[FleetEntry] = []

    def done(index: int, result: FleetResult) -> None:
        name = names[index]
        if result.findings is None:
            entries.append(FleetEntry(name, str(result.suspect), None, error=result.error))
            stderr.print(f"[yellow]{result.suspect}: not scanned:[/] {result.error}", highlight=False)
            return
        document = Document(result.findings, judge(result.findings, rules))
        write_text_atomic(out_dir / f"{name}.json", document.to_json())
        write_report(document, out_dir / f"{name}.html")
        entries.append(FleetEntry(name, str(result.suspect), document, report=f"{name}.html", findings=f"{name}.json"))
        stderr.print(f"{result.suspect}: {document.verdict.level}", highlight=False)

    try:
        with RichProgress(stderr) as progress:
            scan_fleet(suspects, reference, options, progress, on_result=done)
    finally:
        if entries:  # interrupted or not, what was scanned gets its index, its SARIF and its summary
            _conclude(entries, reference, rules, out_dir, sarif)
    documents = [entry.document for entry in entries if entry.document is not None]
    if any(entry.document is None for entry in entries) and not keep_going:
        return EXIT_ERROR
    return EXIT_FINDING if any(document.verdict.fails(fail_on) for document in documents) else EXIT_OK


def _conclude(entries: list[FleetEntry], reference: str, rules: tuple[Rule, ...], out_dir: Path, sarif: Path | None) -> None:
    from reports.render import render_index
    from scanner import __version__

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_text_atomic(out_dir / "index.html", render_index(entries, reference=reference, version=__version__, generated_at=stamp))
    if sarif is not None:
        write_sarif([entry.document for entry in entries if entry.document is not None], rules, sarif)
    _print_summary(entries, out_dir)


def _print_summary(entries: list[FleetEntry], out_dir: Path) -> None:
    console = stdout_console()
    table = Table(title=f"bdscan fleet: {len(entries)} suspects")
    for column in ("suspect", "verdict", "triggers implicated", "report"):
        table.add_column(column)
    order = {"BACKDOORED": 0, "SUSPICIOUS": 1, "CLEAN": 3}
    for entry in sorted(entries, key=lambda e: (order[e.document.verdict.level] if e.document else 2, e.name)):
        if entry.document is None:
            table.add_row(entry.suspect, "[bold red]NOT SCANNED[/]", entry.error or "", "-")
            continue
        verdict = entry.document.verdict
        table.add_row(entry.suspect, f"[{LEVEL_STYLE[verdict.level]}]{verdict.level}[/]",
                      ", ".join(verdict.triggers_implicated) or "-", str(out_dir / (entry.report or "")))
    console.print(table)
    console.print(f"index: {out_dir / 'index.html'}", highlight=False)
