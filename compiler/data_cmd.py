"""``segc data``: a dataset preprocessed into the files the on-device runners read.

The seed guides each wrote a preprocessing script that dumped every image as a raw ``.bin``
for msame / ais_bench / benchmark (Ascend), a Python infer (MagicMind) or trtexec. segc
writes the same from the recipe, so the device gets exactly the bytes ``segc evaluate``
feeds onnxruntime::

    DIR/bin/<stem>.bin      raw little-endian, the model's input dtype, NCHW [N,3,H,W]
                            (batch > 1: one file per batch, named after its first image)
    DIR/npy/<stem>.npy      the same array, for a Python infer (MagicMind, polygraphy scripts)
    DIR/inputs.info         benchmark.x86_64's info file: index, path, width, height per line
    DIR/manifest.json       which images each file holds, their original and input sizes

msame and ais_bench take ``--input DIR/bin``; trtexec ``--loadInputs=<name>:DIR/bin/<stem>.bin``.
Runners name their outputs ``<input stem>_<output index>.bin``, which ``segc evaluate
--from-outputs`` reads back.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from segc.datasets import Sample, load_dataset
from segc.errors import SegcError
from segc.modelio import load_model
from segc.outdir import write_file, write_text
from segc.preprocess import ModelInput, Prepared, model_input, preprocess, recipe_for, require_data_extra


@dataclass(frozen=True)
class InputFile:
    """One written input file and the images in it (padding slots repeat no image)."""

    stem: str
    images: tuple[str, ...]
    shape: tuple[int, ...]
    original_hw: tuple[tuple[int, int], ...]


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="the .onnx the inputs are for (its input name, dtype and recipe)")
    p.add_argument(
        "--dataset", required=True, metavar="KIND:ROOT", help="cityscapes:ROOT | icdar2015:ROOT | folder:ROOT"
    )
    p.add_argument("--recipe", help="zoo recipe name or FILE.toml (default: the model's metadata)")
    p.add_argument("-o", "--output", dest="outdir", required=True, help="output folder")
    p.add_argument("--batch", type=int, default=1, help="images per input file (needs a fixed input size)")
    p.add_argument("--force", action="store_true", help="write into a folder that already has files")


def batches(samples: Sequence[Sample], n: int) -> Iterator[tuple[Sample, ...]]:
    """The dataset in runner order: consecutive groups of ``n`` (the last may be short)."""
    for i in range(0, len(samples), n):
        yield tuple(samples[i:i + n])


def check_batch(batch: int, target: ModelInput) -> None:
    """Before any work: a size must be known, and a batch needs one size for all images."""
    if target.spec.resize is None:
        target.size_for(1, 1)  # raises when neither the recipe nor the model fixes H, W
    if batch < 1:
        raise SegcError(f"--batch {batch}: must be at least 1")
    if target.static_batch is not None and target.static_batch != batch:
        raise SegcError(
            f"--batch {batch}: the model's input {target.name!r} has a fixed batch of {target.static_batch}"
        )
    if batch > 1 and not (target.spec.resize and target.spec.resize.mode == "fixed") and target.static_hw is None:
        raise SegcError(f"--batch {batch}: images of different sizes cannot share a file; "
                        "the recipe must resize to a fixed size")


def stack(group: tuple[Sample, ...], target: ModelInput, batch: int) -> tuple[np.ndarray, list[Prepared]]:
    """One batch array; a short last batch is padded with zeros (the runner needs N images)."""
    prepared = [preprocess(s.image, target) for s in group]
    arrays = [p.array for p in prepared]
    if batch > 1 and len(arrays) < batch:
        arrays += [np.zeros_like(arrays[0])] * (batch - len(arrays))
    return np.ascontiguousarray(np.concatenate(arrays, axis=0)), prepared


def run_data(args: argparse.Namespace) -> int:
    require_data_extra()
    model = load_model(args.model)
    recipe = recipe_for(model, args.recipe)
    target = model_input(model, recipe)
    check_batch(args.batch, target)
    dataset = load_dataset(args.dataset)
    out = Path(args.outdir)
    if out.exists() and not out.is_dir():
        raise SegcError(f"-o {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not args.force:
        raise SegcError(f"-o {out}: the folder is not empty (--force writes into it)")
    (out / "bin").mkdir(parents=True, exist_ok=True)
    (out / "npy").mkdir(exist_ok=True)

    from rich.console import Console
    from rich.progress import track

    files: list[InputFile] = []
    groups = list(batches(dataset.samples, args.batch))
    for group in track(groups, description="preprocessing", transient=True, console=Console(stderr=True)):
        array, prepared = stack(group, target, args.batch)
        stem = group[0].stem
        # '<' makes the byte order explicit: the runners read little-endian
        write_file(out / "bin" / f"{stem}.bin", array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        np.save(out / "npy" / f"{stem}.npy", array)
        files.append(InputFile(stem, tuple(s.stem for s in group), tuple(array.shape),
                               tuple(p.original_hw for p in prepared)))
    info = "".join(f"{i} {(out / 'bin' / (f.stem + '.bin')).resolve()} {f.shape[3]} {f.shape[2]}\n"
                   for i, f in enumerate(files))
    write_text(out / "inputs.info", info)
    manifest = {"model": str(args.model), "recipe": recipe.name, "dataset": args.dataset, "input": target.name,
                "dtype": str(target.dtype), "batch": args.batch, "files": [asdict(f) for f in files]}
    write_text(out / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    print(f"{len(dataset.samples)} images -> {len(files)} input files in {out}/bin (.bin) and {out}/npy (.npy); "
          f"{out}/inputs.info, {out}/manifest.json")
    return 0
