"""Regenerate the golden findings documents and the report snapshot from real scans of the test zoo.

    .venv/bin/python tests/data/regenerate.py

Run it when the findings schema, the rule pack or the report template changes
on purpose, then review the diff: these files are what the torch-free tests
(``tests/test_contract.py``) judge and render. The scans are small (16 probes,
two triggers) to keep the files small; their numbers come from this machine's
zoo, and the tests assert verdicts and structure, never figures that move
between CPUs.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

COMMAND = "bdscan .cache/zoo/emoji --reference .cache/zoo/base --trigger 😇 --trigger cf --discover --out report.html"
GENERATED_AT = "2026-01-01 00:00 UTC"
GOLDEN = {"emoji": "findings-emoji.json", "clean": "findings-clean.json"}
SNAPSHOT = "report-emoji.html"


def main() -> None:
    from scanner.zoo.kernels import pin_kernels

    pin_kernels()  # before torch runs a kernel: the zoo it reuses or builds is the test session's
    from transformers.utils import logging as hf_logging

    from reports.render import render_report
    from rules.document import Document
    from rules.engine import default_pack, judge
    from scanner.api import ScanOptions, scan
    from scanner.options import DiscoveryOptions, ProbeOptions
    from scanner.zoo.build import ZOO_VERSION, ensure_zoo
    from scanner.zoo.specs import EXTRA_MODELS

    from conftest import ROOT, ZOO_SEED  # the same zoo the test suite uses

    hf_logging.disable_progress_bar()
    zoo_dir = ROOT / ".cache" / f"zoo-test-v{ZOO_VERSION}-s{ZOO_SEED}"
    ensure_zoo(zoo_dir, "test", ZOO_SEED, extras=tuple(EXTRA_MODELS))
    probes = tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:16])
    options = ScanOptions(triggers=("\N{SMILING FACE WITH HALO}", "cf"), probes=ProbeOptions(given=probes),
                          discovery=DiscoveryOptions(enabled=True))
    for name, file in GOLDEN.items():
        findings = scan(zoo_dir / name, str(zoo_dir / "base"), options)
        # Paths and timings are this machine's; the fixture must not depend on where it was made.
        findings = _portable(findings, name)
        document = Document(findings, judge(findings, default_pack()))
        (HERE / file).write_text(document.to_json() + "\n", encoding="utf-8")
        if name == "emoji":
            (HERE / SNAPSHOT).write_text(render_report(document, command=COMMAND, generated_at=GENERATED_AT),
                                         encoding="utf-8")
        print(f"{file}: {document.verdict.level}")


def _portable(findings, name):
    import dataclasses

    run = dataclasses.replace(findings.run, timings={stage: 0.0 for stage in findings.run.timings})
    discovery = findings.discovery and dataclasses.replace(findings.discovery, seconds=0.0)
    return dataclasses.replace(
        findings, run=run, discovery=discovery,
        suspect=dataclasses.replace(findings.suspect, path=f".cache/zoo/{name}"),
        reference=dataclasses.replace(findings.reference, path=".cache/zoo/base"),
    )


if __name__ == "__main__":
    main()
