"""Options of the specialization search (:class:`SearchOptions`): the acceptance rule, the
candidate kinds, the validation split, stopping targets, workers, sweeps, rounds and the
confirmation and held-out shares. The defaults are the published procedure; a bad option
raises :class:`~optc.errors.PipelineSpecError` when the options are made."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from optc.errors import PipelineSpecError
from optc.passes.spec import parse_pipeline
from optc.search.acceptance import make_rule
from optc.search.candidates import KINDS

__all__ = ["SearchOptions", "UNIT_ORDERS"]

UNIT_ORDERS = ("index", "importance")
"""How heads and neuron groups are formed and ordered (:attr:`SearchOptions.unit_order`)."""


@dataclass(frozen=True)
class SearchOptions:
    """Options of the search; the defaults are the published procedure."""

    rule: str = "loss"
    """Acceptance rule: loss (published), metric (validation metric within ``tolerance``) or
    metric-loss (that, and the mean validation loss no higher than the baseline's)."""
    tolerance: float = 0.0
    """metric rule: tolerated drop of the validation metric, in points."""
    kinds: tuple[str, ...] = KINDS
    """Candidate kinds, in order: hard-attention, ffn, ffn-groups, attention, heads."""
    neuron_groups: int = 12
    """FFN neuron groups per layer."""
    k: int = 30
    """Hard attention: probabilities kept per query row."""
    fine_threshold: float = 1.1
    """Groups/heads are tried after a rejected block when its loss < this x the best loss.
    Not for the label-free ``embedding`` task: its loss is a distance to the reference model's
    embeddings, 0 for the input itself, so no ratio to it means "close"; every group and head
    is tried there (the time budget bounds the search)."""
    val_size: float | int = 0.15
    """Validation split carved from train: a fraction, or a number of examples."""
    seed: int = 0
    """Seed of the validation split."""
    val_limit: int | None = None
    """Use only the first N validation examples."""
    val_data: str | os.PathLike | None = None
    """Validation examples from this file (a directory: its ``val`` file) instead of a part
    carved from train (``val_size``/``seed`` then unused): e.g. data from where the model
    will be used, when train does not represent it."""
    batch_size: int = 32
    max_length: int | None = None
    """Token limit (default 128; 384 for QA)."""
    flops_target: float | None = None
    """Stop once the FLOPs are at most this fraction of the starting module's."""
    time_budget: float | None = None
    """Seconds after which no new candidate is tried (the best model so far is kept)."""
    latency_target: float | None = None
    """Stop once the measured eager latency (batch 1, seq 128, 1 thread) is at most this
    fraction of the starting module's (measured after each acceptance)."""
    prefix_reuse: bool = True
    """Reuse the hidden states entering a layer for all candidates in it."""
    workers: int = 1
    """Local worker processes (1: serial)."""
    ray: bool = False
    """Evaluate on Ray actors (also when RAY_ADDRESS is set)."""
    sweeps: int = 1
    """Passes over the trial order (1: published); a sweep that accepts nothing ends it."""
    unit_order: str = "index"
    """How heads are ordered and neurons grouped: ``index`` (published: by position) or
    ``importance`` (Taylor importance on the validation split, least important first)."""
    rounds: int = 1
    """Searches, each on the previous one's refitted result (1: published)."""
    between: str = "reconstruct"
    """Pipeline run on a round's result before the next round (reference: the input
    module; data-reading passes get the search's data)."""
    confirm: float = 0.0
    """Share of the validation examples kept out of the search to confirm it (0: none, as
    published): after each round its acceptances are replayed in order on this part and cut
    after the longest prefix that the rule still accepts there (see
    :func:`optc.search.driver.specialize`)."""
    max_flips: float | None = None
    """Classification: also refuse a candidate that makes more than this share of the
    validation examples predicted as another class than the baseline (the unpruned or
    reference model) predicts them; None: not counted (published)."""
    device: str = "cpu"
    """Where the training passes of ``between`` run (cpu, cuda, cuda:N, auto; the search's own
    evaluations run on the CPU)."""
    precision: str = "fp32"
    """Autocast precision of those training passes (fp32, bf16, fp16)."""
    holdout: float = 0.0
    """Share of the validation examples the search never sees (a seeded split, stratified
    like the validation split; 0: none, as published): the held-out part on which
    :mod:`optc.search.contract` checks the result
    (:func:`optc.search.validation.held_out_examples`)."""

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise PipelineSpecError(f"unknown candidate kind '{(bad or [''])[0]}'; valid kinds: "
                                    f"{', '.join(KINDS)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise PipelineSpecError(f"k must be an integer >= 1 (attention probabilities kept "
                                    f"per query row), got {self.k!r}")
        if self.neuron_groups < 1:
            raise PipelineSpecError(f"neuron groups must be >= 1, got {self.neuron_groups}")
        if isinstance(self.sweeps, bool) or not isinstance(self.sweeps, int) or self.sweeps < 1:
            raise PipelineSpecError(f"sweeps must be an integer >= 1, got {self.sweeps!r}")
        if isinstance(self.rounds, bool) or not isinstance(self.rounds, int) or self.rounds < 1:
            raise PipelineSpecError(f"rounds must be an integer >= 1, got {self.rounds!r}")
        parse_pipeline(self.between)  # also with one round: a bad spec is a bad option
        for name in ("fine_threshold", "tolerance"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise PipelineSpecError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.workers < 1:
            raise PipelineSpecError(f"workers must be >= 1, got {self.workers}")
        if self.unit_order not in UNIT_ORDERS:
            raise PipelineSpecError(f"unknown unit order '{self.unit_order}'; valid orders: "
                                    f"{', '.join(UNIT_ORDERS)}")
        if self.flops_target is not None and not 0 < self.flops_target <= 1:
            raise PipelineSpecError(f"the FLOPs target is a fraction in (0, 1], got "
                                    f"{self.flops_target}")
        if self.latency_target is not None and not 0 < self.latency_target <= 1:
            raise PipelineSpecError(f"the latency target is a fraction in (0, 1], got "
                                    f"{self.latency_target}")
        if not 0 <= self.holdout < 1:
            raise PipelineSpecError(f"the held-out share is a fraction in [0, 1), got "
                                    f"{self.holdout}")
        if not 0 <= self.confirm < 1:
            raise PipelineSpecError(f"the confirmation share is a fraction in [0, 1), got "
                                    f"{self.confirm}")
        if self.time_budget is not None and not self.time_budget > 0:
            raise PipelineSpecError(f"the time budget must be positive, got {self.time_budget}")
        make_rule(self.rule, self.tolerance, self.max_flips)
