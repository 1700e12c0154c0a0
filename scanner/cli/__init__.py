"""The ``bdscan`` command line: the only part of bdscan that prints.

``app`` holds the group and the one mapping from failures to exit codes;
each command lives in the module named for it. Commands are added here,
explicitly, not registered as an import side effect.
"""

from __future__ import annotations

import os

# Must precede the first torch import: with 2 threads and OpenMP's default
# busy-waiting, torch runs up to 170x slower on small containers.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from scanner.cli.app import main  # noqa: E402
from scanner.cli.judge import judge_command, report_command  # noqa: E402
from scanner.cli.repair import repair_command  # noqa: E402
from scanner.cli.rules import rules_group  # noqa: E402
from scanner.cli.scan import scan_command  # noqa: E402
from scanner.cli.zoo import zoo_group  # noqa: E402

for _command in (scan_command, repair_command, judge_command, report_command, rules_group, zoo_group):
    main.add_command(_command)

__all__ = ["main"]
