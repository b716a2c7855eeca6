"""Judge an approximate build on the task metric instead of a synthetic tolerance.

The OCRNet guide switched 14 Resizes to nearest and signed off because mIoU fell 0.78 points
(80.67 -> 79.89), under its 1-point budget; no elementwise tolerance on random inputs says
that. ``judge_on_dataset`` runs the reference and the candidate on a labelled dataset
(segc.evaluate_cmd) and compares the drop with a ``miou_drop=`` / ``hmean_drop=`` budget.
``segc compile --verify-data KIND:ROOT --budget miou_drop=1.0`` calls it once the pipeline
has run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from segc.datasets import load_dataset
from segc.errors import SegcError
from segc.recipe import Recipe


@dataclass(frozen=True)
class TaskJudgement:
    metric: str  # "miou" (percent) or "hmean" (fraction)
    before: float
    after: float
    drop: float
    limit: float
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def judge_on_dataset(reference: str | Path, candidate: str | Path, dataset: str, recipe: Recipe,
                     budget: str) -> TaskJudgement:
    """Evaluate both models in onnxruntime on ``dataset``; SegcError for bad input (before any run)."""
    from segc.evaluate_cmd import evaluate_model, parse_budget

    parsed = parse_budget(budget, recipe.task, compare=True)
    assert parsed is not None
    data = load_dataset(dataset, need_labels=True)
    if data.task != recipe.task:
        raise SegcError(f"--verify-data {data.kind} is for {data.task}, but recipe {recipe.name!r} is {recipe.task}")
    metric = "miou" if parsed.key == "miou_drop" else "hmean"
    before = float(evaluate_model(str(reference), recipe, data, 1, None, None).metrics[metric])
    after = float(evaluate_model(str(candidate), recipe, data, 1, None, None).metrics[metric])
    drop = before - after
    return TaskJudgement(metric, before, after, drop, parsed.limit, drop <= parsed.limit)
