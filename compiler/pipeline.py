"""The pass pipeline: run passes in order, verify them, and say exactly which one broke what.

Verification modes (DESIGN.md):

- ``each``: every pass that changed the graph is judged against the state before it.
- ``end``: the final graph is judged once against the input; on failure the pass list is
  bisected (each probe judges a prefix of the pipeline against the input) to name the first
  pass that breaks the model. Cheaper when everything passes, which is the common case.
- ``none``: no onnxruntime at all.

Instruments see each pass before and after it runs (timing, progress, IR dumps), in the
spirit of TVM's pass instruments, so none of that is woven into the passes themselves.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx

from segc.errors import SegcError
from segc.metrics import Verdict
from segc.passbase import Contract, GraphPass, PassContext, PassResult, get_pass
from segc.recipe import Recipe
from segc.verify import GraphState, Verifier

VERIFY_MODES = ("each", "end", "none")


@dataclass
class PassSpec:
    """A pass to run and its options (already merged from target, recipe and command line)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassRecord:
    """Everything the report says about one pass."""

    index: int
    name: str
    contract: str
    options: dict[str, Any]
    changed: bool = False
    seconds: float = 0.0
    verify_seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verdict: Verdict | None = None
    status: str = "pending"  # ok | unchanged | unverified | failed | error | skipped
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "contract": self.contract,
            "options": self.options,
            "changed": self.changed,
            "seconds": round(self.seconds, 4),
            "verify_seconds": round(self.verify_seconds, 4),
            "stats": self.stats,
            "notes": self.notes,
            "status": self.status,
            "error": self.error,
            "verdict": self.verdict.to_dict() if self.verdict else None,
        }


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    records: list[PassRecord]
    verify_mode: str
    failed_pass: str | None = None
    failure: str | None = None
    end_verdict: Verdict | None = None
    bisect_probes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed_pass is None

    def passes_before(self, name: str | None) -> list[str]:
        names = [r.name for r in self.records]
        return names[: names.index(name)] if name in names else names


class Instrument:
    """Hooks around each pass. Subclasses override what they need."""

    def before_pass(self, record: PassRecord, model: onnx.ModelProto) -> None:
        pass

    def after_pass(self, record: PassRecord, model: onnx.ModelProto) -> None:
        pass


class DumpInstrument(Instrument):
    """Writes the graph after every pass to ``DIR/NN_<pass>.onnx`` (for diffing in Netron).

    ``protect`` is the input model (and its data): compiling a dump again with the same
    ``--dump-dir`` must not write over the file being compiled. ``segc.outdir.check_dump_dir``
    checks the same names before the first pass, so this is the last line of defence.
    """

    def __init__(self, directory: str | Path, protect: Sequence[Path] = ()) -> None:
        self.directory = Path(directory)
        self.protect = list(protect)

    @staticmethod
    def file_name(index: int, name: str) -> str:
        return f"{index:02d}_{name}.onnx"

    def after_pass(self, record: PassRecord, model: onnx.ModelProto) -> None:
        from segc.modelio import save_model

        save_model(model, self.directory / self.file_name(record.index, record.name), protect=self.protect)


def contract_of(pass_obj: GraphPass, options: dict[str, Any]) -> Contract:
    """A pass's contract; a pass whose contract depends on its options says so via ``contract_for``."""
    contract_for = getattr(pass_obj, "contract_for", None)
    return contract_for(options) if callable(contract_for) else pass_obj.contract


def tolerances_of(pass_obj: GraphPass, options: dict[str, Any]) -> dict[str, float]:
    """A pass's own tolerance defaults (``tolerance_for(options)``), e.g. for noisier rewrites."""
    tolerance_for = getattr(pass_obj, "tolerance_for", None)
    return dict(tolerance_for(options) or {}) if callable(tolerance_for) else {}


def combined_contract(contracts: list[Contract]) -> Contract:
    """How to judge several passes at once: approximate if any is, else exact."""
    return Contract.APPROXIMATE if Contract.APPROXIMATE in contracts else Contract.EXACT


def _instantiate(specs: list[PassSpec]) -> list[GraphPass]:
    """Resolve every pass and check its options before anything runs (fail fast, exit 2)."""
    passes = []
    for spec in specs:
        cls = get_pass(spec.name)
        unknown = sorted(set(spec.options) - set(cls.options))
        if unknown:
            accepted = ", ".join(sorted(cls.options)) or "none"
            raise SegcError(f"pass {spec.name} has no option {', '.join(unknown)}; it accepts: {accepted}")
        passes.append(cls())
    return passes


def _pin_outputs(model: onnx.ModelProto, specs: list[PassSpec], verifier: Verifier | None) -> list[PassSpec]:
    """Resolve ``prune_outputs`` selectors on the input model, and have the verifier watch them.

    The user chose the outputs looking at the input model, so that is where the selectors
    are resolved (to tensor names, before any pass). The verifier then compares those
    tensors at every step (every bisection probe, in ``end`` mode): a pass that keeps a
    tensor's name but changes its value, as onnxsim folding a bias Add into a ConvTranspose
    does, fails at that pass instead of handing the user post-bias values.
    """
    from segc.passes.prune_outputs import pin_selectors

    pinned = []
    for spec in specs:
        if spec.name == "prune_outputs" and spec.options.get("outputs") and not spec.options.get("pinned"):
            names = pin_selectors(model, spec.options["outputs"])
            spec = PassSpec(spec.name, {**spec.options, "outputs": names, "pinned": True})
            if verifier is not None:
                verifier.watch = tuple(dict.fromkeys([*verifier.watch, *names]))
        pinned.append(spec)
    return pinned


def _write_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> onnx.ModelProto:
    if not metadata:
        return model
    current = {p.key: p.value for p in model.metadata_props}
    if all(current.get(k) == v for k, v in metadata.items()):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    current.update(metadata)
    del out.metadata_props[:]
    for key, value in current.items():
        out.metadata_props.add(key=key, value=value)
    return out


def run_pipeline(model: onnx.ModelProto, specs: list[PassSpec], *, target: str | None = None,
                 recipe: Recipe | None = None, verify: str = "each", verifier: Verifier | None = None,
                 instruments: list[Instrument] = (), source: Path | None = None) -> PipelineResult:
    """Run ``specs`` over ``model``; never raises for a broken pass, the result says which.

    ``source``: the file ``model`` was read from (self-contained, no external data); passes
    see it in ``ctx.source`` for as long as the model is still exactly that file.
    """
    if verify not in VERIFY_MODES:
        raise SegcError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    if verify != "none" and verifier is None:
        verifier = Verifier(recipe=recipe)
    passes = _instantiate(specs)
    specs = _pin_outputs(model, specs, verifier)
    records = [PassRecord(i, s.name, contract_of(p, s.options).value, dict(s.options)) for i, (s, p) in enumerate(zip(specs, passes))]
    result = PipelineResult(model=model, records=records, verify_mode=verify)

    state: GraphState | None = verifier.initial_state(model) if verify != "none" and verifier else None
    reference = state
    history: list[onnx.ModelProto] = [model]
    for spec, pass_obj, record in zip(specs, passes, records):
        for inst in instruments:
            inst.before_pass(record, result.model)
        ctx = PassContext(options=dict(spec.options), target=target, recipe=recipe,
                          source=source if result.model is model else None)
        started = time.perf_counter()
        try:
            new_model, outcome = pass_obj.apply(result.model, ctx)
            with_meta = _write_metadata(new_model, ctx.metadata)
            if with_meta is not new_model and not outcome.changed:
                # metadata is not a graph change (nothing to re-verify), but say it happened
                outcome.notes.append(f"stored metadata: {', '.join(sorted(ctx.metadata))}")
            new_model = with_meta
        except SegcError:
            raise
        except Exception as exc:  # noqa: BLE001 - a crashing pass is a pipeline failure, reported as such
            record.seconds = time.perf_counter() - started
            record.status = "error"
            record.error = f"{type(exc).__name__}: {exc}"
            record.notes.append(traceback.format_exc(limit=6))
            result.failed_pass = spec.name
            result.failure = f"pass {spec.name} raised {record.error}"
            return result
        record.seconds = time.perf_counter() - started
        _take(record, outcome)
        if verify == "each" and outcome.changed and verifier is not None and state is not None:
            t0 = time.perf_counter()
            after = verifier.new_state(new_model, f"after {spec.name}")
            record.verdict = verifier.compare(state, after, Contract(record.contract), tolerances_of(pass_obj, spec.options))
            record.verify_seconds = time.perf_counter() - t0
            record.status = record.verdict.status
            if not record.verdict.ok:
                result.model = new_model
                result.failed_pass = spec.name
                result.failure = f"pass {spec.name} failed verification ({record.contract}): {'; '.join(record.verdict.reasons[:3])}"
                for inst in instruments:
                    inst.after_pass(record, new_model)
                return result
            state = after
        elif not outcome.changed:
            record.status = "unchanged"
        else:
            record.status = "unverified" if verify == "none" else "ok"
        result.model = new_model
        if verify == "end" and outcome.changed:
            history.append(new_model)  # history[k]: the model after the k-th *changing* pass
        for inst in instruments:
            inst.after_pass(record, new_model)

    pass_tolerances = {r.index: tolerances_of(p, s.options) for r, p, s in zip(records, passes, specs)}
    if verify == "end" and verifier is not None and reference is not None and len(history) > 1:
        _verify_end(result, history, verifier, reference, pass_tolerances)
    return result


def _loosest(records: list[PassRecord], pass_tolerances: dict[int, dict[str, float]]) -> dict[str, float]:
    loosest: dict[str, float] = {}
    for r in records:
        for key, value in pass_tolerances.get(r.index, {}).items():
            loosest[key] = max(loosest.get(key, value), value)
    return loosest


def _take(record: PassRecord, outcome: PassResult) -> None:
    record.changed = outcome.changed
    record.stats = dict(outcome.stats)
    record.notes.extend(outcome.notes)


def _verify_end(result: PipelineResult, history: list[onnx.ModelProto], verifier: Verifier, reference: GraphState,
                pass_tolerances: dict[int, dict[str, float]]) -> None:
    """Judge the final graph against the input; on failure bisect to the first bad pass."""
    contracts = [Contract(r.contract) for r in result.records]
    changing = [r for r in result.records if r.changed]

    def probe(k: int) -> Verdict:
        state = verifier.new_state(history[k], f"after {changing[k - 1].name}")
        contract = combined_contract([Contract(r.contract) for r in changing[:k]])
        cut = any(r.contract == Contract.OUTPUTS.value for r in changing[:k])
        verdict = verifier.compare(reference, state, contract, _loosest(changing[:k], pass_tolerances), outputs_may_change=cut)
        result.bisect_probes.append({"passes": [r.name for r in changing[:k]], "ok": verdict.ok, "reasons": verdict.reasons[:3]})
        return verdict

    t0 = time.perf_counter()
    final = probe(len(changing))
    result.bisect_probes.clear()
    result.end_verdict = final
    if final.ok:
        for r in changing:
            r.status = final.status  # ok, or unverified when the input gave the outputs no signal
        return
    lo, hi = 1, len(changing)  # invariant: prefix hi fails; every prefix below lo passes
    while lo < hi:
        mid = (lo + hi) // 2
        if probe(mid).ok:
            lo = mid + 1
        else:
            hi = mid
    culprit = changing[hi - 1]
    culprit.status = "failed"
    for r in changing[: hi - 1]:
        r.status = "ok"
    result.records[culprit.index].verify_seconds = time.perf_counter() - t0
    result.failed_pass = culprit.name
    result.failure = (f"the pipeline failed verification ({combined_contract(contracts).value}); bisection names "
                      f"pass {culprit.name}: {'; '.join(final.reasons[:3])}")
