"""The contract between measuring, judging and rendering: what a scan found, as frozen, typed, versioned data.

The scanner writes it, ``rules/`` judges it and ``reports/`` renders it; all three read it through this package
only, and nothing here imports torch. One module per part of the document:

- ``vocabulary``: positions, grids, heads; ``metrics``: every derived number, defined once;
- ``scan``: inputs, run, probe set, weight difference, stage records;
- ``triggers``: the clean answers and each trigger's behaviour; ``localisation``: attention, attribution,
  ablation, patching;
- ``discovery``: the search for an unknown trigger; ``repair``: what a repair restored;
- ``document``: ``Findings``, the schema version and its history, reading and writing;
  ``migrate``: reading the two versions before; ``serde``: the generic JSON round trip.
"""

from scanner.findings.document import SCHEMA_VERSION, Findings, read_findings
from scanner.findings.localisation import (
    AblationFindings,
    AttentionFindings,
    AttentionPattern,
    AttributionFindings,
    HeadEstimate,
    PatchingFindings,
    PatchStep,
)
from scanner.findings.metrics import (
    GROUP_LEAST,
    NOISE_FLOOR_KL,
    ORDINARY_LOGPROB,
    Span,
    Switch,
    behaviour_switch,
    collapse,
    constant_change,
    contrast,
    echoes,
    grid_difference,
    kl_ratio,
    kl_specific,
    median,
    modal_prefix,
    modal_share,
    recurring_span,
    share_starting_with,
    top_cells,
    without_constant_change,
)
from scanner.findings.scan import Architecture, InputInfo, Probe, ProbeSetFindings, RunInfo, StageRecord, TokenizerInfo, WeightDiff
from scanner.findings.triggers import CleanFindings, PositionBehaviour, ProbeBehaviour, TriggerFindings
from scanner.findings.vocabulary import POSITIONS, Grid, Head

__all__ = [
    "GROUP_LEAST", "NOISE_FLOOR_KL", "ORDINARY_LOGPROB", "POSITIONS", "SCHEMA_VERSION", "AblationFindings", "Architecture",
    "AttentionFindings", "AttentionPattern", "AttributionFindings", "CleanFindings", "Findings", "Grid", "Head",
    "HeadEstimate", "InputInfo", "PatchStep", "PatchingFindings", "PositionBehaviour", "Probe", "ProbeBehaviour",
    "ProbeSetFindings", "RunInfo", "Span", "StageRecord", "Switch", "TokenizerInfo", "TriggerFindings", "WeightDiff",
    "behaviour_switch", "collapse", "constant_change", "contrast", "echoes", "grid_difference", "kl_ratio", "kl_specific",
    "median", "modal_prefix", "modal_share", "read_findings", "recurring_span", "share_starting_with", "top_cells",
    "without_constant_change",
]
