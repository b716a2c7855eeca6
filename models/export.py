"""``segc export``: one seed model to a checked ONNX file, from the command line.

    segc export MODEL [-o OUT.onnx] [--shape N,C,H,W] [--dynamic | --static] [--weights CKPT]
                      [--opset N] [--exporter legacy|dynamo] [--logits] [--seed N] [--force]

``segc.cli`` wires ``add_export_arguments`` and ``run_export`` as the subcommand, so the CLI
imports torch only when the zoo is installed.
Everything that can go wrong with a user's request is a SegcError (exit 2, one line); the
success path prints one line: path, size, nodes, parameters, time.

This module imports no torch: ``segc export --help`` works everywhere, and a missing PyTorch
is reported by the zoo as ``segc: error: `segc export` needs PyTorch; ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segc.errors import SegcError
from segc.models.zoo import EXPORTERS, ZOO, export_with_summary, get_entry
from segc.shapes import parse_dims


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``segc export``'s arguments to ``parser`` (a subparser made by segc.cli)."""
    parser.add_argument("model", metavar="MODEL", help=f"zoo model: {', '.join(ZOO)}")
    parser.add_argument("-o", "--output", metavar="OUT.onnx", default=None,
                        help="where to write the model (default: MODEL.onnx in the current folder)")
    parser.add_argument("--shape", metavar="N,C,H,W", default=None,
                        help="example input shape (default: the seed guide's; H, W multiples of the model's stride)")
    dyn = parser.add_mutually_exclusive_group()
    dyn.add_argument("--dynamic", dest="dynamic", action="store_const", const=True, default=None,
                     help="make the model's dynamic axes symbolic (DBNet: H and W; others: batch)")
    dyn.add_argument("--static", dest="dynamic", action="store_const", const=False,
                     help="freeze every dimension to --shape")
    parser.add_argument("--weights", metavar="CKPT", default=None,
                        help="PyTorch checkpoint to load (default: seeded random weights)")
    parser.add_argument("--opset", type=int, metavar="N", default=None,
                        help="ONNX opset (default: the seed guide's: 11 HRNet/DeepLab, 10 DBNet, 19 DBNet-DCN)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="legacy",
                        help="torch.onnx exporter: legacy (TorchScript, as the guides) or dynamo (torch.export)")
    parser.add_argument("--logits", action="store_true",
                        help="leave the final argmax out (label-map models only: ocrnet_hrnetw18)")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed for random weights and the example input"
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run_export(args: argparse.Namespace) -> int:
    """Run ``segc export`` for parsed ``args``; returns the exit status (0), SegcError otherwise."""
    entry = get_entry(args.model)  # unknown names fail before anything touches the disk
    output = Path(args.output) if args.output else Path(f"{entry.name}.onnx")  # in the current folder
    if output.exists() and output.is_dir():
        raise SegcError(f"-o {output}: is a folder; give a file name such as {output / (entry.name + '.onnx')}")
    if args.weights is not None:
        weights = Path(args.weights)
        if weights.exists() and output.exists() and output.resolve() == weights.resolve():
            # --force must never destroy the trained weights the user is exporting
            raise SegcError(f"-o {output}: refusing to write the model over the --weights file")
    if output.exists() and not args.force:
        raise SegcError(f"{output}: already exists; pass --force to overwrite it")
    shape = parse_dims(args.shape, "--shape") if args.shape else None
    summary = export_with_summary(
        entry.name, output, shape=shape, dynamic=args.dynamic, weights=args.weights, opset=args.opset,
        exporter=args.exporter, logits=args.logits, seed=args.seed,
    )
    print(summary.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m segc.models.export``) for when segc.cli is not at hand."""
    parser = argparse.ArgumentParser(prog="segc export", description=__doc__.splitlines()[0])
    add_export_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_export(args)
    except SegcError as exc:
        print(f"segc: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
