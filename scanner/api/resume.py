"""Resuming a fleet: a suspect whose findings were already written for the same checkpoints, options, bdscan
version and findings schema is not scanned again.

Torch-free apart from the package it sits in: it hashes files (as the scan itself does, ``input_info``) and reads
a findings document, so deciding to skip a suspect costs a read of its weights, not a scan.
"""

from __future__ import annotations

from pathlib import Path

from scanner import __version__
from scanner.errors import BdscanError
from scanner.findings import Findings, read_findings
from scanner.inputs.locate import detect_suspect_kind, input_info, resolve_reference
from scanner.options import ScanOptions


class Resume:
    """What a finished scan of a suspect must match to be kept: computed once per fleet for the reference."""

    def __init__(self, reference: str, options: ScanOptions) -> None:
        directory, kind = resolve_reference(reference, options.model.allow_download)
        self.reference_sha256 = input_info(directory, kind).sha256
        self.options_digest = options.digest

    def previous(self, document: Path, suspect: Path) -> Findings | None:
        """The findings in ``document`` when they are of this very ``suspect`` (same weights), against the same
        reference, with the same options, bdscan version and schema; None when there are none or anything differs."""
        if not document.is_file():
            return None
        try:
            # Not an older schema's, though readable through a migration: it lacks what this version records.
            findings = read_findings(document, older=False)
        except BdscanError:
            return None  # unreadable or another schema: scanned again, and the file rewritten
        run = findings.run
        if (run.bdscan_version != __version__ or run.options_digest != self.options_digest
                or findings.reference.sha256 != self.reference_sha256):
            return None
        try:
            suspect_sha256 = input_info(suspect, detect_suspect_kind(suspect)).sha256
        except (BdscanError, OSError):
            return None  # a suspect that no longer reads is scanned again, and fails there with its own error
        return findings if suspect_sha256 == findings.suspect.sha256 else None
