"""``segc batch``'s content-addressed cache: a cell whose inputs have not changed is not compiled.

The key is what decides a compile's result, and nothing else:

    sha256( input model's sha256 + segc version + target + the cell's resolved compile flags )

so touching a file, renaming the batch folder or reordering the manifest keeps the cache,
while a changed model recompiles exactly the cells of that model. The entry of a cell lives
in ``DIR/.segc-batch/cells/<model>/<target>[/<set>].json``, beside (not in) its OUTDIR,
whose files belong to ``segc compile``.

An entry is written only after the compile finished (an exit status, not a timeout or a
signal), and it is used only while the OUTDIR it describes is still complete: its
``.segc-manifest.json`` (written last by every compile) lists files that are all present
with the same sha256, and its report.json is the one the entry was made from. So a batch
killed midway resumes: the cells that finished are cached, the one cut off recompiles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import segc
from segc.batch_manifest import Cell
from segc.batch_results import CellResult
from segc.outdir import MANIFEST_NAME, file_sha256, read_manifest, write_text

STATE_DIR = ".segc-batch"  # under the batch folder: cache entries, logs, zoo exports, the lock

UNCACHED_OUTCOMES = ("timeout", "crashed")  # may pass next time (load, memory): always rerun


def cell_key(input_sha256: str, cell: Cell) -> str:
    blob = json.dumps({"input": input_sha256, "segc": segc.__version__, "target": cell.target,
                       "flags": list(cell.compile_flags)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def export_key(zoo_name: str, export_argv: tuple[str, ...]) -> str:
    blob = json.dumps({"zoo": zoo_name, "segc": segc.__version__, "export": list(export_argv)})
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_path(batch_dir: Path, cell: Cell) -> Path:
    return batch_dir / STATE_DIR / "cells" / cell.rel_outdir.with_name(cell.rel_outdir.name + ".json")


def lookup(batch_dir: Path, cell: Cell, key: str) -> CellResult | None:
    """The cached result of ``cell`` under ``key``, or None when it must be compiled."""
    try:
        entry = json.loads(entry_path(batch_dir, cell).read_text())
        if entry.get("key") != key:
            return None
        result = CellResult.from_dict(entry["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if result.report is not None:
        report_json = batch_dir / Path(result.report).with_name("report.json")
        if not report_json.is_file() or file_sha256(report_json) != entry.get("report_json_sha256"):
            return None
        if not outdir_complete(report_json.parent):
            return None
    from dataclasses import replace

    return replace(result, status="cached", cached=True)


def outdir_complete(outdir: Path) -> bool:
    """Every file the compile's manifest lists is there, unchanged."""
    files = read_manifest(outdir)
    if not (outdir / MANIFEST_NAME).is_file() or not files:
        return False
    for name, entry in files.items():
        path = outdir / name
        if not path.is_file() or file_sha256(path) != entry.sha256:
            return False
    return True


def store(batch_dir: Path, cell: Cell, result: CellResult) -> bool:
    """Record ``result`` for ``cell``; False (nothing stored) for results that must rerun."""
    if result.outcome in UNCACHED_OUTCOMES:
        return False
    entry: dict[str, object] = {"key": result.key, "result": result.to_dict()}
    if result.report is not None:
        report_json = batch_dir / Path(result.report).with_name("report.json")
        if not report_json.is_file() or not outdir_complete(report_json.parent):
            return False
        entry["report_json_sha256"] = file_sha256(report_json)
    path = entry_path(batch_dir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(entry, indent=2) + "\n")
    return True
