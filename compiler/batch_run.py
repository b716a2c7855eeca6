"""``segc batch``: every cell of a manifest, one ``segc compile`` subprocess each.

(The manifest and its cells: batch_manifest.)
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from segc.batch_manifest import Cell, Manifest, expand, load_manifest
from segc.errors import SegcError


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST.toml")
    parser.add_argument("-j", "--jobs", type=int, default=None, help="cells compiled at once (default: the number of cores)")
    parser.add_argument("-o", "--output", dest="outdir", default=None,
                        help="output folder (default: <manifest stem>.batch/ beside the manifest)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: a pool of subprocesses on this machine; ray: the same cells as Ray tasks")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--no-cache", action="store_true", help="compile every cell, cached or not")
    parser.add_argument("--list", action="store_true", help="print each cell's segc compile command; compile nothing")


def cell_argv(cell: Cell, model_path: Path | str, outdir: Path) -> list[str]:
    """The ``segc compile`` command line of ``cell`` (without the leading ``segc``)."""
    return ["compile", str(model_path), "--target", cell.target, "-o", str(outdir / cell.rel_outdir), *cell.compile_flags]


def _model_paths(manifest: Manifest, outdir: Path) -> dict[str, str]:
    return {m.name: str(m.path) if m.path else f"<export of {m.zoo.name}>" for m in manifest.models}  # type: ignore[union-attr]


def run_batch(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    cells = expand(manifest)
    outdir = Path(args.outdir) if args.outdir else manifest.path.parent / f"{manifest.path.stem}.batch"
    if args.list:
        paths = _model_paths(manifest, outdir)
        for cell in cells:
            print(f"{cell.label}: segc {shlex.join(cell_argv(cell, paths[cell.model], outdir))}")
        return 0
    raise SegcError("segc batch: only --list is available in this build")
