"""Recipes of ``optc specialize``: how the search runs, apart from what the user asks for.

A user states a contract (``--max-drop``, the target backend, int8); a recipe says how the
search pursues it. Two are built in:

- ``default``: the contract's recipe. The metric rule with the stated tolerance on the part
  of the validation examples the search sees, heads tried least important first, and
  :mod:`optc.search.contract` choosing the fastest measured point that the held-out part
  confirms within the tolerance.
- ``published``: the AxFormer paper's procedure, exactly (the loss rule, published order,
  one sweep); no contract (no held-out part, no latency choice, no int8).

A recipe file (TOML) starts from one of them (``base``, default ``default``) and sets search
options by name; every key is checked (type and value) with a one-line error that names the
file and the key::

    # my-recipe.toml
    base = "default"
    rule = "metric-loss"        # loss | metric | metric-loss
    tolerance = "max-drop"      # the search part's tolerated drop: a number, or --max-drop
    kinds = ["ffn", "ffn-groups", "attention", "heads"]
    unit_order = "importance"   # index | importance
    sweeps = 2
    holdout = 0.5               # share of the validation examples the search never sees
    hard_attention = "auto"     # auto (only where faster on the target) | on | off
    measure = 4                 # points whose latency is measured on the target

The keys are :data:`SEARCH_KEYS` (options of :class:`~optc.search.options.SearchOptions`)
and :data:`CONTRACT_KEYS`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

from optc.errors import InputError, OptcError, PipelineSpecError
from optc.search.options import SearchOptions

__all__ = ["Recipe", "RECIPES", "SEARCH_KEYS", "CONTRACT_KEYS", "load_recipe", "MAX_DROP"]

MAX_DROP = "max-drop"
"""``tolerance = "max-drop"``: the search part's tolerance is the contract's ``--max-drop``."""

_INT, _NUM, _STR, _BOOL = "an integer", "a number", "a string", "true or false"
SEARCH_KEYS: dict[str, str] = {
    "rule": _STR, "tolerance": _NUM, "kinds": "a list of strings", "k": _INT,
    "neuron_groups": _INT, "fine_threshold": _NUM, "val_size": _NUM, "seed": _INT,
    "val_limit": _INT, "batch_size": _INT, "max_length": _INT, "flops_target": _NUM,
    "latency_target": _NUM, "sweeps": _INT, "unit_order": _STR, "rounds": _INT,
    "between": _STR, "confirm": _NUM, "max_flips": _NUM, "prefix_reuse": _BOOL,
}
"""Recipe keys that set :class:`SearchOptions` fields, and the type each takes."""

CONTRACT_KEYS: dict[str, str] = {"holdout": _NUM, "hard_attention": _STR, "measure": _INT}
"""Recipe keys of the contract's choice (:class:`Recipe`)."""

HARD_ATTENTION = ("auto", "on", "off")


@dataclass(frozen=True)
class Recipe:
    """How ``optc specialize`` searches: search options and how the contract chooses."""

    name: str
    """``default``, ``published`` or the recipe file's path."""
    search: dict[str, Any] = field(default_factory=dict)
    """:class:`SearchOptions` fields set by the recipe (``tolerance`` may be :data:`MAX_DROP`)."""
    published: bool = False
    """Run the published procedure alone (no contract)."""
    holdout: float = 0.5
    """Share of the validation examples kept out of the search to check its result."""
    hard_attention: str = "auto"
    """auto: tried only where it is faster on the target (measured once); on; off."""
    measure: int = 4
    """Operating points (besides the input) whose latency is measured on the target."""

    def options(self, base: SearchOptions, max_drop: float | None) -> SearchOptions:
        """``base`` with the recipe's search options (and, for the contract, its held-out
        share), checked by :class:`SearchOptions`."""
        values = dict(self.search)
        if values.get("tolerance") == MAX_DROP:
            values["tolerance"] = max_drop if max_drop is not None else 0.0
        if not self.published:
            values["holdout"] = self.holdout
        if self.name in RECIPES:  # built-in: the values came from flags, which name themselves
            return replace(base, **values)
        try:
            return replace(base, **values)
        except OptcError as exc:
            raise PipelineSpecError(f"recipe {self.name}: {exc}") from None

    def with_search(self, **values: Any) -> Recipe:
        """The recipe with more search options (e.g. the old command-line flags)."""
        return replace(self, search={**self.search, **values})


RECIPES: dict[str, Recipe] = {
    "default": Recipe("default", {"rule": "metric", "tolerance": MAX_DROP,
                                  "unit_order": "importance"}),
    "published": Recipe("published", {}, published=True),
}
"""The built-in recipes by name."""


def _typed(value: Any, kind: str) -> bool:
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def load_recipe(name: str | os.PathLike) -> Recipe:
    """A built-in recipe by name, or a recipe file (TOML, see the module docstring), checked.
    Raises :class:`PipelineSpecError` (one line naming the file and the key) for an unknown
    key, a value of the wrong type or a value :class:`SearchOptions` refuses, and
    :class:`InputError` for a file that cannot be read."""
    if str(name) in RECIPES:
        return RECIPES[str(name)]
    path = Path(name)
    if not path.is_file():
        raise InputError(f"recipe '{name}' is neither a built-in recipe "
                         f"({', '.join(RECIPES)}) nor a file")
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"recipe {path}: cannot read it: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PipelineSpecError(f"recipe {path}: not valid TOML: {exc}") from None
    where = f"recipe {path}"
    base_name = table.pop("base", "default")
    if base_name not in RECIPES:
        raise PipelineSpecError(f"{where}: base '{base_name}' is not a built-in recipe; "
                                f"valid: {', '.join(RECIPES)}")
    recipe = replace(RECIPES[base_name], name=str(path))
    search: dict[str, Any] = {}
    contract: dict[str, Any] = {}
    for key, value in table.items():
        kind = SEARCH_KEYS.get(key) or CONTRACT_KEYS.get(key)
        if kind is None:
            valid = ", ".join(["base", *SEARCH_KEYS, *CONTRACT_KEYS])
            raise PipelineSpecError(f"{where}: unknown key '{key}'; valid keys: {valid}")
        if key == "tolerance" and value == MAX_DROP:
            search[key] = value
            continue
        if not _typed(value, kind):
            raise PipelineSpecError(f"{where}: '{key}' must be {kind}, got {value!r}")
        if key in SEARCH_KEYS:
            search[key] = tuple(value) if key == "kinds" else value
        else:
            contract[key] = value
    if recipe.published and contract:
        raise PipelineSpecError(f"{where}: the published recipe has no contract: drop "
                                f"{', '.join(contract)} (or base = \"default\")")
    if not 0 < contract.get("holdout", recipe.holdout) < 1:
        raise PipelineSpecError(f"{where}: 'holdout' is a fraction in (0, 1), got "
                                f"{contract['holdout']}")
    if contract.get("hard_attention", "auto") not in HARD_ATTENTION:
        raise PipelineSpecError(f"{where}: 'hard_attention' must be one of "
                                f"{', '.join(HARD_ATTENTION)}, got {contract['hard_attention']!r}")
    if contract.get("measure", 1) < 1:
        raise PipelineSpecError(f"{where}: 'measure' must be at least 1, got "
                                f"{contract['measure']}")
    recipe = replace(recipe.with_search(**search), **contract)
    recipe.options(SearchOptions(), 1.0)  # every value checked now, before any work
    return recipe

