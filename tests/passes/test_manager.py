"""The pass manager: verification around passes, errors naming passes, reports, instruments."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest
import torch

from optc.errors import IRError, PassError, VerificationError
from optc.ir import Module, parse_module, print_module
from optc.ir.types import TensorType
from optc.passes import (
    DumpIR,
    Instrument,
    Pass,
    PassManager,
    PassResult,
    PrintAfterAll,
    register_pass,
    run_pipeline,
)
from optc.passes.dce import DeadCodeElimination

SRC = """module @m {
  param @w : f32[3,4]
  param @unused : f32[5]
  graph(%x : f32[2,4]) {
    %y : f32[2,3] = linear(%x, @w)
    %dead : f32[2,3] = aten.relu.default(%y)
    %dead2 : f32[2,3] = aten.neg.default(%dead)
    return (out=%y)
  }
}
"""


def _module() -> Module:
    return parse_module(SRC)


@register_pass
@dataclass(frozen=True)
class CorruptPass(Pass):
    """Test pass: breaks the IR by making the output type of the first linear stale."""

    name = "test-corrupt"

    def run(self, module: Module) -> PassResult:
        w = module.params["w"]
        w.data = torch.empty(w.data.shape[0] - 1, w.data.shape[1], device="meta")
        return PassResult(True)


@register_pass
@dataclass(frozen=True)
class NoResultPass(Pass):
    """Test pass: forgets to return a PassResult."""

    name = "test-no-result"

    def run(self, module: Module):  # type: ignore[override]
        return True


@register_pass
@dataclass(frozen=True)
class RefusingPass(Pass):
    """Test pass: its precondition never holds; run() would wreck the module."""

    name = "test-refusing"

    def requires(self, module: Module) -> str | None:
        return "the module has no attention ops"

    def run(self, module: Module) -> PassResult:
        module.graph.set_outputs({})
        return PassResult(True)


@register_pass
@dataclass(frozen=True)
class FailingPass(Pass):
    """Test pass: raises an optc error from run()."""

    name = "test-failing"

    def run(self, module: Module) -> PassResult:
        module.graph.remove(module.graph.nodes[0])  # still used: IRError
        return PassResult(True)


@register_pass
@dataclass(frozen=True)
class CountingPass(Pass):
    """Test pass: reports fixed stats and changes nothing."""

    name = "test-counting"

    amount: int = 0

    def run(self, module: Module) -> PassResult:
        return PassResult(False, {"seen": len(module.graph), "amount": self.amount})


# -- verification ------------------------------------------------------------------------------
def test_corrupt_input_is_rejected_before_any_pass():
    module = _module()
    module.graph.nodes[0]._args = ()  # use-lists out of sync
    before = print_module(module)
    with pytest.raises(VerificationError) as info:
        run_pipeline(module, "dce")
    assert "on the input to the pipeline" in str(info.value)
    assert print_module(module) == before  # dce did not run


def test_verification_after_each_pass_names_the_pass_and_its_predecessors():
    module = _module()
    with pytest.raises(VerificationError) as info:
        run_pipeline(module, "test-counting,dce,test-corrupt,dce")
    message = str(info.value)
    assert "after pass 'test-corrupt' (after test-counting, dce)" in message
    assert "declared output type f32[2,3] but operands give f32[2,2]" in message


def test_verification_after_the_first_pass_says_first_pass():
    with pytest.raises(VerificationError, match=r"after pass 'test-corrupt' \(first pass\)"):
        run_pipeline(_module(), [CorruptPass()])


def test_verify_false_skips_verification():
    module = _module()
    report = run_pipeline(module, "test-corrupt", verify=False)
    assert [r.spec for r in report.records] == ["test-corrupt"]
    module = _module()
    module.graph.nodes[0]._args = ()
    run_pipeline(module, [CountingPass()], verify=False)  # corrupt input accepted


# -- pass failures -----------------------------------------------------------------------------
def test_pass_must_return_pass_result():
    with pytest.raises(PassError) as info:
        run_pipeline(_module(), "dce,test-no-result")
    message = str(info.value)
    assert "pass 'test-no-result' returned bool, not PassResult" in message
    assert "return PassResult(modified, stats) from run()" in message


def test_requires_refusal_leaves_the_module_unchanged():
    module = _module()
    before = print_module(module)
    with pytest.raises(PassError) as info:
        run_pipeline(module, "test-counting,test-refusing,dce")
    message = str(info.value)
    assert "pass 'test-refusing' cannot run (after test-counting): the module has no attention ops" in message
    assert print_module(module) == before


def test_optc_error_in_a_pass_is_wrapped_in_pass_error():
    with pytest.raises(PassError) as info:
        run_pipeline(_module(), "dce{keep_params=true},test-failing")
    err = info.value
    message = str(err)
    assert "pass 'test-failing' failed (after dce{keep_params=true})" in message
    assert "cannot remove" in message
    assert isinstance(err.__cause__, IRError)
    assert err.exit_code == err.__cause__.exit_code


# -- reports -----------------------------------------------------------------------------------
def test_report_records_modified_flags_and_stats():
    module = _module()
    report = PassManager("test-counting{amount=4},dce,dce").run(module)
    specs = [r.spec for r in report.records]
    assert specs == ["test-counting{amount=4}", "dce", "dce"]
    first, dce1, dce2 = report.records
    assert (first.modified, first.stats) == (False, {"seen": 3, "amount": 4})
    assert dce1.modified is True
    assert dce1.stats == {"nodes_removed": 2, "params_removed": 1, "param_elements_removed": 5}
    assert dce2.modified is False
    assert dce2.stats == {"nodes_removed": 0, "params_removed": 0, "param_elements_removed": 0}
    assert report.modified is True
    assert report.seconds >= 0 and all(r.seconds >= 0 for r in report.records)
    assert report.to_json()[1] == {
        "pass": "dce", "modified": True, "stats": dce1.stats, "seconds": dce1.seconds,
    }


def test_report_not_modified_when_no_pass_changes_anything():
    report = run_pipeline(_module(), [CountingPass(), CountingPass()])
    assert report.modified is False


def test_report_table_lists_passes():
    report = run_pipeline(_module(), "test-counting,dce")
    table = report.table()
    lines = table.splitlines()
    assert lines[0].split() == ["pass", "changed", "time", "stats"]
    assert lines[1].startswith("test-counting") and " no " in lines[1]
    assert "seen=3, amount=0" in lines[1]
    assert lines[2].startswith("dce") and " yes " in lines[2]
    assert "nodes_removed=2" in lines[2] and "ms" in lines[2]


def test_empty_pipeline():
    module = _module()
    before = print_module(module)
    report = run_pipeline(module, "")
    assert report.records == [] and report.modified is False
    assert print_module(module) == before


def test_manager_accepts_pass_instances():
    manager = PassManager([DeadCodeElimination(keep_params=True)])
    module = _module()
    report = manager.run(module)
    assert report.records[0].spec == "dce{keep_params=true}"
    assert "unused" in module.params


# -- instruments -------------------------------------------------------------------------------
def test_print_after_all_writes_ir_after_each_pass():
    stream = io.StringIO()
    module = _module()
    run_pipeline(module, "test-counting,dce", instruments=[PrintAfterAll(stream)])
    text = stream.getvalue()
    first, second = text.split("// ----- IR after dce (pass 2) -----\n")
    assert first.startswith("// ----- IR after test-counting (pass 1) -----\n")
    assert first.endswith(SRC)  # test-counting changed nothing
    assert second == print_module(module)


def test_dump_ir_writes_numbered_files_that_parse_back(tmp_path):
    module = _module()
    directory = tmp_path / "dump" / "nested"
    run_pipeline(module, "test-counting,dce", instruments=[DumpIR(directory)])
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["00-input.optc", "01-test-counting.optc", "02-dce.optc"]
    for name in names:
        parsed = parse_module((directory / name).read_text())
        assert parsed.name == "m"
    assert (directory / "00-input.optc").read_text() == SRC
    final = parse_module((directory / "02-dce.optc").read_text())
    assert print_module(final) == print_module(module)
    assert "unused" not in final.params


def test_instrument_hooks_are_called_in_order():
    calls = []

    class Recorder(Instrument):
        def before_pipeline(self, module, passes):
            calls.append(("before", [p.spec() for p in passes]))

        def after_pass(self, p, index, module, record):
            calls.append(("after", index, p.name, record.modified))

    run_pipeline(_module(), "test-counting,dce", instruments=[Recorder()])
    assert calls == [
        ("before", ["test-counting", "dce"]),
        ("after", 0, "test-counting", False),
        ("after", 1, "dce", True),
    ]


def test_instruments_not_called_after_a_failing_pass():
    calls = []

    class Recorder(Instrument):
        def after_pass(self, p, index, module, record):
            calls.append(p.name)

    with pytest.raises(VerificationError):
        run_pipeline(_module(), "dce,test-corrupt,test-counting", instruments=[Recorder()])
    assert calls == ["dce"]


def test_pass_base_run_is_abstract():
    with pytest.raises(NotImplementedError, match="does not implement run"):
        Pass().run(Module())
    assert Pass().requires(Module()) is None


def test_modules_built_by_hand_run_through_the_manager():
    module = Module()
    x = module.graph.add_input("x", TensorType(torch.float32, (2,)))
    module.graph.create_node("aten.neg.default", (x,), output_types=[x.type])
    module.graph.set_output("x", x)
    report = run_pipeline(module, "dce")
    assert report.records[0].stats["nodes_removed"] == 1
    assert len(module.graph) == 0


@register_pass
@dataclass(frozen=True)
class HalfDonePass(Pass):
    """Test pass: edits the module, then fails (a typed error) or crashes half-way."""

    name = "test-half-done"
    crash: bool = False

    def run(self, module: Module) -> PassResult:
        module.graph.set_outputs({})
        module.meta["touched"] = True
        if self.crash:
            raise ZeroDivisionError("bug")
        raise IRError("refused late")


@register_pass
@dataclass(frozen=True)
class ContextPass(Pass):
    """Test pass: records the context it gets."""

    name = "test-context"
    seen: list = None  # type: ignore[assignment]

    def run(self, module: Module, ctx) -> PassResult:
        self.seen.append(ctx)
        return PassResult(False)


@pytest.mark.parametrize("crash", [False, True])
def test_a_failing_pass_leaves_the_module_as_before_that_pass(crash) -> None:
    module = _module()
    run_pipeline(module, "dce")
    before = print_module(module)
    with pytest.raises(PassError, match="test-half-done"):
        PassManager([DeadCodeElimination(), HalfDonePass(crash=crash)]).run(module)
    assert print_module(module) == before and "touched" not in module.meta


def test_a_corrupting_pass_is_undone_too() -> None:
    module = _module()
    before = print_module(module)
    with pytest.raises(VerificationError):
        run_pipeline(module, "test-corrupt")
    assert print_module(module) == before


def test_every_pass_gets_the_context_and_a_reference_only_when_one_needs_it() -> None:
    from optc.passes import PassContext
    from optc.passes.distill import Distill

    seen: list = []
    module = _module()
    PassManager([ContextPass(seen=seen), ContextPass(seen=seen)]).run(module)
    assert len(seen) == 2 and seen[0] is seen[1] and seen[0].reference is None
    given = PassContext(progress=print)
    PassManager([ContextPass(seen=seen)]).run(module, given)
    assert seen[-1] is given
    assert Distill.needs_reference and not ContextPass.needs_reference
    # a pass that needs the pipeline's input gets a copy taken before the first pass
    seen.clear()
    module = _module()
    text = print_module(module)
    PassManager([DeadCodeElimination(), ReferencePass(seen=seen)]).run(module)
    assert print_module(seen[0].reference) == text != print_module(module)
    assert PassManager([ReferencePass(seen=seen)], reference=_module()).run(module)
    assert print_module(seen[-1].reference) == print_module(_module())


@register_pass
@dataclass(frozen=True)
class ReferencePass(ContextPass):
    """Test pass: learns from the pipeline's input."""

    name = "test-reference"
    needs_reference = True


def test_a_pass_manager_is_a_pass_and_pipelines_nest() -> None:
    inner = PassManager("dce,test-counting{amount=2}")
    assert isinstance(inner, Pass) and inner.spec() == "dce,test-counting{amount=2}"
    assert inner != PassManager("dce,test-counting{amount=2}") and inner == inner
    module = _module()
    report = PassManager([inner, CountingPass(amount=3)]).run(module)
    assert isinstance(report, PassResult) and report.modified
    first, second = report.records
    assert first.spec == "dce,test-counting{amount=2}" and first.modified
    assert first.stats["test-counting{amount=2}.amount"] == 2 and first.stats["dce.nodes_removed"] == 2
    assert second.stats == {"seen": 1, "amount": 3}
    assert "aten.relu" not in print_module(module)
    # a failing inner pipeline leaves the module as it was before the whole inner pipeline
    module = _module()
    before = print_module(module)
    with pytest.raises(PassError, match=r"pass 'dce,test-failing' failed .*pass 'test-failing'"):
        PassManager([PassManager("dce,test-failing")]).run(module)
    assert print_module(module) == before
    # the inner pipeline asks for the outer's reference when one of its passes needs it
    seen: list = []
    module = _module()
    text = print_module(module)
    PassManager([DeadCodeElimination(), PassManager([ReferencePass(seen=seen)])]).run(module)
    assert print_module(seen[0].reference) == text
