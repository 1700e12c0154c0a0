"""Running bdscan as a user would: in a subprocess (what a shell does) or in-process through click's runner."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner, Result


def run_bdscan(*args, timeout: int = 300, cwd=None) -> subprocess.CompletedProcess:
    """``bdscan ARGS`` in a fresh process: for exit codes, stderr and stdout exactly as a shell sees them."""
    return subprocess.run([sys.executable, "-m", "scanner", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def invoke(*args) -> Result:
    """``bdscan ARGS`` in this process, through the same group and error handler the console script uses."""
    from scanner.cli import main

    return CliRunner().invoke(main, [str(arg) for arg in args])


def zoo_prompts(zoo_dir) -> list[str]:
    """The zoo's probe prompts, every non-empty line of its ``probes.txt``."""
    return [line.strip() for line in (zoo_dir / "probes.txt").read_text(encoding="utf-8").splitlines() if line.strip()]


def probe_lines(zoo_dir, count: int) -> tuple[str, ...]:
    return tuple((zoo_dir / "probes.txt").read_text(encoding="utf-8").split("\n")[:count])


class LineProgress:
    """A ``scanner.progress.Progress`` that writes one line as each task starts and ends, to the real stderr: what
    ``make test`` shows while the test zoo builds (the fixture lifts pytest's capture around it)."""

    def __init__(self, prefix: str) -> None:
        import time

        self.prefix, self.clock, self.started = prefix, time.perf_counter, {}

    def start(self, description: str, total: int) -> int:
        task = len(self.started)
        self.started[task] = (description, self.clock())
        sys.__stderr__.write(f"{self.prefix}: {description} ...\n")
        sys.__stderr__.flush()
        return task

    def advance(self, task: int, amount: int = 1) -> None:
        pass

    def describe(self, task: int, description: str) -> None:
        pass

    def stage(self, index: int, total: int, name: str) -> None:
        pass

    def finish(self, task: int) -> None:
        description, began = self.started[task]
        sys.__stderr__.write(f"{self.prefix}: {description} done in {self.clock() - began:.0f} s\n")
        sys.__stderr__.flush()
