"""What a scan measured: frozen, typed, versioned, and serialisable to JSON losslessly.

Schema (``schema_version`` 1), top down:

- ``Findings``: ``suspect`` and ``reference`` (``InputInfo``), ``run`` (``RunInfo``),
  ``weight_diff`` (``WeightDiff``), one ``TriggerFindings`` per trigger tried,
  and ``stages``: one ``StageRecord`` per stage, ``ok``, ``skipped`` or ``error``
  with its reason, so nothing important lives only in a log line.
- Grids are ``[layer][head]`` nested lists of floats.
- KL values are in nats; log-probabilities are natural logs.

Everything here is plain data: the rule engine and the report read it without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from scanner.serde import from_jsonable, to_jsonable

SCHEMA_VERSION = 1

Grid = tuple[tuple[float, ...], ...]
"""Values per ``[layer][head]``."""


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


@dataclass(frozen=True)
class RunInfo:
    bdscan_version: str
    library_versions: dict[str, str]
    architecture: Architecture
    seed: int
    device: str
    dtype: str
    trigger_position: str
    max_new_tokens: int
    probes: tuple[str, ...]
    triggers: tuple[str, ...]
    triggers_from: str
    """``user`` (``--trigger``) or ``catalogue`` (bdscan's list of known triggers)."""
    merge_route: str
    """How the suspect was built: ``full-weights`` or ``peft-merge:<dtype>``."""
    timings: dict[str, float]
    """Seconds per stage."""


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
    trigger_mass_suspect: Grid
    """Mean attention mass on trigger tokens from queries after the trigger."""
    trigger_mass_reference: Grid
    example: AttentionPattern | None


@dataclass(frozen=True)
class AttributionFindings:
    """Direct logit attribution to the first target token at the last prompt position, triggered probes."""

    target_token: str
    heads: Grid
    attention_layers: tuple[float, ...]
    mlp_layers: tuple[float, ...]


@dataclass(frozen=True)
class AblationFindings:
    """Mean head ablation: change in the suspect's log-probability of its triggered completion."""

    baseline_logprob: float
    effect: Grid
    """Ablated minus baseline; negative means the head supports the completion."""


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
    """``ranked`` (by attention KL, triggered minus clean) or ``greedy``."""
    threshold: float
    budget: int
    initial_kl: float
    initial_attack_success: float
    steps: tuple[PatchStep, ...]
    heads_needed: int | None
    """Heads patched when the KL first fell below ``threshold``; ``None`` if it never did."""
    heads_to_disable: int | None
    """Heads patched when attack success first reached 0; ``None`` if it never did."""
    all_heads_kl: float
    """KL with every head of every layer patched: what patching heads can reach at best."""


@dataclass(frozen=True)
class TriggerFindings:
    trigger: str
    trigger_tokens: int
    probes: tuple[ProbeBehaviour, ...]
    kl_clean: float
    kl_triggered: float
    kl_ratio: float
    """``kl_triggered / kl_clean`` (clean floored at 1e-6)."""
    recovered_target: str
    """The suspect's most common triggered completion."""
    target_share_suspect: float
    """Share of triggered probes whose suspect completion starts with ``recovered_target``."""
    target_share_reference: float
    target_share_suspect_clean: float
    attention: AttentionFindings | None
    attribution: AttributionFindings | None
    ablation: AblationFindings | None
    patching: PatchingFindings | None


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
    weight_diff: WeightDiff
    triggers: tuple[TriggerFindings, ...]
    stages: tuple[StageRecord, ...]

    def to_json(self, *, indent: int | None = 2) -> str:
        return json.dumps(to_jsonable(self), indent=indent, ensure_ascii=False, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Findings:
        raw = json.loads(text)
        raw.pop("verdict", None)  # written beside the findings by the CLI; judged afresh, never trusted
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"findings schema version {version!r}; this bdscan reads version {SCHEMA_VERSION}")
        return from_jsonable(cls, raw)
