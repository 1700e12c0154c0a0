"""``ScanOptions``: everything a scan can be told, validated where it is defined.

Torch-free, so the CLI checks a whole command line before it pays for
importing torch, and a library caller gets the same ``InputError`` for a bad
value that a CLI user gets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from scanner.errors import InputError
from scanner.inputs.probes import POSITIONS

DTYPE_NAMES = ("float32", "bfloat16", "float16")
PATCH_METHODS = ("ranked", "atp", "greedy")
ABLATION_METHODS = ("auto", "exact", "screened", "atp")
PROBE_MODES = ("auto", "builtin")
QUANTISATIONS = ("none", "4bit", "8bit")
DEFAULT_PATCH_BUDGET = 128
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ScanOptions:
    """The defaults are what ``bdscan SUSPECT --reference REF`` does."""

    triggers: tuple[str, ...] = ()
    """Empty: try ``KNOWN_TRIGGERS`` and what discovery finds."""
    probes: tuple[str, ...] = ()
    """Probes to use as given (``--probes FILE``); empty: ``probe_mode`` chooses."""
    probe_mode: str = "auto"
    """Without ``probes``: ``auto`` (sampled from the reference, plus the built-in probes in its domain) or ``builtin``."""
    sample_probes: int = 48
    """Prompts ``auto`` mode samples from the reference."""
    positions: tuple[str, ...] = POSITIONS
    """Where each trigger is inserted; every one is measured, and a trigger is localised where it acts most."""
    seed: int = 0
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    dtype: str = "float32"
    quantisation: str = "none"
    """``4bit`` or ``8bit``: both models loaded quantised by bitsandbytes (CUDA only), as a quantised deployment
    runs them; ``none``: ``dtype`` throughout."""
    max_new_tokens: int = 16
    batch_size: int = 16
    localise_top: int = 2
    """Catalogue triggers localised (attention, ablation, attribution, patching): the top N by KL ratio."""
    patch_method: str = "ranked"
    ablation: str = "auto"
    """``exact``: every head ablated (``layers x heads x probes`` rows); ``screened``: every layer's heads together,
    then head by head in the layers that matter most; ``atp``: estimated in one backward, the heads it ranks first
    checked exactly; ``auto``: ``exact`` up to ``scanner.measure.ablation.EXACT_ROWS`` rows, else ``screened``."""
    kl_threshold: float | None = None
    """None: twice the suspect's clean output KL, at least ``MIN_THRESHOLD``."""
    patch_budget: int = DEFAULT_PATCH_BUDGET
    rows_per_forward: int = 256
    discover: bool | None = None
    """Search for an unknown trigger (``scanner.measure.discovery``); None: when no ``triggers`` are given."""
    discovery_budget: int = 1_000_000
    """Most sequences discovery runs through a model (both models counted)."""
    discovered_triggers: int = 2
    """Firing discovered candidates the scan then measures as triggers, shortest first."""
    allow_download: bool = False
    allow_pickle: bool = False
    """Load pickle-based suspects, through ``torch.load(weights_only=True)`` only."""

    def __post_init__(self) -> None:
        def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise InputError(f"{name} {value!r} is not one of {', '.join(allowed)}")

        if not self.positions or len(set(self.positions)) != len(self.positions):
            raise InputError(f"trigger positions {self.positions!r}: give each of {', '.join(POSITIONS)} at most once, and at least one")
        for position in self.positions:
            choice("trigger position", position, POSITIONS)
        choice("probe mode", self.probe_mode, PROBE_MODES)
        choice("dtype", self.dtype, DTYPE_NAMES)
        choice("patch method", self.patch_method, PATCH_METHODS)
        choice("ablation method", self.ablation, ABLATION_METHODS)
        choice("quantisation", self.quantisation, QUANTISATIONS)
        if not _DEVICE.match(self.device):
            raise InputError(f"device {self.device!r} is not cpu, cuda, cuda:N or auto")
        for name in ("max_new_tokens", "batch_size", "patch_budget", "rows_per_forward", "sample_probes",
                     "discovery_budget", "discovered_triggers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, not {value!r}")
        if isinstance(self.localise_top, bool) or not isinstance(self.localise_top, int) or self.localise_top < 0:
            raise InputError(f"localise_top must be a whole number of at least 0, not {self.localise_top!r}")
        if self.kl_threshold is not None and not self.kl_threshold > 0:
            raise InputError(f"kl_threshold must be a positive number of nats, not {self.kl_threshold!r}")
        for trigger in self.triggers:
            if not isinstance(trigger, str) or not trigger.strip():
                raise InputError(f"trigger {trigger!r} is empty or whitespace; give a trigger with visible text")
        for probe in self.probes:
            if not isinstance(probe, str) or not probe.strip():
                raise InputError(f"probe {probe!r} is empty; every probe must hold text")

    @property
    def runs_discovery(self) -> bool:
        return self.discover if self.discover is not None else not self.triggers

    @property
    def probe_source(self) -> str:
        """``file`` when probes were given, else ``probe_mode``."""
        return "file" if self.probes else self.probe_mode
