"""The pass pipeline: run passes in order, verify them, and say exactly which one broke what.

Verification modes (docs/design.md, "Verification"):

- ``each``: every pass that changed the graph is judged against the state before it, at the
  boundary of the region it changed where that is sound (segc.boundary_verify).
- ``each-full``: the same, always on the whole model.
- ``end``: the final graph is judged once against the input; on failure the pass list is
  bisected (each probe judges a prefix of the pipeline against the input) to name the first
  pass that breaks the model. Cheaper when everything passes, which is the common case.
- ``none``: no onnxruntime at all.

Instruments see each pass before and after it runs (timing, progress, IR dumps), in the
spirit of TVM's pass instruments, so none of that is woven into the passes themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import onnx
import onnx_graphsurgeon as gs

from segc.errors import CrashRecord, SegcError, first_line
from segc.memory import release_memory
from segc.metrics import Verdict
from segc.pass_order import check_order
from segc.passbase import (Contract, GraphPass, ModelPass, OptionValue, Pass, PassContext, PassResult,
                           carry_model_fields, get_pass)
from segc.recipe import Recipe
from segc.gs_import import import_graph

if TYPE_CHECKING:
    # imported where a run verifies: a --verify none compile never loads the verifier's modules
    # (onnxruntime sessions, probe inputs, localisation; issue 11, tests/compiler/test_compile_imports.py)
    from segc.boundary_verify import BoundaryChecker
    from segc.verify import GraphState, Verifier

VERIFY_MODES = ("each", "each-full", "end", "none")


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
    status: str = "pending"  # ok | unchanged | unverified | failed | refused | error | skipped
    error: str | None = None
    verified_by: str | None = None  # "boundary" | "whole" under --verify each (segc.boundary_verify)
    region_nodes: int | None = None  # the changed region's size, when verified by boundary
    boundary_inputs: str | None = None  # "synthesized" | "reference": where the region's inputs came from

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
            "verified_by": self.verified_by,
            "region_nodes": self.region_nodes,
            "boundary_inputs": self.boundary_inputs,
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
    internal_error: CrashRecord | None = None  # set when a pass crashed (a bug, exit 70), with its traceback
    graph_imports: int = 0  # graph-surgeon round trips the run cost (see WorkingModel)
    graph_exports: int = 0

    @property
    def ok(self) -> bool:
        return self.failed_pass is None

    def passes_before(self, name: str | None) -> list[str]:
        names = [r.name for r in self.records]
        return names[: names.index(name)] if name in names else names


class Instrument:
    """Hooks around each pass. Subclasses override what they need.

    ``needs_model``: whether the hooks look at the model. Between consecutive graph passes
    the model lives as a graph-surgeon graph; an instrument that needs the ``ModelProto``
    (a dump) makes the pipeline export it after every pass, one that does not (progress)
    gets ``None`` and costs nothing.
    """

    needs_model: bool = True

    def before_pass(self, record: PassRecord, model: onnx.ModelProto | None) -> None:
        pass

    def after_pass(self, record: PassRecord, model: onnx.ModelProto | None) -> None:
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

    def after_pass(self, record: PassRecord, model: onnx.ModelProto | None) -> None:
        from segc.modelio import save_model

        if model is None:  # the pass failed: nothing new to write
            return

        save_model(model, self.directory / self.file_name(record.index, record.name), protect=self.protect)


def combined_contract(contracts: list[Contract]) -> Contract:
    """How to judge several passes at once: approximate if any is, else exact."""
    return Contract.APPROXIMATE if Contract.APPROXIMATE in contracts else Contract.EXACT


def _instantiate(specs: list[PassSpec]) -> list[Pass]:
    """Resolve every pass, coerce its options and check the order before anything runs (exit 2)."""
    passes = []
    for spec in specs:
        cls = get_pass(spec.name)
        cls.resolve_options(spec.options)
        passes.append(cls())
    check_order([s.name for s in specs])
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


@dataclass
class HandOver:
    """The input model given to :func:`run_pipeline` for keeps: it takes the model out, so
    once a pass has replaced it nothing holds the input's weights any more (a caller that
    passes a plain ``ModelProto`` keeps its own reference, and with it the memory)."""

    model: onnx.ModelProto | None

    def take(self) -> onnx.ModelProto:
        model, self.model = self.model, None
        if model is None:
            raise RuntimeError("HandOver.take() called twice")
        return model


class WorkingModel:
    """The model between passes: a ``ModelProto``, or a graph-surgeon graph not yet exported.

    A ``GraphPass`` runs on ``graph()``; the next graph pass
    gets the same graph, so a run of consecutive graph passes costs one import and, only when
    something needs a proto (a verifier session, a dump, a ``ModelPass``, the end), one
    export. Each export copies every weight, hundreds of MiB on hrnet_w48_ocr::

        before:  proto -import-> A -export-> proto -import-> B -export-> proto
        after:   proto -import-> A ---------------------> B -export-> proto

    Metadata a pass stores (``ctx.metadata``) is kept aside while the graph is newer than the
    proto and written on export, with the fields graph-surgeon drops (``carry_model_fields``).
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        self._proto: onnx.ModelProto | None = model  # None: the graph is newer
        self._graph: gs.Graph | None = None  # when set, the same model as _proto (or newer)
        self._base = model  # the proto the graph came from: its fields are carried on export
        self._metadata: dict[str, str] = {}  # stored by passes since the graph became newer
        self.imports = 0
        self.exports = 0

    @property
    def is_proto_current(self) -> bool:
        return self._proto is not None

    def proto(self) -> onnx.ModelProto:
        if self._proto is None:
            assert self._graph is not None
            out = gs.export_onnx(self._graph)
            self.exports += 1
            carry_model_fields(self._base, out)
            self._proto = _write_metadata(out, self._metadata)
            self._base, self._metadata = self._proto, {}
            # the graph still points into the proto it was imported from: dropping it frees
            # that copy of every weight now, not at the end of the run (a later graph pass
            # re-imports; constants stay lazy, so that costs no weight copy)
            self._drop_graph()
        return self._proto

    def _drop_graph(self) -> None:
        """Forget the graph and free what it kept alive, now.

        A graph-surgeon graph is a web of reference cycles (nodes <-> tensors), and its lazy
        constants point into the proto it was imported from; plain reference counting never
        frees it, so that proto (every weight: 270 MiB on hrnet_w48_ocr) would stay until
        the cyclic collector happens to run. ``release_memory`` collects and hands the pages back
        (``segc.memory``); ~20 ms on hrnet."""
        had = self._graph is not None
        self._graph = None
        if had:
            release_memory()

    def release(self) -> None:
        """End of the run: keep the final proto, free any graph."""
        self.proto()
        self._drop_graph()
        release_memory()  # whatever the passes freed goes back before the output is serialised

    def graph(self) -> gs.Graph:
        if self._graph is None:
            self._graph = import_graph(self.proto())
            self.imports += 1
            self._base = _model_fields(self.proto())  # not the proto: it may be freed once the graph changes
        return self._graph

    def metadata(self) -> dict[str, str]:
        current = {p.key: p.value for p in (self._proto if self._proto is not None else self._base).metadata_props}
        return {**current, **(self._metadata if self._proto is None else {})}

    def set_proto(self, model: onnx.ModelProto) -> None:
        """A ``ModelPass`` returned ``model``: any graph is now out of date."""
        if model is not self._proto:
            self._proto, self._base, self._metadata = model, model, {}
            self._drop_graph()
            release_memory()  # the old proto, and any graph a whole-model pass made of it and left

    def graph_changed(self) -> None:
        self._proto = None

    def after_crash(self) -> tuple[onnx.ModelProto, str | None]:
        """The model to keep after a pass raised, and a note when it is not the state before it.

        The shared graph may hold the crashed pass's partial rewrite: it is exported as it is
        (the run is reported as failed either way, the model is kept for diagnosis)."""
        if self._proto is not None:
            return self._proto, None
        try:
            return self.proto(), "the model kept includes whatever the crashed pass had rewritten"
        except Exception as exc:  # noqa: BLE001 - a half-rewritten graph may not export
            return self._base, f"the graph could not be exported after the crash ({type(exc).__name__}): no model kept"

    def store_metadata(self, metadata: dict[str, str]) -> bool:
        """Record a pass's metadata; True if it changed what the model carries."""
        if not metadata or all(self.metadata().get(k) == v for k, v in metadata.items()):
            return False
        if self._proto is not None:
            self._proto = self._base = _write_metadata(self._proto, metadata)
        else:
            self._metadata.update(metadata)
        return True


def _model_fields(model: onnx.ModelProto) -> onnx.ModelProto:
    """A ModelProto with no graph, holding what ``carry_model_fields`` copies onto an export."""
    fields = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name,
                             producer_version=model.producer_version, doc_string=model.doc_string)
    fields.metadata_props.extend(model.metadata_props)
    return fields


def run_pipeline(model: onnx.ModelProto | HandOver, specs: list[PassSpec], *, target: str | None = None,
                 recipe: Recipe | None = None, verify: str = "each", verifier: Verifier | None = None,
                 instruments: Sequence[Instrument] = ()) -> PipelineResult:
    """Run ``specs`` over ``model``; never raises for a broken pass, the result says which.

    ``model`` as a :class:`HandOver` lets the input be freed once a pass replaced it.
    """
    if isinstance(model, HandOver):
        model = model.take()
    if verify not in VERIFY_MODES:
        raise SegcError(f"--verify must be one of {', '.join(VERIFY_MODES)}, not {verify!r}")
    if verify != "none" and verifier is None:
        from segc.verify import Verifier

        verifier = Verifier(recipe=recipe)
    passes = _instantiate(specs)
    specs = _pin_outputs(model, specs, verifier)
    # the coerced options, every default filled in: what the passes read and the report records
    resolved: list[dict[str, OptionValue | None]] = [type(p).resolve_options(s.options)
                                                     for s, p in zip(specs, passes, strict=True)]
    records = [PassRecord(i, s.name, p.contract_for(o).value, dict(o))
               for i, (s, p, o) in enumerate(zip(specs, passes, resolved, strict=True))]
    result = PipelineResult(model=onnx.ModelProto(), records=records, verify_mode=verify)  # set on every return

    state: GraphState | None = None
    if verify != "none" and verifier:
        state = verifier.initial_state(model, defer=verify == "each")
    checker: BoundaryChecker | None = None
    if verifier is not None:
        from segc.boundary_verify import BoundaryChecker

        checker = BoundaryChecker(verifier, full=verify == "each-full")
    reference = state if verify == "end" else None  # only --verify end reads the input state again
    history: list[onnx.ModelProto] = [model] if verify == "end" else []
    working = WorkingModel(model)
    del model  # from here on only `working` (and a verifier's reference state) holds the input

    def proto_for(inst: Instrument) -> onnx.ModelProto | None:
        return working.proto() if inst.needs_model else None

    for spec, pass_obj, record, options in zip(specs, passes, records, resolved, strict=True):
        for inst in instruments:
            inst.before_pass(record, proto_for(inst))
        ctx = PassContext(
            options=dict(options),
            target=target,
            recipe=recipe,
            model_metadata=working.metadata(),
            declared=type(pass_obj).options,
        )
        started = time.perf_counter()
        try:
            if isinstance(pass_obj, GraphPass):
                early = pass_obj.shortcut(working.proto()) if working.is_proto_current else None
                if early is not None:
                    outcome = early
                else:
                    graph = working.graph()
                    outcome = pass_obj.run(graph, ctx)
                    if outcome.changed:
                        graph.cleanup().toposort()
                        working.graph_changed()
                    del graph  # `working` owns it: an export may drop it, and with it the proto it points into
            else:
                assert isinstance(pass_obj, ModelPass), type(pass_obj)
                current = working.proto()  # exporting the graph earlier passes left is their cost
                started = time.perf_counter()
                new_model, outcome = pass_obj.run_model(current, ctx)
                del current
                working.set_proto(new_model)
            if working.store_metadata(ctx.metadata) and not outcome.changed:
                # metadata is not a graph change (nothing to re-verify), but say it happened
                outcome.notes.append(f"stored metadata: {', '.join(sorted(ctx.metadata))}")
        except Exception as exc:  # noqa: BLE001 - a refusing or crashing pass ends the run, reported as such
            record.seconds = time.perf_counter() - started
            _record_stop(result, record, exc, working)
            return result
        record.seconds = time.perf_counter() - started
        _take(record, outcome)
        if verify in ("each", "each-full") and outcome.changed and checker is not None and state is not None:
            t0 = time.perf_counter()
            checked = checker.check(
                state, working.proto(), f"after {spec.name}", Contract(record.contract), pass_obj.tolerance_for(options)
            )
            after, record.verdict = checked.state, checked.verdict
            record.verified_by, record.region_nodes = checked.verified_by.value, checked.region_nodes
            record.boundary_inputs = checked.inputs_from.value if checked.inputs_from else None
            record.verify_seconds = time.perf_counter() - t0
            record.status = record.verdict.status
            if not record.verdict.ok:
                result.model = working.proto()
                result.failed_pass = spec.name
                result.failure = (
                    f"pass {spec.name} failed verification ({record.contract}): {'; '.join(record.verdict.reasons[:3])}"
                )
                for inst in instruments:
                    inst.after_pass(record, proto_for(inst))
                return result
            state = after
        elif not outcome.changed:
            record.status = "unchanged"
        else:
            record.status = "unverified" if verify == "none" else "ok"
        if verify == "end" and outcome.changed:
            history.append(working.proto())  # history[k]: the model after the k-th *changing* pass
        for inst in instruments:
            inst.after_pass(record, proto_for(inst))
    working.release()
    result.model = working.proto()
    result.graph_imports, result.graph_exports = working.imports, working.exports

    pass_tolerances = {r.index: p.tolerance_for(o) for r, p, o in zip(records, passes, resolved, strict=True)}
    if verify == "end" and verifier is not None and reference is not None and len(history) > 1:
        _verify_end(result, history, verifier, reference, pass_tolerances)
    return result


def _record_stop(result: PipelineResult, record: PassRecord, exc: Exception, working: WorkingModel) -> None:
    """A pass raised: the run stops there and the result says why, so the report is still written.

    ``SegcError`` is the pass refusing this graph (status ``refused``, exit 1): the user's
    model or options cannot take it, and the message says why. Anything else is a bug in the
    pass (status ``error``, exit 70), recorded with its whole traceback in
    ``result.internal_error``; the CLI prints one line pointing at the report.
    """
    name = record.name
    refused = isinstance(exc, SegcError)
    record.status = "refused" if refused else "error"
    record.error = first_line(exc) if refused else f"{type(exc).__name__}: {first_line(exc)}"
    result.model, note = working.after_crash()
    if note:
        record.notes.append(note)
    result.failed_pass = name
    if refused:
        result.failure = f"pass {name} refused the graph: {record.error}"
    else:
        result.internal_error = CrashRecord.of(exc, f"pass {name}")
        result.failure = f"pass {name} crashed (a bug in segc): {record.error}"


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


def _verify_end(
    result: PipelineResult,
    history: list[onnx.ModelProto],
    verifier: Verifier,
    reference: GraphState,
    pass_tolerances: dict[int, dict[str, float]],
) -> None:
    """Judge the final graph against the input; on failure bisect to the first bad pass."""
    contracts = [Contract(r.contract) for r in result.records]
    changing = [r for r in result.records if r.changed]

    def probe(k: int) -> Verdict:
        state = verifier.new_state(history[k], f"after {changing[k - 1].name}")
        contract = combined_contract([Contract(r.contract) for r in changing[:k]])
        cut = any(r.contract == Contract.OUTPUTS.value for r in changing[:k])
        verdict = verifier.compare(
            reference, state, contract, _loosest(changing[:k], pass_tolerances), outputs_may_change=cut
        )
        result.bisect_probes.append(
            {"passes": [r.name for r in changing[:k]], "ok": verdict.ok, "reasons": verdict.reasons[:3]}
        )
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
    result.failure = (
        f"the pipeline failed verification ({combined_contract(contracts).value}); bisection names "
        f"pass {culprit.name}: {'; '.join(final.reasons[:3])}"
    )
