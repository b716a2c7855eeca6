"""Per-pass time and verification figures of each seed pipeline (with verification on).

For every seed pipeline this exports the model at a moderate shape, runs ``segc compile``
with the model's recipe and ``--verify each``, and tabulates from report.json, per pass: time,
verification time, verdict, and the worst max relative error, cosine and label agreement.

    .venv/bin/python bench/pass_figures.py --out build/pass_figures

Random weights exaggerate the price of approximate passes (see docs/seed_pipelines.md), so
the HRNet pipelines get the loosened budget the seed-pipeline tests use; the figures are the
measured ones either way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SEGC = [sys.executable, "-m", "segc"]

#: (model, target, export shape, extra compile flags)
PIPELINES = [
    ("ocrnet_hrnetw18", "ascend", "1,3,256,512", ["--tolerance", "cosine=0.9,agreement=0.85"]),
    ("hrnet_w48_ocr", "ascend", "1,3,256,512", ["--tolerance", "cosine=0.9,agreement=0.5"]),
    ("deeplabv2_r101", "ascend", "1,3,256,512", []),
    ("dbnet_r50", "ascend", "1,3,640,640", ["--pixel-budget", "500000"]),
    ("dbnet_r50_dcn", "ascend", "1,3,640,640", ["--pixel-budget", "500000"]),
    ("dbnet_r50_dcn", "tensorrt", "1,3,640,640", ["--pixel-budget", "500000"]),
    ("dbnet_r50_dcn", "magicmind", "1,3,640,640", ["--pixel-budget", "500000", "--allow-unlisted-ops"]),
]


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="build/pass_figures")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        "| model | target | pass | contract | changed | time s | verify s | verdict | max rel err | cosine | "
        "agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, target, shape, flags in PIPELINES:
        onnx_path = out / f"{model}_{shape.replace(',', 'x')}.onnx"
        if not onnx_path.exists():
            subprocess.run([*SEGC, "export", model, "-o", str(onnx_path), "--shape", shape, "--force"], check=True)
        outdir = out / f"{model}.{target}"
        proc = subprocess.run(
            [*SEGC, "compile", str(onnx_path), "--target", target, "-o", str(outdir), "--force", *flags],
            capture_output=True,
            text=True,
        )
        report = json.loads((outdir / "report.json").read_text())
        print(f"{model} -> {target}: exit {proc.returncode}, shapes {report.get('verified_shapes')}", flush=True)
        for p in report["passes"]:
            s = (p.get("verdict") or {}).get("summary") or {}
            rows.append(
                f"| {model} | {target} | {p['name']} | {p['contract']} | {'yes' if p['changed'] else 'no'} | "
                f"{p['seconds']:.2f} | {p['verify_seconds']:.2f} | {p['status']} | {fmt(s.get('max_rel'), '.2g')} | "
                f"{fmt(s.get('cosine'), '.6f')} | {fmt(s.get('agreement'), '.4f')} |"
            )
    text = "\n".join(rows) + "\n"
    (out / "pass_figures.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
