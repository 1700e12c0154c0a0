"""Seconds and peak resident memory per named step of a long benchmark run, written to stderr as each step ends:
where a run of hours spends its time and its memory, and how far it has got."""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO


class StepClock:
    """Times every step a run names, and prints each as it ends (elapsed since the start, the step's seconds).

    Two ways in: as a ``scanner.progress.Progress`` for a whole scan (a step is a progress bar's description or a
    stage), and called as discovery's ``on_step(stage, done, total)``. ``close`` ends the last step; ``seconds``
    sums each step's time over the times it ran; ``peaks`` keeps each step's highest resident set (MB), sampled
    every ``SAMPLE_SECONDS`` by a daemon thread (Linux's ``/proc/self/statm``; nothing where there is none)."""

    SAMPLE_SECONDS = 0.05

    def __init__(self, out: TextIO = sys.stderr) -> None:
        self.out = out
        self.seconds: dict[str, float] = {}
        self.peaks: dict[str, float] = {}
        self.current, self.since, self.began = "", time.perf_counter(), time.perf_counter()
        self.handles = 0
        # The sampler and a step's switch both read and reset the running peak: under one lock, so a reading taken
        # before a switch is never written into the next step's.
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._peak = _resident_mb()
        if self._peak is not None:
            threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(self.SAMPLE_SECONDS):
            self._take()

    def _take(self, reset: bool = False) -> float | None:
        """One reading added to the running peak; returned, and the peak restarted from now where ``reset``."""
        now = _resident_mb()
        with self._lock:
            if now is None or self._peak is None:
                return None
            peak = max(self._peak, now)
            self._peak = now if reset else peak
            return peak

    def _switch(self, description: str) -> None:
        now = time.perf_counter()
        peak = self._take(reset=True)  # a step shorter than a sample still has its own end read
        if self.current:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.since
            shown = ""
            if peak is not None:
                self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), peak)
                shown = f"  peak {peak:7,.0f} MB"
            print(f"[{now - self.began:7.0f} s] {now - self.since:8.1f} s{shown}  {self.current}", file=self.out, flush=True)
        self.current, self.since = description, now

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.current:
            self._switch(stage)

    def start(self, description: str, total: int) -> int:
        self._switch(description)
        self.handles += 1
        return self.handles

    def advance(self, task: int, amount: int = 1) -> None:
        pass

    def finish(self, task: int) -> None:
        pass

    def describe(self, task: int, description: str) -> None:
        self._switch(description)

    def stage(self, index: int, total: int, name: str) -> None:
        self._switch(f"stage {index}/{total}: {name}")

    def close(self) -> None:
        self._switch("")
        self._stop.set()


def _resident_mb() -> float | None:
    """The process's resident set now (MB), or None where ``/proc`` has no ``statm``."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return None
