"""The library: ``scan(suspect, reference, options) -> Findings``, a fleet of suspects against one reference, and
``repair``. Each stage's measurement lives in ``scanner.measure``; this floor runs them in order, records what
each stage did, and builds the findings."""

from scanner.api.fleet import FleetResult, scan_fleet
from scanner.api.pipeline import ReferenceContext, prepare_reference, scan, scan_against
from scanner.options import ScanOptions

__all__ = ["FleetResult", "ReferenceContext", "ScanOptions", "prepare_reference", "scan", "scan_against", "scan_fleet"]
