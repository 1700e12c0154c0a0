"""``bdscan scan`` with several suspects: one reference, a findings document and a report per suspect (under a
file name each, chosen here), an index page, a summary table, and an exit code for the whole fleet."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from reports.index import FleetEntry
from rules.document import Document
from rules.engine import Rule, judge
from scanner.cli.app import EXIT_ERROR, EXIT_FINDING, EXIT_OK, describe
from scanner.cli.progress import RichProgress
from scanner.cli.terminal import LEVEL_STYLE, stderr_console, stdout_console
from scanner.cli.verdict import write_report, write_sarif
from scanner.files import write_text_atomic
from scanner.options import ScanOptions

if TYPE_CHECKING:  # the fleet's scan imports torch; naming its files must not
    from scanner.api.distributed import RayPlacement
    from scanner.api.fleet import FleetResult


def output_names(suspects: Sequence[Path]) -> list[str]:
    """A distinct, file-safe name per suspect for its report and findings: its own name, with its parent's or a
    number when two share one."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"

    names: list[str] = []
    for path in suspects:
        stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
        name = safe(stem)
        if name in names:
            name = safe(f"{path.parent.name}-{stem}")
        base, count = name, 2
        while name in names:
            name, count = f"{base}-{count}", count + 1
        names.append(name)
    return names


def run_fleet(suspects: list[Path], reference: str, options: ScanOptions, rules: tuple[Rule, ...], out_dir: Path,
              sarif: Path | None, fail_on: str, *, keep_going: bool, quiet: bool, resume: bool = False,
              placement: RayPlacement | None = None) -> int:
    """Scan every suspect (on Ray when ``placement`` says where), writing each one's files as it ends: an
    interrupted run keeps what it finished and names what it did not reach, and ``resume`` skips the suspects
    whose findings in ``out_dir`` are of the same weights, reference, options and bdscan version."""
    names = output_names(suspects)
    out_dir.mkdir(parents=True, exist_ok=True)
    stderr = stderr_console(quiet)
    entries: dict[int, FleetEntry] = {}

    def done(index: int, result: FleetResult, resumed: bool = False) -> None:
        name = names[index]
        if result.error is not None:
            line = describe(result.error)  # the same words the error would have on its own: one mapping
            for stale in (out_dir / f"{name}.json", out_dir / f"{name}.html"):
                stale.unlink(missing_ok=True)  # an earlier scan's verdict must not sit beside "not scanned"
            entries[index] = FleetEntry(name, str(result.suspect), None, error=line)
            stderr.print(f"[yellow]{result.suspect}: not scanned:[/] {line}", highlight=False)
            return
        document = Document(result.findings, judge(result.findings, rules))
        write_text_atomic(out_dir / f"{name}.json", document.to_json())
        write_report(document, out_dir / f"{name}.html")
        entries[index] = FleetEntry(name, str(result.suspect), document, report=f"{name}.html", findings=f"{name}.json")
        again = " (resumed: scanned before with the same weights, reference, options and bdscan version)" if resumed else ""
        stderr.print(f"{result.suspect}: {document.verdict.level}{again}", highlight=False)

    todo = list(range(len(suspects)))
    stopped = ""
    try:
        if resume:
            todo = _resume(suspects, names, reference, options, out_dir, done)
        if todo:
            with RichProgress(stderr) as progress:
                _scan(placement, [suspects[i] for i in todo], reference, options, progress,
                      lambda position, result: done(todo[position], result))
    except BaseException as error:
        stopped = NOT_REACHED if isinstance(error, KeyboardInterrupt) else STOPPED
        raise
    finally:
        if stopped:
            for index in range(len(suspects)):
                entries.setdefault(index, FleetEntry(names[index], str(suspects[index]), None, error=stopped))
        if entries:  # interrupted or not, what was scanned gets its index, its SARIF and its summary
            _conclude([entries[i] for i in sorted(entries)], reference, rules, out_dir, sarif, stopped)
    documents = [entry.document for entry in entries.values() if entry.document is not None]
    if any(entry.document is None for entry in entries.values()) and not keep_going:
        return EXIT_ERROR
    return EXIT_FINDING if any(document.verdict.fails(fail_on) for document in documents) else EXIT_OK


NOT_REACHED = "not reached: the run was interrupted before this suspect was scanned"
STOPPED = "not reached: the run stopped on an error (see the terminal) before this suspect was scanned"


def _resume(suspects: list[Path], names: list[str], reference: str, options: ScanOptions, out_dir: Path,
            done: Callable[..., None]) -> list[int]:
    """Deliver the suspects already scanned as they would be now; the indices still to scan."""
    from scanner.api.fleet import FleetResult
    from scanner.api.resume import Resume

    check = Resume(reference, options)
    todo = []
    for index, suspect in enumerate(suspects):
        previous = check.previous(out_dir / f"{names[index]}.json", suspect)
        if previous is None:
            todo.append(index)
        else:
            done(index, FleetResult(suspect, previous), resumed=True)
    return todo


def _scan(placement: RayPlacement | None, suspects: list[Path], reference: str, options: ScanOptions,
          progress: RichProgress, on_result: Callable[[int, FleetResult], None]) -> None:
    if placement is None:
        from scanner.api.fleet import scan_fleet

        scan_fleet(suspects, reference, options, progress, on_result=on_result)
    else:
        from scanner.api.distributed import scan_fleet_on_ray

        scan_fleet_on_ray(suspects, reference, options, placement, progress, on_result=on_result)


def _conclude(entries: list[FleetEntry], reference: str, rules: tuple[Rule, ...], out_dir: Path, sarif: Path | None,
              stopped: str = "") -> None:
    from reports.render import render_index
    from scanner import __version__

    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    why = {NOT_REACHED: "it was interrupted", STOPPED: "an error stopped it (see the terminal)"}.get(stopped, "")
    write_text_atomic(out_dir / "index.html", render_index(entries, reference=reference, version=__version__,
                                                           generated_at=stamp, stopped=why))
    if sarif is not None:
        write_sarif([entry.document for entry in entries if entry.document is not None], rules, sarif,
                    [(entry.suspect, entry.error or "") for entry in entries if entry.document is None])
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
