"""The ``segc`` command line (docs/design.md, "Exit codes").

Exit status (``segc.errors.ExitStatus``):

- 0 done;
- 1 the model did not survive: a pass failed verification or refused the graph (artefacts and
  report still written, naming the pass);
- 2 bad usage or bad input, as one line ``segc: error: ...`` and never a traceback;
- 70 a bug in segc (sysexits.h ``EX_SOFTWARE``), as one line ``segc: internal error: ...``
  naming the report that holds the traceback, or printing it with ``--debug``;
- 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import NoReturn, Sequence

import segc
from segc.errors import ExitStatus, InternalError, SegcError, first_line
from segc.memory import StartUp


class _Parser(argparse.ArgumentParser):
    """argparse prints the whole usage block on error; segc's contract is one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise SegcError(message)


EXIT_EPILOG = """exit status:
  0    done
  1    a pass failed verification or refused the graph (report written, naming the pass)
  2    bad usage or bad input (one line: segc: error: ...)
  70   a bug in segc (one line: segc: internal error: ...; traceback in report.json or with --debug)
  130  interrupted"""


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``command`` (the one being run), the arguments of the
    other subcommands that live in modules of their own (export's zoo, batch, data,
    evaluate) are left out, so a compile does not import them (every module a run does not
    use is start-up time). Their subparsers stay, so ``segc --help`` lists them."""

    def wanted(name: str) -> bool:
        return command is None or command == name

    parser = _Parser(prog="segc",
                     description="Compile segmentation and text-detection models to verified vendor builds.",
                     epilog=EXIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"segc {segc.__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    exp = sub.add_parser("export", help="export a seed model from PyTorch to ONNX (needs the export extra)")
    if wanted("export"):
        try:
            from segc.models.export import add_export_arguments
        except ImportError:  # the zoo is optional; its absence is reported when export is used
            pass
        else:
            add_export_arguments(exp)

    c = sub.add_parser("compile", help="run the verified pass pipeline and emit a vendor build")
    c.add_argument("model", help="input .onnx")
    from segc.targets.base import add_target_arguments

    add_target_arguments(c)  # --target and each target's own flags, from the target registry
    c.add_argument(
        "-o", "--output", dest="outdir", help="output folder (default: <model stem>.<target>/ beside the model)"
    )
    c.add_argument("--recipe", help="model recipe (default: the one named in the model's metadata)")
    c.add_argument("--passes", type=_csv, help="comma-separated pass list (replaces the recipe's or target's)")
    c.add_argument("--skip", type=_csv, default=[], help="passes to leave out")
    c.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="PASS.KEY=VALUE",
        help="a pass option, e.g. resize_to_nearest.preset=hrnet_branches (repeatable)",
    )
    c.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME:1,3,640~4096,640~4096",
        help="input shape or range, ATC syntax (repeatable)",
    )
    c.add_argument("--opt-shape", action="append", default=[], metavar="NAME:1,3,1280,1280")
    c.add_argument(
        "--batch", type=_csv, help="batch sizes, e.g. 1,4,8,16 (one static build each where the target does that)"
    )
    c.add_argument(
        "--precision", choices=["fp32", "fp16", "int8"], help="build precision (default: the recipe's, else fp32)"
    )
    c.add_argument("--calib-images", help="folder of calibration images (int8)")
    c.add_argument("--calib-samples", type=int, metavar="N", help="how many calibration images to use (default 32)")
    c.add_argument(
        "--allow-unlisted-ops",
        action="store_true",
        help="silence the warnings for ops that segc's partial operator list (MagicMind) does not name",
    )
    c.add_argument("--outputs", type=_csv, help="selectors of the tensors to keep as outputs (adds prune_outputs)")
    c.add_argument(
        "--no-prune", action="store_true", help="keep the graph whole; pass chosen outputs to the vendor tool"
    )
    c.add_argument(
        "--nearest-resize", type=_csv, help="selectors of Resizes to switch to nearest (adds resize_to_nearest)"
    )
    c.add_argument("--verify", default="each", choices=["each", "each-full", "end", "none"])
    c.add_argument("--verify-inputs", help=".npy, .npz or a folder of images to verify with")
    c.add_argument(
        "--verify-data",
        metavar="KIND:ROOT",
        help="judge the build on a labelled dataset (cityscapes:ROOT, icdar2015:ROOT) instead of the synthetic budget",
    )
    c.add_argument("--budget", metavar="miou_drop=N|hmean_drop=N", help="the largest metric drop --verify-data accepts")
    c.add_argument(
        "--tolerance",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a judgement threshold: rtol, atol, exact_agreement, cosine, agreement",
    )
    c.add_argument("--pixel-budget", type=int, help="largest N*H*W verified at (default 2.2M)")
    c.add_argument("--seed", type=int, default=0, help="seed of the random verification inputs")
    c.add_argument("--dump-dir", help="write the graph after each pass into this folder")
    c.add_argument(
        "--force",
        action="store_true",
        help="replace files in the output folder that segc did not write (never the input model)",
    )

    batch = sub.add_parser("batch", help="compile every model x target x option set of a manifest, in parallel, cached")
    if wanted("batch"):
        from segc.batch_run import add_batch_arguments

        add_batch_arguments(batch)

    p = sub.add_parser("passes", help="list the registered passes")
    p.add_argument("--json", action="store_true")

    i = sub.add_parser("inspect", help="describe a model and what a target would reject")
    i.add_argument("model")
    i.add_argument("--target")
    i.add_argument("--json", action="store_true")

    data = sub.add_parser("data", help="preprocess a dataset into the .bin/.npy inputs device runners read")
    evaluate = sub.add_parser("evaluate", help="mIoU or hmean of a model (onnxruntime or device outputs) on a dataset")
    if wanted("data"):
        from segc.data_cmd import add_data_arguments

        add_data_arguments(data)
    if wanted("evaluate"):
        from segc.evaluate_cmd import add_evaluate_arguments

        add_evaluate_arguments(evaluate)

    v = sub.add_parser("verify", help="compare two models in onnxruntime")
    v.add_argument("reference")
    v.add_argument("candidate")
    v.add_argument("--input-shape", action="append", default=[])
    v.add_argument("--contract", default="exact", choices=["exact", "approximate"])
    v.add_argument("--verify-inputs")
    v.add_argument("--tolerance", action="append", default=[])
    v.add_argument("--seed", type=int, default=0)
    v.add_argument(
        "--localize",
        action="store_true",
        help="compare every intermediate tensor the graphs share; name the first node that diverges",
    )
    v.add_argument(
        "--top", type=int, default=5, metavar="K", help="with --localize: how many of the worst tensors to list"
    )
    v.add_argument("--json", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; ``argv`` None: this process's own command line (``segc``, ``python -m
    segc``), and the process exits when this returns (``StartUp.close`` leaves the heap frozen)."""
    process_exits = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    start_up = StartUp()  # no cyclic collections while the command's modules import (segc.memory)
    try:
        # inside the try: building the parser imports the export zoo (torch, seconds), and a
        # Ctrl-C during that start-up is an interruption like any other, not a traceback
        parser = build_parser(_command_of(argv))
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return _dispatch(args, argv, start_up)
    except SegcError as exc:
        print(f"segc: error: {exc}", file=sys.stderr)
        return ExitStatus.USAGE
    except KeyboardInterrupt:
        print("segc: error: interrupted", file=sys.stderr)
        return ExitStatus.INTERRUPTED
    except InternalError as exc:  # a pass crashed; the compile wrote the traceback into its report
        if debug:
            print(exc.crash.traceback, file=sys.stderr, end="")
        print(f"segc: internal error: {exc} (report: {exc.report})", file=sys.stderr)
        return ExitStatus.INTERNAL
    except Exception as exc:  # noqa: BLE001 - the one place that turns bugs into one line
        if debug:
            traceback.print_exc()
            print(f"segc: internal error: {type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        else:
            print(
                f"segc: internal error: {type(exc).__name__}: {first_line(exc)} (run with --debug for the traceback)",
                file=sys.stderr,
            )
        return ExitStatus.INTERNAL
    finally:
        start_up.close(process_exits=process_exits)


def _command_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` runs (its first word that is not an option), None for none."""
    return next((a for a in argv if not a.startswith("-")), None)


def _dispatch(args: argparse.Namespace, argv: list[str], start_up: StartUp) -> int:
    """Import the command's module, end start-up (``start_up.done``), run the command."""
    if args.command == "export":
        try:
            from segc.models.export import run_export
        except ImportError as exc:
            raise SegcError(f"`segc export` is not available: {exc}") from None
        start_up.done()
        return run_export(args)
    if args.command == "compile":
        from segc.compile_cmd import run_compile

        start_up.done()
        return run_compile(args, argv)
    if args.command == "batch":
        from segc.batch_run import run_batch

        start_up.done()
        return run_batch(args)
    if args.command == "data":
        from segc.data_cmd import run_data

        start_up.done()
        return run_data(args)
    if args.command == "evaluate":
        from segc.evaluate_cmd import run_evaluate

        start_up.done()
        return run_evaluate(args)
    if args.command == "passes":
        from segc.passes_cmd import run_passes

        start_up.done()
        return run_passes(args)
    from segc import inspect_cmd

    start_up.done()
    if args.command == "inspect":
        return inspect_cmd.run_inspect(args)
    if args.command == "verify":
        return inspect_cmd.run_verify(args)
    raise SegcError(f"unknown command {args.command!r}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
