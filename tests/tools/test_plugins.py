"""Plugins: an op in one file and a pass in another, outside optc, used from the CLI, and the
saved artifact loaded and run in a fresh process (OPTC_PLUGINS names the modules); without
the plugin the artifact says which op is missing and why; a broken plugin is one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from optc.tests.conftest import tiny_model

OP_FILE = '''
"""scaled_tanh: alpha * tanh(x), an op defined outside optc."""
import torch

from optc.ir.ops import Attr, OpDef, Operand, register_op
from optc.ir.types import TensorType


def scaled_tanh(x, *, alpha=1.0):
    return alpha * torch.tanh(x)


def _infer(node):
    return [TensorType(node.args[0].tensor_type.dtype, node.args[0].tensor_type.shape)]


register_op(OpDef(
    name="scaled_tanh", doc="alpha * tanh(x)", operands=(Operand("x"),),
    attrs={"alpha": Attr(float, 1.0, "scale of the output")}, infer=_infer,
    kernel=scaled_tanh,
    script="""
def k_scaled_tanh(x: Tensor, alpha: float) -> Tensor:
    return alpha * torch.tanh(x)
"""))
'''

PASS_FILE = '''
"""to-scaled-tanh: every tanh becomes scaled_tanh{alpha} (a pass defined outside optc)."""
from dataclasses import dataclass

from optc.passes import Pass, PassResult, register_pass


@register_pass
@dataclass(frozen=True)
class ToScaledTanh(Pass):
    """Rewrite each tanh as scaled_tanh."""

    name = "to-scaled-tanh"
    alpha: float = 1.0

    def run(self, module):
        nodes = [n for n in module.graph if n.op == "tanh"]
        for node in nodes:
            out = node.outputs[0]
            new = module.graph.create_node("scaled_tanh", (node.args[0],),
                                           {"alpha": float(self.alpha)}, [out.type],
                                           names=out.name, after=node)
            module.graph.replace_all_uses(out, new.outputs[0])
            module.graph.remove(node)
        return PassResult(bool(nodes), {"rewritten": len(nodes)})
'''

LOAD_AND_RUN = '''
import sys, torch, optc
m = optc.load(sys.argv[1])
ids = torch.tensor([[5, 6, 7, 8]])
out = m(input_ids=ids, attention_mask=torch.ones_like(ids))
print("ops:", sorted({n.op for n in optc.load_module(sys.argv[1]).graph} & {"scaled_tanh", "tanh"}))
print("pooled:", float(out["pooler_output"].abs().sum()) > 0)
'''


def _run(args: list[str], cwd: Path, plugins: str | None, path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(path)}
    env.pop("OPTC_PLUGINS", None)
    if plugins is not None:
        env["OPTC_PLUGINS"] = plugins
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    package = root / "optc_test_plugin"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scaled_tanh.py").write_text(textwrap.dedent(OP_FILE))
    (package / "to_scaled_tanh.py").write_text(textwrap.dedent(PASS_FILE))
    model = root / "tiny-bert"
    tiny_model("bert").save_pretrained(model, safe_serialization=True)
    return root


def test_a_plugin_op_and_pass_work_from_the_cli_and_in_a_fresh_process(plugin, tmp_path):
    names = "optc_test_plugin.scaled_tanh,optc_test_plugin.to_scaled_tanh"
    out = tmp_path / "art"
    compiled = _run(["-m", "optc", str(plugin / "tiny-bert"), "--passes=to-scaled-tanh{alpha=1.0}",
                     "-o", str(out)], tmp_path, names, plugin)
    assert compiled.returncode == 0, compiled.stderr
    assert "to-scaled-tanh" in compiled.stdout and "rewritten=1" in compiled.stdout
    assert "scaled_tanh" in (out / "model.optc").read_text()
    script = tmp_path / "load.py"
    script.write_text(LOAD_AND_RUN)
    loaded = _run([str(script), str(out)], tmp_path, names, plugin)  # a fresh process
    assert loaded.returncode == 0, loaded.stderr
    assert "ops: ['scaled_tanh']" in loaded.stdout and "pooled: True" in loaded.stdout
    missing = _run([str(script), str(out)], tmp_path, None, plugin)  # plugin not enabled
    assert missing.returncode != 0
    assert "scaled_tanh" in missing.stderr and "plugin op that is not installed" in missing.stderr


def test_a_plugin_that_fails_to_import_is_one_line_with_exit_code_2(plugin, tmp_path, capsys,
                                                                    monkeypatch):
    from optc.ir import plugins
    from optc.tools.cli.main import main

    monkeypatch.setattr(plugins, "_loaded", set())
    monkeypatch.setattr(plugins, "_seen_env", None)
    monkeypatch.setenv("OPTC_PLUGINS", "optc_test_plugin_missing.ops")
    code = main([str(plugin / "tiny-bert"), "--passes=dce,no-such-pass", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "optc plugin 'optc_test_plugin_missing.ops'" in lines[0], err
    assert "ModuleNotFoundError" in lines[0]
    assert not (tmp_path / "x").exists()
