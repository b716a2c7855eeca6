"""``segc passes``: every registered pass with its contract, kind, options and ordering.

The listing is read from what each pass declares (``segc.passbase.Pass``), so a new pass
module shows up here, typed options and constraints included, without touching the CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from segc.passbase import GraphPass, Pass, all_passes


def describe_pass(cls: type[Pass]) -> dict[str, Any]:
    """One pass as ``segc passes --json`` shows it."""
    depends = cls.contract_for.__func__ is not Pass.contract_for.__func__  # type: ignore[attr-defined]
    return {
        "name": cls.name,
        "kind": "graph" if issubclass(cls, GraphPass) else "model",
        "contract": cls.contract.value + (" (depends on options)" if depends else ""),
        "summary": cls.summary,
        "options": {key: opt.to_dict() for key, opt in cls.options.items()},
        "runs_after": list(cls.runs_after),
        "runs_before": list(cls.runs_before),
        "requires": list(cls.requires),
    }


def _option_line(key: str, opt: dict[str, Any]) -> str:
    kind = f"{opt['type']}: {'|'.join(opt['choices'])}" if opt["choices"] else opt["type"]
    default = "" if opt["default"] is None else f", default {json.dumps(opt['default'])}"
    return f"{key} ({kind}{default}): {opt['help']}"


def _order_line(row: dict[str, Any]) -> str:
    parts = [f"{label} {', '.join(row[key])}" for key, label in
             (("runs_after", "after"), ("runs_before", "before"), ("requires", "requires")) if row[key]]
    return "; ".join(parts) or "-"


def run_passes(args: argparse.Namespace) -> int:
    rows = [describe_pass(cls) for cls in all_passes().values()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("pass", "contract", "what it does", "options", "order")
    for r in rows:
        options = "\n".join(_option_line(k, v) for k, v in r["options"].items()) or "-"
        table.add_row(r["name"], f"{r['contract']}\n({r['kind']} pass)", r["summary"], options, _order_line(r))
    # a pipe or CI log is not 80 columns wide; don't wrap tables there
    con = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    con.print(table)
    import segc.selectors

    # the selector grammar is the part of the syntax users need while choosing options
    doc = segc.selectors.__doc__ or ""
    start = doc.find("Syntax")
    con.print(doc[start: doc.find("Resolution order")].rstrip() if start >= 0 else doc, markup=False)
    return 0
