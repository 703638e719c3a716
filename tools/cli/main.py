"""The ``optc`` command line.

    optc [MODEL] --passes=SPEC [--backend eager] -o OUT   compile a model into an artifact
    optc inspect TARGET [--seq N] [--json]               IR and per-layer table
    optc passes [--json]                                 every pass, its options and docs
    optc tasks [NAME] [--json]                           every task: head, files, metrics, options
    optc bench TARGET... [--batch N..] [--threads N..]   latency, memory, size side by side
    optc report TARGET [BASELINE] -o OUT.html           HTML report: charts, pipeline, graph

MODEL is a Hugging Face id, a local model directory or an optc artifact; without MODEL the
embedded all-MiniLM-L6-v2 is compiled. Errors print one line and exit non-zero (see
:mod:`optc.errors` for the codes).

This module is the entry point: it dispatches to the subcommands, each in its own module
imported when it runs (:mod:`.compile`, :mod:`.inspect`, :mod:`.catalog`, :mod:`.bench`,
:mod:`.train`, :mod:`.specialize`, :mod:`optc.tools.reports.report`, :mod:`.tasks`), and turns
errors and Ctrl-C into one line and an exit code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from optc.errors import OptcError, excerpt
from optc.tools.cli.catalog import describe_ops, describe_passes, option_docs
from optc.tools.cli.task_option import HEAD_CHOICES
from optc.tools.common import quiet_libraries

__all__ = ["main", "MESSAGE_LIMIT", "TASK_CHOICES", "describe_passes", "describe_ops",
           "option_docs"]

MESSAGE_LIMIT = 2000
"""Characters of an error message printed at most (input text in it is cut much shorter)."""

TASK_CHOICES = HEAD_CHOICES
"""The heads ``--head`` loads (the old name: ``--task`` named a head; see task_option)."""


# -- the subcommands, each in its own module (imported when it runs) ---------------------------
def _cmd_compile(argv: list[str]) -> int:
    from optc.tools.cli.compile import cmd_compile

    return cmd_compile(argv)


def _cmd_inspect(argv: list[str]) -> int:
    from optc.tools.cli.inspect import cmd_inspect

    return cmd_inspect(argv)


def _cmd_passes(argv: list[str]) -> int:
    from optc.tools.cli.catalog import cmd_passes

    return cmd_passes(argv)


def _cmd_bench(argv: list[str]) -> int:
    from optc.tools.cli.bench import cmd_bench

    return cmd_bench(argv)


def _cmd_ops(argv: list[str]) -> int:
    from optc.tools.cli.catalog import cmd_ops

    return cmd_ops(argv)


def _cmd_eval(argv: list[str]) -> int:
    from optc.tools.cli.train import cmd_eval

    return cmd_eval(argv)


def _cmd_finetune(argv: list[str]) -> int:
    from optc.tools.cli.train import cmd_finetune

    return cmd_finetune(argv)


def _cmd_specialize(argv: list[str]) -> int:
    from optc.tools.cli.specialize import cmd_specialize

    return cmd_specialize(argv)


def _cmd_report(argv: list[str]) -> int:
    from optc.tools.cli.targets import load_target
    from optc.tools.reports.report import cmd_report

    return cmd_report(argv, load=load_target)


def _cmd_tasks(argv: list[str]) -> int:
    from optc.tools.cli.tasks import cmd_tasks

    return cmd_tasks(argv)


_COMMANDS = {"inspect": _cmd_inspect, "passes": _cmd_passes, "tasks": _cmd_tasks,
             "bench": _cmd_bench,
             "ops": _cmd_ops, "eval": _cmd_eval, "finetune": _cmd_finetune,
             "report": _cmd_report, "specialize": _cmd_specialize}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script exits with it)."""
    console = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    traceback_wanted = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    interrupts = _Interrupts()
    if console:
        interrupts.install()
    try:
        code = _main(argv, traceback_wanted, interrupts, console)
        interrupts.quiet = True  # from here on a Ctrl-C is only noted (no bytecode check before)
    except KeyboardInterrupt:  # a Ctrl-C while an error was being reported
        interrupts.quiet = True
        return _interrupted(console, interrupts)
    if console and interrupts.settle():
        # Ctrl-C after the command's last step: its output is whole, but the user interrupted.
        return _interrupted(console, interrupts)
    return code


def _main(argv: list[str], traceback_wanted: bool, interrupts: _Interrupts, console: bool) -> int:
    try:
        return _run(argv)
    except KeyboardInterrupt:
        # Anywhere in main, imports included: one line, exit 130. Outputs are staged and
        # cleaned up by their own finally blocks before the interrupt gets here.
        return _interrupted(console, interrupts)
    except OptcError as exc:
        if interrupts.seen:  # a library turned the KeyboardInterrupt into an error of its own
            return _interrupted(console, interrupts)
        if traceback_wanted:
            raise
        # Messages quote input text through excerpt(); this bounds any that does not.
        sys.stderr.write(f"optc: error: {excerpt(str(exc), MESSAGE_LIMIT, quote=False)}\n")
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `optc inspect ... | head`): stop quietly, like other tools.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    except Exception as exc:  # noqa: BLE001 - last-resort: one line, not a traceback
        if interrupts.seen:
            return _interrupted(console, interrupts)
        if traceback_wanted:
            raise
        first = excerpt((str(exc).strip().splitlines() or [""])[0], MESSAGE_LIMIT, quote=False)
        sys.stderr.write(
            f"optc: internal error: {type(exc).__name__}: {first} "
            "(rerun with --traceback and report it)\n"
        )
        return 1


def _interrupted(console: bool, interrupts: _Interrupts) -> int:
    """Report Ctrl-C with one line and exit code 130."""
    if console:
        interrupts.settle()  # a second Ctrl-C must not interrupt this message
    sys.stderr.write("optc: interrupted\n")
    if console:
        # Exit now: CPython marks a KeyboardInterrupt raised inside exec() (dataclasses and
        # torch.fx generate code with it) as unhandled even when it was caught, and would then
        # kill itself with SIGINT at exit instead of returning 130.
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os._exit(130)
    return 130


class _Interrupts:
    """Console only: how Ctrl-C (SIGINT) reaches the CLI.

    While a command runs, each SIGINT raises KeyboardInterrupt and is noted (some libraries
    catch the KeyboardInterrupt and raise their own error instead; main still reports an
    interrupt). A KeyboardInterrupt that lands in a finalizer or weakref callback (torch runs
    many during garbage collection), where Python would swallow it with an "Exception ignored
    ... Traceback" message and go on, is re-delivered. When the command is over,
    :meth:`settle` makes the process ignore SIGINT: Python restores the default action while it
    shuts down (after flushing stdout), so a late Ctrl-C would otherwise kill it by the signal,
    with no message and no exit code of its own."""

    def __init__(self) -> None:
        self.seen = False
        """A SIGINT arrived."""
        self.quiet = False
        """Only note SIGINTs from now on (the command is over or is being reported)."""

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.seen = True
        if not self.quiet:
            raise KeyboardInterrupt

    def install(self) -> None:
        import _thread
        import signal
        import threading

        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._on_sigint)
        previous = sys.unraisablehook

        def hook(info: Any) -> None:
            if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
                # From another thread, a moment later: never inside this hook or the finalizer.
                timer = threading.Timer(0.01, _thread.interrupt_main)
                timer.daemon = True
                timer.start()
                return
            previous(info)

        sys.unraisablehook = hook

    def settle(self) -> bool:
        """Stop raising and ignore SIGINT from now on (also at the OS level, so that it
        holds while the interpreter shuts down); returns whether a SIGINT ever arrived.
        ``signal.signal`` runs a pending Python handler before it switches, so a signal that
        arrived just before is noted here rather than reported as a race."""
        import signal

        self.quiet = True
        with contextlib.suppress(ValueError):  # not the main thread
            if signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self.seen


_READ_DATA = ("eval", "finetune", "specialize")
"""Subcommands that read task data (and compile): they run inside ``reuse_reads``."""


def _run(argv: list[str]) -> int:
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    quiet_libraries(verbose)
    command = _COMMANDS.get(argv[0]) if argv else None
    if command is not None and argv[0] not in _READ_DATA:
        return command(argv[1:])
    from optc.tasks import reuse_reads

    # The data is read before the model is loaded (bad data fails fast) and again where it
    # is used: inside reuse_reads each task file is parsed once.
    with reuse_reads():
        return command(argv[1:]) if command else _cmd_compile(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
