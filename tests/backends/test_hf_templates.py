"""The generated modeling files come from the template modules of optc.backends.hf_templates."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import pytest

from optc.backends import hf_templates
from optc.backends.hf_families import FAMILIES, modeling_source

TEMPLATES = sorted(Path(hf_templates.__file__).parent.glob("*.py"))

# optc loads an export only when its modeling file has these exact bytes (load_optc_classes):
# a change here makes the directories earlier optc versions wrote unloadable, so change it
# only on purpose
SHA256 = {
    "bert": "518139add12ae9a44ad3b9d632c82b782baeed89d44cd6e1db80038bc9b4ee86",
    "roberta": "0bce1233b1a71f951fa5af05ec77633574e681727a483726d245439da12f0f9c",
    "xlm-roberta": "626efc48b5f1fc3ae18c98221946a4cfbff2c72fae31685758b9db4f7adee984",
    "electra": "1d2dc127df4f50876ea4c07b5da3bd7cf9f9103ca198576301e86dc8b6ed4ad2",
    "distilbert": "7c0c81d27e8984ed39a59bbe3b3c037aec6afd2cf102b3e57c8b26eb998dd72a",
    "gpt2": "4787b96e6bc946e6ad2c4707b40ad3a42661ebc06199057cb4db9dc8bddb7739",
}


def test_every_family_has_a_pinned_file():
    assert set(SHA256) == set(FAMILIES)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_the_generated_file_keeps_its_bytes_and_is_plain_python(model_type):
    source = modeling_source(FAMILIES[model_type])
    assert hashlib.sha256(source.encode()).hexdigest() == SHA256[model_type]
    tree = ast.parse(source)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "optc" for name in imported)
    for marker in ("# @", "template only", "OptcFamily", "FAMILY_"):
        assert marker not in source


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_the_templates_are_python_that_imports_no_optc(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    if path.name != "__init__.py":
        assert not any(isinstance(n, ast.ImportFrom) and (n.level or n.module.startswith("optc"))
                       or isinstance(n, ast.Import) and any(a.name.startswith("optc")
                                                            for a in n.names)
                       for n in ast.walk(tree))


def test_every_piece_is_used(monkeypatch):
    used: set[tuple[str, str]] = set()
    parse = hf_templates._parse

    def recording_expand(items, module, variants):
        for item in items:
            if not isinstance(item, str) and variants.get(item[1], item[1]) is not None:
                name = variants.get(item[1], item[1])
                used.add((module if name in parse(module)[1] else "shared", name))
        return expand(items, module, variants)

    expand = hf_templates._expand
    monkeypatch.setattr(hf_templates, "_expand", recording_expand)
    for family in FAMILIES.values():
        modeling_source(family)
    defined = {(path.stem, name) for path in TEMPLATES if path.name != "__init__.py"
               for name in parse(path.stem)[1]}
    assert defined - used == set()


def test_a_malformed_template_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(hf_templates, "_HERE", tmp_path)
    hf_templates._parse.cache_clear()
    try:
        (tmp_path / "bad.py").write_text("# @begin a\nx = 1\n")
        with pytest.raises(ValueError, match="without '# @end'"):
            hf_templates.render("bad", "X", {})
        (tmp_path / "bad2.py").write_text("# @piece missing\n")
        (tmp_path / "shared.py").write_text("")
        with pytest.raises(KeyError, match="no piece 'missing'"):
            hf_templates.render("bad2", "X", {})
    finally:
        hf_templates._parse.cache_clear()
