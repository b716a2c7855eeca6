"""Load a trained checkpoint into one of segc's architectures, or say clearly why not.

Released checkpoints rarely hold a bare state dict. HRNet-Semantic-Segmentation saves its
``FullModel`` wrapper, so keys read ``model.conv1.weight`` next to the loss's
``loss.criterion.weight``; MhLiao/DB saves ``SegDetectorModel`` around a ``DataParallel``, so
keys read ``model.module.backbone.conv1.weight``; mmseg nests everything under ``state_dict``
next to ``meta``; other trainers use ``model`` or ``net``. This module peels those layers off
and then loads *strictly*: a silently half-loaded model exports fine and is wrong everywhere
after, which is the worst failure a compiler front-end can have.

Reading uses ``torch.load(weights_only=True)``: a checkpoint is untrusted input, and an
unrestricted unpickler runs arbitrary code. Only a caller that passes ``allow_pickle=True``
(having decided to trust the file) gets the unrestricted fallback.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from segc.errors import SegcError, first_line

if TYPE_CHECKING:  # torch is imported lazily: segc compile runs without it
    import torch

#: Where trainers nest the model's weights inside a checkpoint dict (checked in this order).
NESTING_KEYS: tuple[str, ...] = ("state_dict", "model_state_dict", "model", "net", "network")

#: Wrapper prefixes, longest first, so ``model.module.`` is not half-stripped as ``model.``.
WRAPPER_PREFIXES: tuple[str, ...] = ("model.module.", "module.model.", "module.", "model.")

#: Keys that belong to training wrappers, not to the network (dropped before loading).
NON_MODEL_PREFIXES: tuple[str, ...] = ("loss.", "criterion.", "model.loss.", "module.loss.")

#: How many key names a mismatch message lists per kind.
SHOWN_KEYS = 4


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, "torch.Tensor"]:
    """Read ``path`` and return the flat ``{name: tensor}`` state dict inside it.

    Raises SegcError for a missing file, a file that is not a PyTorch checkpoint (text, a
    truncated zip, an ONNX model...), and a checkpoint with no tensors in it.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise SegcError(f"--weights {path}: no such file")
    if path.is_dir():
        raise SegcError(f"--weights {path}: is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise SegcError(f"--weights {path}: the file is empty")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        restricted = "weights only" in str(exc).lower() or "weights_only" in str(exc)
        if not restricted or not _looks_like_checkpoint(path):
            # text can parse as a few pickle opcodes before the restricted unpickler balks
            raise SegcError(f"--weights {path}: not a readable PyTorch checkpoint (another format): "
                            f"{first_line(exc)[:200]}") from None
        if not allow_pickle:
            # A real checkpoint that stores arbitrary Python objects (optimizer state with
            # custom classes, configs...): refuse rather than run its pickle code.
            raise SegcError(
                f"--weights {path}: the checkpoint holds Python objects beyond tensors and cannot be read safely; "
                "re-save just the weights with torch.save(model.state_dict(), PATH)"
            ) from None
        obj = _load_unrestricted(path)
    except Exception as exc:  # noqa: BLE001 - this is the untrusted-input boundary
        # truncated zips (RuntimeError), text (KeyError on the pickle magic), other formats
        # (UnpicklingError, EOFError, UnicodeDecodeError...): all mean "not a checkpoint"
        raise SegcError(f"--weights {path}: not a readable PyTorch checkpoint (truncated or another format): "
                        f"{first_line(exc)[:200]}") from None
    state = _find_state_dict(obj)
    if state is None:
        raise SegcError(f"--weights {path}: no tensors found (expected a state dict, or one under "
                        f"{'/'.join(repr(k) for k in NESTING_KEYS[:4])})")
    return state


def _looks_like_checkpoint(path: Path) -> bool:
    """True for torch.save's zip container or a legacy pickle (protocol 2+ header byte)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as fh:
        head = fh.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _load_unrestricted(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any failure of an arbitrary pickle is bad input
        raise SegcError(f"--weights {path}: cannot read the checkpoint: {first_line(exc)[:200]}") from None


def _is_tensor(value: Any) -> bool:
    import torch

    return isinstance(value, torch.Tensor)


def _find_state_dict(obj: Any, depth: int = 0) -> dict[str, "torch.Tensor"] | None:
    """The tensors of the first plausible state dict in ``obj`` (nesting keys first)."""
    if depth > 3 or not isinstance(obj, Mapping):
        return None
    # a nested weights entry wins over stray top-level tensors (e.g. {"state_dict", "ema"})
    for key in NESTING_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            found = _find_state_dict(obj[key], depth + 1)
            if found:
                return found
    tensors = {str(k): v for k, v in obj.items() if _is_tensor(v)}
    return tensors or None


def _drop_non_model_keys(state: Mapping[str, Any]) -> dict[str, Any]:
    """Remove training-wrapper entries such as HRNet-Seg's ``loss.criterion.weight``."""
    return {k: v for k, v in state.items() if not k.startswith(NON_MODEL_PREFIXES)}


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any] | None:
    """``state`` with ``prefix`` removed from every key, or None if some key lacks it."""
    if not state or not all(k.startswith(prefix) for k in state):
        return None
    return {k[len(prefix):]: v for k, v in state.items()}


def normalise_keys(state: Mapping[str, Any], expected: set[str]) -> dict[str, Any]:
    """Strip wrapper prefixes so that the keys match ``expected`` best.

    Every sequence of up to three strips is tried (``module.model.`` is both a prefix and
    two). The winner has the largest overlap with the module's own keys, and among equals
    the fewest strips, so an architecture that really has a submodule called ``model`` is
    never mangled. When nothing overlaps at all, the most unwrapped form wins: its names
    make the clearest mismatch message.
    """
    start = _drop_non_model_keys(state)
    candidates: list[tuple[int, dict[str, Any]]] = [(0, start)]
    frontier = [start]
    for depth in range(1, 4):
        next_frontier = []
        for current in frontier:
            for prefix in WRAPPER_PREFIXES:
                stripped = _strip_prefix(current, prefix)
                if stripped is not None:
                    candidates.append((depth, stripped))
                    next_frontier.append(stripped)
        frontier = next_frontier
    best_overlap = max(len(expected.intersection(c)) for _, c in candidates)
    ranked = [(depth, c) for depth, c in candidates if len(expected.intersection(c)) == best_overlap]
    pick = max if best_overlap == 0 else min
    return pick(ranked, key=lambda item: item[0])[1]


def load_weights(module: "torch.nn.Module", path: str | Path, *, allow_pickle: bool = False) -> "torch.nn.Module":
    """Load the checkpoint at ``path`` into ``module`` strictly; returns ``module``.

    Accepts a raw state dict or one nested under ``state_dict``/``model``/``net``, with the
    wrapper prefixes ``module.``, ``model.`` or ``model.module.``. Raises SegcError listing
    the counts and the first few missing, unexpected and wrongly shaped keys on a mismatch.
    """
    return apply_state_dict(module, read_checkpoint(path, allow_pickle=allow_pickle), source=path)


def apply_state_dict(module: "torch.nn.Module", state: Mapping[str, "torch.Tensor"],
                     source: str | Path = "checkpoint") -> "torch.nn.Module":
    """Load an already read ``state`` (see ``read_checkpoint``) into ``module`` strictly.

    ``source`` only names the checkpoint in error messages.
    """
    import torch

    own = module.state_dict()
    state = normalise_keys(state, set(own))

    # Checkpoints from before PyTorch 0.4.1 have no BatchNorm step counters; they carry no
    # weights (eval mode never reads them), so keep the module's own instead of failing.
    for key, value in own.items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        raise SegcError(f"--weights {source}: does not fit {type(module).__name__}: " + _mismatch_summary(
            missing, unexpected, wrong_shape, len(own)))
    with torch.no_grad():
        module.load_state_dict(state, strict=True)
    return module


def _mismatch_summary(missing: list[str], unexpected: list[str], wrong_shape: list[str], total: int) -> str:
    """One line: counts, then the first few names of each kind."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
            parts.append(f"{len(keys)} {label} ({shown})")
    return "; ".join(parts) + f" [model has {total} keys]"
