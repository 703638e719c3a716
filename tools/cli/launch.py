"""``optc finetune --nproc N``: start N training processes on this machine, as torchrun would.

Each process runs ``python -m optc <command> ...`` with the variables torchrun sets (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and
``OMP_NUM_THREADS`` set to the machine's cores divided among them (or ``--threads``), so that
N processes do not fight over the cores. Rank 0 prints and writes the output; the launcher
waits for all of them and exits with the first failing one's code. A Ctrl-C reaches every
process (they share the terminal's process group): the launcher keeps waiting while they stop
(with ``--checkpoint-dir``, after writing a checkpoint), and stops them itself only at a
second Ctrl-C.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from optc.errors import InputError

__all__ = ["launch_local", "free_port"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for the process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch_local(argv: list[str], nproc: int, threads: int | None = None,
                 module: str = "optc") -> int:
    """Run ``python -m <module> *argv`` in ``nproc`` processes of one process group; returns
    the exit code (0 when all succeed, else the first nonzero one)."""
    if nproc < 1:
        raise InputError(f"--nproc must be at least 1, got {nproc}")
    per_process = threads or max(1, (os.cpu_count() or 1) // nproc)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    for rank in range(nproc):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": str(per_process)}
        procs.append(subprocess.Popen([sys.executable, "-m", module, *argv], env=env))
    interrupted = False
    stopping_since: float | None = None
    while True:
        try:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if stopping_since is None and any(c not in (None, 0) for c in codes):
                # one failed: the others would wait for it in their next all-reduce
                stopping_since = time.monotonic()
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            if stopping_since is not None and time.monotonic() - stopping_since > 30:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
        except KeyboardInterrupt:
            if interrupted:  # a second Ctrl-C: stop them now
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            interrupted = True
    failed = [c for c in codes if c != 0]
    return failed[0] if failed else 0
