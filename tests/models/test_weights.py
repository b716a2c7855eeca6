"""segc.models.weights: checkpoints in every wrapper form load strictly; bad ones fail clearly.

The round trips use the real DBNet-R50 state dict (DB's own key names, 25M+ parameters), saved
in the forms that released checkpoints use: bare, nested under state_dict/model/net, and with
the DataParallel / FullModel / SegDetectorModel prefixes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import pytest

torch = pytest.importorskip("torch")

from segc.errors import SegcError  # noqa: E402
from segc.models.weights import load_weights, normalise_keys, read_checkpoint  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One PyTorch thread: OpenMP spinning on a shared 2-core machine slows 2 threads down."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dbnet() -> tuple["torch.nn.Module", dict[str, "torch.Tensor"]]:
    """One real DBNet-R50 and a copy of its (seeded) state dict as the checkpoint source."""
    from segc.models.zoo import build

    model = build("dbnet_r50", seed=1)
    source = {k: v.clone() for k, v in model.state_dict().items()}
    return model, source


@pytest.fixture(scope="module")
def decoder(dbnet) -> tuple["torch.nn.Module", dict[str, "torch.Tensor"]]:
    """DBNet's real SegDetector neck and heads (~3M parameters): the cheap round-trip subject.

    Writing the full 110 MB checkpoint once per wrapper form costs seconds each on a shared
    machine; the key handling under test is the same for any module.
    """
    model, _ = dbnet
    source = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    return model.decoder, source


def _scramble(model: "torch.nn.Module") -> None:
    """Zero every float tensor, so a test can tell that loading really wrote all of them."""
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.zero_()


def _prefixed(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {prefix + k: v for k, v in state.items()}


FORMS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "raw": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "meta": {"epoch": 160, "mmseg_version": "0.30"}},  # mmseg
    "model": lambda sd: {"model": sd, "epoch": 3},
    "net": lambda sd: {"net": sd},
    "module.": lambda sd: _prefixed(sd, "module."),  # DataParallel
    # HRNet-Semantic-Segmentation's FullModel: the loss's class weights ride along
    "model.+loss": lambda sd: {**_prefixed(sd, "model."), "loss.criterion.weight": torch.ones(19)},
    "model.module.": lambda sd: _prefixed(sd, "model.module."),  # MhLiao/DB SegDetectorModel
    "nested+prefix": lambda sd: {"state_dict": _prefixed(sd, "module."), "optimizer": {"lr": 0.01}},
}


def _round_trip(model: "torch.nn.Module", source: dict[str, Any], form: str, path: Path) -> None:
    torch.save(FORMS[form](source), path)
    _scramble(model)
    assert load_weights(model, path) is model
    loaded = model.state_dict()
    assert set(loaded) == set(source)
    for key, value in source.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("form", list(FORMS))
def test_round_trip_in_each_wrapper_form(form: str, decoder, tmp_path: Path) -> None:
    model, source = decoder
    _round_trip(model, source, form, tmp_path / "ckpt.pth")


def test_full_dbnet_checkpoint_in_db_form(dbnet, tmp_path: Path) -> None:
    """The whole model, as MhLiao/DB releases it (``model.module.`` + backbone/decoder keys)."""
    model, source = dbnet
    assert any(k.startswith("backbone.") for k in source) and any(k.startswith("decoder.") for k in source)
    _round_trip(model, source, "model.module.", tmp_path / "ic15_resnet50")


def test_old_checkpoint_without_batchnorm_counters_loads(decoder, tmp_path: Path) -> None:
    model, source = decoder
    old = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    assert len(old) < len(source)
    path = tmp_path / "old.pth"
    torch.save(old, path)
    load_weights(model, path)


def test_missing_keys_are_counted_and_named(decoder, tmp_path: Path) -> None:
    model, source = decoder
    dropped = [k for k in source if k.endswith(".weight")][:3]
    path = tmp_path / "missing.pth"
    torch.save({k: v for k, v in source.items() if k not in dropped}, path)
    with pytest.raises(SegcError) as err:
        load_weights(model, path)
    message = str(err.value)
    assert "3 missing" in message and dropped[0] in message
    assert "\n" not in message


def test_unexpected_keys_are_reported(decoder, tmp_path: Path) -> None:
    model, source = decoder
    path = tmp_path / "extra.pth"
    torch.save({**source, "head.extra.weight": torch.zeros(3)}, path)
    with pytest.raises(SegcError, match=r"1 unexpected \(head\.extra\.weight\)"):
        load_weights(model, path)


def test_wrong_shapes_are_reported_with_both_shapes(decoder, tmp_path: Path) -> None:
    model, source = decoder
    key = "binarize.0.weight"
    assert key in source
    bad = dict(source)
    bad[key] = torch.zeros(7, 7)
    path = tmp_path / "shape.pth"
    torch.save(bad, path)
    with pytest.raises(SegcError) as err:
        load_weights(model, path)
    assert "1 wrong shape" in str(err.value)
    assert f"{key} (7, 7) vs {tuple(source[key].shape)}" in str(err.value)


def test_truncated_checkpoint(tmp_path: Path) -> None:
    good = tmp_path / "good.pth"
    torch.save({"w": torch.randn(64, 64)}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SegcError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(truncated)


def test_text_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("epoch 10: mIoU 80.1\n")
    with pytest.raises(SegcError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)


@pytest.mark.parametrize("case", ["missing", "empty", "folder"])
def test_unreadable_paths(case: str, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "folder":
        path.mkdir()
    with pytest.raises(SegcError, match={"missing": "no such file", "empty": "empty", "folder": "folder"}[case]):
        read_checkpoint(path)


def test_checkpoint_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "best_miou": 0.8}, path)
    with pytest.raises(SegcError, match="no tensors found"):
        read_checkpoint(path)


def test_pickled_objects_need_explicit_trust(tmp_path: Path) -> None:
    """Old trainers saved their argparse Namespace beside the weights: not loadable safely."""
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.01)}, path)
    with pytest.raises(SegcError, match="cannot be read safely"):
        read_checkpoint(path)
    state = read_checkpoint(path, allow_pickle=True)
    assert list(state) == ["w"]


def test_prefix_kept_when_the_model_really_has_it() -> None:
    """A module whose own keys start with ``model.`` must not have them stripped."""
    expected = {"model.conv.weight", "model.conv.bias"}
    state = {"model.conv.weight": 1, "model.conv.bias": 2}
    assert normalise_keys(state, expected) == state
    # ... but a DataParallel copy of the same module is unwrapped down to those keys
    assert normalise_keys({"module." + k: v for k, v in state.items()}, expected) == state


@pytest.mark.parametrize("text", ["not weights", "hello world\n", "(lp0\nI1\na."])
def test_text_that_parses_as_pickle_opcodes_is_still_not_a_checkpoint(text: str, tmp_path: Path) -> None:
    """Some text starts with valid pickle opcodes; the message must not blame 'Python objects'."""
    path = tmp_path / "readme.md"
    path.write_text(text)
    with pytest.raises(SegcError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)
