"""What a scan needs of the reference, made once and shared by every suspect scanned against it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from scanner.api.stages import enter_stage
from scanner.errors import InputError
from scanner.findings import ProbeSetFindings, TokenizerInfo
from scanner.inputs.loading import LoadedReference, load_reference
from scanner.inputs.probes import default_probes
from scanner.inputs.rendering import prepare, render
from scanner.inputs.tokenizer import faithful_tokenizer
from scanner.measure.probe_set import build_probe_set
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class ReferenceContext:
    """The loaded reference, the tokenizer checked against the checkpoint's own file, and the probes in its
    domain."""

    reference: LoadedReference
    tokenizer: PreTrainedTokenizerBase
    tokenizer_info: TokenizerInfo
    probe_set: ProbeSetFindings
    seconds: float
    """Loading the reference and building the probe set."""


def prepare_reference(reference: str, options: ScanOptions = ScanOptions(), progress: Progress = NO_PROGRESS, *,
                      probe_set: ProbeSetFindings | None = None) -> ReferenceContext:
    """Load ``reference`` and choose the probes (``options.probes``), or take ``probe_set`` as chosen before (a
    distributed fleet's workers reuse the driver's); ``BdscanError`` for what cannot be scanned."""
    started = time.perf_counter()
    model = options.model
    enter_stage(progress, options, "reference and probes")
    task = progress.start("loading the reference", 1)
    loaded = load_reference(reference, dtype=model.dtype, device=model.device, allow_download=model.allow_download,
                            quantisation=model.quantisation, max_memory=model.max_memory, offload_dir=model.offload_dir)
    progress.finish(task)
    triggers = options.triggers_to_try
    # The tokenizer is checked on the prompts known before sampling; sampled ones are decoded by it.
    known_prompts = list(options.probes.given) or default_probes()
    first = options.behaviour.positions[0]
    prepared = [prepare(loaded.tokenizer, known_prompts, t, first, options.seed) for t in triggers]
    tokenizer_file = loaded.directory / "tokenizer.json"
    tokenizer, tokenizer_info = faithful_tokenizer(loaded.tokenizer, tokenizer_file if tokenizer_file.is_file() else None,
                                                   prepared)
    check_context(tokenizer, loaded.config, options.probes.given, options.behaviour.max_new_tokens)
    if probe_set is None:
        probe_set = build_probe_set(
            loaded.model, tokenizer, mode=options.probes.source, given=options.probes.given, builtin=default_probes(),
            sample_count=options.probes.sample, seed=options.seed, exclude=list(triggers), batch_size=model.batch_size,
            progress=progress,
        )
    if not probe_set.used:
        raise InputError("no probe is left to scan with: the reference produced no usable prompts and no built-in "
                         "probe lies in its domain; give --probes from the model's domain")
    return ReferenceContext(loaded, tokenizer, tokenizer_info, probe_set, round(time.perf_counter() - started, 3))


ROOM = 64
"""Tokens a probe's rendered prompt must leave free beyond the answer: an insertion (a catalogue trigger, or a
discovery candidate of up to 16 tokens) and, in discovery, the suspect's clean answer and what follows it."""


def check_context(tokenizer: PreTrainedTokenizerBase, config: dict, prompts: tuple[str, ...], answer_tokens: int) -> None:
    """Refuse given probes that, rendered, leave the reference's context (``max_position_embeddings``) no room for an
    insertion and an answer of ``answer_tokens``: positions past it have no meaning to the model, and the scan
    would fail deep inside a forward or measure noise."""
    context = config.get("max_position_embeddings")
    if not isinstance(context, int) or not prompts:
        return
    longest = context - answer_tokens - ROOM
    lengths = [len(render(tokenizer, p).ids) for p in prompts]
    over = [(i, n) for i, n in enumerate(lengths, start=1) if n > longest]
    if over:
        shown = ", ".join(f"probe {i} ({n} tokens)" for i, n in over[:3]) + (f" and {len(over) - 3} more" if len(over) > 3 else "")
        raise InputError(f"{len(over)} of the given probes are too long for the reference's context of {context} "
                         f"tokens: {shown}; a probe may take {longest} once rendered, to leave room for an insertion "
                         f"and an answer of {answer_tokens} tokens: shorten them or leave them out")
