"""``segc compile``: load, plan the pipeline, run and verify it, check legality, emit.

Everything the user can get wrong is checked before the first pass runs (unknown pass or
target, malformed shape, bad option), so a mistake costs seconds, not a half-hour compile.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import onnx

import segc
from segc.errors import ExitStatus, InternalError, SegcError
from segc.metrics import Tolerances
from segc.modelio import file_sha256, load_model_and_files, save_model
from segc.onnx_graph import input_dims, real_inputs
from segc.outdir import FIXED_NAMES, BackgroundSha256, StagedOutput, check_dump_dir, require_utf8
from segc.ortrun import SESSION_STATS, SessionConfig
from segc.fp16_emulation import fp32_layers
from segc.passes.emulate_fp16 import precision_passes
from segc.passes.prune_outputs import pin_selectors
from segc.pipeline import DumpInstrument, HandOver, Instrument, PassRecord, PassSpec, PipelineResult, run_pipeline
from segc.recipe import RECIPE_METADATA_KEY, Recipe, TargetRecipe, get_recipe
from segc.report import PASS_COLUMNS, build_report, pass_rows, unverified_lines, write_reports
from segc.shapes import ShapeRange, parse_shape_range, parse_static_shape, ranges_from_metadata
from segc.legalise import Plan, final_gate_lines, legalise
from segc.memory import freeze_long_lived
from segc.int8_calibration import DEFAULT_SAMPLES
from segc.pass_order import insertion_index
from segc.preflight import validate_cli, validate_pass_plan, validate_selectors
from segc.targets.base import BuildOptions, Target, get_target, target_values
from segc.targets.legality import errors, group_violations, unconfirmed


class ProgressInstrument(Instrument):
    """One line per pass on stderr, so long compiles show where they are."""

    needs_model = False  # prints names and times only: never makes the pipeline export a graph

    def __init__(self, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)
        self.total = total
        self.line_open = False  # a pass line waits for its result; an error must not glue onto it

    def before_pass(self, record: PassRecord, model: onnx.ModelProto | None) -> None:
        self.console.print(f"[{record.index + 1}/{self.total}] {record.name} ...", end="")
        self.line_open = True

    def after_pass(self, record: PassRecord, model: onnx.ModelProto | None) -> None:
        v = f" {record.verify_seconds:.1f}s verify" if record.verify_seconds else ""
        self.console.print(f" {record.status} ({record.seconds:.2f}s{v})")
        self.line_open = False

    def close_line(self) -> None:
        if self.line_open:
            self.console.print(" error")
            self.line_open = False


def resolve_recipe(name: str | None, model: onnx.ModelProto) -> Recipe | None:
    if name:
        return get_recipe(name)
    meta = {p.key: p.value for p in model.metadata_props}
    if RECIPE_METADATA_KEY in meta:
        try:
            return get_recipe(meta[RECIPE_METADATA_KEY])
        except SegcError:
            return None  # a model exported by a newer segc: compile without the recipe
    return None


def parse_option(text: str) -> tuple[str, str, Any]:
    """``pass.key=value``; the value is read as JSON when it parses (lists, numbers), else a string."""
    head, sep, raw = text.partition("=")
    pass_name, dot, key = head.partition(".")
    if not sep or not dot or not pass_name or not key:
        raise SegcError(f"malformed --option {text!r}: expected PASS.KEY=VALUE")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return pass_name.strip(), key.strip(), value


def plan_passes(args: argparse.Namespace, target: Target, recipe: Recipe | None) -> list[PassSpec]:
    """The pass list and each pass's options: target default < recipe < command line."""
    names = list(args.passes) if args.passes else target.pipeline(recipe)
    options = target.pass_options(recipe)
    names = precision_passes(names, options, args.precision, args.calib_images, args.calib_samples)

    def ensure(name: str) -> None:
        if name not in names:  # where the passes' declared order puts it (before cleanup, emulate_*)
            names.insert(insertion_index(names, name), name)

    if args.nearest_resize:
        ensure("resize_to_nearest")
        options["resize_to_nearest"] = {"select": args.nearest_resize}
    if args.outputs and not args.no_prune:
        ensure("prune_outputs")
        options["prune_outputs"] = {"outputs": args.outputs}
    ranges = [parse_shape_range(s) for s in args.input_shape]
    if any(not r.is_static for r in ranges):
        ensure("set_shape_range")
        options["set_shape_range"] = {"ranges": [r.atc() for r in ranges if not r.is_static]}
        if args.opt_shape:
            options["set_shape_range"]["opt"] = list(args.opt_shape)
    for text in args.option:
        pass_name, key, value = parse_option(text)
        options.setdefault(pass_name, {})[key] = value
    skip = set(args.skip or [])
    from segc.passbase import get_pass

    for name in list(skip) + list(names) + list(options):
        get_pass(name)  # unknown names fail here, with suggestions
    return [PassSpec(n, dict(options.get(n, {}))) for n in names if n not in skip]


def cli_ranges(args: argparse.Namespace) -> dict[str, ShapeRange]:
    ranges = {r.name: r for r in (parse_shape_range(s) for s in args.input_shape)}
    for text in args.opt_shape:
        name, dims = parse_static_shape(text)
        if name not in ranges:
            raise SegcError(f"--opt-shape names {name!r}, which no --input-shape gives a range for")
        ranges[name] = ranges[name].with_opt(dims)
    return ranges


def final_shapes(model: onnx.ModelProto, cli: dict[str, ShapeRange], recipe: Recipe | None, *, require: bool = True,
                 planned: dict[str, ShapeRange] | None = None, batch: tuple[int, ...] = ()) -> list[ShapeRange]:
    """The input shapes the vendor build is for: command line, then model metadata, then static dims.

    ``planned``: ranges a pass of the pipeline will set (``set_shape_range`` options), for the
    check before the pipeline. ``require`` False (onnxruntime) leaves a dynamic input out
    instead of refusing: the runtime takes any shape. ``batch`` (``--batch`` or the recipe's)
    supplies a symbolic batch dim: the targets build each size, or widen to their range.
    """
    meta = {p.key: p.value for p in model.metadata_props}
    known = {r.name: r for r in ranges_from_metadata(meta)}
    known.update(planned or {})
    known.update(cli)
    shapes = []
    for vi in real_inputs(model):
        if vi.name in known:
            shapes.append(known[vi.name])
            continue
        dims = input_dims(vi)
        if all(isinstance(d, int) for d in dims):
            static = tuple(d for d in dims if isinstance(d, int))
            shapes.append(ShapeRange(vi.name, static, static, static))
        elif batch and dims and all(isinstance(d, int) for d in dims[1:]):
            fixed = (min(batch), *(d for d in dims[1:] if isinstance(d, int)))
            shapes.append(ShapeRange(vi.name, fixed, fixed, fixed))
        elif recipe is not None and len(recipe.seed_shape) == len(dims):
            seed = tuple(d if isinstance(d, int) else recipe.seed_shape[i] for i, d in enumerate(dims))
            shapes.append(ShapeRange(vi.name, seed, seed, seed))
        elif require:
            example = ",".join(str(d) if isinstance(d, int) else ("1" if i == 0 else "640") for i, d in enumerate(dims))
            raise SegcError(
                f"input {vi.name!r} has dynamic dims {dims}: this target builds for given shapes; give --input-shape "
                f"{vi.name}:{example} (a shape) or a range such as {vi.name}:{example.replace('640', '320~1280')}"
            )
    return shapes


def _pass_ranges(specs: list[PassSpec]) -> dict[str, ShapeRange]:
    """The ranges ``set_shape_range`` will set, from its options in the planned pipeline."""
    from segc.passes.set_shape_range import parse_ranges

    out: dict[str, ShapeRange] = {}
    for spec in specs:
        if spec.name == "set_shape_range" and spec.options.get("ranges"):
            out.update({r.name: r for r in parse_ranges(spec.options.get("ranges"), spec.options.get("opt"))})
    return out


def check_cli_options_used(args: argparse.Namespace, specs: list[PassSpec]) -> None:
    """An ``--option`` for a pass that does not run would be silently ignored: refuse it."""
    names = [s.name for s in specs]
    for text in args.option:
        pass_name, _, _ = parse_option(text)
        if pass_name not in names:
            raise SegcError(f"--option {text}: pass {pass_name} is not in the pipeline ({', '.join(names)}); "
                            f"add it with --passes, or drop the option")


def _validate_inputs(model: onnx.ModelProto, ranges: dict[str, ShapeRange]) -> None:
    names = {vi.name: input_dims(vi) for vi in real_inputs(model)}
    for name, rng in ranges.items():
        if name not in names:
            raise SegcError(f"--input-shape names {name!r}, but the model's inputs are: {', '.join(names)}")
        if len(rng.min) != len(names[name]):
            raise SegcError(
                f"--input-shape {rng.atc()!r} has {len(rng.min)} dims; input {name!r} has {len(names[name])}"
            )


def _model_info(path: Path, model: onnx.ModelProto | None = None, sha256: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(path), "sha256": sha256 or file_sha256(path), "bytes": path.stat().st_size}
    if model is not None:
        info["nodes"] = len(model.graph.node)
    return info


def build_options(args: argparse.Namespace, recipe: Recipe | None, target: Target, shapes: list[ShapeRange],
                  chosen_outputs: list[str], argv: list[str], input_hash: str) -> BuildOptions:
    """The typed build options: the shared part from the command line over the recipe, and the
    target's own part from its flags (``Target.target_options``); a flag of another target is a
    usage error."""
    given = recipe.for_target(target.name) if recipe is not None else TargetRecipe()
    # batch sizes are per target: the seeds built one static Ascend model per batch size,
    # but ran TensorRT at the exported batch; a recipe says which target wants what
    precision = args.precision or given.precision or "fp32"
    batch: tuple[int, ...] = given.batch_sizes
    if args.batch:
        try:
            batch = tuple(int(b) for b in args.batch)
        except ValueError:
            raise SegcError(f"malformed --batch {','.join(args.batch)!r}: expected sizes like 1,4,8,16") from None
        if any(b < 1 for b in batch):
            raise SegcError("--batch sizes must be positive")
    calib = Path(args.calib_images).expanduser().resolve() if args.calib_images else None
    if calib is not None and not calib.is_dir():
        raise SegcError(f"--calib-images {args.calib_images}: no such folder")
    if args.calib_samples is not None and args.calib_samples < 1:
        raise SegcError(f"--calib-samples must be positive, got {args.calib_samples}")
    values = target_values(args, target)
    unknown = sorted(set(given.flags) - set(values))
    if unknown:
        raise SegcError(f"recipe {recipe.name if recipe else '?'} sets {unknown[0]!r} for target {target.name}, "
                        f"which has no such flag (its flags: {', '.join(values) or 'none'})")
    own = target.target_options({k: given.flags.get(k) if v is None else v for k, v in values.items()})
    return BuildOptions(precision=precision, batch_sizes=batch, batch_range=given.batch_range,
                        shape_ranges=shapes, outputs=chosen_outputs, calib_images=calib,
                        calib_samples=args.calib_samples or DEFAULT_SAMPLES,
                        allow_unlisted_ops=bool(args.allow_unlisted_ops), recipe=recipe, target=own,
                        command_line=shlex.join(["segc", *argv]), input_sha256=input_hash,
                        segc_version=segc.__version__)


def build_section(options: BuildOptions, shapes: list[ShapeRange]) -> dict[str, Any]:
    """report.json ``build``: the shared settings and the target's own (``target_options``)."""
    return {"precision": options.precision, "batch_sizes": list(options.batch_sizes),
            "batch_range": list(options.batch_range) if options.batch_range else None,
            "shapes": [s.atc() for s in shapes],
            "calib_images": str(options.calib_images) if options.calib_images else None,
            "calib_samples": options.calib_samples, "fp32_layers": list(options.fp32_layers),
            "target_options": options.target.to_dict()}


def run_compile(args: argparse.Namespace, argv: list[str]) -> int:
    started = time.perf_counter()
    src = Path(args.model)
    require_utf8(src, "input model")
    input_digest = _hash_input(src)
    model, protect = load_model_and_files(src, lazy=True)
    target = get_target(args.target)
    recipe = resolve_recipe(args.recipe, model)
    cli_warnings = validate_cli(args, target)
    specs = plan_passes(args, target, recipe)
    validate_pass_plan(specs, "--passes" if args.passes else "the planned pipeline")
    ranges = cli_ranges(args)
    _validate_inputs(model, ranges)
    tolerances = Tolerances.parse(args.tolerance + task_metric_tolerances(args))
    outdir = Path(args.outdir) if args.outdir else src.parent / f"{src.stem}.{target.name}"
    out_name = f"{src.stem}.{target.name}.onnx"
    if args.dump_dir:
        check_dump_dir(args.dump_dir, [DumpInstrument.file_name(i, s.name) for i, s in enumerate(specs)], protect)
    handed = HandOver(model)
    del model  # the pipeline frees the input once a pass has replaced it
    with StagedOutput(outdir, force=args.force, protect=protect, names=[out_name, *FIXED_NAMES]) as out:
        return _compile_into(
            out, args, argv, src, handed, target, recipe, specs, ranges, tolerances, started, cli_warnings, input_digest
        )


def _hash_input(src: Path) -> BackgroundSha256 | None:
    """The input's one sha256 (report, build.sh, batch cache keys), hashed on a second thread
    while it is loaded, checked and planned; None when the file cannot be read (the load
    then says why, as one line)."""
    return BackgroundSha256(src) if src.is_file() else None


def _compile_into(out: StagedOutput, args: argparse.Namespace, argv: list[str], src: Path, handed: HandOver,
                  target: Target, recipe: Recipe | None, specs: list[PassSpec], ranges: dict[str, ShapeRange],
                  tolerances: Tolerances, started: float, cli_warnings: list[str],
                  input_digest: BackgroundSha256 | None = None) -> int:
    """Run, verify, check and emit into ``out``'s staging folder, then move it into place."""
    model = handed.model
    assert model is not None
    outdir = out.outdir
    out_model = out.path(f"{src.stem}.{target.name}.onnx")
    # --no-prune: the vendor tool cuts at these tensors; resolve them on the input model, as
    # prune_outputs does, and have the verifier watch them through every pass
    chosen_outputs = pin_selectors(model, args.outputs) if args.outputs and args.no_prune else []
    require_shapes = target.name != "onnxruntime"

    # everything below is checked before the first pass runs (docs/design.md, "The pipeline", step 2)
    # the planned options are checked, never emitted: the input's hash may still be being computed
    planned_options = build_options(args, recipe, target, [], chosen_outputs, argv, "")
    planned_options.shape_ranges = final_shapes(
        model, ranges, recipe, require=require_shapes, planned=_pass_ranges(specs), batch=planned_options.batch_sizes
    )
    target.validate_options(planned_options)
    validate_selectors(model, args)
    check_task_metric_args(args, recipe)
    plan = legalise(model, target, planned_options, specs, user_passes=bool(args.passes), skipped=set(args.skip or []),
                    static_cli={n: r for n, r in ranges.items() if r.is_static})
    specs = plan.specs
    validate_pass_plan(specs, "--passes" if args.passes else "the planned pipeline")
    check_cli_options_used(args, specs)
    _print_plan(plan, cli_warnings)

    config = SessionConfig()
    # --no-prune: the vendor tool cuts at these tensors; resolve them on the input model, as
    # prune_outputs does, and have the verifier watch them through every pass
    chosen_outputs = pin_selectors(model, args.outputs) if args.outputs and args.no_prune else []
    verifier = None
    if args.verify != "none":  # imported here: a --verify none compile never loads the verifier (issue 11)
        from segc.verify import Verifier
        from segc.verify_inputs import DEFAULT_PIXEL_BUDGET

        verifier = Verifier(recipe=recipe, ranges=ranges, tolerances=tolerances, config=config, seed=args.seed,
                            user_inputs=args.verify_inputs, pixel_budget=args.pixel_budget or DEFAULT_PIXEL_BUDGET,
                            watch=chosen_outputs)
    progress = ProgressInstrument(len(specs))
    instruments: list[Instrument] = [progress]
    if args.dump_dir:
        instruments.append(DumpInstrument(args.dump_dir, protect=out.protect))
    SESSION_STATS.reset()
    input_hash = (input_digest or BackgroundSha256(src)).hexdigest()  # joined before any pass: it names this file
    input_nodes = len(model.graph.node)
    del model  # `handed` gives the pipeline the only reference
    freeze_long_lived()  # the plan is made: each collection of the run walks only what the passes make
    try:
        result = run_pipeline(handed, specs, target=target.name, recipe=recipe, verify=args.verify, verifier=verifier,
                              instruments=instruments)
    finally:
        progress.close_line()

    report_fields: dict[str, Any] = {
        "command_line": shlex.join(["segc", *argv]),
        "target": target.name,
        "recipe": recipe.name if recipe else None,
        "input": {**_model_info(src, sha256=input_hash), "nodes": input_nodes},
        "tolerances": tolerances.to_dict(),
        "session_config": config.to_dict(),
        "verified_shapes": verifier.feed_labels if verifier else [],
        "verification_notes": list(verifier.notes) if verifier else [],
        "legalisation": {"added": [a.to_dict() for a in plan.added], "notes": plan.notes,
                         "warnings": cli_warnings + plan.warnings},
    }
    shapes = final_shapes(result.model, ranges, recipe, require=require_shapes, batch=planned_options.batch_sizes)
    options = build_options(args, recipe, target, shapes, chosen_outputs, argv, input_hash)
    options.fp32_layers = fp32_layers(result.model)  # the keep-set emulate_fp16 stored, if it ran
    found = target.check(result.model, options) if result.ok else []
    violations = errors(found)
    warnings = group_violations(unconfirmed(found))
    report_fields["legalisation"]["warnings"] = (
        cli_warnings + warnings if result.ok else report_fields["legalisation"]["warnings"]
    )
    report_fields["violations"] = final_gate_lines(violations, result)
    report_fields["build"] = build_section(options, shapes)

    if violations:
        report_fields["status"] = "illegal"
        report_fields["verification_cost"] = {"sessions": SESSION_STATS.sessions, "runs": SESSION_STATS.runs}
        write_reports(out.staging, build_report(result, **report_fields))
        out.commit()
        lines = report_fields["violations"]
        listed = "; ".join(lines[:5]) + (f"; and {len(lines) - 5} more" if len(lines) > 5 else "")
        raise SegcError(f"target {target.name} cannot build this model: {listed} (see {outdir / 'report.md'})")

    save_model(result.model, out_model, protect=out.protect)
    if result.ok and args.verify_data:
        assert recipe is not None  # --verify-data without a recipe is refused before any work
        from segc.task_budget import judge_on_dataset

        judgement = judge_on_dataset(src, out_model, args.verify_data, recipe, args.budget)
        report_fields["task_metric"] = judgement.to_dict()
        if not judgement.passed:
            approximate = [r.name for r in result.records if r.contract == "approximate" and r.changed]
            result.failed_pass = approximate[-1] if approximate else "verify-data"
            result.failure = (f"{judgement.metric} fell {judgement.drop:.3g} on {args.verify_data} "
                              f"({judgement.before:.4g} -> {judgement.after:.4g}), over the budget {args.budget}")
    artefacts = [{"path": str(out.final(out_model)), "kind": "model"}]
    if result.ok:
        for art in target.emit(result.model, out_model, out.staging, options):
            artefacts.append({"path": str(out.final(art.path)), "kind": art.kind})
    report_fields.update({
        "status": ("unverified" if any(r.status == "unverified" for r in result.records) and args.verify != "none"
                   else "ok") if result.ok else "internal_error" if result.internal_error else "failed",
        "output": {**_model_info(out_model, result.model), "path": str(out.final(out_model))},
        "artefacts": artefacts,
        "verification_cost": {"sessions": SESSION_STATS.sessions, "runs": SESSION_STATS.runs},
        "seconds": round(time.perf_counter() - started, 3),
    })
    report = build_report(result, **report_fields)
    write_reports(out.staging, report)
    out.commit()
    _print_summary(report, result, outdir)
    if result.internal_error is not None:  # a pass crashed: a bug, whose traceback is in the report
        raise InternalError(result.internal_error, outdir / "report.json")
    return ExitStatus.OK if result.ok else ExitStatus.FAILED


def task_metric_tolerances(args: argparse.Namespace) -> list[str]:
    """With ``--verify-data``, approximate passes are judged on the dataset metric, not the synthetic budget.

    The synthetic cosine/agreement budget stands in for a metric nobody measured; once the
    user gives labelled data, the real drop (mIoU, hmean) decides. The synthetic figures are
    still computed and reported. A budget the user set with ``--tolerance`` still applies.
    """
    if not getattr(args, "verify_data", None):
        return []
    given = {t.partition("=")[0].strip() for t in args.tolerance}
    return [f"{key}=0" for key in ("cosine", "agreement") if key not in given]


def check_task_metric_args(args: argparse.Namespace, recipe: Recipe | None) -> None:
    """``--verify-data`` and ``--budget`` come together, with a recipe, and a dataset that loads."""
    if not args.verify_data and not args.budget:
        return
    if not args.verify_data or not args.budget:
        raise SegcError("--verify-data KIND:ROOT and --budget miou_drop=N (or hmean_drop=N) go together")
    if recipe is None:
        raise SegcError("--verify-data needs a recipe (--recipe NAME or FILE.toml) to preprocess the dataset")
    from segc.datasets import load_dataset
    from segc.evaluate_cmd import parse_budget

    parse_budget(args.budget, recipe.task, compare=True)
    data = load_dataset(args.verify_data, need_labels=True)
    if data.task != recipe.task:
        raise SegcError(f"--verify-data {data.kind} is for {data.task}, but recipe {recipe.name!r} is {recipe.task}")


def _print_plan(plan: Plan, warnings: list[str]) -> None:
    """What segc added to the pipeline and why, and the warnings, before the passes start."""
    for added in plan.added:
        print(f"segc: {added}", file=sys.stderr)
    for note in plan.notes:
        print(f"segc: note: {note}", file=sys.stderr)
    for w in warnings + plan.warnings:
        print(f"segc: warning: {w}", file=sys.stderr)
    sys.stderr.flush()


def _print_summary(report: dict[str, Any], result: PipelineResult, outdir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 140)
    table = Table(*PASS_COLUMNS, title=f"segc compile -> {report['target']}")
    for row in pass_rows(report):
        table.add_row(*row)
    console.print(table)
    if report.get("verified_shapes"):
        console.print(f"verified at: {', '.join(report['verified_shapes'])}")
    for line in report.get("verification_notes", []):
        console.print(f"verification: {line}")
    for line in unverified_lines(report):
        console.print(line)
    legal = report.get("legalisation") or {}
    for added in legal.get("added", []):
        console.print(f"added pass {added['pass']}: {added['reason']}")
    for note in legal.get("notes", []):
        console.print(f"note: {note}")
    for w in legal.get("warnings", []):
        console.print(f"warning: {w}")
    if result.ok:
        console.print(f"done in {report['seconds']:.1f}s; artefacts in {outdir}/ (build.sh, report.md, report.json)")
    else:
        before = ", ".join(result.passes_before(result.failed_pass)) or "none"
        console.print(f"FAILED: {result.failure}\n  passes before it: {before}\n  report: {outdir / 'report.md'}")
    sys.stderr.flush()
