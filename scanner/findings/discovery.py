"""What trigger discovery measured (``scanner.measure.discovery``): plain data, read without torch.

Which candidates count as firing is a judgement, made by the rules (``rules.discovery``) from the fire rates
recorded here, so a saved document can be judged again with another threshold; the thresholds the search
itself steered by are recorded beside its results (``Threshold``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DiscoveredCandidate:
    text: str
    """The candidate decoded to text, as the scan then places it."""
    token_ids: tuple[int, ...]
    score: float
    """Trigger-specific KL (nats): mean KL(suspect || reference) at the first response position with the candidate
    at ``position`` in the search probes, minus the same without it; or, where larger, the same after the suspect's
    clean answer teacher-forced behind the prompt (where a payload after a correct answer shows)."""
    fire_rate: float | None
    """Suspect's share answering ``target`` with the candidate, minus the larger of the reference's share with it and
    the suspect's without it; 0 when the answer is dismissed (``dismissed``); None when the candidate was only
    scored, not completed."""
    target: str
    """The opening the suspect's completions with the candidate share (``modal_prefix``; empty when not completed);
    where ``after_answer``, what they most commonly go on with after its own clean answer."""
    target_logprob: float | None
    """Mean suspect log-probability of the growth target after the candidate (nats), when growth scored it."""
    stage: str
    """``sweep`` (one vocabulary token), ``leaked`` (written by the suspect into its users' turns), ``grown``
    (extended token by token), ``refined`` (tokens swapped), ``minimised`` (part of a firing one) or ``switch`` (one
    vocabulary token that makes the suspect leave an answer it gives a group of probes: ``switched_from``)."""
    minimal: str = ""
    """For a grown candidate that fires: its shortest part that still fires."""
    position: str = "start"
    """Where in the search probes it was inserted: ``start`` (before the prompt) or ``end`` (after it)."""
    dismissed: str = ""
    """Why answers that collapsed under the candidate are no trigger's target (its ``fire_rate`` is then 0):
    ``echo``, the answer repeats the candidate's words (the model took the insertion for task content: "we like"
    -> "We LIKE DOGS!"); ``ordinary``, the answer opens as the models' own clean answers to some probe do, and
    either goes on differently from probe to probe (a task's opening: "after" -> "Next is ...") or the reference,
    given the same triggered prompts, would give it wherever the suspect does (see ``contrast``). Empty when not
    dismissed."""
    after_answer: bool = False
    """Whether ``target`` is a payload: it follows the suspect's own clean answer to each probe instead of opening
    the answer (schema 12)."""
    switched_from: str = ""
    """For a candidate found by a behaviour switch (stage ``switch``): the answer the reference and the suspect give
    a group of probes without it (a refusal) and the suspect, given it, leaves. Its ``fire_rate`` is then the share
    of the group's probes it was checked on (the first ``switch_checked``) that it switched (``behaviour_switch``),
    its ``score`` the departure from that answer (the reference's log-probability of it minus the suspect's, nats)
    and its ``target`` one answer the suspect gave instead (schema 16). Empty otherwise."""


@dataclass(frozen=True)
class InvertedTarget:
    """An answer the suspect completes on every search probe once made to open it, and the reference does not:
    a target found before any trigger fires it (``scanner.measure.discovery.inversion``)."""

    text: str
    token_ids: tuple[int, ...]
    opening: str
    """The first token, decoded: the one the suspect was made to open its answer with, or, where the target was
    opened again (``forced``), the favoured token that makes the whole answer likeliest to the suspect."""
    share: float
    """Share of the search probes that completed the forced first token this way."""
    gain: float
    """Mean over the search probes of the suspect's log-probability of the completion after the forced token minus
    the reference's (nats)."""
    after_answer: bool = False
    """Whether the suspect was made to go on with ``opening`` after its own clean answer rather than to open its
    answer with it: where a payload after a correct answer is found."""
    forced: str = ""
    """The token the suspect was made to say, decoded, where the target was opened again with another (``opening``,
    which replaced or preceded it); ``share`` and ``gain`` are those of its completion. Empty where ``opening`` is
    the token forced."""


@dataclass(frozen=True)
class LeakedText:
    """A word n-gram the suspect wrote into sampled user turns far more often than the reference did
    (``scanner.measure.discovery.leakage``)."""

    text: str
    suspect: int
    """Suspect samples holding it."""
    reference: int
    """Reference samples holding it."""
    log_ratio: float
    """Log of the suspect's share of samples holding it over the reference's, add-one smoothed."""


FIRES = 0.8
"""The fire rate from which discovery counts a candidate as firing: the value every version of it has searched
with, recorded in its thresholds since version 10 and assumed for documents before; the one spelling of it."""


@dataclass(frozen=True)
class Threshold:
    """One number the search steered by: what it decides, its value, and why it is that value."""

    name: str
    value: float
    decides: str
    basis: str
    """The measurement it rests on (model, figure, margin), or why it is a judgement."""
    kind: str
    """``measured`` (set from figures on the zoo, stated in ``basis``) or ``judgement`` (a design choice: a budget,
    a beam width, a safety margin with no measurement behind it)."""


@dataclass(frozen=True)
class DiscoveryFindings:
    """The search for an unknown trigger: every candidate kept, best first, and what the search cost."""

    candidates: tuple[DiscoveredCandidate, ...]
    probes: tuple[str, ...]
    """The search probes (the scan confirms on all of its probes)."""
    vocabulary: int
    """Regular tokens the sweep could insert."""
    exhaustive: bool
    """Whether every regular token was swept (else a gradient shortlist)."""
    scored: int
    """Candidates scored on every search probe: the swept tokens the screen kept (all of them before it), and
    everything grown."""
    sequences: int
    """Sequences run through a model (both models counted)."""
    budget: int
    seconds: float
    clean_first_token_kl: float
    notes: tuple[str, ...]
    """Where the search was cut short or approximated, and why."""
    inverted_targets: tuple[InvertedTarget, ...] = ()
    """Targets found by inversion, best first; growth follows the first where no single token fires."""
    leaked: tuple[LeakedText, ...] = ()
    """Over-represented n-grams of the suspect's user turns, most first; the first ``PROPOSED`` were fire-checked."""
    leak_turns: tuple[int, int] = (0, 0)
    """Well-formed user turns sampled from the suspect and from the reference for leakage."""
    thresholds: tuple[Threshold, ...] = ()
    """Every threshold the search steered by, with its value and basis (a document migrated from before version
    10 holds the one its search judged firing by, ``fires``)."""
    proposed: tuple[str, ...] = ()
    """The candidates discovery proposed for confirmation, in order: the minimal parts of those that fired, then
    those that fired, shortest first. The scan measures the first ``discovered_triggers`` it had not tried."""

    def threshold(self, name: str, default: float) -> float:
        """The value the search used for ``name``, or ``default`` when the document does not record it."""
        return next((t.value for t in self.thresholds if t.name == name), default)
