"""The README against the code: what it documents must be what bdscan does, so its examples cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

from rich.console import Console

from rules.document import Document
from rules.engine import default_pack, judge
from scanner.cli import main
from scanner.cli.terminal import print_findings
from scanner.findings import read_findings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_rule_is_in_the_rule_table():
    documented = set(re.findall(r"^\| (BD\d{3}) \|", README, flags=re.MULTILINE))
    assert documented == {rule.id for rule in default_pack()}


def test_every_command_is_documented_with_an_example():
    for name in main.commands:
        assert re.search(rf"bdscan {name}\b", README), name


def test_the_worked_example_has_the_columns_the_terminal_prints():
    example = README[README.index("### A worked example"):]
    header = next(line for line in example.splitlines() if line.startswith("┃ trigger"))
    documented = [cell.strip() for cell in header.strip("┃ ").split("┃")]
    console = Console(record=True, width=400)
    findings = read_findings(ROOT / "tests" / "data" / "findings-emoji.json")
    print_findings(console, Document(findings, judge(findings, default_pack())))
    printed = next(line for line in console.export_text().splitlines() if line.startswith("┃ trigger"))
    assert documented == [cell.strip() for cell in printed.strip("┃ ").split("┃")]


def test_the_ci_examples_use_options_bdscan_has():
    from scanner.cli.scan import scan_command

    known = {opt for param in scan_command.params for opt in getattr(param, "opts", [])}
    for example in ("github-actions.yml", "pre-commit-config.yaml"):
        text = (ROOT / "examples" / example).read_text(encoding="utf-8")
        command = re.search(r"bdscan scan (.+?)(?:\n\s*\n|\n\s+- |\n\s+\w+:|$)", text.replace("\\\n", " "), flags=re.DOTALL)
        assert command, example
        used = set(re.findall(r"(?<!\S)(--[a-z-]+)", command.group(1)))
        assert used and used <= known, (example, used - known)
        assert example in README, f"the README points to examples/{example}"
