"""Shared fixtures: seed models exported once per test session.

Exporting a full-size architecture takes seconds to minutes on two cores, so every test that
needs a seed model asks ``seed_onnx(name, shape=..., dynamic=...)`` and gets a cached file.
Tests that need the export path are skipped where torch is not installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest


@pytest.fixture(scope="session")
def seed_onnx(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``seed_onnx(name, **export_kwargs) -> Path`` exporting each distinct request once."""
    pytest.importorskip("torch")
    from segc.models.zoo import export_model

    cache: dict[tuple[Any, ...], Path] = {}
    root = tmp_path_factory.mktemp("seed_models")

    def get(name: str, **kwargs: Any) -> Path:
        key = (name, tuple(sorted(kwargs.items())))
        if key not in cache:
            path = root / f"{name}_{len(cache)}.onnx"
            export_model(name, path, **kwargs)
            cache[key] = path
        return cache[key]

    return get
