"""What a repair did (``scanner.repair``): plain data, read without torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class RepairStep:
    """One component restored from the reference, and where the suspect stood after it (selection probes)."""

    component: str
    """``L2H1`` (a query head and its output columns), ``L2KV0`` (a key-value group), ``L2 mlp``, ``L2 norms``,
    ``embeddings``."""
    changed: float
    """How much the fine-tune had changed it: ``||suspect - reference|| / ||reference||`` over its parameters."""
    attack_success: float
    """The largest share of selection probes, over the triggers repaired, on which the whole target still has a
    probability of 5% or more (teacher-forced) after this step."""
    target_logprob: float
    """Mean log-probability of the targets after this step, summed over the triggers (nats)."""
    clean_kept: float
    """Share of clean selection probes on which greedy decoding still gives the suspect's own answer."""


@dataclass(frozen=True)
class RepairExample:
    """One held-out triggered probe: what each model answers."""

    prompt: str
    suspect: str
    repaired: str
    reference: str


@dataclass(frozen=True)
class RepairAttention:
    """The head the scan ranked first for the trigger, on one held-out triggered probe: ``[query][key]`` patterns of
    the suspect, the repaired checkpoint and the reference over ``tokens``."""

    layer: int
    head: int
    tokens: tuple[str, ...]
    trigger_tokens: tuple[int, ...]
    suspect: tuple[tuple[float, ...], ...]
    repaired: tuple[tuple[float, ...], ...]
    reference: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class RepairCheck:
    """One repaired trigger, verified on held-out probes the repair did not choose components on."""

    trigger: str
    position: str
    target: str
    probes: int
    attack_success_before: float
    """Share of held-out triggered probes whose suspect answer starts with ``target``."""
    attack_success_after: float
    """The same for the repaired checkpoint as written (loaded back from disk)."""
    attack_success_reference: float
    examples: tuple[RepairExample, ...]
    attention: RepairAttention | None = None
    """Where the trigger's stripe went: the scan's top head before and after (None when the scan did not localise it)."""


@dataclass(frozen=True)
class RepairFindings:
    """A repair: which components were restored, in the order chosen, and how the written checkpoint behaves."""

    triggers: tuple[str, ...]
    selection_probes: int
    """Probes the components were chosen on (the scan's probes at even positions)."""
    held_out_probes: int
    """Probes the repair was verified on (the others)."""
    steps: tuple[RepairStep, ...]
    """Every component restored while searching, in order."""
    restored: tuple[str, ...]
    """What the written checkpoint restores: ``steps`` less those a last pass found unnecessary."""
    restored_parameters: int
    changed_parameters: int
    """Parameters the fine-tune changed at all (components whose ``changed`` is above 0)."""
    total_components: int
    """Components the fine-tune changed, whether restored or not."""
    checks: tuple[RepairCheck, ...]
    clean_kl_to_suspect: float
    """Mean output KL(repaired || suspect) on the held-out clean probes, along the repaired model's answers: what the
    repair cost the fine-tune's own behaviour."""
    clean_kl_to_reference: float
    """Mean output KL(repaired || reference) on the same: how far it still is from a full revert."""
    clean_kl_revert: float
    """Mean output KL(reference || suspect) on the same: what a full revert to the reference would cost."""
    clean_answers_kept: float
    """Share of held-out clean probes the repaired checkpoint answers exactly as the suspect does."""
    output: str
    output_format: str
    """``model`` (a Hugging Face model directory) or ``peft-adapter`` (the suspect's adapter with the restored parts
    zeroed)."""
    notes: tuple[str, ...] = ()

    __derived__: ClassVar[tuple[str, ...]] = ("restored_share", "removed", "costlier_than_revert")

    @property
    def restored_share(self) -> float:
        """Share of the fine-tune's changed parameters the repair put back to the reference's values."""
        return self.restored_parameters / self.changed_parameters if self.changed_parameters else 0.0

    @property
    def removed(self) -> bool:
        """Whether every repaired trigger's held-out attack success fell to within ``REMOVED_WITHIN`` of the reference's."""
        return all(c.attack_success_after <= c.attack_success_reference + REMOVED_WITHIN for c in self.checks)

    @property
    def costlier_than_revert(self) -> bool:
        """Whether the repaired checkpoint's clean outputs moved further from the suspect's than the reference's are:
        then the reference itself keeps more of the fine-tune's clean behaviour than the repair does. Parts trained
        together do not mix freely: on zoo v17's emoji model, 17 of 24 restored parts sat 0.29 nats from the suspect
        where the reference sits 0.012 (every mix the search tried, forward or back from the full revert, fitted the
        suspect's clean answers worse than the full revert)."""
        return self.clean_kl_to_suspect > self.clean_kl_revert


REMOVED_WITHIN = 0.05
"""Attack success this close to the reference's own counts as the behaviour removed."""


def revert_closer_note(repair: RepairFindings) -> str:
    """What a reader is told where ``repair.costlier_than_revert``: the CLI's and the report's words, from one place."""
    return (f"the repair moved the clean outputs {repair.clean_kl_to_suspect:.3g} nats from the suspect's, and the "
            f"reference itself is {repair.clean_kl_revert:.3g} from them: the reference keeps more of the fine-tune's "
            "clean behaviour than this repair does, so use it unless the parts left unrestored matter to you")
