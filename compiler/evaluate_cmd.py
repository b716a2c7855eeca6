"""``segc evaluate``: the task metric of a model on a labelled dataset, the number users sign off on.

The seed guides ran each model on the device, then a script per model turned the output
files into mIoU (Cityscapes) or hmean (icdar2015) and compared it with the original
(OCRNet 80.67 -> 79.89, "a drop under 1 point"). segc does it in one command::

    segc evaluate original.onnx --dataset cityscapes:ROOT                       # onnxruntime
    segc evaluate original.onnx --dataset cityscapes:ROOT --from-outputs OUT/   # device outputs
    segc evaluate original.onnx --compare compiled.onnx [--compare-outputs OUT/] --budget miou_drop=1.0

Inputs are made by segc.preprocess (the same bytes ``segc data`` writes); device outputs are
``<input stem>_<output index>.bin`` (raw, the model's output dtype) or ``.npy``. Writes
report.json (every figure), report.md (per-class table) and per_class_iou.png; exit 1 when
``--budget`` is exceeded.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx

from segc import det_metrics, seg_metrics
from segc.data_cmd import batches, check_batch, stack
from segc.datasets import Dataset, Sample, load_dataset
from segc.db_postprocess import detect_text
from segc.device_outputs import OutputReader
from segc.errors import SegcError
from segc.modelio import load_model
from segc.outdir import write_text
from segc.preprocess import ModelInput, model_input, recipe_for, require_data_extra
from segc.recipe import OutputSpec, Recipe

BUDGET_KEYS = {"segmentation": "miou_drop", "text_detection": "hmean_drop"}


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the .onnx to evaluate (the reference when --compare is given)")
    p.add_argument("--dataset", required=True, metavar="KIND:ROOT", help="cityscapes:ROOT | icdar2015:ROOT")
    p.add_argument("--recipe", help="zoo recipe name or FILE.toml (default: the model's metadata)")
    p.add_argument(
        "--from-outputs", metavar="DIR", help="read MODEL's outputs from a device run instead of onnxruntime"
    )
    p.add_argument(
        "--compare", metavar="MODEL_B", help="a second model (e.g. the compiled one): both figures and the drop"
    )
    p.add_argument("--compare-outputs", metavar="DIR", help="read MODEL_B's outputs from a device run")
    p.add_argument("--batch", type=int, default=1, help="images per device output file (as given to segc data)")
    p.add_argument("--budget", metavar="KEY=VALUE", help="miou_drop=1.0 (points) or hmean_drop=0.01: exit 1 beyond it")
    p.add_argument("-o", "--output", dest="outdir", help="report folder (default: <model stem>.eval beside the model)")
    p.add_argument("--save-predictions", metavar="DIR", help="write one prediction per image (train-id PNG / box .txt)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout")


@dataclass(frozen=True)
class Budget:
    key: str
    limit: float


@dataclass(frozen=True)
class Evaluation:
    model: str
    source: str  # "onnxruntime" or the outputs folder
    metrics: dict[str, Any]  # the figures as report.json writes them


def parse_budget(text: str | None, task: str, compare: bool) -> Budget | None:
    if text is None:
        return None
    key, sep, raw = text.partition("=")
    want = BUDGET_KEYS[task]
    if not sep or key.strip() != want:
        raise SegcError(f"--budget {text!r}: expected {want}=VALUE for a {task.replace('_', ' ')} model")
    try:
        limit = float(raw)
    except ValueError:
        raise SegcError(f"--budget {text!r}: {raw!r} is not a number") from None
    if not math.isfinite(limit) or limit < 0:
        raise SegcError(f"--budget {text!r}: must be a non-negative number")
    if not compare:
        raise SegcError("--budget needs --compare MODEL_B (the drop is measured from MODEL to MODEL_B)")
    return Budget(key.strip(), limit)


def output_spec(recipe: Recipe) -> OutputSpec:
    if recipe.output is not None:
        return recipe.output
    if recipe.task == "text_detection":
        return OutputSpec(kind="probability")
    if recipe.label_outputs:
        return OutputSpec(kind="labels", name=recipe.label_outputs[-1])
    return OutputSpec(kind="logits")


def chosen_output(model: onnx.ModelProto, spec: OutputSpec) -> tuple[int, str]:
    """The evaluated output's index and name: the recipe's, else the last (the prediction)."""
    names = [o.name for o in model.graph.output]
    if spec.name and spec.name in names:
        return names.index(spec.name), spec.name
    return len(names) - 1, names[-1]


def _outputs(
    label: str,
    model: onnx.ModelProto,
    target: ModelInput,
    dataset: Dataset,
    batch: int,
    index: int,
    name: str,
    outputs_dir: str | None,
) -> Iterator[tuple[Sample, np.ndarray, tuple[int, int]]]:
    """Each image, its evaluated output ([C,h,w] or [1,h,w]) and its original size."""
    from rich.console import Console
    from rich.progress import track

    reader = OutputReader(Path(outputs_dir), model, index, name) if outputs_dir else None
    session = None
    if reader is None:
        from segc.ortrun import SessionConfig, make_session

        session = make_session(model, SessionConfig(arena=True))  # one session, many runs (SessionConfig.arena)
    groups = list(batches(dataset.samples, batch))
    desc = f"evaluating {Path(label).name}"
    for group in track(groups, description=desc, transient=True, console=Console(stderr=True)):
        array, prepared = stack(group, target, batch)
        if reader is not None:
            out = reader.read(group[0].stem, tuple(array.shape))
        else:
            assert session is not None  # made above when there is no reader
            out = session.run([name], {target.name: array})[0]
        if out.ndim == 3:
            out = out[:, None]
        if out.shape[0] < len(group):
            raise SegcError(f"output {name!r} has batch {out.shape[0]} for {len(group)} images (give --batch)")
        for slot, (sample, prep) in enumerate(zip(group, prepared, strict=False)):
            yield sample, out[slot], prep.original_hw


def evaluate_model(path: str, recipe: Recipe, dataset: Dataset, batch: int, outputs_dir: str | None,
                   save_dir: Path | None) -> Evaluation:
    model = load_model(path)
    target = model_input(model, recipe)
    check_batch(batch, target)
    spec = output_spec(recipe)
    index, name = chosen_output(model, spec)
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    if recipe.task == "segmentation":
        from PIL import Image

        counts = seg_metrics.SegCounts(recipe.num_classes or 19)
        for sample, out, _ in _outputs(path, model, target, dataset, batch, index, name, outputs_dir):
            assert sample.label is not None  # load_dataset(need_labels=True) checked
            gt = seg_metrics.label_ids_to_train_ids(np.asarray(Image.open(sample.label)))
            pred = seg_metrics.prediction_at(out, spec.kind, gt.shape, spec.align_corners)
            counts.add(pred, gt)
            if save_dir is not None:
                Image.fromarray(np.where((pred >= 0) & (pred < 255), pred, 255).astype(np.uint8)).save(
                    save_dir / f"{sample.stem}.png")
        metrics = seg_metrics.summarise(counts).to_dict()
    else:
        counts_d = det_metrics.DetCounts()
        for sample, out, hw in _outputs(path, model, target, dataset, batch, index, name, outputs_dir):
            found = detect_text(out.reshape(out.shape[-2:]), hw)
            counts_d.add(sample.boxes or (), [d.points for d in found])
            if save_dir is not None:
                lines = [",".join(str(int(v)) for p in d.points for v in p) for d in found]
                write_text(save_dir / f"res_{sample.stem}.txt", "".join(line + "\n" for line in lines))
        metrics = det_metrics.summarise(counts_d).to_dict()
    return Evaluation(path, str(outputs_dir) if outputs_dir else "onnxruntime", metrics)


def drops(a: Evaluation, b: Evaluation, task: str) -> dict[str, Any]:
    if task == "segmentation":
        per: dict[str, float | None] = {}
        for name, va in a.metrics["per_class"].items():
            vb = b.metrics["per_class"].get(name)
            per[name] = None if va is None or vb is None else va - vb
        return {"miou": a.metrics["miou"] - b.metrics["miou"], "aacc": a.metrics["aacc"] - b.metrics["aacc"],
                "per_class": per}
    return {k: a.metrics[k] - b.metrics[k] for k in ("precision", "recall", "hmean")}


def run_evaluate(args: argparse.Namespace) -> int:
    require_data_extra()
    model_a = load_model(args.model)
    recipe = recipe_for(model_a, args.recipe)
    if args.compare_outputs and not args.compare:
        raise SegcError("--compare-outputs needs --compare MODEL_B")
    budget = parse_budget(args.budget, recipe.task, bool(args.compare))
    dataset = load_dataset(args.dataset, need_labels=True)
    if dataset.task != recipe.task:
        raise SegcError(f"--dataset {dataset.kind} is for {dataset.task}, but recipe {recipe.name!r} is {recipe.task}")
    check_batch(args.batch, model_input(model_a, recipe))
    if args.compare:
        model_input(load_model(args.compare), recipe)  # B's input must fit the recipe too, before any work
    for folder in (args.from_outputs, args.compare_outputs):
        if folder and not Path(folder).is_dir():
            raise SegcError(f"outputs folder {folder}: no such folder")
    out = Path(args.outdir) if args.outdir else Path(args.model).with_suffix(".eval")
    if out.exists() and not out.is_dir():
        raise SegcError(f"-o {out}: exists and is not a folder")
    save = Path(args.save_predictions) if args.save_predictions else None

    a = evaluate_model(args.model, recipe, dataset, args.batch, args.from_outputs, save)
    b = None
    if args.compare:
        b = evaluate_model(args.compare, recipe, dataset, args.batch, args.compare_outputs,
                           save / "compare" if save else None)
    report: dict[str, object] = {"task": recipe.task, "recipe": recipe.name, "dataset": args.dataset,
                                 "images": len(dataset.samples), "model": _entry(a)}
    report.update({k: v for k, v in a.metrics.items() if k != "images"})  # miou/aacc/per_class or hmean... at the top
    exceeded = False
    if b is not None:
        drop = drops(a, b, recipe.task)
        report["compare"] = _entry(b) | {"drop": drop}
        if budget is not None:
            value = float(drop["miou" if budget.key == "miou_drop" else "hmean"])
            exceeded = value > budget.limit
            report["budget"] = {"key": budget.key, "limit": budget.limit, "drop": value, "exceeded": exceeded}
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_nan_to_none(report), indent=2) + "\n"  # NaN (no class present) is null in JSON
    write_text(out / "report.json", text)
    from segc.eval_report import write_report_md

    write_report_md(out, report)
    if args.json:
        print(text, end="")
    else:
        print(_summary(report, out))
    return 1 if exceeded else 0


def _entry(e: Evaluation) -> dict[str, object]:
    return {"path": e.model, "source": e.source, "metrics": e.metrics}


def _nan_to_none(obj: object) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _summary(report: dict[str, Any], out: Path) -> str:
    def fig(m: dict[str, Any]) -> str:
        if "miou" in m:
            return f"mIoU {m['miou']:.2f}  aAcc {m['aacc']:.2f}"
        return f"precision {m['precision']:.4f}  recall {m['recall']:.4f}  hmean {m['hmean']:.4f}"

    lines = [f"{report['model']['path']}: {fig(report['model']['metrics'])}"]
    if "compare" in report:
        lines.append(f"{report['compare']['path']}: {fig(report['compare']['metrics'])}")
    if "budget" in report:
        b = report["budget"]
        lines.append(
            f"{b['key']} {b['drop']:.4g} vs budget {b['limit']:g}: {'EXCEEDED' if b['exceeded'] else 'within'}"
        )
    lines.append(f"report: {out}/report.md, {out}/report.json")
    return "\n".join(lines)
