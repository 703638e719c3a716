"""Fuzzing the compiler: random valid pipelines x tiny models of every family x every backend.

    python -m optc.tools.checks.fuzz --tries 1000 [--seed 0] [--onnx-every 4] [--hf-every 2]
                              [--time-budget SECONDS] [--json]

Each try draws a family, a pipeline of registered passes with valid random options (explicit
units named by stable id, so they stay meaningful after earlier passes) and inputs with
padding, batch 1, sequence 1 and the longest sequence. Properties checked:

- no untyped exception: a refusal must be an :class:`~optc.errors.OptcError` (counted as
  ``refused``), anything else is a ``crash``;
- the verifier passes after every pass (the pass manager verifies);
- the backends agree: what TorchScript, (every ``--onnx-every``-th try) ONNX Runtime and (every
  ``--hf-every``-th try, where the hf backend takes the module) the Hugging Face export write is
  loaded back as the CLI's self-check loads it and matches eager within the self-check's
  tolerance for that backend and module (:func:`optc.backends.selfcheck.tolerance_for`: int8
  modules get the int8 ONNX tolerance), relative to ``max(1, max |output|)`` as it judges;
- an explicit removal equals the reference edit: heads and neurons removed by a pass give the
  outputs of the unpruned model with those units' output weights zeroed; layers dropped give
  the outputs of the Hugging Face model with those layers deleted from its layer list.

The report counts tries by outcome and lists the seeds that failed (rerun one with
``--tries 1 --seed S``). ``--time-budget`` stops drawing tries when it ends; Ctrl-C stops the
run too: either way the partial report is printed (Ctrl-C exits 130). The test suite runs a
short budget of it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["FAMILIES", "TryResult", "FuzzReport", "draw", "run_try", "fuzz", "main"]

FAMILIES = ("bert", "roberta", "distilbert", "electra", "xlm-roberta", "gpt2", "llama",
            "mistral", "qwen2", "gemma", "phi3", "phi", "gpt_neox", "falcon", "gptj",
            "modernbert")
"""Tiny random-weight Hugging Face models the fuzzer draws from: the encoders, GPT-2, the
grouped-query decoders (sliding window, q/k/v biases, head_dim apart from hidden/heads, fused
projections), the parallel attention+FFN decoders and ModernBERT (local/global attention)."""

REFERENCE_TOLERANCE = 1e-4
"""Max absolute difference of eager to the reference edit (both fp32 eager)."""

BACKENDS = ("torchscript", "onnx", "hf")
"""Backends a try lowers to (onnx and hf only on some tries); tolerances are the
self-check's (:func:`optc.backends.selfcheck.tolerance_for`)."""


@dataclass
class TryResult:
    """One try: what ran and how it ended."""

    seed: int
    family: str
    spec: str
    outcome: str
    """``ok``, ``refused`` (a typed error), ``crash``, ``disagree`` or ``reference``."""
    detail: str = ""
    seconds: float = 0.0
    checks: tuple[str, ...] = ()
    """What was compared: backends, and ``reference`` when a reference edit applied."""


@dataclass
class FuzzReport:
    """Outcomes of a fuzzing run."""

    results: list[TryResult] = field(default_factory=list)

    stopped: str = "done"
    """Why the run ended: ``done`` (all tries), ``time-budget`` or ``interrupted``."""
    seconds: float = 0.0

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in ("ok", "refused", "crash", "disagree", "reference")}
        for r in self.results:
            out[r.outcome] = out.get(r.outcome, 0) + 1
        return out

    @property
    def failures(self) -> list[TryResult]:
        return [r for r in self.results if r.outcome in ("crash", "disagree", "reference")]

    def table(self) -> str:
        counts = self.counts()
        lines = [f"tries {len(self.results)} ({self.stopped}, {self.seconds:.0f} s): "
                 + ", ".join(f"{k} {v}" for k, v in counts.items())]
        checked: dict[str, int] = {}
        for r in self.results:
            for c in r.checks:
                checked[c] = checked.get(c, 0) + 1
        lines.append("compared: " + ", ".join(f"{k} {v}" for k, v in sorted(checked.items())))
        by_family: dict[str, list[int]] = {}
        for r in self.results:
            by_family.setdefault(r.family, [0, 0])
            by_family[r.family][0] += 1
            by_family[r.family][1] += r in self.failures
        lines.append("family        tries  failures")
        for fam, (n, bad) in sorted(by_family.items()):
            lines.append(f"{fam:<12} {n:>6}  {bad:>8}")
        refused: dict[str, int] = {}
        for r in self.results:
            if r.outcome == "refused":
                key = re.sub(r"'[^']*'", "'...'", r.detail)  # the reason, without the spec
                key = re.sub(r"\(after [^)]*\)", "", key)[:90]
                refused[key] = refused.get(key, 0) + 1
        if refused:
            lines.append("refusals (typed errors, expected for some random pipelines):")
            lines += [f"  {n:>4}  {k}" for k, n in sorted(refused.items(), key=lambda x: -x[1])[:8]]
        for r in self.failures:
            lines.append(f"FAILED seed {r.seed} {r.family} {r.outcome}: {r.spec} :: {r.detail}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts(), "tries": len(self.results), "stopped": self.stopped,
                "seconds": round(self.seconds, 1),
                "families": sorted({r.family for r in self.results}),
                "failures": [r.__dict__ for r in self.failures]}


# -- models -----------------------------------------------------------------------------------
_MODELS: dict[str, tuple[torch.nn.Module, Any]] = {}


def _model(family: str) -> tuple[torch.nn.Module, Any]:
    """(Hugging Face model, captured IR module), built once per family."""
    if family not in _MODELS:
        import transformers as tf

        import optc

        torch.manual_seed(0)
        small = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=48, vocab_size=97, max_position_embeddings=40)
        llm = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=48, max_position_embeddings=40,
                   use_cache=False)
        config = {
            "bert": lambda: tf.BertConfig(**small),
            "roberta": lambda: tf.RobertaConfig(**{**small, "max_position_embeddings": 42}),
            "xlm-roberta": lambda: tf.XLMRobertaConfig(**{**small, "max_position_embeddings": 42}),
            "electra": lambda: tf.ElectraConfig(**small, embedding_size=24),
            "distilbert": lambda: tf.DistilBertConfig(vocab_size=97, dim=32, n_layers=3, n_heads=4,
                                                      hidden_dim=48, max_position_embeddings=40),
            "gpt2": lambda: tf.GPT2Config(vocab_size=97, n_embd=32, n_layer=3, n_head=4,
                                          n_positions=40, use_cache=False),
            # grouped-query attention, rotary, RMSNorm, gated FFN, pre-norm, causal mask
            "llama": lambda: tf.LlamaConfig(**llm),
            "mistral": lambda: tf.MistralConfig(**llm, sliding_window=3),
            "qwen2": lambda: tf.Qwen2Config(**llm),
            "gemma": lambda: tf.GemmaConfig(**llm, head_dim=16),
            "phi3": lambda: tf.Phi3Config(**llm, pad_token_id=0, eos_token_id=2, bos_token_id=1),
            # parallel attention + FFN
            "phi": lambda: tf.PhiConfig(**{**llm, "num_key_value_heads": 4},
                                        partial_rotary_factor=0.5),
            "gpt_neox": lambda: tf.GPTNeoXConfig(**{k: v for k, v in llm.items()
                                                    if k != "num_key_value_heads"},
                                                 rotary_pct=0.5),
            "falcon": lambda: tf.FalconConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3,
                                              num_attention_heads=4, ffn_hidden_size=48,
                                              max_position_embeddings=40, use_cache=False),
            "gptj": lambda: tf.GPTJConfig(vocab_size=97, n_embd=32, n_layer=3, n_head=4,
                                          n_inner=48, rotary_dim=4, n_positions=40,
                                          bos_token_id=1, eos_token_id=2, use_cache=False),
            # local (sliding-window) and global attention, fused Wqkv, GeGLU
            "modernbert": lambda: tf.ModernBertConfig(
                vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                intermediate_size=48, max_position_embeddings=40, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                global_attn_every_n_layers=2, local_attention=4),
        }[family]()
        model = tf.AutoModel.from_config(config).eval()
        model.config._attn_implementation = "sdpa"
        _MODELS[family] = (model, optc.capture(model))
    return _MODELS[family]


def _max_seq(module: Any) -> int:
    rng = module.dims.get("seq")
    return int(rng.max) if rng is not None and rng.max else 32


def _inputs(module: Any, rng: random.Random) -> list[dict[str, torch.Tensor]]:
    """Input sets: padded batch, batch 1, sequence 1, the longest sequence."""
    names = [v.name for v in module.graph.inputs]
    longest = _max_seq(module)
    shapes = [(3, rng.randint(2, 12)), (1, rng.randint(1, 9)), (2, 1), (2, longest)]
    sets = []
    for batch, seq in shapes:
        gen = torch.Generator().manual_seed(rng.randint(0, 2**31))
        feed = {"input_ids": torch.randint(3, 97, (batch, seq), generator=gen)}
        if "attention_mask" in names:
            mask = torch.ones(batch, seq, dtype=torch.long)
            if seq > 1:
                mask[0, rng.randint(1, seq - 1):] = 0  # padding in the first row
            feed["attention_mask"] = mask
        if "token_type_ids" in names:
            feed["token_type_ids"] = torch.zeros(batch, seq, dtype=torch.long)
        sets.append({k: v for k, v in feed.items() if k in names})
    return sets


# -- pipelines --------------------------------------------------------------------------------
def _pairs(rng: random.Random, layers: int, units: int, most: int) -> str:
    chosen = sorted({(rng.randrange(layers), rng.randrange(units)) for _ in range(rng.randint(1, most))})
    return ",".join(f"{i}:{j}" for i, j in chosen)


def _random_pass(rng: random.Random, layers: int, heads: int, ffn: int,
                 kv_heads: int | None = None) -> tuple[str, str | None]:
    """(spec, reference kind) for one random pass; the reference applies when it is the only
    structural pass. ``kv_heads``: key/value heads of a grouped-query model (None: not one)."""
    kind = rng.choice(["drop", "drop", "heads", "heads", "neurons", "neurons", "cleanup",
                       "sparsify", "quantize", "hard"])
    if kind == "hard":
        layer = f",layers={rng.randrange(layers)}" if rng.random() < 0.5 else ""
        renorm = ",renormalize=true" if rng.random() < 0.3 else ""
        return f"hard-attention{{k={rng.choice([1, 2, 3, 64])}{layer}{renorm}}}", None
    if kind == "drop":
        if rng.random() < 0.5:
            strategy = rng.choice(["top", "bottom", "alternate", "symmetric"])
            return f"drop-layers{{strategy={strategy},count={rng.randint(0, layers - 1)}}}", None
        ids = sorted(rng.sample(range(layers), rng.randint(1, layers - 1)))
        blocks = rng.choice(["both", "both", "attention", "ffn"])
        ref = "layers" if blocks == "both" else None
        return (f"drop-layers{{layers={','.join(map(str, ids))},ids=true,blocks={blocks}}}", ref)
    if kind == "heads":
        if kv_heads is not None and rng.random() < 0.3:  # a whole kv group with its queries
            groups = sorted({(rng.randrange(layers), rng.randrange(kv_heads))
                             for _ in range(rng.randint(1, 2))})
            return f"prune-heads{{kv_groups={','.join(f'{i}:{j}' for i, j in groups)}}}", None
        if rng.random() < 0.4:
            return (f"prune-heads{{amount={rng.choice([0.25, 0.5, 0.75])},"
                    f"per_layer={str(rng.random() < 0.5).lower()}}}", None)
        return f"prune-heads{{heads={_pairs(rng, layers, heads, 5)},ids=true}}", "heads"
    if kind == "neurons":
        if rng.random() < 0.4:
            return (f"prune-neurons{{amount={rng.choice([0.1, 0.5, 0.9])},"
                    f"per_layer={str(rng.random() < 0.5).lower()}}}", None)
        return f"prune-neurons{{neurons={_pairs(rng, layers, ffn, 12)},ids=true}}", "neurons"
    if kind == "sparsify":
        pattern = rng.choice(["unstructured", "2:4", "1:2", "block"])
        amount = "" if ":" in pattern else f"sparsity={rng.choice([0.0, 0.5, 0.9])},"
        scope = rng.choice(["global", "per_layer", "per_tensor"])
        block = f",block={rng.choice(['1x4', '4x4', '2x2'])}" if pattern == "block" else ""
        return f"sparsify{{{amount}pattern={pattern},scope={scope}{block}}}", None
    if kind == "quantize":
        targets = rng.choice(["attention,ffn", "ffn", "query,down", "attention,ffn,head",
                              "attention,ffn,matmuls", "matmuls"])
        bits = ",bits=8" if rng.random() < 0.25 else ""
        return f"quantize{{targets={targets}{bits}}}", None
    return rng.choice(["dce", "canonicalize", "raise-ops"]), "cleanup"


def _reference_outputs(family: str, base: Any, spec: str, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """Outputs of the reference edit for a single explicit removal, or None."""
    import optc
    from optc.ir.analysis import analyze
    from optc.passes.spec import parse_pipeline

    (p,) = parse_pipeline(spec)
    if p.name in ("prune-heads", "prune-neurons"):
        module = base.clone()
        layers = analyze(module).layers
        for layer_id, unit in (p.heads if p.name == "prune-heads" else p.neurons):
            layer = layers[layer_id]
            if p.name == "prune-heads":
                proj, d = layer.attention.output, layer.attention.head_dim
                cols = list(range(unit * d, (unit + 1) * d))
            else:
                proj, cols = layer.ffn.down, [unit]
            weight = proj.args[1]
            data = weight.data.clone()
            data[:, cols] = 0
            module.params[weight.name].data = data
        return optc.to_eager(module)(**inputs)
    if p.name == "drop-layers":
        model = copy.deepcopy(_model(family)[0])
        blocks = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len)
        keep = [m for i, m in enumerate(blocks) if i not in set(p.layers)]
        for i in range(len(blocks) - 1, -1, -1):
            del blocks[i]
        blocks.extend(keep)
        if hasattr(model.config, "num_hidden_layers"):
            model.config.num_hidden_layers = len(keep)
        with torch.no_grad():
            out = model(**inputs)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
    return None


# -- one try ----------------------------------------------------------------------------------
def _lower(module: Any, backend: str, tmp: Path) -> Any:
    """Write ``module`` with ``backend`` and load it back as the CLI's self-check does; None
    when the hf backend does not take the module (a documented refusal, not a failure)."""
    from optc.backends import write_backend
    from optc.backends.selfcheck import load_written
    from optc.errors import BackendError

    path = tmp / {"torchscript": "model.pt", "onnx": "model.onnx", "hf": "hf"}[backend]
    try:
        write_backend(module, backend, path, check=False)  # compared by the caller
    except BackendError:
        if backend == "hf":
            return None
        raise
    return load_written(module, backend, path)


def _difference(want: torch.Tensor, got: torch.Tensor) -> float:
    """Max |got - want| relative to max(1, max |want|), as the self-check judges a backend;
    inf for another shape or NaNs in other places."""
    if tuple(got.shape) != tuple(want.shape):
        return float("inf")
    if not want.numel():
        return 0.0
    want, got = want.detach().double(), got.detach().double()
    nan = torch.isnan(want)
    if not torch.equal(nan, torch.isnan(got)):
        return float("inf")
    scale = max(1.0, want.masked_fill(nan, 0.0).abs().max().item())
    return (got - want).abs().masked_fill(nan, 0.0).max().item() / scale


def draw(seed: int, families: tuple[str, ...] = FAMILIES
         ) -> tuple[str, list[tuple[str, str | None]], random.Random]:
    """The family (one of ``families``) and passes (spec, reference kind) of a try, and its
    random state."""
    from optc.ir.analysis import analyze

    rng = random.Random(seed)
    family = rng.choice(families)
    structure = analyze(_model(family)[1])
    layers = len(structure.layers)
    attention = structure.layers[0].attention
    heads, kv = attention.num_heads, attention.num_kv_heads
    ffn = structure.layers[0].ffn.width
    grouped = kv if kv < heads else None
    return family, [_random_pass(rng, layers, heads, ffn, grouped)
                    for _ in range(rng.randint(1, 4))], rng


def run_try(seed: int, onnx: bool = True, hf: bool = True,
            families: tuple[str, ...] = FAMILIES) -> TryResult:
    """Draw and run one try (deterministic for its seed)."""
    import optc
    from optc.backends.selfcheck import tolerance_for
    from optc.errors import OptcError

    start = time.perf_counter()
    family, spec = "?", ""
    try:
        family, drawn, rng = draw(seed, families)
        model, base = _model(family)
        spec = ",".join(s for s, _ in drawn)
        structural = [(s, r) for s, r in drawn if r != "cleanup"]
        reference = structural[0] if len(structural) == 1 and structural[0][1] else None
        feeds = _inputs(base, rng)
        module = base.clone()
        try:
            optc.run_pipeline(module, spec)
        except OptcError as exc:
            return TryResult(seed, family, spec, "refused", str(exc), time.perf_counter() - start)
        eager = optc.to_eager(module)
        expected = [eager(**feed) for feed in feeds]
        backends = [b for b in BACKENDS if {"onnx": onnx, "hf": hf}.get(b, True)]
        compared: list[str] = []
        with tempfile.TemporaryDirectory(prefix="optc-fuzz-") as tmp:
            for backend in backends:
                run = _lower(module, backend, Path(tmp))
                if run is None:
                    continue
                compared.append(backend)
                tolerance = tolerance_for(module, backend)
                for feed, ref in zip(feeds, expected, strict=True):
                    got = run(feed)
                    for name, value in ref.items():
                        diff = _difference(value, got[name]) if name in got else float("inf")
                        if not diff <= tolerance:
                            shape = tuple(next(iter(feed.values())).shape)
                            return TryResult(seed, family, spec, "disagree",
                                             f"{backend} '{name}' differs by {diff:.3g} "
                                             f"(relative; tolerance {tolerance:g}) at {shape}",
                                             time.perf_counter() - start)
        if reference is not None:
            for feed, ref in zip(feeds, expected, strict=True):
                want = _reference_outputs(family, base, reference[0], feed)
                for name, value in ref.items():
                    if want is None or name not in want:
                        continue
                    diff = (want[name].float() - value.float()).abs().max().item()
                    if not diff <= REFERENCE_TOLERANCE:
                        return TryResult(seed, family, spec, "reference",
                                         f"'{name}' differs from the reference edit by {diff:.3g}",
                                         time.perf_counter() - start)
        checks = tuple(compared) + (("reference",) if reference is not None else ())
        return TryResult(seed, family, spec, "ok", "", time.perf_counter() - start, checks)
    except Exception as exc:  # noqa: BLE001 - an untyped exception is what the fuzzer looks for
        where = traceback.extract_tb(exc.__traceback__)[-1]
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} at {Path(where.filename).name}:{where.lineno}"
        return TryResult(seed, family, spec, "crash", detail, time.perf_counter() - start)


def fuzz(tries: int | None, seed: int = 0, onnx_every: int = 4, progress: bool = False,
         time_budget: float | None = None, hf_every: int = 2,
         families: tuple[str, ...] = FAMILIES) -> FuzzReport:
    """Run tries with seeds ``seed, seed+1, ...``: ``tries`` of them (None: until the budget
    ends), and no new one once ``time_budget`` seconds have passed; ONNX on every
    ``onnx_every``-th try, hf on every ``hf_every``-th (0: never). Ctrl-C ends the run with
    the tries done so far (``stopped="interrupted"``)."""
    if tries is None and time_budget is None:
        raise ValueError("give tries, time_budget or both")
    report = FuzzReport()
    start = time.perf_counter()
    i = 0
    try:
        while tries is None or i < tries:
            if time_budget is not None and time.perf_counter() - start >= time_budget:
                report.stopped = "time-budget"
                break
            result = run_try(seed + i, onnx=onnx_every > 0 and i % onnx_every == 0,
                             hf=hf_every > 0 and i % hf_every == 0, families=families)
            report.results.append(result)
            i += 1
            if progress:
                of = f"/{tries}" if tries is not None else ""
                print(f"\r{i}{of} {result.outcome:<9} {result.family:<12}", end="", flush=True)
    except KeyboardInterrupt:
        report.stopped = "interrupted"
    report.seconds = time.perf_counter() - start
    if progress:
        print()
    return report


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run the fuzzer; 0: no failure, 1: failures, 130: interrupted (the partial report is
    printed in every case)."""
    parser = argparse.ArgumentParser(description="Fuzz optc: random pipelines x families x backends.")
    parser.add_argument("--tries", type=int, default=None,
                        help="tries to run (default 200, or unlimited with --time-budget)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx-every", type=int, default=4,
                        help="export to ONNX on every N-th try (0: never; ONNX export is slow)")
    parser.add_argument("--hf-every", type=int, default=2,
                        help="export with the hf backend on every N-th try where it takes the "
                             "module (0: never)")
    parser.add_argument("--time-budget", type=_positive, default=None, metavar="SECONDS",
                        help="draw no new try after this long; the partial report is printed")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="comma-separated families to draw from (default: all)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        parser.error(f"unknown family '{(unknown or [''])[0]}'; valid: {', '.join(FAMILIES)}")
    tries = args.tries if args.tries is not None or args.time_budget is not None else 200
    from optc.tools.common import quiet_libraries

    quiet_libraries()
    logging.getLogger("optc").setLevel(logging.ERROR)  # e.g. the hf export's tokenizer note
    torch.set_num_threads(1)
    report = fuzz(tries, args.seed, args.onnx_every, progress=not args.json,
                  time_budget=args.time_budget, hf_every=args.hf_every, families=families)
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the report
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.table())
    if report.stopped == "interrupted":
        return 130
    return 1 if report.failures else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:  # before the first try or after the report: no traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        sys.stderr.write("fuzz: interrupted\n")
        raise SystemExit(130) from None
