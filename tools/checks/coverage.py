"""Model coverage: which families optc captures, raises, prunes and lowers, proven by running.

``python -m optc.tools.checks.coverage`` builds a tiny random-weight model of every family, captures
it, checks that every layer's attention and FFN were raised, that prune-heads/prune-neurons
remove zeroed units exactly (on every backend) and drop-layers of the last layer equals the
Hugging Face model with that layer deleted, and that eager, TorchScript and ONNX match Hugging Face; it prints the markdown table
that the README's "Model coverage" section holds. A cell says ``yes`` only when its check ran
and passed; otherwise it names the error.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from typing import Any

import torch

from optc.backends.differential import run_backend
from optc.frontends.capture import capture
from optc.ir.analysis import analyze
from optc.passes import PassManager

__all__ = ["FAMILIES", "check_family", "markdown_table", "main"]

_ENC = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            vocab_size=120, max_position_embeddings=64)
_DEC = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, use_cache=False)


def _configs() -> dict[str, Callable[[], Any]]:
    import transformers as tf

    return {
        "BERT": lambda: tf.BertConfig(**_ENC),
        "RoBERTa": lambda: tf.RobertaConfig(**{**_ENC, "max_position_embeddings": 66}),
        "DistilBERT": lambda: tf.DistilBertConfig(vocab_size=120, dim=32, n_layers=2, n_heads=4,
                                                  hidden_dim=64, max_position_embeddings=64),
        "ELECTRA": lambda: tf.ElectraConfig(**{**_ENC, "embedding_size": 16}),
        "GPT-2": lambda: tf.GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=64, use_cache=False),
        "Llama": lambda: tf.LlamaConfig(**_DEC),
        "Mistral": lambda: tf.MistralConfig(**_DEC, sliding_window=3),
        "Phi-3": lambda: tf.Phi3Config(**_DEC, pad_token_id=0, eos_token_id=2, bos_token_id=1),
        "Gemma": lambda: tf.GemmaConfig(**_DEC, head_dim=16),
        "Qwen2": lambda: tf.Qwen2Config(**_DEC),
        "ModernBERT": lambda: tf.ModernBertConfig(**{**_ENC, "pad_token_id": 0, "bos_token_id": 1,
                                                      "eos_token_id": 2, "cls_token_id": 1,
                                                      "sep_token_id": 2}),
        "T5 (encoder)": lambda: tf.T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                            num_heads=4, use_cache=False),
        "DeBERTa-v3": lambda: tf.DebertaV2Config(**_ENC, relative_attention=True,
                                                 pos_att_type=["p2c", "c2p"], position_buckets=16,
                                                 max_relative_positions=32, share_att_key=True,
                                                 norm_rel_ebd="layer_norm", type_vocab_size=0,
                                                 position_biased_input=False),
        "Phi": lambda: tf.PhiConfig(**{**_DEC, "num_key_value_heads": 4}, partial_rotary_factor=0.5),
        "GPT-NeoX": lambda: tf.GPTNeoXConfig(**{k: v for k, v in _DEC.items() if k != "num_key_value_heads"},
                                             rotary_pct=0.5),
        "Falcon": lambda: tf.FalconConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, ffn_hidden_size=64,
                                          max_position_embeddings=64, use_cache=False),
        "Falcon-40B": lambda: tf.FalconConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, num_kv_heads=2,
                                              new_decoder_architecture=True, ffn_hidden_size=64,
                                              max_position_embeddings=64, use_cache=False),
        "GPT-J": lambda: tf.GPTJConfig(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                                       rotary_dim=4, n_positions=64, bos_token_id=1, eos_token_id=2,
                                       use_cache=False),
        "MPNet": lambda: tf.MPNetConfig(**{**_ENC, "max_position_embeddings": 66}),
        "RoFormer": lambda: tf.RoFormerConfig(**_ENC, embedding_size=32),
        "ESM (rotary)": lambda: tf.EsmConfig(**{**_ENC, "vocab_size": 33},
                                             position_embedding_type="rotary", pad_token_id=1,
                                             mask_token_id=2),
        "Falcon (ALiBi)": lambda: tf.FalconConfig(vocab_size=120, hidden_size=32,
                                                  num_hidden_layers=2, num_attention_heads=4,
                                                  ffn_hidden_size=64, alibi=True,
                                                  max_position_embeddings=64, use_cache=False),
        "BART": lambda: tf.BartConfig(vocab_size=120, d_model=32, encoder_layers=2, decoder_layers=2,
                                      encoder_attention_heads=4, decoder_attention_heads=4,
                                      encoder_ffn_dim=64, decoder_ffn_dim=64,
                                      max_position_embeddings=64, use_cache=False),
    }


FAMILIES = ("BERT", "RoBERTa", "DistilBERT", "ELECTRA", "GPT-2", "Llama", "Mistral", "Phi-3",
            "Gemma", "Qwen2", "ModernBERT", "T5 (encoder)", "BART", "DeBERTa-v3",
            "Phi", "GPT-NeoX", "Falcon", "Falcon-40B", "GPT-J", "MPNet", "RoFormer",
            "ESM (rotary)", "Falcon (ALiBi)")
"""Rows of the table, in order."""

COLUMNS = ("capture", "raised", "prune-heads", "prune-neurons", "drop-layers", "eager",
           "TorchScript", "ONNX")


def _model(family: str) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    config = _configs()[family]()
    if family == "T5 (encoder)":
        model = tf.T5EncoderModel(config)
    else:
        model = tf.AutoModel.from_config(config)
    model.config._attn_implementation = "sdpa"
    return model.eval()


def _inputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 7), generator=gen)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[0, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _layer_list(model: torch.nn.Module) -> tuple[Any, str]:
    """The module list holding the model's last layers (the decoder's, for encoder-decoders)."""
    candidates = [(getattr(model, "decoder", None), "layers"), (getattr(model, "encoder", None), "layer"),
                  (getattr(model, "encoder", None), "layers"), (getattr(model, "encoder", None), "block"),
                  (getattr(model, "transformer", None), "layer"), (model, "layers"), (model, "h")]
    for owner, attr in candidates:
        if owner is not None and isinstance(getattr(owner, attr, None), torch.nn.ModuleList):
            return owner, attr
    raise LookupError("no layer list")


def _without_last_layer(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with its last layer deleted from its layer list."""
    copy_ = copy.deepcopy(model)
    owner, attr = _layer_list(copy_)
    kept = list(getattr(owner, attr))[:-1]
    setattr(owner, attr, torch.nn.ModuleList(kept))
    if hasattr(copy_.config, "num_hidden_layers") and not copy_.config.is_encoder_decoder:
        copy_.config.num_hidden_layers = len(kept)
    return copy_.eval()


def _num_layers(model: torch.nn.Module) -> int:
    config = model.config
    if getattr(config, "is_encoder_decoder", False) and hasattr(model, "decoder"):
        return int(config.encoder_layers + config.decoder_layers)
    return int(getattr(config, "num_hidden_layers", 0) or 0)


def _max_diff(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> float:
    return max((got[k].float() - want[k].float()).abs().max().item() for k in want)


def check_family(family: str, atol: float = 1e-5) -> dict[str, str]:
    """Run every check on ``family``; each column maps to ``yes`` or the reason it failed."""
    cells: dict[str, str] = {c: "-" for c in COLUMNS}

    def fail(col: str, exc: BaseException) -> dict[str, str]:
        cells[col] = f"no: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
        return cells

    try:
        model = _model(family)
        module = capture(model)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return fail("capture", exc)
    cells["capture"] = "yes"
    inputs = _inputs(model)
    with torch.inference_mode():
        out = model(**inputs)
    want = {k: out[k] for k in module.graph.outputs}
    layers = analyze(module).layers
    expected_layers = _num_layers(model)
    if len(layers) != expected_layers or not all(x.attention and x.ffn for x in layers):
        cells["raised"] = (f"no: {sum(1 for x in layers if x.attention)} attention, "
                           f"{sum(1 for x in layers if x.ffn)} FFN of {expected_layers} layers")
    else:
        cells["raised"] = "yes"
        cells.update(_structural(module, model, inputs, atol))
    for col, backend in (("eager", "eager"), ("TorchScript", "torchscript"), ("ONNX", "onnx")):
        try:
            diff = _max_diff(run_backend(module, backend, inputs), want)
            cells[col] = "yes" if diff <= atol else f"no: differs by {diff:.2g}"
        except Exception as exc:  # noqa: BLE001 - reported in the table
            fail(col, exc)
    return cells


def _structural(module: Any, model: torch.nn.Module, inputs: dict[str, torch.Tensor],
                atol: float) -> dict[str, str]:
    cells = {}

    def zero(m: Any, slices: Any) -> None:
        for s in slices:
            p = m.params[s.param]
            data = p.data.clone()
            idx = torch.tensor(list(s.index))
            data.index_fill_(s.dim, idx, 0.0)
            p.data = data

    for col, spec, pick in (
        ("prune-heads", "prune-heads{heads=0:1,1:0}",
         lambda layers: layers[0].attention.head_slices(1) + layers[1].attention.head_slices(0)),
        ("prune-neurons", "prune-neurons{neurons=0:3,1:0,1:9}",
         lambda layers: [s for n in (3,) for s in layers[0].ffn.neuron_slices(n)]
         + [s for n in (0, 9) for s in layers[1].ffn.neuron_slices(n)]),
    ):
        try:
            m = module.clone()
            zero(m, pick(analyze(m).layers))
            want = run_backend(m, "eager", inputs)
            PassManager(spec).run(m)
            diff = max(_max_diff(run_backend(m, b, inputs), want) for b in ("eager", "torchscript", "onnx"))
            cells[col] = "yes" if diff <= atol else f"no: differs by {diff:.2g}"
        except Exception as exc:  # noqa: BLE001
            cells[col] = f"no: {type(exc).__name__}"
    try:
        m = module.clone()
        PassManager(f"drop-layers{{layers={len(analyze(m).layers) - 1}}}").run(m)
        ref = _without_last_layer(model)
        with torch.inference_mode():
            out = ref(**inputs)
        want = {k: out[k] for k in m.graph.outputs}
        diff = max(_max_diff(run_backend(m, b, inputs), want) for b in ("eager", "torchscript", "onnx"))
        cells["drop-layers"] = "yes" if diff <= atol else f"no: differs by {diff:.2g}"
    except Exception as exc:  # noqa: BLE001
        cells["drop-layers"] = f"no: {type(exc).__name__}"
    return cells


def markdown_table(results: dict[str, dict[str, str]]) -> str:
    lines = ["| family | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for family, cells in results.items():
        lines.append(f"| {family} | " + " | ".join(cells.get(c, "-") for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m optc.tools.checks.coverage",
                                description=__doc__.splitlines()[0])
    p.add_argument("families", nargs="*", help="families to check (default: all); with "
                   "--all-transformers, transformers model types (default: every text one)")
    p.add_argument("--all-transformers", action="store_true",
                   help="check every text architecture the installed transformers exposes "
                        "(tiny random config each, one process each; see "
                        "optc.tools.checks.coverage_all)")
    p.add_argument("--timeout", type=float, default=240.0,
                   help="seconds per family with --all-transformers (default 240)")
    p.add_argument("--jsonl", help="with --all-transformers, append each family's row to this file")
    p.add_argument("--table-from", metavar="JSONL",
                   help="with --all-transformers, print the table and share of the rows a run "
                        "recorded with --jsonl (a partial run included) instead of checking")
    args = p.parse_args(argv)
    if args.all_transformers:
        from optc.tools.checks import coverage_all

        try:
            every = (coverage_all.load_rows(args.table_from) if args.table_from else
                     coverage_all.run_all(args.families or None, args.timeout, args.jsonl))
        except (ValueError, OSError) as exc:
            p.error(str(exc))
        print(coverage_all.markdown(every))
        print()
        print(coverage_all.summary(every))
        return 0
    args.families = args.families or list(FAMILIES)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    results = {}
    for family in args.families:
        results[family] = check_family(family)
        print(f"{family}: {results[family]}", file=sys.stderr)
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
