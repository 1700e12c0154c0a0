"""Every failure bdscan expects, as one typed hierarchy.

Each error's message is the one line the CLI prints: what is wrong and what
to do about it. The CLI maps every ``BdscanError`` to exit code 2 in one
place (``scanner.cli.app``); exit code 1 is reserved for "the verdict is at or
above ``--fail-on``", so no failure can ever be read as a detection.

Torch-free: the rule engine and the report raise these too.
"""

from __future__ import annotations


class BdscanError(Exception):
    """Base of every failure bdscan reports to its user."""

    cause = "error"
    """A short label for the kind of failure, printed before the message."""


class InputError(BdscanError):
    """An input file, path or option that bdscan cannot use as given."""

    cause = "bad input"


class ProbeFileError(InputError):
    """A probe file that cannot be read as probes; the message names the line."""


class FindingsFileError(InputError):
    """A file given as saved findings that is not a findings document this bdscan reads."""


class IncompatibleModelsError(InputError):
    """Suspect and reference cannot be compared: other architecture, shapes, or an adapter for another base."""

    cause = "incompatible models"


class IdenticalModelsError(InputError):
    """A suspect whose weights equal the reference's: there is nothing to compare, and judging it would call the
    reference itself clean (an adapter exported without its tensors, the reference given twice)."""

    cause = "suspect is the reference"


class UnsupportedArchitectureError(IncompatibleModelsError):
    """A model family whose module layout bdscan does not know."""

    cause = "unsupported architecture"


class RulePackError(BdscanError):
    """A rule pack or override that cannot be used; the message names the rule and field."""

    cause = "bad rules"


class ResourceError(BdscanError):
    """Not enough memory, or a device that is not there."""

    cause = "resources"


class OutputError(BdscanError):
    """An output path that cannot be written; checked before a scan starts."""

    cause = "cannot write output"


class ZooDirectoryError(InputError):
    """A zoo build target that is not safe to replace."""


class ZooQualityError(BdscanError):
    """A zoo build whose models miss its quality bars by more than the margin: not fit for tests or a demo."""

    cause = "zoo misses its quality bars"


class RepairError(BdscanError):
    """A repair that restoring parts of the suspect cannot achieve without breaking what the fine-tune is for."""

    cause = "repair not possible by parts"


class WorkerError(ResourceError):
    """A distributed fleet's worker that died scanning a suspect (killed, out of memory), after Ray's one retry."""

    cause = "worker died"


class MeasurementError(BdscanError):
    """A measurement stage that could not produce its numbers (recorded in the findings, not raised to the user)."""

    cause = "measurement failed"
