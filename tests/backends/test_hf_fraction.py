"""The hf backend cannot express hard attention by a fraction of the sequence (its config holds
a fixed k per layer): it refuses with one line naming the layer and the fix, and writes nothing
(it used to export the default k, a model that differs from the IR)."""

from __future__ import annotations

import pytest

import optc
from optc.backends import write_backend
from optc.backends.selfcheck import check_written
from optc.errors import BackendError
from optc.tests.conftest import tiny_model


def test_fraction_is_refused_and_nothing_is_written(tmp_path) -> None:
    module = optc.capture(tiny_model("bert"))
    optc.run_pipeline(module, "hard-attention{fraction=0.5}")
    out = tmp_path / "hf"
    with pytest.raises(BackendError, match=r"layer 0 \(id 0\): hard attention with fraction=0.5"
                                           r".*hard-attention\{k=N\}") as info:
        write_backend(module, "hf", out)
    assert "\n" not in str(info.value)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_fixed_k_still_exports_and_matches(tmp_path) -> None:
    module = optc.capture(tiny_model("bert"))
    optc.run_pipeline(module, "hard-attention{k=2}")
    out = write_backend(module, "hf", tmp_path / "hf")
    assert check_written(module, "hf", out).worst() <= 1e-5
