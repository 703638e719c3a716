"""hf backend: a pruned model (per-layer heads, FFN widths, dropped layers and blocks) becomes a
Hugging Face directory that plain transformers loads, in a process that cannot import optc, with
the outputs of optc's eager IR; optc reads its own exports back (and only its own code)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import optc
from optc.backends import to_eager, write_backend
from optc.backends.hf import FAMILIES, PER_LAYER_FIELDS, modeling_source, restore_stable_ids
from optc.backends.selfcheck import write_checked
from optc.errors import BackendError, InputError, OutputError
from optc.frontends.huggingface import load_model
from optc.ir.analysis import analyze
from optc.ir.attributes import Quantization
from optc.ir.ids import parse_ids
from optc.tests.conftest import TINY, tiny_model

TOL = 1e-5

AUTO = {"Model": "AutoModel", "ForSequenceClassification": "AutoModelForSequenceClassification",
        "ForQuestionAnswering": "AutoModelForQuestionAnswering",
        "ForTokenClassification": "AutoModelForTokenClassification"}

JOBS = {
    # name: (family, head, pipeline spec) -- each layer ends with its own sizes
    "bert-cls": ("bert", "ForSequenceClassification",
                 "drop-layers{layers=1},drop-layers{layers=0,blocks=attention},"
                 "prune-heads{heads=1:3,1:0},prune-neurons{neurons=0:0,0:5,0:9,1:1},dce"),
    "bert-base": ("bert", "Model", "prune-heads{heads=1:1,1:2,2:0,2:1,2:2,2:3},"
                  "prune-neurons{neurons=2:0},dce"),
    "roberta-cls": ("roberta", "ForSequenceClassification",
                    "drop-layers{layers=2},prune-heads{heads=0:1,0:2,0:3,1:0},"
                    "prune-neurons{neurons=1:2,1:4},dce"),
    "xlmr-qa": ("xlm-roberta", "ForQuestionAnswering",
                "prune-heads{heads=0:0,2:1,2:2},prune-neurons{neurons=1:0,1:1,1:2},"
                "drop-layers{layers=0,blocks=ffn},dce"),
    "electra-tok": ("electra", "ForTokenClassification",
                    "drop-layers{layers=0},prune-heads{heads=1:1},prune-neurons{neurons=0:3},dce"),
    "distilbert-cls": ("distilbert", "ForSequenceClassification",
                       "prune-heads{heads=0:0,0:1,0:2,2:3},drop-layers{layers=1,blocks=ffn},"
                       "prune-neurons{neurons=2:1,2:6},dce"),
    "gpt2-base": ("gpt2", "Model", "prune-heads{heads=0:1,1:0,1:2,1:3},drop-layers{layers=2,blocks=attention},"
                  "prune-neurons{neurons=0:7,1:0,1:1},dce"),
}

CHILD = r'''
import json, os, sys
for entry in reversed(sys.argv[1].split(os.pathsep)):
    sys.path.insert(0, entry)
try:
    import optc  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("optc is importable in the clean process")
import torch
import transformers
from safetensors.torch import load_file, save_file

spec = json.load(open(sys.argv[2]))
for job in spec["jobs"]:
    cls = getattr(transformers, job["auto"])
    model = cls.from_pretrained(job["dir"], trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    x = load_file(job["inputs"])
    with torch.no_grad():
        out = model(**x, output_hidden_states=True, output_attentions=True)
        result = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        result["tuple.0"] = model(**x, return_dict=False)[0]
        result["hidden_states.count"] = torch.tensor(len(out.hidden_states))
        result["hidden_states.last"] = out.hidden_states[-1]
        if "token_type_ids" in x and not x["token_type_ids"].any():  # token types are optional
            rest = {k: v for k, v in x.items() if k != "token_type_ids"}
            result["no_token_types.0"] = model(**rest)[0]
        if job.get("roundtrip"):
            model.save_pretrained(job["roundtrip"])
            again = cls.from_pretrained(job["roundtrip"], trust_remote_code=True).eval()
            result["roundtrip.0"] = again(**x)[0]
    save_file({k: v.clone().contiguous() for k, v in result.items()}, job["out"])
if spec.get("pipeline"):
    task, directory, texts = spec["pipeline"]
    pipe = transformers.pipeline(task, model=directory, trust_remote_code=True)
    got = pipe(texts)
    tok = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=True)
    enc = tok(texts, padding=True, return_tensors="pt")
    save_file({k: v.contiguous() for k, v in enc.items()}, spec["pipeline_inputs"])
    json.dump(got if task != "feature-extraction" else [torch.tensor(g).tolist() for g in got],
              open(spec["pipeline_out"], "w"))
'''


def clean_run(spec: dict, tmp: Path) -> None:
    """Run CHILD in a fresh interpreter that sees site-packages but cannot import optc."""
    paths = os.pathsep.join(dict.fromkeys([sysconfig.get_paths()["purelib"],
                                           sysconfig.get_paths()["platlib"]]))
    (tmp / "child.py").write_text(CHILD)
    (tmp / "spec.json").write_text(json.dumps(spec))
    env = {"PATH": os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf"),
           "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-I", "-S", str(tmp / "child.py"), paths,
                           str(tmp / "spec.json")], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def build(family: str, head: str) -> torch.nn.Module:
    """A 3-layer random-weight model of ``family`` with ``head`` (3 labels, 2 for QA)."""
    import transformers as tf

    torch.manual_seed(0)
    kw = {**TINY, "num_hidden_layers": 3}
    config = {
        "bert": lambda: tf.BertConfig(**kw),
        "roberta": lambda: tf.RobertaConfig(**{**kw, "max_position_embeddings": 66}),
        "xlm-roberta": lambda: tf.XLMRobertaConfig(**{**kw, "max_position_embeddings": 66}),
        "electra": lambda: tf.ElectraConfig(**kw, embedding_size=32),
        "gpt2": lambda: tf.GPT2Config(vocab_size=120, n_embd=64, n_layer=3, n_head=4, n_positions=64,
                                      use_cache=False),
        "distilbert": lambda: tf.DistilBertConfig(vocab_size=120, dim=64, n_layers=3, n_heads=4,
                                                  hidden_dim=128, max_position_embeddings=64),
    }[family]()
    config.num_labels = 2 if head == "ForQuestionAnswering" else 3
    return getattr(tf, AUTO[head]).from_config(config).eval()


def word_tokenizer(path: Path) -> Path:
    """A tiny WordPiece tokenizer (ids below TINY's vocabulary) saved at ``path``."""
    from transformers import BertTokenizerFast

    words = ["good", "bad", "film", "a", "the", "very", "plot", "actors", "boring", "great"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    return path


def inputs_for(module: optc.Module, family: str, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch, seq = 3, 11
    ids = torch.randint(5, TINY["vocab_size"], (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 7:] = 0
    mask[2, 4:] = 0
    x = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in [v.name for v in module.graph.inputs]:
        split = family in ("bert", "electra")  # RoBERTa's table has one token type
        x["token_type_ids"] = ((torch.arange(seq) >= seq // 2).long() * split).expand(batch, seq).contiguous()
    return x


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every job pruned, exported (self-checked) and run in one clean process."""
    tmp = tmp_path_factory.mktemp("hf")
    tokenizer = word_tokenizer(tmp / "tokenizer")
    spec: dict = {"jobs": []}
    found = {}
    for name, (family, head, pipeline) in JOBS.items():
        module = optc.capture(build(family, head), source={"model": f"tiny-{family}"})
        module.meta["source"]["tokenizer"] = str(tokenizer)
        optc.run_pipeline(module, pipeline)
        if name == "bert-base":  # hard attention: layer 0 keeps the 3 highest scores per query
            node = next(n for n in module.graph if n.op == "attention")
            node.set_attr("kind", "topk")
            node.set_attr("topk", 3)
        out = tmp / name
        report = write_checked(module, "hf", out)
        x = inputs_for(module, family, seed=len(found))
        save_file(x, str(tmp / f"{name}.in.safetensors"))
        spec["jobs"].append({"dir": str(out), "auto": AUTO[head], "inputs": str(tmp / f"{name}.in.safetensors"),
                             "out": str(tmp / f"{name}.out.safetensors"),
                             "roundtrip": str(tmp / f"{name}.saved") if name == "bert-cls" else None})
        found[name] = (module, out, x, report)
    spec["pipeline"] = ["text-classification", str(tmp / "bert-cls"), ["a good film", "the plot was very boring"]]
    spec["pipeline_inputs"] = str(tmp / "pipe.in.safetensors")
    spec["pipeline_out"] = str(tmp / "pipe.json")
    clean_run(spec, tmp)
    return tmp, found


@pytest.mark.parametrize("name", list(JOBS))
def test_clean_process_matches_eager(exported, name: str) -> None:
    tmp, found = exported
    module, out, x, report = found[name]
    assert report.worst() <= TOL  # the in-process self-check ran at this tolerance
    got = load_file(str(tmp / f"{name}.out.safetensors"))
    with torch.inference_mode():
        want = to_eager(module)(**x)
    assert set(want) <= set(got)
    for key, value in want.items():
        assert (got[key] - value).abs().max().item() <= TOL, key
    first = next(iter(want))  # return_dict=False: a tuple, first the IR's first output
    assert (got["tuple.0"] - want[first]).abs().max().item() <= TOL
    config = json.loads((out / "config.json").read_text())
    assert int(got["hidden_states.count"]) == len(config["num_attention_heads_per_layer"]) + 1
    if "no_token_types.0" in got:
        assert (got["no_token_types.0"] - got["tuple.0"]).abs().max().item() <= TOL
    if "roundtrip.0" in got:
        assert torch.equal(got["roundtrip.0"], got["tuple.0"])


def test_config_records_per_layer_sizes(exported) -> None:
    tmp, found = exported
    module, out, _, _ = found["bert-cls"]
    config = json.loads((out / "config.json").read_text())
    # 3 layers; layer 1 dropped; layer 0 lost its attention block; heads 0 and 3 of layer 2 pruned
    assert config["num_hidden_layers"] == 2
    assert config["num_attention_heads_per_layer"] == [0, 2]
    assert config["attention_head_size_per_layer"] == [0, 16]
    assert config["intermediate_size_per_layer"] == [125, 127]
    assert config["attention_topk_per_layer"] == [None, None]
    assert config["optc"]["layer_ids"] == [0, 2]
    assert config["optc"]["head_ids_per_layer"] == ["", "1-2"]
    assert config["optc"]["neuron_ids_per_layer"][0] == "1-4,6-8,10-127"
    assert config["model_type"] == "optc-bert" and config["architectures"] == ["OptcBertForSequenceClassification"]
    assert config["auto_map"]["AutoModelForSequenceClassification"] == \
        "modeling_optc_bert.OptcBertForSequenceClassification"
    assert set(PER_LAYER_FIELDS) <= set(config)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "modeling_optc_bert.py", "vocab.txt",
            "tokenizer_config.json"} <= names
    source = (out / "modeling_optc_bert.py").read_text()
    assert "optc" not in {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert source == modeling_source(FAMILIES["bert"])
    weights = load_file(str(out / "model.safetensors"))
    assert "bert.encoder.layer.1.attention.self.query.weight" in weights  # renumbered, no gap
    assert "bert.encoder.layer.0.attention.self.query.weight" not in weights
    assert weights["bert.encoder.layer.1.attention.self.query.weight"].shape == (32, 64)
    hard = json.loads((found["bert-base"][1] / "config.json").read_text())
    assert hard["attention_topk_per_layer"] == [3, None, None]
    assert hard["num_attention_heads_per_layer"] == [4, 2, 0]  # layer 2: every head pruned,
    assert hard["attention_bias_only_per_layer"] == [False, False, True]  # its bias stays
    distil = json.loads((found["distilbert-cls"][1] / "config.json").read_text())
    # DistilBERT keeps its own field names; layer 1 lost its FFN block
    assert (distil["n_layers"], distil["dim"], distil["n_heads"]) == (3, 64, 4)
    assert distil["num_attention_heads_per_layer"] == [1, 4, 3]
    assert distil["intermediate_size_per_layer"] == [128, 0, 126]
    assert "hidden_size" not in distil and "type_vocab_size" not in distil
    gpt2 = json.loads((found["gpt2-base"][1] / "config.json").read_text())
    assert (gpt2["n_layer"], gpt2["n_embd"], gpt2["n_inner"]) == (3, 64, 256)
    assert gpt2["num_attention_heads_per_layer"] == [3, 1, 0]
    assert gpt2["intermediate_size_per_layer"] == [255, 254, 256]
    assert set(gpt2["auto_map"]) == {"AutoConfig", "AutoModel"}
    weights = load_file(str(found["gpt2-base"][1] / "model.safetensors"))
    assert weights["h.1.attn.c_attn.weight"].shape == (64, 3 * 16)  # Conv1D: [in, out]
    assert "h.2.ln_1.weight" not in weights  # the attention block went with its norm


def test_pipeline_classifies_with_the_pruned_model(exported) -> None:
    tmp, found = exported
    module = found["bert-cls"][0]
    preds = json.loads((tmp / "pipe.json").read_text())
    enc = load_file(str(tmp / "pipe.in.safetensors"))
    with torch.inference_mode():
        logits = to_eager(module)(**enc)["logits"]
    probs = torch.softmax(logits, -1)
    assert [p["label"] for p in preds] == [f"LABEL_{i}" for i in probs.argmax(-1).tolist()]
    assert [p["score"] for p in preds] == pytest.approx(probs.max(-1).values.tolist(), abs=1e-5)


@pytest.mark.parametrize(("name", "spec", "heads", "ffn", "bias_only"), [
    ("bert-cls", "prune-heads{heads=1:0}", [0, 1], [124, 127], [False, False]),
    # the last head of layer 0 goes: the layer keeps its attention's output bias and norm
    ("distilbert-cls", "prune-heads{heads=0:0}", [0, 4, 3], [127, 0, 126], [True, False, False]),
    ("gpt2-base", "prune-heads{heads=0:0}", [2, 1, 0], [254, 254, 256], [False, False, False]),
])
def test_read_back_and_prune_again(exported, tmp_path: Path, name: str, spec: str,
                                   heads: list[int], ffn: list[int], bias_only: list[bool]) -> None:
    """A second pruning pass on an exported directory, through optc, exported again."""
    _, found = exported
    module, out, x, _ = found[name]
    family, head = JOBS[name][:2]
    model, source = load_model(out)
    assert type(model).__name__ == f"Optc{FAMILIES[family].name}{head}"
    assert source["model_type"] == family
    again = optc.capture(model, source=source)
    first = json.loads((out / "config.json").read_text())["optc"]
    optc.verify(again)
    # capture restores the recorded ids: they keep naming the original units
    assert [layer.id for layer in analyze(again).layers] == first["layer_ids"]
    with torch.inference_mode():
        want, got = to_eager(module)(**x), to_eager(again)(**x)
    for key in want:
        assert (got[key] - want[key]).abs().max().item() <= TOL
    optc.run_pipeline(again, spec + ",prune-neurons{neurons=0:0},dce")
    second = tmp_path / "second"
    write_checked(again, "hf", second)
    config = json.loads((second / "config.json").read_text())
    assert config["num_attention_heads_per_layer"] == heads
    assert config["intermediate_size_per_layer"] == ffn
    assert config["attention_bias_only_per_layer"] == bias_only
    assert config["optc"]["layer_ids"] == first["layer_ids"]
    for before, after in zip(first["head_ids_per_layer"], config["optc"]["head_ids_per_layer"], strict=True):
        assert set(parse_ids(after)) < set(parse_ids(before)) or after == before
    assert (second / "vocab.txt").is_file()  # the tokenizer travels with the model


def test_stable_ids_not_restored_from_a_record_that_does_not_fit(exported) -> None:
    module = exported[1]["bert-cls"][0].clone()
    before = optc.print_module(module)
    assert not restore_stable_ids(module, {"layer_ids": [7], "head_ids_per_layer": [""],
                                           "neuron_ids_per_layer": [""]})
    assert not restore_stable_ids(module, {"layer_ids": [4, 5], "head_ids_per_layer": ["", "0-5"],
                                           "neuron_ids_per_layer": ["0-124", "0-126"]})
    assert optc.print_module(module) == before


def test_edited_modeling_file_is_never_run(exported, tmp_path: Path) -> None:
    _, found = exported
    copy = tmp_path / "edited"
    shutil.copytree(found["bert-cls"][1], copy)
    marker = tmp_path / "ran"
    with open(copy / "modeling_optc_bert.py", "a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('x')\n")
    with pytest.raises(InputError, match="differs from the modeling file this optc generates"):
        load_model(copy)
    assert not marker.exists()


def test_unsupported_family_refused_in_one_line(exported, tmp_path: Path) -> None:
    module = exported[1]["bert-base"][0].clone()
    module.meta["source"]["model_type"] = "t5"
    with pytest.raises(BackendError, match="'t5' models are not supported yet") as info:
        write_backend(module, "hf", tmp_path / "out")
    assert "\n" not in str(info.value) and info.value.exit_code == 6
    assert not (tmp_path / "out").exists()


def test_gpt2_head_other_than_base_refused(tmp_path: Path) -> None:
    module = optc.capture(tiny_model("gpt2"), source={"model": "gpt2"})
    module.meta["source"]["class"] = "GPT2ForQuestionAnswering"
    with pytest.raises(BackendError, match="not supported for gpt2; supported: \\*Model"):
        write_backend(module, "hf", tmp_path / "out")


def test_quantized_weight_refused(exported, tmp_path: Path) -> None:
    module = exported[1]["bert-base"][0].clone()
    name = next(n for n in module.params if n.endswith("query.weight"))
    param = module.params[name]
    param.data = torch.zeros(param.data.shape, dtype=torch.int8)
    param.attrs["quantization"] = Quantization("symmetric")
    with pytest.raises(BackendError, match=f"@{name} is quantized.*--backend onnx"):
        write_backend(module, "hf", tmp_path / "out")


def test_cli_backend_hf(tmp_path: Path, capsys) -> None:
    from optc.tools.cli.main import main

    model_dir = tmp_path / "model"
    build("bert", "ForSequenceClassification").save_pretrained(str(model_dir))
    word_tokenizer(model_dir)
    out = tmp_path / "out"
    args = [str(model_dir), "--passes=prune-heads{heads=0:1,2:3},drop-layers{layers=1}", "--backend",
            "hf", "-o", str(out), "-q"]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_attention_heads_per_layer"] == [3, 3]
    assert (out / "vocab.txt").is_file()
    capsys.readouterr()
    assert main(args) == OutputError.exit_code  # an existing output is never replaced silently
    assert f"output '{out}' already exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0  # optc's own export may be replaced


@pytest.mark.slow
def test_minilm_worked_example_in_plain_transformers(minilm_module, tmp_path: Path) -> None:
    """The README's pruned MiniLM: layers dropped, per-layer heads and FFN widths."""
    module = minilm_module.clone()
    optc.run_pipeline(module, "drop-layers{layers=2,3},prune-heads{amount=0.5},"
                              "prune-neurons{amount=0.5},dce")
    out = tmp_path / "minilm-small"
    write_checked(module, "hf", out)
    texts = ["pruned models load in plain transformers", "a short one"]
    spec = {"jobs": [], "pipeline": ["feature-extraction", str(out), texts],
            "pipeline_inputs": str(tmp_path / "in.safetensors"),
            "pipeline_out": str(tmp_path / "out.json")}
    clean_run(spec, tmp_path)
    enc = load_file(str(tmp_path / "in.safetensors"))
    got = json.loads((tmp_path / "out.json").read_text())
    with torch.inference_mode():
        want = to_eager(module)(**enc)["last_hidden_state"]
    for row, features in enumerate(got):
        length = int(enc["attention_mask"][row].sum())
        features = torch.tensor(features).reshape(-1, want.shape[-1])[:length]
        assert (features - want[row, :length]).abs().max().item() <= TOL


def test_bias_left_by_a_fully_pruned_ffn_refused_with_the_fix(exported, tmp_path: Path) -> None:
    module = exported[1]["bert-base"][0].clone()
    everything = ",".join(f"0:{i}" for i in range(128))
    optc.run_pipeline(module, f"prune-neurons{{neurons={everything}}},dce")
    with pytest.raises(BackendError, match=r"output bias left by a block whose units were all "
                                           r"pruned.*drop-layers") as info:
        write_backend(module, "hf", tmp_path / "out")
    assert "@encoder.layer.0.output.dense.bias" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_force_replaces_an_earlier_hf_export_but_not_other_directories(tmp_path):
    from optc.backends import write_backend
    from optc.errors import OutputError

    module = optc.capture(tiny_model("bert"))
    out = tmp_path / "export"
    write_backend(module, "hf", out)
    write_backend(module, "hf", out, force=True)  # its own export: replaced
    assert (out / "config.json").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(OutputError, match="not an optc artifact"):
        write_backend(module, "hf", other, force=True)
    assert (other / "config.json").read_text() == '{"model_type": "bert"}'
