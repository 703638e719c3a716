"""``optc tasks``: every task with its head, data files, metrics and options.

    optc tasks [NAME] [--json]

The same list as the README's Tasks section, from the registry (tasks registered by a plugin
included). With NAME, that task alone, with its options one per line.
"""

from __future__ import annotations

import json
from typing import Any

from optc.errors import InputError
from optc.tools.common import EPILOG
from optc.tools.common import Parser as _Parser

__all__ = ["cmd_tasks"]


def _option(option: dict[str, Any]) -> str:
    if option["required"]:
        return f"{option['name']}= (required)"
    default = option["default"]
    if isinstance(default, bool):
        default = str(default).lower()
    return f"{option['name']}={'' if default is None else default}"


def cmd_tasks(argv: list[str]) -> int:
    from optc.tasks.registry import _ALIASES, describe_tasks

    p = _Parser(prog="optc tasks", description="List every task: the model head it needs, its "
                "data files, metrics (main first) and options.", epilog=EPILOG)
    p.add_argument("name", nargs="?", metavar="NAME", help="show one task")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    tasks = describe_tasks()
    if args.name is not None:
        wanted = _ALIASES.get(args.name.lower(), args.name)
        tasks = [t for t in tasks if t["name"] in (args.name, wanted)]
        if not tasks:
            raise InputError(f"unknown task '{args.name}': valid tasks are "
                             f"{', '.join(t['name'] for t in describe_tasks())}")
    if args.json:
        print(json.dumps(tasks, indent=2))
        return 0
    width = max(len(t["name"]) for t in tasks)
    for t in tasks:
        print(f"{t['name'].ljust(width)}  {t['description']}")
        pad = " " * (width + 2)
        head = t["head"] or "-"
        print(f"{pad}head {head}; metrics {', '.join(t['metrics']) or '-'}")
        files = ", ".join(t["files"]) or "-"
        where = f" under $OPTC_DATA_DIR/{t['data']}" if t["data"] else " (--data FILE or DIR)"
        print(f"{pad}files {files}{where}")
        if t["options"] and args.name:
            print(f"{pad}options:")
            for option in t["options"]:
                print(f"{pad}  {_option(option)}")
        elif t["options"]:
            print(f"{pad}options {', '.join(_option(o) for o in t['options'])}")
    return 0
