"""Ctrl-C around the replace of an existing output (``--force``): every moment exits 130 with
the one line ``optc: interrupted`` (or 0 once the command is over), never dies by the signal,
and leaves the old or the new output whole. SIGINT is sent by the process to itself from
hooks at fixed steps, so each moment is hit every time (no sleeps)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from optc.outputs import is_optc_artifact
from optc.tools.cli.main import main

_HOOKED = r'''
import atexit, os, signal, sys, time
# As in a terminal: a runner started in the background (nohup, `cmd &`) passes SIGINT ignored,
# and optc then rightly keeps it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
import optc.backends.selfcheck as selfcheck
import optc.outputs as outputs

def sigint():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)

def wrap(module, name, before, target=None):
    real = getattr(module, name)
    def hooked(*args, **kwargs):
        hit = target is None or os.path.realpath(args[1]) == target  # the replace, not a writer's
        if before and hit:
            sigint()
        result = real(*args, **kwargs)
        if hit and not before:
            sigint()
        return result
    setattr(module, name, hooked)

class AtFinalization:
    def __del__(self):
        sigint()

moment, out = os.environ["OPTC_TEST_SIGINT"], os.environ["OPTC_TEST_OUT"]
if moment == "self-check":
    wrap(selfcheck, "check_written", before=True)
elif moment == "exchange":
    wrap(outputs, "_exchange", before=True, target=out)
elif moment == "exchanged":
    wrap(outputs, "_exchange", before=False, target=out)
elif moment == "installed":
    wrap(outputs, "_install", before=False, target=out)
elif moment == "at-exit":
    atexit.register(sigint)
elif moment == "finalization":
    late = AtFinalization()  # deleted while the interpreter shuts down

from optc.tools.cli.console import console_main
console_main()
'''


@pytest.mark.parametrize("moment", ["self-check", "exchange", "exchanged", "installed",
                                    "at-exit", "finalization"])
def test_ctrl_c_around_a_forced_replace(artifact: Path, tmp_path: Path, moment: str) -> None:
    out = tmp_path / "out"
    assert main([str(artifact), "-o", str(out), "-q"]) == 0
    before = (out / "model.optc").read_text()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OPTC_TEST_SIGINT": moment,
           "OPTC_TEST_OUT": os.path.realpath(out)}
    proc = subprocess.run(
        [sys.executable, "-c", _HOOKED, str(artifact), "--passes", "drop-layers{layers=0}",
         "-o", str(out), "--force", "-q"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode >= 0, f"killed by signal {-proc.returncode}: {proc.stderr}"
    if moment in ("at-exit", "finalization"):  # the command was over: its own exit code
        assert (proc.returncode, proc.stderr) in ((0, ""), (130, "optc: interrupted\n")), proc
    else:
        assert proc.returncode == 130, proc.stderr
        assert proc.stderr == "optc: interrupted\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging leftovers
    assert is_optc_artifact(out)
    after = (out / "model.optc").read_text()
    if moment == "self-check":
        assert after == before  # interrupted before the replace: the old output stays
    elif moment != "exchange":
        assert after != before  # interrupted after the replace: the new output, whole
