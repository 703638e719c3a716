"""GLUE and SQuAD readers: the real files in the shared data, synthetic files in the
published layouts of the tasks without data here, and the registry."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from optc.errors import InputError
from optc.tasks import Task, all_tasks, get_task, parse_task_spec, register_task, registry
from optc.tasks.records import Example
from optc.tests.tasks.helpers import write

# (task, split, rows, label counts by index or None) from the data README
REAL = [
    ("sst2", "dev", 872, {0: 428, 1: 444}),
    ("sst2", "train", 67349, {0: 29780, 1: 37569}),
    ("mrpc", "dev", 408, {0: 129, 1: 279}),
    ("mrpc", "train", 3668, {0: 1194, 1: 2474}),
    ("rte", "dev", 277, {0: 146, 1: 131}),  # entailment / not_entailment words
    ("rte", "train", 2490, {0: 1249, 1: 1241}),
    ("cola", "dev", 1043, {0: 322, 1: 721}),  # no header
    ("cola", "train", 8551, {0: 2528, 1: 6023}),
    ("stsb", "dev", 1500, None),
    ("stsb", "train", 5749, None),
]


@pytest.mark.parametrize("name, split, rows, counts", REAL, ids=[f"{r[0]}-{r[1]}" for r in REAL])
def test_real_glue_files(data_root, name, split, rows, counts):
    task = get_task(name)
    directory = data_root / task.data_path
    examples = task.read(split, directory, val_size=0)
    assert len(examples) == rows
    assert all(isinstance(e, Example) and e.text for e in examples)
    assert all((e.text_pair is not None) == (len(task.text_columns) == 2) for e in examples)
    if counts is None:
        scores = [e.label for e in examples]
        assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
    else:
        assert dict(Counter(e.label for e in examples)) == counts


def test_real_first_rows(data_root):
    sst2 = get_task("sst2").read("dev", data_root / "glue/SST-2")
    assert sst2[0] == Example("it 's a charming and often affecting journey . ", None, 1)
    mrpc = get_task("mrpc").read("dev", data_root / "glue/MRPC")  # BOM before "Quality"
    assert mrpc[0].label == 1 and mrpc[0].text.startswith("He said the foodservice pie")
    rte = get_task("rte").read("dev", data_root / "glue/RTE")
    assert rte[0].label == get_task("rte").label_names.index("not_entailment") == 1
    assert rte[0].text_pair == "Christopher Reeve had an accident."
    cola = get_task("cola").read("dev", data_root / "glue/CoLA")
    assert cola[0] == Example("The sailors rode the breeze clear of the rocks.", None, 1)
    stsb = get_task("stsb").read("dev", data_root / "glue/STS-B")
    assert stsb[0] == Example("A man with a hard hat is dancing.",
                              "A man wearing a hard hat is dancing.", 5.0)


def test_read_file_reads_one_file_in_the_task_format(data_root, tmp_path):
    rte = get_task("rte")
    dev_file = data_root / "glue/RTE/dev.tsv"
    assert rte.read_file(dev_file) == rte.read("dev", data_root / "glue/RTE")
    assert rte.read_file(dev_file, limit=3) == rte.read("dev", data_root / "glue/RTE")[:3]
    (tmp_path / "val.tsv").write_bytes(dev_file.read_bytes())  # a directory: its val file
    assert rte.read_file(tmp_path)[-1] == rte.read("dev", data_root / "glue/RTE")[-1]
    with pytest.raises(InputError, match="limit must be a positive number"):
        rte.read_file(dev_file, limit=0)
    with pytest.raises(InputError, match=r"no file for split 'val' \(looked for val.tsv"):
        rte.read_file(data_root / "glue/RTE")


def test_default_locations_under_data_dir(data_env):
    assert len(get_task("sst2").read("dev")) == 872
    assert len(get_task("stsb").read("dev")) == 1500
    squad = get_task("squad").read("dev")
    assert len(squad) == 10570
    assert squad[0].answer_texts and squad[0].context[squad[0].answer_start:].startswith(
        squad[0].answer_text)
    # relative paths resolve under $OPTC_DATA_DIR; a file works for any split
    assert len(get_task("mrpc").read("dev", "glue/MRPC")) == 408
    assert len(get_task("cola").read("dev", "glue/CoLA/dev.tsv")) == 1043


def test_default_data_root_without_env(data_root, tmp_path, monkeypatch):
    # without $OPTC_DATA_DIR the data root is ../shared/data from the working directory
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(data_root.resolve())
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.delenv("OPTC_DATA_DIR", raising=False)
    assert len(get_task("rte").read("dev")) == 277
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="default data root ../shared/data"):
        get_task("rte").read("dev")


# -- synthetic files in the published GLUE layouts ------------------------------------------

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
                     "\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
                   "\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3"
                   "\tlabel4\tlabel5\tgold_label")


def _mnli_row(i: int, label: str, dev: bool) -> str:
    votes = [label] * (5 if dev else 1)
    return "\t".join([str(i), "31193", f"{i}n", "government", "( ( A b ) )", "( B )",
                      "(ROOT (S A b))", "(ROOT B)", f"premise {i}", f"hypothesis {i}", *votes, label])


@pytest.fixture
def synthetic_glue(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write(root / "glue/QNLI/dev.tsv", "index\tquestion\tsentence\tlabel\n"
          "0\tWhat came into force after the new constitution was herald?\tAs of that day, the new "
          "constitution heralding the Second Republic came into force.\tentailment\n"
          "1\tWhat is the first major city in the stream of the Rhine?\tThe most important "
          "tributaries in this area are the Ill below of Strasbourg.\tnot_entailment\n")
    write(root / "glue/QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
          "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so "
          "beautiful?\t0\n"
          "263843\t69383\t380476\tI want to pursue PhD in Computer Science?\tI handle social "
          "media for a non-profit. Should I start a PhD?\t1\n")
    labels = ["entailment", "neutral", "contradiction"]
    write(root / "glue/MNLI/train.tsv", "\n".join(
        [MNLI_TRAIN_HEADER] + [_mnli_row(i, labels[i % 3], False) for i in range(30)]) + "\n")
    write(root / "glue/MNLI/dev_matched.tsv", "\n".join(
        [MNLI_DEV_HEADER] + [_mnli_row(i, labels[i % 3], True) for i in range(4)]) + "\n")
    write(root / "glue/MNLI/dev_mismatched.tsv", "\n".join(
        [MNLI_DEV_HEADER] + [_mnli_row(i, "contradiction", True) for i in range(3)]) + "\n")
    write(root / "glue/WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n"
          "0\tThe drain is clogged with hair. It has to be cleaned.\tThe hair has to be cleaned.\t0\n"
          "1\tJane knocked on Susan's door but she did not answer.\tSusan did not answer.\t1\n")
    return root


def test_synthetic_qnli_qqp_wnli(synthetic_glue, monkeypatch):
    monkeypatch.setenv("OPTC_DATA_DIR", str(synthetic_glue))
    qnli = get_task("qnli").read("dev")
    assert [e.label for e in qnli] == [0, 1]
    assert qnli[0].text.startswith("What came") and qnli[0].text_pair.startswith("As of that")
    qqp = get_task("qqp").read("dev")
    assert [e.label for e in qqp] == [0, 1] and qqp[1].text_pair.startswith("I handle")
    wnli = get_task("wnli").read("dev")
    assert [e.label for e in wnli] == [0, 1]
    assert get_task("wnli").label_names[1] == "entailment"


def test_synthetic_mnli_matched_and_mismatched(synthetic_glue, monkeypatch):
    monkeypatch.setenv("OPTC_DATA_DIR", str(synthetic_glue))
    mnli = get_task("mnli")
    assert mnli.splits == ("train", "dev_matched", "dev_mismatched")
    matched = mnli.read("dev_matched")
    assert [e.label for e in matched] == [0, 1, 2, 0]
    assert matched[1] == Example("premise 1", "hypothesis 1", 1)
    assert mnli.read("dev") == matched  # dev means dev_matched
    assert [e.label for e in mnli.read("dev_mismatched")] == [2, 2, 2]
    assert len(mnli.read("train", val_size=0)) == 30
    assert len(mnli.read("val", val_size=6)) == 6
    with pytest.raises(InputError, match="valid splits are train, dev_matched, dev_mismatched, val"):
        mnli.read("test")


# -- the task table and the registry ----------------------------------------------------------

def test_task_table():
    expected = {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli", "squad",
                "squad_v2", "text-classification"}
    assert expected <= set(all_tasks())
    main = {"cola": "matthews_correlation", "sst2": "accuracy", "mrpc": "f1", "stsb": "pearson",
            "qqp": "f1", "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy",
            "wnli": "accuracy", "squad": "f1", "squad_v2": "f1"}
    for name, metric in main.items():
        task = get_task(name)
        assert task.main_metric == metric and metric in task.metrics
        assert task.head == ("question-answering" if name.startswith("squad")
                             else "sequence-classification")
    assert get_task("mrpc").metrics == ("f1", "accuracy")
    assert get_task("stsb").metrics == ("pearson", "spearman")
    assert get_task("stsb").kind == "regression" and get_task("stsb").num_labels == 1
    assert get_task("mnli").label_names == ("entailment", "neutral", "contradiction")
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("squad").kind == "extractive-qa" and not get_task("squad").version_2
    assert get_task("squad_v2").version_2
    assert get_task("SST-2") is get_task("sst2") and get_task("sts-b") is get_task("stsb")


def test_unknown_task_lists_valid_ones():
    with pytest.raises(InputError, match=r"unknown task 'glue9': valid tasks are cola, embedding, mnli, .*sentence-similarity, .*wnli"):
        get_task("glue9")
    with pytest.raises(InputError, match="takes no options"):
        get_task("sst2", labels="a,b")


def test_register_task_and_spec():
    task = Task(name="my-sentiment", kind="classification", num_labels=2,
                label_names=("bad", "good"), text_columns=("text",), label_column="label",
                splits=("train", "dev"), file_names=("{split}.tsv",), metrics=("accuracy",),
                main_metric="accuracy", table=get_task("text-classification").table)
    register_task(task)
    try:
        assert get_task("my-sentiment") is task
        with pytest.raises(InputError, match="already registered"):
            register_task(task)
    finally:
        registry._TASKS.pop("my-sentiment")
    assert parse_task_spec("text-classification{labels=neg,pos,text_column=review}") == (
        "text-classification", {"labels": "neg,pos", "text_column": "review"})
    with pytest.raises(InputError, match="bad task spec"):
        parse_task_spec("x{,a=1}")
