"""``segc batch``'s manifest: a TOML file naming models, targets and option sets.

Why a manifest and not a shell loop: a zoo is hundreds of models x four vendors x a few
variants, and every seed guide is a person typing the same ``segc compile`` for each. The
manifest says it once; :func:`expand` turns it into cells, one ``segc compile`` each, whose
flags are resolved here, so the cache (batch_run) and the results (batch_results) see exactly
the command a cell runs.

    targets = ["onnxruntime", "ascend"]
    timeout = 1800                     # seconds per cell (optional)

    [defaults]                         # every cell (optional)
    verify = "end"

    [option_sets.fp16]                 # option sets (optional; none = one unnamed set)
    precision = "fp16"

    [[model]]
    path = "models/tiny.onnx"          # relative to the manifest
    input_shapes = ["x:1,3,64,64"]
    [model.per_target.ascend]          # this model, this target only
    batch = [1, 4]

    [[model]]
    zoo = "dbnet_r50"                  # a seed model, exported once by segc batch
    export = { shape = "1,3,640,640", static = true }

Precedence, lowest first: ``[defaults]``, the model's keys, its ``per_target`` table, the
option set. The option set wins because it is the variant the cell is named for (a cell in
``fp16/`` is fp16 whatever the model's default). Lists replace, never append.

Errors are one line, ``segc: error: MANIFEST: ...`` (exit 2), before any compile starts.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from segc.errors import SegcError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class _Key:
    """One manifest key and the ``segc compile`` flag it becomes."""

    flag: str
    kind: str  # str | int | bool | csv (a list joined by commas) | repeat (the flag once per item)
    choices: tuple[str, ...] = ()


# The compile flags a manifest may set. Paths (--verify-inputs, --calib-images) are relative
# to the manifest, like a model's ``path``.
COMPILE_KEYS: dict[str, _Key] = {
    "recipe": _Key("--recipe", "str"),
    "input_shapes": _Key("--input-shape", "repeat"),
    "opt_shapes": _Key("--opt-shape", "repeat"),
    "batch": _Key("--batch", "csv"),
    "precision": _Key("--precision", "str", ("fp32", "fp16", "int8")),
    "passes": _Key("--passes", "csv"),
    "skip": _Key("--skip", "csv"),
    "pass_options": _Key("--option", "repeat"),  # ["resize_to_nearest.preset=hrnet_branches"]
    "outputs": _Key("--outputs", "csv"),
    "no_prune": _Key("--no-prune", "bool"),
    "nearest_resize": _Key("--nearest-resize", "csv"),
    "verify": _Key("--verify", "str", ("each", "each-full", "end", "none")),
    "verify_inputs": _Key("--verify-inputs", "path"),
    "verify_data": _Key("--verify-data", "str"),  # KIND:ROOT, as on the command line
    "budget": _Key("--budget", "str"),
    "tolerance": _Key("--tolerance", "repeat"),
    "pixel_budget": _Key("--pixel-budget", "int"),
    "seed": _Key("--seed", "int"),
    "calib_images": _Key("--calib-images", "path"),
    "calib_samples": _Key("--calib-samples", "int"),
    "allow_unlisted_ops": _Key("--allow-unlisted-ops", "bool"),
}

# ``export = {...}`` of a zoo model: the ``segc export`` flags.
EXPORT_KEYS: dict[str, _Key] = {
    "shape": _Key("--shape", "str"),
    "static": _Key("--static", "bool"),
    "dynamic": _Key("--dynamic", "bool"),
    "opset": _Key("--opset", "int"),
    "exporter": _Key("--exporter", "str", ("legacy", "dynamo")),
    "logits": _Key("--logits", "bool"),
    "seed": _Key("--seed", "int"),
    "weights": _Key("--weights", "path"),
}

_TOP_KEYS = {"targets", "timeout", "defaults", "option_sets", "model"}
_MODEL_KEYS = {"name", "path", "zoo", "export", "targets", "per_target", "timeout"}


@dataclass(frozen=True)
class Settings:
    """Resolved compile keys (manifest key -> value), in one layer of the precedence."""

    values: dict[str, Any] = field(default_factory=dict)

    def over(self, other: "Settings") -> "Settings":
        """These settings with ``other``'s on top."""
        return Settings({**self.values, **other.values})

    def argv(self, target: str) -> tuple[str, ...]:
        """The ``segc compile`` flags for a cell of ``target``, in COMPILE_KEYS order, then the
        target's own keys (so equal settings give equal argv). A target's key set above
        ``per_target`` (``[defaults]``, the model, an option set) reaches only the cells of the
        targets that own it: ``soc`` in ``[defaults]`` goes to the ascend and magicmind cells."""
        own = {k: spec for k, (spec, owners) in target_keys().items() if target in owners}
        return _flags(self.values, COMPILE_KEYS) + _flags(self.values, own)


def target_keys() -> dict[str, tuple[_Key, tuple[str, ...]]]:
    """Manifest keys of the targets' own flags (``Target.flags``): key -> (its flag, the owners)."""
    from segc.targets.base import target_flags

    return {spec.dest: (_Key(spec.flag, spec.kind, spec.choices), owners) for spec, owners in target_flags().values()}


@dataclass(frozen=True)
class ZooSource:
    """A seed model that ``segc batch`` exports first: ``segc export NAME <export_argv>``."""

    name: str
    export_argv: tuple[str, ...]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path | None  # an ONNX file (absolute), or None for a zoo model
    zoo: ZooSource | None
    settings: Settings
    per_target: dict[str, Settings]
    targets: tuple[str, ...]
    timeout: float | None


@dataclass(frozen=True)
class OptionSet:
    name: str | None  # None: the one unnamed set of a manifest without [option_sets]
    settings: Settings


@dataclass(frozen=True)
class Manifest:
    path: Path
    targets: tuple[str, ...]
    defaults: Settings
    option_sets: tuple[OptionSet, ...]
    models: tuple[ModelEntry, ...]
    timeout: float | None


@dataclass(frozen=True)
class Cell:
    """One ``segc compile``: a model for a target with an option set."""

    model: str
    target: str
    option_set: str | None
    compile_flags: tuple[str, ...]  # every flag but the input and -o: what the cache keys on
    timeout: float | None

    @property
    def rel_outdir(self) -> Path:
        """``<model>/<target>[/<option set>]`` under the batch's output folder."""
        p = Path(self.model) / self.target
        return p / self.option_set if self.option_set else p

    @property
    def label(self) -> str:
        return "/".join(self.rel_outdir.parts)


def load_manifest(path: str | Path) -> Manifest:
    """Parse and validate ``path``; SegcError (one line, naming the file) on any mistake."""
    path = Path(path)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SegcError(f"{where}: no such manifest") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SegcError(f"{where}: cannot read the manifest: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SegcError(f"{where}: not valid TOML: {exc}") from None
    return parse_manifest(data, path)


def parse_manifest(data: dict[str, Any], path: Path) -> Manifest:
    """Validate parsed TOML; errors name ``path`` as the user gave it."""

    def fail(msg: str) -> SegcError:
        return SegcError(f"{path}: {msg}")

    base = path.resolve().parent
    _unknown(data, _TOP_KEYS, "top level", fail)
    from segc.targets.base import all_targets

    known_targets = list(all_targets())
    targets = _str_list(data.get("targets"), "targets", fail)
    if not targets:
        raise fail("`targets` must list at least one target, e.g. targets = [\"onnxruntime\", \"ascend\"]")
    for t in targets:
        if t not in known_targets:
            raise fail(f"unknown target {t!r} in `targets`; known targets: {', '.join(known_targets)}")
    if len(set(targets)) != len(targets):
        raise fail("`targets` names a target twice")
    defaults = _settings(data.get("defaults", {}), "[defaults]", base, fail)

    sets_data = data.get("option_sets", {})
    if not isinstance(sets_data, dict):
        raise fail("`option_sets` must be a table of option sets, e.g. [option_sets.fp16]")
    option_sets = []
    for name, table in sets_data.items():
        if not _NAME.match(name):
            raise fail(f"option set name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
        if name in targets:
            raise fail(f"option set {name!r} has a target's name; rename it")
        option_sets.append(OptionSet(name, _settings(table, f"[option_sets.{name}]", base, fail)))
    if not option_sets:
        option_sets.append(OptionSet(None, Settings()))

    models_data = data.get("model", [])
    if not isinstance(models_data, list) or not models_data:
        raise fail("no [[model]] entries: add one with `path = \"model.onnx\"` or `zoo = \"dbnet_r50\"`")
    models: list[ModelEntry] = []
    for i, m in enumerate(models_data):
        models.append(_model(m, i, base, targets, known_targets, fail))
    seen: set[str] = set()
    for m in models:
        if m.name in seen:
            raise fail(f"two [[model]] entries are named {m.name!r}; give one a `name`")
        seen.add(m.name)
    return Manifest(path.resolve(), tuple(targets), defaults, tuple(option_sets), tuple(models),
                    _timeout(data.get("timeout"), "timeout", fail))


def expand(manifest: Manifest) -> list[Cell]:
    """model x target x option set, each with its resolved ``segc compile`` flags."""
    cells = []
    for m in manifest.models:
        for target in m.targets:
            for opt in manifest.option_sets:
                own = m.per_target.get(target, Settings())
                settings = manifest.defaults.over(m.settings).over(own).over(opt.settings)
                cells.append(Cell(m.name, target, opt.name, settings.argv(target), m.timeout or manifest.timeout))
    return cells


def _model(
    m: Any, i: int, base: Path, targets: list[str], known_targets: list[str], fail: Callable[[str], SegcError]
) -> ModelEntry:
    where = f"[[model]] #{i + 1}"
    if not isinstance(m, dict):
        raise fail(f"{where} must be a table")
    has_path, has_zoo = "path" in m, "zoo" in m
    if has_path == has_zoo:
        raise fail(f"{where} needs exactly one of `path` (an ONNX file) or `zoo` (a seed model name)")
    settings_data = {k: v for k, v in m.items() if k not in _MODEL_KEYS}
    path = zoo = None
    if has_path:
        if not isinstance(m["path"], str):
            raise fail(f"{where}: `path` must be a string")
        path = (base / m["path"]).resolve()
        if not path.is_file():
            raise fail(f"{where}: model file {m['path']!r} not found (paths are relative to the manifest)")
        if "export" in m:
            raise fail(f"{where}: `export` is for zoo models only")
        default_name = path.stem
    else:
        from segc.models.zoo import model_names

        name = m["zoo"]
        if name not in model_names():
            raise fail(f"{where}: unknown zoo model {name!r}; known models: {', '.join(model_names())}")
        export = m.get("export", {})
        if not isinstance(export, dict):
            raise fail(f'{where}: `export` must be a table, e.g. export = {{ shape = "1,3,640,640" }}')
        _unknown(export, set(EXPORT_KEYS), f"{where} export", fail)
        for k, v in export.items():
            _check_value(k, v, EXPORT_KEYS[k], f"{where} export", fail)
        if export.get("static") and export.get("dynamic"):
            raise fail(f"{where} export: `static` and `dynamic` contradict each other")
        resolved = {k: str((base / v).resolve()) if EXPORT_KEYS[k].kind == "path" else v for k, v in export.items()}
        zoo = ZooSource(name, _flags(resolved, EXPORT_KEYS))
        default_name = name
    name = m.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise fail(f"{where}: model name {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    where = f"model {name!r}"
    model_targets = targets
    if "targets" in m:
        model_targets = _str_list(m["targets"], f"{where} targets", fail)
        for t in model_targets:
            if t not in targets:
                raise fail(f"{where}: target {t!r} is not in the manifest's `targets` ({', '.join(targets)})")
    per_target_data = m.get("per_target", {})
    if not isinstance(per_target_data, dict):
        raise fail(f"{where}: `per_target` must be a table of targets, e.g. [model.per_target.ascend]")
    per_target = {}
    for t, table in per_target_data.items():
        if t not in known_targets:
            raise fail(f"{where}: unknown target {t!r} in per_target; known targets: {', '.join(known_targets)}")
        per_target[t] = _settings(table, f"{where} per_target.{t}", base, fail, target=t)
    return ModelEntry(
        name,
        path,
        zoo,
        _settings(settings_data, where, base, fail),
        per_target,
        tuple(model_targets),
        _timeout(m.get("timeout"), f"{where} timeout", fail),
    )


def _settings(
    table: Any, where: str, base: Path, fail: Callable[[str], SegcError], target: str | None = None
) -> Settings:
    """One layer's keys: segc compile's shared keys and the targets' own (in a ``per_target``
    table only the keys of that ``target``)."""
    if not isinstance(table, dict):
        raise fail(f"{where} must be a table")
    owned = target_keys()
    if target is not None:
        for k in table:
            if k in owned and target not in owned[k][1]:
                raise fail(f"{where}: `{k}` is an option of target {' and '.join(owned[k][1])}, not of {target}")
    keys = {**COMPILE_KEYS, **{k: spec for k, (spec, _) in owned.items()}}
    _unknown(table, set(keys), where, fail)
    values = {}
    for k, v in table.items():
        spec = keys[k]
        _check_value(k, v, spec, where, fail)
        values[k] = str((base / v).resolve()) if spec.kind == "path" else v
    return Settings(values)


def _check_value(key: str, value: Any, spec: _Key, where: str, fail: Callable[[str], SegcError]) -> None:
    kind = spec.kind
    ok = {
        "str": isinstance(value, str) and value != "",
        "path": isinstance(value, str) and value != "",
        "int": isinstance(value, int) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "csv": isinstance(value, list)
        and bool(value)
        and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in value),
        "repeat": isinstance(value, list) and all(isinstance(x, str) for x in value),
    }[kind]
    if not ok:
        want = {
            "str": "a string",
            "path": "a path string",
            "int": "an integer",
            "bool": "true or false",
            "csv": "a non-empty list",
            "repeat": "a list of strings",
        }[kind]
        raise fail(f"{where}: `{key}` must be {want}, got {value!r}")
    if spec.choices and value not in spec.choices:
        raise fail(f"{where}: `{key}` = {value!r}; expected one of {', '.join(spec.choices)}")


def _flags(values: dict[str, Any], keys: dict[str, _Key]) -> tuple[str, ...]:
    out: list[str] = []
    for key, spec in keys.items():
        if key not in values:
            continue
        v = values[key]
        if spec.kind == "bool":
            out += [spec.flag] if v else []
        elif spec.kind == "csv":
            out += [spec.flag, ",".join(str(x) for x in v)]
        elif spec.kind == "repeat":
            for item in v:
                out += [spec.flag, item]
        else:
            out += [spec.flag, str(v)]
    return tuple(out)


def _unknown(table: dict[str, Any], allowed: set[str], where: str, fail: Callable[[str], SegcError]) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        import difflib

        hint = difflib.get_close_matches(extra[0], sorted(allowed), n=1)
        raise fail(
            f"{where}: unknown key {extra[0]!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known keys: {', '.join(sorted(allowed))}"
        )


def _str_list(value: Any, where: str, fail: Callable[[str], SegcError]) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise fail(f"`{where}` must be a list of strings")
    return list(value)


def _timeout(value: Any, where: str, fail: Callable[[str], SegcError]) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise fail(f"`{where}` must be a positive number of seconds, got {value!r}")
    return float(value)
