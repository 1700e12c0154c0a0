"""``ScanOptions``: everything a scan can be told, grouped by the stage that reads it, validated where defined.

Torch-free, so the CLI checks a whole command line before it pays for importing torch, and a library caller
gets the same ``InputError`` for a bad value that a CLI user gets. Each stage takes its own group
(``ModelOptions``, ``ProbeOptions``, ``BehaviourOptions``, ``DiscoveryOptions``, ``LocalisationOptions``), never
the whole set unpacked into loose arguments. The defaults are what ``bdscan SUSPECT --reference REF`` does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

from scanner.errors import InputError
from scanner.findings import POSITIONS
from scanner.inputs.probes import KNOWN_TRIGGERS

DTYPE_NAMES = ("float32", "bfloat16", "float16")
PATCH_METHODS = ("ranked", "atp", "greedy")
ABLATION_METHODS = ("auto", "exact", "screened", "atp")
PROBE_MODES = ("auto", "builtin")
QUANTISATIONS = ("none", "4bit", "8bit")
DISCOVERY_POSITIONS = ("start", "end")
"""Where discovery can search. A candidate at ``random`` would sit at another token offset in every probe, so
the probes would share no insertion slot for the gradient shortlist to rank tokens at; the scan still measures
every discovered candidate at every ``BehaviourOptions.positions``, ``random`` included."""
DEFAULT_PATCH_BUDGET = 128
_DEVICE = re.compile(r"^(cpu|auto|cuda(:\d+)?)$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000 ** 2, "g": 1000 ** 3, "t": 1000 ** 4}


def parse_size(text: str) -> int:
    """Bytes in a size as a user writes it: ``512MB``, ``2GB``, ``1.5GiB``, ``800000000``."""
    match = _SIZE.match(str(text))
    if not match:
        raise InputError(f"size {text!r} is not a number of bytes with an optional unit (512MB, 2GB, 1.5GiB)")
    number, unit = float(match.group(1)), (match.group(2) or "").lower()
    binary = "i" in unit
    scale = _UNITS[unit[:1]] if not binary else 1024 ** " kmgt".index(unit[0])
    return int(number * scale)


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} {value!r} is not one of {', '.join(allowed)}")


def _whole(owner: object, names: tuple[str, ...], least: int = 1) -> None:
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be a whole number of at least {least}, not {value!r}")


def _positions(what: str, positions: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    if not positions or len(set(positions)) != len(positions):
        raise InputError(f"{what} {positions!r}: give each of {', '.join(allowed)} at most once, and at least one")
    for position in positions:
        _choice(what.rstrip("s"), position, allowed)


PLACEMENT = ("max_memory", "offload_dir")
"""``ModelOptions`` fields that say where the weights wait, not what is measured: left out of ``ScanOptions.digest``."""


@dataclass(frozen=True)
class ModelOptions:
    """How both models are loaded and how much work one forward holds."""

    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    dtype: str = "float32"
    quantisation: str = "none"
    """``4bit`` or ``8bit``: both models loaded quantised by bitsandbytes (CUDA only), as a quantised deployment
    runs them; ``none``: ``dtype`` throughout."""
    batch_size: int = 16
    """Probes per batch in teacher-forced measurements, whose logits hold every answer position."""
    rows_per_forward: int = 256
    """Rows one patched or searching forward holds (fewer where their logits would pass the memory cap), and rows one
    generation holds (its logits hold one position a step; fewer where a step's logits would pass
    ``GENERATION_LOGIT_BYTES``: 69 rows at Qwen2.5's vocabulary)."""
    allow_download: bool = False
    allow_pickle: bool = False
    """Load pickle-based suspects, through ``torch.load(weights_only=True)`` only."""
    max_memory: int | None = None
    """Bytes the two models' weights may hold on the device together (half each); what does not fit is offloaded
    by accelerate to ``offload_dir`` and read from there layer by layer. None: both models whole on the device."""
    offload_dir: str | None = None
    """Where offloaded weights go (a folder on a disk with room for them); None: a temporary folder, removed after
    the scan."""

    def __post_init__(self) -> None:
        _choice("dtype", self.dtype, DTYPE_NAMES)
        _choice("quantisation", self.quantisation, QUANTISATIONS)
        if not _DEVICE.match(self.device):
            raise InputError(f"device {self.device!r} is not cpu, cuda, cuda:N or auto")
        _whole(self, ("batch_size", "rows_per_forward"))
        if self.max_memory is not None:
            _whole(self, ("max_memory",))
            if self.quantisation != "none":
                raise InputError("--max-memory offloads full-precision weights; bitsandbytes' quantised layers are not "
                                 "offloaded here: give one or the other")
        elif self.offload_dir is not None:
            raise InputError("--offload-dir says where weights beyond --max-memory go: give --max-memory too")


@dataclass(frozen=True)
class ProbeOptions:
    """Which prompts the scan measures on."""

    given: tuple[str, ...] = ()
    """Probes to use as given (``--probes FILE``); empty: ``mode`` chooses."""
    mode: str = "auto"
    """Without ``given``: ``auto`` (sampled from the reference, plus the built-in probes in its domain) or ``builtin``."""
    sample: int = 48
    """Prompts ``auto`` mode samples from the reference."""

    def __post_init__(self) -> None:
        _choice("probe mode", self.mode, PROBE_MODES)
        _whole(self, ("sample",))
        for probe in self.given:
            if not isinstance(probe, str) or not probe.strip():
                raise InputError(f"probe {probe!r} is empty; every probe must hold text")

    @property
    def source(self) -> str:
        """``file`` when probes were given, else ``mode``."""
        return "file" if self.given else self.mode


@dataclass(frozen=True)
class BehaviourOptions:
    """Where each trigger is placed and how much of the answer is generated."""

    positions: tuple[str, ...] = POSITIONS
    """Where each trigger is inserted; every one is measured (a catalogue trigger only where its first response token
    says it acts or, where it says so nowhere, where it moves most), and a trigger is localised where it acts most."""
    max_new_tokens: int = 32
    """Tokens each model answers each probe with: enough for a short answer and a payload after it (BD014 reads
    the whole answer; "The capital is Paris. Visit http://free.example now." is 19 of the zoo's tokens)."""
    thorough: bool = False
    """Measure every catalogue trigger at every position, even where its first response token says it does not act
    there (``scanner.measure.behaviour.POSITION_SCREEN_FROM``): ``--thorough``."""

    def __post_init__(self) -> None:
        _positions("trigger positions", self.positions, POSITIONS)
        _whole(self, ("max_new_tokens",))


@dataclass(frozen=True)
class DiscoveryOptions:
    """The search for an unknown trigger (``scanner.measure.discovery``); what each number steers is in the
    discovery findings' thresholds table."""

    enabled: bool | None = None
    """None: when no triggers are given."""
    budget: int = 1_000_000
    """Most sequences discovery runs through a model (both models counted)."""
    confirm: int = 2
    """Proposed candidates the scan then measures as triggers, in discovery's order."""
    positions: tuple[str, ...] = DISCOVERY_POSITIONS
    """Where candidates are searched (``DISCOVERY_POSITIONS`` says why never ``random``); only those the scan
    also measures at are searched, and both when it measures at neither."""
    search_probes: int = 8
    """Probes every candidate is scored and fire-checked on."""
    fire_checks: int = 6
    """Swept tokens completed to check whether they fire, best first."""
    beam: int = 2
    """Lines growth follows from the sweep's best tokens, and as many from the weight change's."""
    max_tokens: int = 4
    """Longest candidate growth builds, in tokens."""
    keep: int = 20
    """Candidates recorded in the findings, best first."""
    exhaustive_vocabulary: int = 8192
    """Vocabularies up to this many regular tokens are swept whole; larger ones through a shortlist."""
    shortlist: int = 1024
    """Tokens a shortlist keeps for the sweep of a large vocabulary."""
    thorough: bool = False
    """Grow every line to ``max_tokens``, even at a position where nothing fires and no followed target comes near
    (``grow_on_logprob``): the search a benign scan would otherwise stop early; and score every candidate of the
    sweep, growth and the behaviour switch on every search probe, with no two-probe screen first."""

    def __post_init__(self) -> None:
        _positions("discovery positions", self.positions, DISCOVERY_POSITIONS)
        _whole(self, ("budget", "confirm", "search_probes", "fire_checks", "beam", "max_tokens", "keep", "shortlist"))
        _whole(self, ("exhaustive_vocabulary",), least=0)

    def searched_at(self, measured: tuple[str, ...]) -> tuple[str, ...]:
        """The positions searched when the scan measures triggers at ``measured``."""
        return tuple(p for p in self.positions if p in measured) or self.positions


@dataclass(frozen=True)
class LocalisationOptions:
    """Attention, attribution, mean ablation and head patching for the triggers that matter most."""

    top: int = 2
    """Triggers localised: the top N by KL ratio of those discovery found and of the catalogue's that change enough
    to localise (``scanner.api.localise.skipped_localisation``); every given trigger is."""
    patch_method: str = "ranked"
    ablation: str = "auto"
    """``exact``: every head ablated (``layers x heads x probes`` rows); ``screened``: every layer's heads together,
    then head by head in the layers that matter most; ``atp``: estimated in one backward, the heads it ranks first
    checked exactly; ``auto``: ``exact`` up to ``scanner.measure.ablation.EXACT_ROWS`` rows, else ``screened``."""
    kl_threshold: float | None = None
    """None: twice the suspect's clean output KL, at least ``MIN_THRESHOLD``."""
    patch_budget: int = DEFAULT_PATCH_BUDGET
    thorough: bool = False
    """Localise the top catalogue triggers even where they change too little to localise
    (``scanner.api.localise.LOCALISE_FROM``), and patch heads to ``patch_budget`` even where every head at once
    leaves the output KL above the threshold (``scanner.measure.head_patching``): ``--thorough``."""

    def __post_init__(self) -> None:
        _choice("patch method", self.patch_method, PATCH_METHODS)
        _choice("ablation method", self.ablation, ABLATION_METHODS)
        _whole(self, ("patch_budget",))
        _whole(self, ("top",), least=0)
        if self.kl_threshold is not None and not self.kl_threshold > 0:
            raise InputError(f"kl_threshold must be a positive number of nats, not {self.kl_threshold!r}")


@dataclass(frozen=True)
class ScanOptions:
    """The defaults are what ``bdscan SUSPECT --reference REF`` does."""

    triggers: tuple[str, ...] = ()
    """Empty: try ``KNOWN_TRIGGERS`` and what discovery finds."""
    seed: int = 0
    model: ModelOptions = field(default_factory=ModelOptions)
    probes: ProbeOptions = field(default_factory=ProbeOptions)
    behaviour: BehaviourOptions = field(default_factory=BehaviourOptions)
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    localisation: LocalisationOptions = field(default_factory=LocalisationOptions)

    def __post_init__(self) -> None:
        for trigger in self.triggers:
            if not isinstance(trigger, str) or not trigger.strip():
                raise InputError(f"trigger {trigger!r} is empty or whitespace; give a trigger with visible text")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be a whole number, not {self.seed!r}")

    @property
    def digest(self) -> str:
        """SHA-256 of these options as canonical JSON: equal options, equal digest, on any machine. Where the weights
        wait (``PLACEMENT``) is left out: an offloaded scan gives the same findings as a whole one
        (``tests/test_offload.py``), so a fleet resumed with another cap or offload folder is the same run."""
        options = dataclasses.asdict(self)
        for name in PLACEMENT:
            del options["model"][name]
        text = json.dumps(options, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def triggers_to_try(self) -> tuple[str, ...]:
        """The given triggers, or the catalogue: the one place the default is chosen."""
        return self.triggers or KNOWN_TRIGGERS

    @property
    def runs_discovery(self) -> bool:
        enabled = self.discovery.enabled
        return enabled if enabled is not None else not self.triggers

    @property
    def discovery_positions(self) -> tuple[str, ...]:
        return self.discovery.searched_at(self.behaviour.positions)
