"""report.md and the per-class IoU bar chart of ``segc evaluate`` (report.json holds the figures).

The chart is what a reviewer looks at first when a build loses a point of mIoU: which
classes paid for it (thin classes such as pole and traffic light suffer first from nearest
upsampling). matplotlib with the Agg backend, so no display is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segc.outdir import write_text


def _f(v: object, digits: int = 2) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{float(v):.{digits}f}"


def write_report_md(out: Path, report: dict[str, Any]) -> None:
    a = report["model"]
    b = report.get("compare")
    lines = [f"# segc evaluate: {report['recipe']} on {report['dataset']}", "",
             f"{report['images']} images, task {report['task']}.", ""]
    heads = ["", f"`{Path(a['path']).name}` ({a['source']})"] + (
        [f"`{Path(b['path']).name}` ({b['source']})", "drop"] if b else []
    )
    lines += ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    if report["task"] == "segmentation":
        keys, digits = ["miou", "aacc"], 2
    else:
        keys, digits = ["precision", "recall", "hmean"], 4
    for k in keys:
        row = [f"**{k}**", _f(a["metrics"][k], digits)]
        if b:
            row += [_f(b["metrics"][k], digits), _f(b["drop"][k], digits)]
        lines.append("| " + " | ".join(row) + " |")
    if report["task"] == "segmentation":
        for name, v in a["metrics"]["per_class"].items():
            row = [name, _f(v)]
            if b:
                row += [_f(b["metrics"]["per_class"].get(name)), _f(b["drop"]["per_class"].get(name))]
            lines.append("| " + " | ".join(row) + " |")
        if _chart(out / "per_class_iou.png", report):
            lines += ["", "![per-class IoU](per_class_iou.png)"]
    if "budget" in report:
        bud = report["budget"]
        lines += ["", f"Budget {bud['key']} <= {bud['limit']:g}: drop {bud['drop']:.4g}, "
                      f"**{'exceeded' if bud['exceeded'] else 'within budget'}**."]
    write_text(out / "report.md", "\n".join(lines) + "\n")


def _chart(path: Path, report: dict[str, Any]) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # the chart is a convenience; the table says the same
        return False
    names = list(report["model"]["metrics"]["per_class"])
    series = [(Path(report["model"]["path"]).name, report["model"]["metrics"]["per_class"])]
    if "compare" in report:
        series.append((Path(report["compare"]["path"]).name, report["compare"]["metrics"]["per_class"]))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.55), 4))
    for i, (label, per) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [per[n] or 0.0 for n in names], width, label=label)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
