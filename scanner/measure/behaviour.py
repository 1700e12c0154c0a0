"""Behaviour: completions with and without the trigger, output KL, per-token loss.

Output KL is measured teacher-forced on the suspect's own greedy completion:
at every response position (the last prompt token, each completion token),
KL(suspect || reference) between next-token distributions, masked to real
tokens and averaged per probe.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from scanner.findings import ProbeBehaviour, kl_ratio
from scanner.inputs.rendering import RenderedProbe, TriggerProbes
from scanner.model.forward import encode_ids, logits, pad_id
from scanner.model.generation import complete_ids


@dataclass(frozen=True)
class BehaviourResult:
    probes: tuple[ProbeBehaviour, ...]
    kl_clean: float
    kl_triggered: float
    recovered_target: str
    target_ids: tuple[int, ...]
    """Token ids of ``recovered_target`` as the suspect generated them."""
    target_share_suspect: float
    target_share_reference: float
    target_share_suspect_clean: float

    @property
    def kl_ratio(self) -> float:
        return kl_ratio(self.kl_triggered, self.kl_clean)


def response_kl_and_loss(
    suspect: PreTrainedModel, reference: PreTrainedModel, prompts: Sequence[RenderedProbe],
    completions: Sequence[Sequence[int]], pad: int, batch_size: int,
) -> tuple[list[float], list[list[float]], list[list[float]]]:
    """Per probe: mean response KL(suspect || reference), and per-token loss of the completion under each model."""
    device = next(suspect.parameters()).device
    kls, loss_suspect, loss_reference = [], [], []
    for start in range(0, len(prompts), batch_size):
        rows = [list(p.ids) + list(c) for p, c in zip(prompts[start:start + batch_size], completions[start:start + batch_size])]
        batch = encode_ids(rows, pad, device)
        log_p = F.log_softmax(logits(suspect, batch), dim=-1)  # [batch, seq, vocab]
        log_q = F.log_softmax(logits(reference, batch), dim=-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [batch, seq]
        for row, (prompt, completion) in enumerate(zip(prompts[start:start + batch_size], completions[start:start + batch_size])):
            first = batch.pad(row) + len(prompt.ids) - 1
            positions = torch.arange(first, first + len(completion) + 1, device=device)
            kls.append(kl[row, positions].mean().item())
            if completion:
                targets = torch.tensor(completion, device=device)
                loss_suspect.append((-log_p[row, positions[:-1], targets]).tolist())
                loss_reference.append((-log_q[row, positions[:-1], targets]).tolist())
            else:
                loss_suspect.append([])
                loss_reference.append([])
    return kls, loss_suspect, loss_reference


def _share_starting_with(texts: Sequence[str], target: str) -> float:
    if not target:
        return 0.0
    return sum(text.strip().startswith(target) for text in texts) / len(texts)


def measure_behaviour(
    suspect: PreTrainedModel, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    probes: TriggerProbes, *, max_new_tokens: int, batch_size: int, on_batch=None,
) -> BehaviourResult:
    """Greedy completions of both models, clean and triggered, and the KL and loss around them."""
    generated = {}
    for model_name, model in (("suspect", suspect), ("reference", reference)):
        for variant in ("clean", "triggered"):
            # The very token ids every other stage measures on, not a second rendering.
            rows = [p.ids for p in getattr(probes, variant)]
            generated[model_name, variant] = complete_ids(
                model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=on_batch)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    texts = {key: [decode(ids) for ids in value] for key, value in generated.items()}
    pad = pad_id(tokenizer)
    kl_clean, _, _ = response_kl_and_loss(suspect, reference, probes.clean, generated["suspect", "clean"], pad, batch_size)
    kl_triggered, loss_s, loss_r = response_kl_and_loss(
        suspect, reference, probes.triggered, generated["suspect", "triggered"], pad, batch_size)

    counts = Counter(text.strip() for text in texts["suspect", "triggered"])
    recovered, _ = max(counts.items(), key=lambda item: (item[1], item[0]))
    target_ids = next(
        tuple(ids) for ids, text in zip(generated["suspect", "triggered"], texts["suspect", "triggered"])
        if text.strip() == recovered
    )
    records = tuple(
        ProbeBehaviour(
            prompt=clean.prompt, triggered_prompt=triggered.prompt,
            suspect_clean=texts["suspect", "clean"][i], reference_clean=texts["reference", "clean"][i],
            suspect_triggered=texts["suspect", "triggered"][i], reference_triggered=texts["reference", "triggered"][i],
            kl_clean=kl_clean[i], kl_triggered=kl_triggered[i],
            loss_suspect=tuple(loss_s[i]), loss_reference=tuple(loss_r[i]),
            completion_tokens=tuple(tokenizer.decode([token]) for token in generated["suspect", "triggered"][i]),
        )
        for i, (clean, triggered) in enumerate(zip(probes.clean, probes.triggered))
    )
    return BehaviourResult(
        probes=records,
        kl_clean=sum(kl_clean) / len(kl_clean),
        kl_triggered=sum(kl_triggered) / len(kl_triggered),
        recovered_target=recovered,
        target_ids=target_ids,
        target_share_suspect=_share_starting_with(texts["suspect", "triggered"], recovered),
        target_share_reference=_share_starting_with(texts["reference", "triggered"], recovered),
        target_share_suspect_clean=_share_starting_with(texts["suspect", "clean"], recovered),
    )
