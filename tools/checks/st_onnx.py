"""Check that sentence-transformers' ONNX backend loads what ``optc --backend onnx-st`` writes,
and that it encodes what optc's eager IR encodes.

    # in optc's environment: write the directory (fp32, or the int8 result of a pipeline)
    optc all-MiniLM-L6-v2 --backend onnx-st -o minilm-st
    optc all-MiniLM-L6-v2 --passes quantize -o minilm-int8
    optc minilm-int8 --backend onnx-st -o minilm-int8-st
    # in optc's environment: compare (it runs the encode step below in the other environment)
    python -m optc.tools.checks.st_onnx minilm-st --eager all-MiniLM-L6-v2
    python -m optc.tools.checks.st_onnx minilm-int8-st --eager minilm-int8 \\
        --baseline all-MiniLM-L6-v2 --min-cosine 0.999
    # the encode step alone, in the sentence-transformers environment (never imports optc):
    /tmp/stvenv/bin/python tools/checks/st_onnx.py encode minilm-st texts.txt out.npy

Two environments, because the two libraries cannot share one: ``SentenceTransformer(path,
backend="onnx")`` runs through optimum-onnx (``ORTModelForFeatureExtraction``), which pins
``transformers<4.58``, while optc needs transformers 5 (never pin optc's back for this, and
never install optimum into optc's environment). sentence-transformers 6 needs transformers 5
too, so its ONNX backend is used here from sentence-transformers 5.7. The environment::

    python3 -m venv /tmp/stvenv
    /tmp/stvenv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    /tmp/stvenv/bin/pip install "sentence-transformers[onnx]==5.7.0" \\
        "optimum-onnx[onnxruntime]==0.1.0" "transformers>=4.57,<4.58"

(without the pins pip backtracks through every transformers release before it settles).
``--st-python`` (default ``$OPTC_ST_PYTHON``, else ``/tmp/stvenv/bin/python``) names it.

``check`` (the default command; optc's environment) embeds the texts (``--texts``: one per
line; default: a few built-in sentences) with the model the directory was written from
(``--eager``: an optc artifact, a model directory or the embedded MiniLM's name) through optc's
eager lowering, with the pooling and token limit the directory declares and its tokenizer; runs
``encode`` in the sentence-transformers environment; and prints the cosine of each text's two
embeddings (min and mean); with ``--pairs`` (STS-B's ``dev.tsv``) also the Spearman correlation
of each pair's cosine with its score, for sentence-transformers' embeddings and optc's. With
``--baseline`` (e.g. the fp32 model an int8 one came from) it
also prints how far the directory's embeddings are from the baseline's eager ones. Exit status
0 when the min cosine to ``--eager`` is at least ``--min-cosine`` (default 0.9999), 1 when not,
2 on bad usage or when the other environment fails.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # run as a file: optc's tools/checks/ (coverage.py, ...) must not
    _HERE = os.path.dirname(os.path.abspath(__file__))  # shadow the libraries' own imports
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "TEXTS", "DEFAULT_ST_PYTHON"]

DEFAULT_ST_PYTHON = "/tmp/stvenv/bin/python"
"""The sentence-transformers environment's interpreter when ``$OPTC_ST_PYTHON`` is not set."""
TEXTS = (
    "A man is playing a guitar.",
    "The new movie is awesome and everyone loved the ending.",
    "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    "How do I reset my password?",
    "a cat sits on the mat",
    "The committee will meet next Tuesday to discuss the budget for the coming fiscal year, "
    "including the proposed cuts to research funding and the new hiring plan.",
    "Paris is the capital of France.",
    "I don't think that's a good idea.",
    "Quantum computers use qubits, which can represent both 0 and 1 at the same time.",
    "ok",
    "Two dogs are running through a snowy field.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
)
"""Texts embedded when ``--texts`` is not given (short, long, casing, punctuation)."""


# -- the sentence-transformers side (no optc import) -----------------------------------------
def encode(directory: str, texts_file: str, out: str, batch_size: int) -> dict[str, Any]:
    """Load ``directory`` with ``SentenceTransformer(directory, backend="onnx")``, embed the
    texts of ``texts_file`` and save them to ``out`` (.npy); what was loaded, as a dict."""
    import onnxruntime
    import optimum.onnxruntime
    import sentence_transformers
    import transformers
    from sentence_transformers import SentenceTransformer

    texts = Path(texts_file).read_text(encoding="utf-8").splitlines()
    model = SentenceTransformer(directory, backend="onnx", device="cpu")
    embeddings = model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
    np.save(out, embeddings.astype(np.float32))
    auto = model[0].auto_model
    session = getattr(auto, "session", None) or getattr(auto, "model", None)
    return {
        "versions": {"sentence_transformers": sentence_transformers.__version__,
                     "transformers": transformers.__version__,
                     "optimum": getattr(optimum.onnxruntime, "__version__", None)
                     or _version("optimum"), "optimum_onnx": _version("optimum-onnx"),
                     "onnxruntime": onnxruntime.__version__},
        "model_class": type(auto).__name__,
        "onnx_file": str(getattr(auto, "path", None) or getattr(auto, "model_path", "")),
        "inputs": [i.name for i in session.get_inputs()] if session is not None else None,
        "outputs": [o.name for o in session.get_outputs()] if session is not None else None,
        "modules": [type(m).__name__ for m in model],
        "shape": list(embeddings.shape),
    }


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


# -- the optc side -------------------------------------------------------------------------
def _eager_embeddings(target: str, directory: Path, texts: list[str],
                      batch_size: int) -> np.ndarray:
    """optc's eager embeddings of ``texts`` by ``target``, with the pooling, token limit and
    tokenizer of the sentence-transformers ``directory``."""
    from transformers import AutoTokenizer

    import optc
    from optc.artifacts import is_artifact, load_module
    from optc.backends import to_eager
    from optc.tasks import get_task
    from optc.tasks.embedding import embed
    from optc.tasks.pooling import read_pooling

    if is_artifact(target):
        module = load_module(target)
    else:
        model, source = optc.load_model(target)
        module = optc.capture(model, source=source)
    config = json.loads((directory / "sentence_bert_config.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    names = tuple(v.name for v in module.graph.inputs)
    found = embed(get_task("embedding"), to_eager(module), texts, tokenizer,
                  read_pooling(directory), batch_size, int(config["max_seq_length"]), names)
    return found.numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _read_pairs(path: Path) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score) of a GLUE-style TSV with those columns (STS-B's dev.tsv)."""
    import csv

    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r["sentence1"], r["sentence2"], float(r["score"])) for r in rows]


def _spearman(embeddings: np.ndarray, pairs: list[tuple[str, str, float]]) -> float:
    """Spearman x100 of each pair's cosine against its score (MTEB's STS figure)."""
    from scipy.stats import spearmanr

    n = len(pairs)
    cos = _cosines(embeddings[:n], embeddings[n:])
    return float(spearmanr(cos, [score for _, _, score in pairs]).statistic) * 100


def check(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not (directory / "modules.json").is_file():
        print(f"st_onnx_check: '{directory}' is no sentence-transformers directory (no "
              "modules.json): write it with optc MODEL --backend onnx-st -o DIR", file=sys.stderr)
        return 2
    pairs = None
    if args.pairs:
        # also under $OPTC_DATA_DIR, as optc's --data
        from optc.tasks.readers import resolve_data_path

        pairs = _read_pairs(resolve_data_path(args.pairs))
    if pairs is not None:
        texts = [a for a, _, _ in pairs] + [b for _, b, _ in pairs]
    else:
        texts = (Path(args.texts).read_text(encoding="utf-8").splitlines() if args.texts
                 else list(TEXTS))
        texts = [t for t in texts if t.strip()]
    python = args.st_python or os.environ.get("OPTC_ST_PYTHON") or DEFAULT_ST_PYTHON
    if not Path(python).is_file():
        print(f"st_onnx_check: no python at '{python}': make the sentence-transformers "
              "environment (see this script's docstring) or name it with --st-python",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        texts_file, out = Path(tmp) / "texts.txt", Path(tmp) / "st.npy"
        texts_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)  # the other environment must not see optc
        run = subprocess.run([python, "-P", str(Path(__file__).resolve()), "encode", str(directory),
                              str(texts_file), str(out), "--batch-size", str(args.batch_size)],
                             capture_output=True, text=True, env=env, check=False)
        if run.returncode != 0:
            tail = "\n".join(run.stderr.strip().splitlines()[-15:])
            print(f"st_onnx_check: SentenceTransformer('{directory}', backend='onnx') failed "
                  f"in {python}:\n{tail}", file=sys.stderr)
            return 2
        loaded = json.loads(run.stdout.strip().splitlines()[-1])
        got = np.load(out)
    report: dict[str, Any] = {"directory": str(directory), "texts": len(texts), "st": loaded}
    if pairs is not None:
        report["st"]["spearman"] = _spearman(got, pairs)
    rows = [("eager", args.eager)] + ([("baseline", args.baseline)] if args.baseline else [])
    for key, target in rows:
        want = _eager_embeddings(target, directory, texts, args.batch_size)
        cos = _cosines(got, want)
        report[key] = {"target": target, "cosine_min": float(cos.min()),
                       "cosine_mean": float(cos.mean()),
                       "max_abs_diff": float(np.abs(got - want).max())}
        if pairs is not None:
            report[key]["spearman"] = _spearman(want, pairs)
    ok = report["eager"]["cosine_min"] >= args.min_cosine
    report["min_cosine"], report["ok"] = args.min_cosine, ok
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"SentenceTransformer('{directory}', backend='onnx'): {loaded['model_class']}, "
              f"{Path(loaded['onnx_file']).name or '?'}, inputs {loaded['inputs']}, outputs "
              f"{loaded['outputs']}, modules {loaded['modules']}")
        print("  " + ", ".join(f"{k} {v}" for k, v in loaded["versions"].items()))
        if pairs is not None:
            print(f"  Spearman x100 of the pairs' cosines against their scores ({len(pairs)} "
                  f"pairs): sentence-transformers {report['st']['spearman']:.2f}, "
                  + ", ".join(f"optc eager of {report[k]['target']} {report[k]['spearman']:.2f}"
                              for k, _ in rows))
        for key, _ in rows:
            r = report[key]
            print(f"  vs optc eager of {r['target']} ({key}): cosine min {r['cosine_min']:.6f}, "
                  f"mean {r['cosine_mean']:.6f}, max |diff| {r['max_abs_diff']:.2e} "
                  f"over {len(texts)} texts")
        print(f"  {'ok' if ok else 'FAILED'}: min cosine to optc eager "
              f"{'>=' if ok else '<'} {args.min_cosine}")
    return 0 if ok else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m optc.tools.checks.st_onnx",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command")
    c = sub.add_parser("check", help="compare with optc's eager embeddings (optc's environment)")
    c.add_argument("directory", help="a directory written by optc MODEL --backend onnx-st")
    c.add_argument("--eager", required=True, metavar="MODEL",
                   help="the model DIR was written from: optc artifact, model directory or name")
    c.add_argument("--baseline", metavar="MODEL", help="another model to report the cosine to "
                   "(e.g. the fp32 model an int8 DIR was quantized from)")
    c.add_argument("--texts", metavar="FILE", help="texts to embed, one per line")
    c.add_argument("--pairs", metavar="TSV", help="instead of --texts: sentence pairs with a "
                   "score (columns sentence1, sentence2, score; e.g. glue/STS-B/dev.tsv, also "
                   "found under $OPTC_DATA_DIR): also "
                   "prints each model's Spearman of the pairs' cosines")
    c.add_argument("--st-python", metavar="PYTHON", help="the sentence-transformers "
                   f"environment's python (default $OPTC_ST_PYTHON, else {DEFAULT_ST_PYTHON})")
    c.add_argument("--min-cosine", type=float, default=0.9999)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--json", action="store_true")
    e = sub.add_parser("encode", help="embed with SentenceTransformer(DIR, backend='onnx') "
                       "(the sentence-transformers environment; no optc import)")
    e.add_argument("directory")
    e.add_argument("texts_file")
    e.add_argument("out", help=".npy file for the embeddings")
    e.add_argument("--batch-size", type=int, default=32)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in ("check", "encode", "-h", "--help"):
        argv = ["check", *argv]  # check is the default command
    args = _parser().parse_args(argv)
    if args.command == "encode":
        print(json.dumps(encode(args.directory, args.texts_file, args.out, args.batch_size)))
        return 0
    if args.command != "check":
        _parser().print_help()
        return 2
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
