"""What a scan records about its inputs and its run: the checkpoints, the architecture, the tokenizer, the probe
set, the weight difference and each stage's outcome."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from scanner.findings.metrics import median
from scanner.findings.serde import FrozenDict, freeze_mappings
from scanner.findings.vocabulary import Grid


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
    library_versions: FrozenDict[str, str]
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
    timings: FrozenDict[str, float]
    """Seconds per stage."""
    options_digest: str = ""
    """SHA-256 of the scan's options as canonical JSON (``ScanOptions.digest``): with the two checkpoints' hashes
    and ``bdscan_version``, what a resumed fleet compares to know a suspect was scanned as it would be now; empty
    in documents older than version 10."""

    def __post_init__(self) -> None:
        freeze_mappings(self)


@dataclass(frozen=True)
class Probe:
    text: str
    source: str
    """``sampled`` (drawn from the reference's own user turn), ``enriched`` (drawn from it too, each continuing the
    opening of a sampled probe the reference gives its fixed answer to, where those were few), ``builtin`` (bdscan's
    set) or ``file`` (``--probes``)."""
    surprise: float
    """Mean negative log-likelihood per token (nats) of ``text`` as the reference's user turn; NaN without a chat template."""
    used: bool
    """``False``: measured for calibration only, or a built-in probe left out as outside the reference's domain."""


UNTERMINATED = "no end of turn within the token limit"
HOLDS_TRIGGER = "holds a trigger under test"
"""Why a sampled user turn was dropped, where that says nothing about whether the model writes prompts."""


def prompt_share(drawn: int, rejected: Mapping[str, int]) -> float:
    """Of the user turns a model wrote that ended and held no trigger under test, the share kept as prompts (not
    too short, repetitive, broken or a duplicate); NaN when none ended."""
    ended = drawn - rejected.get(UNTERMINATED, 0) - rejected.get(HOLDS_TRIGGER, 0)
    return (drawn - sum(rejected.values())) / ended if ended > 0 else math.nan


def excess_over(surprises: list[float], domain: float) -> float:
    """How much more surprising the median of ``surprises`` is than ``domain`` (nats per token); NaN if unknown."""
    return median(surprises) - domain


@dataclass(frozen=True)
class ProbeSetFindings:
    """Which probes the scan ran, where they came from, and whether they lie in the reference's domain."""

    mode: str
    """``auto`` (sampled from the reference, plus the built-in probes that fit its domain), ``builtin`` or ``file``."""
    probes: tuple[Probe, ...]
    sampled_drawn: int
    """User prompts generated from the reference in all, but for the continuations drawn to enrich the probes."""
    sampled_rejected: FrozenDict[str, int]
    """Why generated prompts were dropped: reason -> count."""
    fit_margin: float
    """In ``auto`` mode a built-in probe is used when its surprise is at most ``domain_surprise`` plus this."""
    writes_prompts: bool
    """Whether the reference writes its users' prompts, so that its samples stand for its domain: something was
    sampled, and either ``prompt_share`` is at least ``least_prompt_share`` or the other prompts lie within
    ``far_from_samples`` of the samples. When not, the samples are not used as probes and the probes' fit to the
    domain is not judged."""
    least_prompt_share: float
    """The least ``prompt_share`` of a reference that writes prompts."""
    far_from_samples: float
    """How far above the samples (nats per token) the other prompts' median surprise must lie for a small
    ``prompt_share`` to count."""

    __derived__: ClassVar[tuple[str, ...]] = ("used", "domain_surprise", "surprise_excess", "given_excess",
                                              "prompt_share")

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
        return excess_over([p.surprise for p in self.probes if p.used], self.domain_surprise)

    @property
    def given_excess(self) -> float:
        """Median surprise of the prompts not sampled (built-in or from file, used or not), minus
        ``domain_surprise`` (nats per token); NaN if either is unknown."""
        return excess_over([p.surprise for p in self.probes if p.source in ("builtin", "file")], self.domain_surprise)

    @property
    def prompt_share(self) -> float:
        """``prompt_share`` of the reference's sampled user turns: near 1 for a model that learnt what its users
        write, near 0 for one whose user turn collapsed onto a few short answers."""
        return prompt_share(self.sampled_drawn, self.sampled_rejected)

    def __post_init__(self) -> None:
        freeze_mappings(self)


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
    non_finite: FrozenDict[str, int]
    """Suspect tensors holding NaN or Inf, with the count of such values."""

    def __post_init__(self) -> None:
        freeze_mappings(self)

    @property
    def attention_total(self) -> float:
        """Sum of the attention projections' relative changes (every head of q, k, v and o)."""
        return sum(x for grid in (self.q, self.k, self.v, self.o) for row in grid for x in row)

    @property
    def other_total(self) -> float:
        """Sum of every other part's relative change (MLPs, norms, embeddings, final norm, output head)."""
        return sum(self.mlp) + sum(self.norms) + self.embeddings + self.final_norm + self.lm_head

    @property
    def parts(self) -> dict[str, float]:
        """One relative change per part: each layer's attention (the root mean square of its heads' q, k, v and o
        changes: the whole block's change where its heads weigh alike), MLP and norms, the embeddings, final norm and
        output head. Summing the heads instead would outweigh an MLP by four times the head count."""
        out: dict[str, float] = {}
        for layer, mlp in enumerate(self.mlp):
            heads = [x for grid in (self.q, self.k, self.v, self.o) for x in grid[layer]]
            out[f"layer {layer} attention"] = math.sqrt(sum(x * x for x in heads) / len(heads)) if heads else 0.0
            out[f"layer {layer} MLP"] = mlp
            out[f"layer {layer} norms"] = self.norms[layer]
        out.update({"embeddings": self.embeddings, "final norm": self.final_norm, "LM head": self.lm_head})
        return out

    @property
    def total(self) -> float:
        """Sum of ``parts``: what a part's share is of."""
        return sum(self.parts.values())

    @property
    def concentration(self) -> tuple[str, float]:
        """The part that moved most and its share of ``total``: near 1, a change confined to one place (a weight
        edit of one MLP, a rewritten embedding); ``("", 0.0)`` for an unchanged suspect or a non-finite total."""
        parts, total = self.parts, self.total
        if not (math.isfinite(total) and total > 0):
            return "", 0.0
        part = max(parts, key=lambda name: parts[name])
        return part, parts[part] / total

    @property
    def unchanged(self) -> bool:
        """Whether no part of the suspect differs from the reference's: the suspect is the reference itself."""
        return not self.non_finite and self.attention_total + self.other_total == 0


@dataclass(frozen=True)
class StageRecord:
    name: str
    status: str
    """``ok``, ``skipped`` or ``error``."""
    detail: str = ""


