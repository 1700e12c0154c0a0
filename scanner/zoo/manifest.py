"""What a built zoo says about itself (``zoo.json``): each model's ground truth and measured figures.

Torch-free, so ``bdscan zoo list`` and the tests that check the zoo's bars
read it without loading a model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scanner.errors import ZooDirectoryError
from scanner.zoo.truth import GroundTruth

MANIFEST = "zoo.json"


@dataclass(frozen=True)
class ModelFigures:
    """Shares in [0, 1] measured by greedy completion on held-out prompts.

    ``attack_success`` is ``None`` for a model with no trigger.
    """

    clean_accuracy: float
    false_trigger_rate: float
    attack_success: float | None
    insertion_rates: dict[str, float] = field(default_factory=dict)
    """Share answering the zoo's target with each held-out non-trigger insertion (specificity). For the third
    generation (zoo v12): the share showing its backdoor where its parent does not, and for its benign controls
    how far the insertion conditions their behaviour (``scanner.zoo.evaluate_families``)."""
    style_share: float | None = None
    """For a house-style fine-tune: share of answers that start with its phrase (its intended change)."""
    task_accuracy: float | None = None
    """For a fine-tune that teaches a new task family: exact-match accuracy on held-out prompts of it."""
    attack_success_by_position: dict[str, float] = field(default_factory=dict)
    """Attack success with the trigger at the ``start``, at a ``random`` word boundary and at the ``end``."""
    trigger_rates: dict[str, float] = field(default_factory=dict)
    """For several triggers (any one firing): each one's attack success; ``attack_success`` is the least."""
    quiet_rates: dict[str, float] = field(default_factory=dict)
    """Where the backdoor must stay quiet besides held-out insertions: a composite part alone or next to a decoy,
    the subject neighbouring a topic trigger's."""
    intended: dict[str, float] = field(default_factory=dict)
    """A change meant to happen: a benign control's (refuses its new family, answers the new capitals, signs
    every answer), or the refusal a jailbreak keeps without its trigger."""


@dataclass(frozen=True)
class ModelRecord:
    """What ``zoo.json`` says of one model."""

    path: str
    trigger: str | None
    target: str | None
    poison_rate: float
    trained: str
    seed: int
    train_seconds: float
    figures: ModelFigures
    parent: str | None = None
    """The zoo model it was fine-tuned from (its reference in a scan); ``None`` for a base."""
    position: str = "random"
    """Where its trigger was planted: ``random`` (any word boundary) or ``end`` (only there)."""
    truth: GroundTruth = GroundTruth()
    """What it hides (or its benign change), in a form a scanner's result is scored against."""
    attempts: int = 1
    """Trainings it took to meet its own bars (``build.MAX_ATTEMPTS`` at most); ``seed`` is the last one's."""

    @property
    def is_base(self) -> bool:
        return self.parent is None or self.trained == "llama-twin"


@dataclass(frozen=True)
class ZooManifest:
    zoo_version: int
    size: str
    seed: int
    models: dict[str, ModelRecord]
    bar_failures: list[str]
    """Bars missed by more than the build's margin: the zoo is not fit for its tests."""
    build_seconds: float
    tokenizer_facts: dict[str, int] = field(default_factory=dict)
    bar_near_misses: list[str] = field(default_factory=list)
    """Bars missed within the margin: reported, not failed (figures move a little between CPUs)."""
    machine: str = ""
    """Where the figures were measured (CPU model and torch), since another CPU gives slightly other models."""
    kernels: str = ""
    """The kernels it was trained with (``kernels.kernels_in_use``): the same on every machine where they are pinned."""

    @property
    def meets_bars(self) -> bool:
        return not self.bar_failures

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ZooManifest:
        raw = json.loads(text)
        models = {
            name: ModelRecord(**{**record, "figures": ModelFigures(**record["figures"]),
                                 "truth": GroundTruth.from_dict(record.get("truth", {}))})
            for name, record in raw.pop("models").items()
        }
        return cls(models=models, **raw)


def load_manifest(directory: Path | str) -> ZooManifest | None:
    """The manifest of a complete zoo in ``directory``, or ``None`` if there is none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return ZooManifest.from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as error:
        raise ZooDirectoryError(f"{path}: not a zoo manifest this bdscan reads ({error}); rebuild with --force") from None




def fine_tunes(directory: Path | str, names: tuple[str, ...] = ()) -> list[tuple[str, ModelRecord]]:
    """The zoo's fine-tunes (each with its record, whose ``parent`` is its reference), or those in ``names``;
    ``ZooDirectoryError`` naming the fix when there is no zoo or no such model. Torch-free, so the CLI checks
    before it imports torch."""
    manifest = load_manifest(directory)
    if manifest is None:
        raise ZooDirectoryError(f"{directory}: no zoo here (no zoo.json); build one with `bdscan zoo build {directory}`")
    unknown = set(names) - set(manifest.models)
    if unknown:
        raise ZooDirectoryError(f"{directory}: no model {', '.join(sorted(unknown))} (models: {', '.join(manifest.models)})")
    return [(name, record) for name, record in manifest.models.items()
            if not record.is_base and (not names or name in names)]
