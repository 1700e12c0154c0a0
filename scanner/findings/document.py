"""The findings document: ``Findings``, its schema version and history, and reading and writing it.

Schema (``schema_version`` 18), top down:

- ``Findings``: ``suspect`` and ``reference`` (``InputInfo``), ``run`` (``RunInfo``),
  ``probes`` (``ProbeSetFindings``: every candidate probe, where it came from,
  how surprising it is to the reference, whether it was used), ``clean``
  (``CleanFindings``: both models' answers to the clean probes),
  ``weight_diff`` (``WeightDiff``), one ``TriggerFindings`` per trigger tried,
  and ``stages``: one ``StageRecord`` per stage, ``ok``, ``skipped`` or ``error``
  with its reason, so nothing important lives only in a log line; ``discovery``
  (``DiscoveryFindings``): the search for an unknown trigger, when it ran;
  ``repair`` (``RepairFindings``): what ``bdscan repair`` did, for a repair.
- Grids are ``[layer][head]`` nested lists of floats; KL values are in nats;
  log-probabilities are natural logs.
- Numbers derived from measured ones are properties, defined once
  (``scanner.findings.metrics``) and used by the CLI, the rules and the report
  alike. They are written to JSON under each class's ``__derived__`` names for
  pipelines, and recomputed, never read back, when a document is loaded.

Every change of a field is a version bump, recorded below and in
``tests/data/schema/fields.json`` (a test compares the classes with it), and
``scanner.findings.migrate`` reads the two versions before this one.

Version 18 (from 17): ``PatchingFindings.all_heads_attack_success`` (every head patched at once) and ``stopped``
(why the patching steps stopped short of the budget, or did not run).

Version 17 (from 16): a ``Probe``'s ``source`` may be ``enriched``: sampled from the reference like the probes it
gives its fixed answer (a refusal) to, where they were few.

Version 16 (from 15): ``DiscoveredCandidate.switched_from``: the answer a behaviour switch's candidate leaves.

Version 15 (from 14): ``InvertedTarget.forced``: the token inversion forced where a target was opened again.

Version 14 (from 13): ``ProbeSetFindings.writes_prompts``, ``least_prompt_share`` and ``far_from_samples``:
whether the reference writes its users' prompts, so that its samples stand for its domain.

Version 13 (from 12): ``InvertedTarget.after_answer``: a target inversion also found after the suspect's clean
answer (a payload's).

Version 12 (from 11): ``DiscoveredCandidate.after_answer``: a candidate whose target follows the clean answer.

Version 11 (from 10): ``ProbeBehaviour.reference_target_logprob``.

Version 10 (from 9): ``RunInfo.options_digest`` fingerprints the scan's options; ``run.device_map`` is gone
for good (documents written between its addition and its withdrawal, still version 9, hold it);
``DiscoveryFindings.thresholds`` (``Threshold``) records what the search steered by and
``DiscoveryFindings.proposed`` what it proposed for confirmation; ``firing`` and ``to_confirm`` are no longer
written (which candidates fire is the rules' judgement, ``rules.discovery``); the mapping fields are read-only.

Version 9 (from 8): ``RunInfo.quantisation`` (``none``, ``4bit``, ``8bit``).

Version 8 (from 7): ``DiscoveryFindings.leaked`` (``LeakedText``) and ``leak_turns`` record what the suspect
wrote into sampled user turns far more often than the reference; a candidate's ``stage`` may be ``leaked``.

Version 7 (from 6): ``DiscoveryFindings.inverted_targets`` records the answers target inversion found.

Version 6 (from 5): ``PatchingFindings.estimated_effect`` and ``checked`` (``HeadEstimate``): attribution
patching's estimate of every head's effect and the heads it ranks first patched alone exactly.

Version 5 (from 4): triggers are measured at several positions (``RunInfo.trigger_positions``,
``TriggerFindings.position`` and ``other_positions``); ``Findings.repair``.

Version 4 (from 3): ``Findings.discovery``. Version 3 (from 2): ``Findings.probes`` and ``Findings.clean``.
Version 2 (from 1): ``kl_ratio`` derived, ``RunInfo.tokenizer``, ``AttentionFindings.trigger_mass_probes``.

Everything here is plain data: the rule engine and the report read it without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from scanner.errors import FindingsFileError
from scanner.findings.discovery import DiscoveryFindings
from scanner.findings.migrate import READS, migrate
from scanner.findings.repair import RepairFindings
from scanner.findings.scan import InputInfo, ProbeSetFindings, RunInfo, StageRecord, WeightDiff
from scanner.findings.serde import from_jsonable, to_jsonable
from scanner.findings.triggers import CleanFindings, TriggerFindings

SCHEMA_VERSION = 18


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
    def from_jsonable(cls, raw: object, source: str = "findings", *, older: bool = True) -> Findings:
        """Findings from parsed JSON; ``FindingsFileError`` naming ``source`` when it is not a findings document, or
        is of an older schema where not ``older`` (read through ``migrate``, it lacks what this version records)."""
        if not isinstance(raw, dict):
            raise FindingsFileError(f"{source}: not a bdscan findings document (expected a JSON object)")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION and (version not in READS or not older):
            readable = ", ".join(str(v) for v in ((*sorted(READS), SCHEMA_VERSION) if older else (SCHEMA_VERSION,)))
            raise FindingsFileError(
                f"{source}: findings schema version {version!r}; this bdscan reads versions {readable}, "
                "scan again with this version"
            )
        try:
            return from_jsonable(cls, migrate(raw, SCHEMA_VERSION))
        except (TypeError, ValueError, KeyError, AttributeError) as error:
            raise FindingsFileError(f"{source}: not a bdscan findings document ({error})") from None

    @classmethod
    def from_json(cls, text: str, source: str = "findings") -> Findings:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise FindingsFileError(f"{source}: not JSON ({error})") from None
        return cls.from_jsonable(raw, source)


def read_findings(path: Path | str, *, older: bool = True) -> Findings:
    """The findings of a saved document (a stored verdict beside them is dropped: judging runs again);
    ``FindingsFileError`` if it is not one, or is of an older schema where not ``older``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FindingsFileError(f"{path}: cannot be read as a findings document ({error})") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise FindingsFileError(f"{path}: not JSON ({error})") from None
    if isinstance(raw, dict):
        raw.pop("verdict", None)
    return Findings.from_jsonable(raw, str(path), older=older)
