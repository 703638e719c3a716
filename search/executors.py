"""Executors: where the search's evaluations run (serial, local processes, Ray).

Every executor evaluates a list of ``(config, candidate)`` pairs and returns their outcomes
in order. Each worker holds its own :class:`~optc.search.runner.GatedRunner` built from the
same module and batches, and evaluations are deterministic, so the results (and the greedy
search's decisions) do not depend on the executor. Workers run torch with one thread each.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import types
from collections.abc import Sequence
from typing import Any

import torch

from optc.errors import InputError
from optc.search.candidates import Candidate, Config
from optc.search.runner import GatedRunner, Outcome

__all__ = ["Executor", "SerialExecutor", "ProcessExecutor", "RayExecutor", "make_executor",
           "RAY_INSTALL_HINT"]

RAY_INSTALL_HINT = ("Ray is not installed: pip install 'optc[ray]' (or pip install 'ray>=2.9'), "
                    "or run without --ray / RAY_ADDRESS")

Pair = tuple[Config, Candidate | None]


class Executor:
    """Evaluates configurations; ``width`` is how many it runs at once."""

    width = 1
    name = "serial"

    def evaluate(self, pairs: Sequence[Pair]) -> list[Outcome]:
        raise NotImplementedError

    @property
    def evaluations(self) -> int:
        return 0

    def close(self) -> None:
        """Release workers (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialExecutor(Executor):
    """Evaluates in this process, one pair after the other."""

    def __init__(self, runner: GatedRunner) -> None:
        self.runner = runner

    def evaluate(self, pairs: Sequence[Pair]) -> list[Outcome]:
        return [self.runner.evaluate(config, candidate) for config, candidate in pairs]

    @property
    def evaluations(self) -> int:
        return self.runner.evaluations


# -- local processes ----------------------------------------------------------------------------
_WORKER: GatedRunner | None = None


def _init_worker(payload: dict[str, Any]) -> None:
    global _WORKER
    # Ctrl-C reaches the whole process group: the parent decides (a first one ends the search
    # with the best point so far, a second aborts and terminates the pool), not each worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    _WORKER = GatedRunner(**payload)


def _evaluate_in_worker(pair: Pair) -> tuple[torch.Tensor, list[Any]]:
    assert _WORKER is not None
    outcome = _WORKER.evaluate(*pair)
    return outcome.losses, outcome.predictions


class ProcessExecutor(Executor):
    """``workers`` local processes (spawned, so no state leaks from the parent)."""

    name = "processes"

    def __init__(self, payload: dict[str, Any], workers: int) -> None:
        self.width = workers
        context = multiprocessing.get_context("spawn")
        # Spawned children re-run the parent's __main__ unless it is hidden: under
        # ``python -m optc`` that would be the CLI itself. The workers need only this module.
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            self._pool = context.Pool(workers, initializer=_init_worker, initargs=(payload,))
        finally:
            if main is not None:
                sys.modules["__main__"] = main
        self._count = 0

    def evaluate(self, pairs: Sequence[Pair]) -> list[Outcome]:
        results = self._pool.map(_evaluate_in_worker, list(pairs), chunksize=1)
        self._count += len(pairs)
        return [Outcome(losses, predictions) for losses, predictions in results]

    @property
    def evaluations(self) -> int:
        return self._count

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


# -- Ray ----------------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(RAY_INSTALL_HINT) from None
    return ray


class RayExecutor(Executor):
    """``workers`` Ray actors, on the cluster at ``address`` (``RAY_ADDRESS``) or on a local
    Ray instance started for the search."""

    name = "ray"

    def __init__(self, payload: dict[str, Any], workers: int, address: str | None = None) -> None:
        ray = _import_ray()
        self._ray = ray
        self.width = workers
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address:
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers
            ray.init(**kwargs)
            self._started = True

        @ray.remote(num_cpus=1)
        class _Actor:
            def __init__(self, payload: dict[str, Any]) -> None:
                _init_worker(payload)

            def evaluate(self, pair: Pair) -> tuple[torch.Tensor, list[Any]]:
                return _evaluate_in_worker(pair)

        shared = ray.put(payload)
        self._actors = [_Actor.remote(shared) for _ in range(workers)]
        self._count = 0

    def evaluate(self, pairs: Sequence[Pair]) -> list[Outcome]:
        refs = [self._actors[i % len(self._actors)].evaluate.remote(pair)
                for i, pair in enumerate(pairs)]
        results = self._ray.get(refs)
        self._count += len(pairs)
        return [Outcome(losses, predictions) for losses, predictions in results]

    @property
    def evaluations(self) -> int:
        return self._count

    def close(self) -> None:
        if self._actors:
            for actor in self._actors:
                self._ray.kill(actor)
            self._actors = []
        if self._started:
            self._ray.shutdown()
            self._started = False


def make_executor(runner: GatedRunner, payload: dict[str, Any], workers: int = 1,
                  ray: bool = False) -> Executor:
    """Serial for one worker; local processes for several; Ray when ``ray`` or
    ``RAY_ADDRESS`` is set."""
    address = os.environ.get("RAY_ADDRESS") or None
    if ray or address:
        return RayExecutor(payload, max(1, workers), address)
    if workers > 1:
        return ProcessExecutor(payload, workers)
    return SerialExecutor(runner)
