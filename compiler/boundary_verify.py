"""Verification at the boundary of what a pass changed (``--verify each``).

Re-running the whole model after every pass costs a full onnxruntime run per pass and input
shape, although an exact pass usually rewrites a few nodes. For an exact pass, this module
diffs the graph before and after the pass (never trusting the pass to say what it touched),
and checks only the changed region::

    before:  x -> [backbone] -> f -> (old region) -> r -> [rest] -> y
    after:   x -> [backbone] -> f -> (new region) -> r -> [rest] -> y
                                ^                   ^
                 boundary input: same value      boundary output: compared
                 in both graphs (convexity)      with the value before

1. The diff. A node of the after-graph is unchanged when the graph before has a node with
   the same op, domain, attributes (bodies included), inputs and outputs, by name; an
   initializer when the graph before has one of the same name and the same bytes. Changed
   nodes and the readers of changed initializers seed the region, which is closed to be
   *convex* (every node on a path between two region nodes joins it; segc.graph_view). No
   tensor a convex region reads is computed from what it computes, so its boundary inputs
   are computed by the same unchanged nodes from the same graph inputs in both graphs.
2. The reference. The values of the boundary inputs and outputs in the graph *before*, per
   input set, come from a cache of values known for that graph; what is missing is computed
   by the smallest part of the graph before that produces it from what is known (the
   upstream cone, cut at cached tensors), run as its own model. The first pass pays about
   one run of the input model (less its head); later passes whose boundary was already
   computed pay nothing here.
3. The check. The after-graph's region alone, extracted as a small model, runs on the
   boundary inputs; its boundary outputs are judged against the reference values of the same
   names by the pass's contract and tolerances. If they agree, every node downstream reads
   the same values as before (unchanged nodes, equal inputs), so the graph outputs agree too.
   Distant changes are checked as separate convex *parts* (``_parts``) when no part reads,
   through unchanged nodes, a value another part changed in any bit; else as one convex
   region. The convex region's inputs are kept from the reference run either way.
   *Synthesized inputs first* (segc.boundary_synth): when the values entering the region
   are not all cached, computing them costs a run of everything upstream (DBNet's first
   check: the whole ResNet-50 at three shapes). An exact pass must keep the region's
   function, so the region and the graph before's cone of the same outputs are run on the
   same made-up inputs of the real shapes (random floats, exact shape-derived values) and
   compared. Only a pass is taken from there: a failure, or a check without signal, is
   decided on the real values as above, so every failure reported is one on real values.
   report.json says which (``boundary_inputs``: ``synthesized`` or ``reference``).
4. The cache moves on: values upstream of the region stay valid for the graph after the
   pass, the region's boundary outputs are the after-run's values, and values downstream of
   the region stay valid only when every boundary output was bit-identical.

Whole-model runs (``Verifier.compare``) remain for: contracts other than exact (an
approximate budget, outputs that may change and target-only lowering are judged on the
graph outputs), a changed opset, graph inputs or outputs, a region over half the graph (the
region model would copy most weights and run most of the compute, so a whole run costs about
the same and proves more: the whole graph loads), a boundary tensor missing from the graph
before (renamed), a graph that is not well formed (a dangling input, a cycle), and
``--verify each-full``. Each pass's record says which it got (``verified_by``).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from segc.boundary_synth import (
    LeafKind,
    NoSynth,
    ShapeOracle,
    SynthPlan,
    feed_shapes,
    leaf_values,
    plan,
    shape_result,
)
from segc.errors import SegcError
from segc.graph_view import Boundary, GraphView
from segc.metrics import OutputMetrics, Verdict, compare_output, judge
from segc.modelio import tensor_array
from segc.ortrun import SessionConfig, make_session, run_pair, run_session
from segc.passbase import Contract
from segc.shape_blind import big_enough, reach
from segc.verify import GraphState, Verifier
from segc.verify_inputs import Feed

# Above this share of the after-graph's nodes the region is checked by a whole-model run
# (see the module docstring for why half).
MAX_REGION_SHARE = 0.5

Values = dict[str, np.ndarray]


class VerifiedBy(str, enum.Enum):
    BOUNDARY = "boundary"
    WHOLE = "whole"


class InputsFrom(str, enum.Enum):
    """Where a boundary check's region inputs came from (report.json ``boundary_inputs``)."""

    SYNTHESIZED = "synthesized"  # made up, both sides run on them (segc.boundary_synth)
    REFERENCE = "reference"  # the real values in the graph before (cached, or its cone run)


@dataclass(frozen=True)
class Region:
    """What a pass changed, in the after-graph: its convex node set and boundary, and the
    smaller ``parts`` (see :func:`find_region`)."""

    boundary: Boundary
    after_nodes: int  # nodes of the after-graph
    removed: int  # nodes of the graph before with no equal in the graph after
    parts: Boundary | None = None  # None: the same nodes as ``boundary``


@dataclass(frozen=True)
class NoRegion:
    """Why the change cannot be checked at its boundary (a whole-model run is used)."""

    reason: str


@dataclass
class CheckOutcome:
    """What :meth:`BoundaryChecker.check` decided for one pass."""

    state: GraphState
    verdict: Verdict
    verified_by: VerifiedBy
    region_nodes: int | None = None  # the region's size when verified by boundary
    reason: str | None = None  # why whole, when it was
    inputs_from: InputsFrom | None = None  # when verified by boundary
    inputs_note: str | None = None  # why the reference route, when synthesis was tried


@dataclass
class RegionRun:
    """One run of a region and its judgement; ``values``: the region's outputs per feed label,
    to cache (None when they were computed on made-up inputs and say nothing about real ones)."""

    verdict: Verdict
    metrics: list[OutputMetrics]
    values: dict[str, Values] | None
    inputs_from: InputsFrom
    note: str | None = None


@dataclass
class _Cache:
    """Tensor values known for one graph state, per input set (by feed label)."""

    model: onnx.ModelProto | None = None
    values: dict[str, Values] = field(default_factory=dict)


def _node_key(node: onnx.NodeProto) -> tuple[object, ...]:
    attrs = tuple(sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute))
    return (node.domain, node.op_type, tuple(node.input), tuple(node.output), attrs)


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    """Same type, dims and bytes (raw bytes compared as they are: a memcmp, no hashing)."""
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    if a.HasField("raw_data") or b.HasField("raw_data"):
        same = a.raw_data == b.raw_data and list(a.external_data) == list(b.external_data)
        return bool(same)
    return bool(a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True))


def _well_formed(model: onnx.ModelProto, view: GraphView) -> str | None:
    """Why ``model`` could not load as a graph (checked here: its whole never runs), or None."""
    g = model.graph
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    produced: set[str] = set()
    for node in g.node:
        for name in node.output:
            if name and (name in produced or name in defined):
                return f"tensor {name!r} is defined twice"
            produced.add(name)
    known = defined | produced
    for node, reads in zip(g.node, view.inputs, strict=True):
        for name in reads:
            if name and name not in known:
                return f"node {node.name or node.op_type!r} reads {name!r}, which nothing defines"
    for o in g.output:
        if o.name not in known:
            return f"graph output {o.name!r} is not produced"
    if not view.is_acyclic():
        return "the graph has a cycle"
    return None


def find_region(before: onnx.ModelProto, after: onnx.ModelProto, watched: tuple[str, ...] = (),
                exposed: tuple[str, ...] = ()) -> Region | NoRegion:
    """The changed region of ``after`` against ``before``, computed from the graphs alone.

    ``exposed``: outputs the verifier added to ``before`` (watched tensors), not the model's."""
    if {(o.domain, o.version) for o in before.opset_import} != {(o.domain, o.version) for o in after.opset_import}:
        return NoRegion("the opset changed")
    bg, ag = before.graph, after.graph
    if [i.SerializeToString(deterministic=True) for i in bg.input] != \
            [i.SerializeToString(deterministic=True) for i in ag.input]:
        return NoRegion("the graph inputs changed")
    if [o.name for o in bg.output if o.name not in exposed] != [o.name for o in ag.output]:
        return NoRegion("the graph outputs changed")
    if bg.sparse_initializer or ag.sparse_initializer or after.functions or before.functions:
        return NoRegion("sparse initializers or model-local functions are not diffed")
    view = GraphView.from_onnx(ag)
    broken = _well_formed(after, view)
    if broken:
        return NoRegion(f"the graph after is not well formed ({broken})")
    before_keys = {_node_key(n) for n in bg.node}
    after_keys = {_node_key(n) for n in ag.node}
    seeds = {i for i, n in enumerate(ag.node) if _node_key(n) not in before_keys}
    old_inits = {t.name: t for t in bg.initializer}
    for t in ag.initializer:
        old = old_inits.get(t.name)
        if old is None or not _same_tensor(old, t):
            if t.name in {o.name for o in ag.output} or t.name in watched:
                return NoRegion(f"the changed constant {t.name!r} is itself an output")
            seeds.update(view.consumers(t.name))
    # a retyped annotation can stop the graph loading (onnxruntime merges shapes leniently,
    # element types not): the producer of such a tensor is checked as changed
    old_types = {v.name: v.type.tensor_type.elem_type for v in bg.value_info}
    for v in ag.value_info:
        if old_types.get(v.name, v.type.tensor_type.elem_type) != v.type.tensor_type.elem_type:
            p = view.producer(v.name)
            if p is not None:
                seeds.add(p)
    region = view.convex(seeds)
    parts = _parts(view, seeds)
    removed = sum(1 for n in bg.node if _node_key(n) not in after_keys)
    if len(region) > MAX_REGION_SHARE * max(1, len(ag.node)):
        return NoRegion(f"the region covers {len(region)} of {len(ag.node)} nodes (over {MAX_REGION_SHARE:.0%})")
    produced = {o for n in ag.node for o in n.output}
    watch = tuple(w for w in watched if w in produced)
    boundary = view.boundary(region, watched=watch)
    split = view.boundary(parts, watched=watch) if parts != region else None
    before_tensors = {i.name for i in bg.input} | set(old_inits) | {o for n in bg.node for o in n.output}
    after_inits = {t.name for t in ag.initializer}
    missing = [name for name in (*boundary.inputs, *boundary.outputs, *(split.inputs if split else ()),
                                 *(split.outputs if split else ()))
               if name not in before_tensors and name not in after_inits]
    if missing:
        return NoRegion(f"boundary tensor(s) {missing[:3]} have no tensor of the same name before the pass (renamed)")
    if region and not boundary.outputs:
        return NoRegion("the region has no boundary output to compare")
    return Region(boundary, len(ag.node), removed, split)


def _parts(view: GraphView, seeds: set[int]) -> set[int]:
    """The changed nodes as separate convex parts: each group of seeds joined by edges, closed
    on its own, groups merged where their closures meet.

    One convex region over two distant changes takes in everything between them (simplify on
    DBNet: folded shape chains in the neck and a BatchNorm fused into the head's ConvTranspose
    make 111 of 243 nodes, the whole neck and head). Checked as parts, each part reads the
    reference values around it; that is sound while no part reads a value computed from a part
    whose outputs differ at all (``BoundaryChecker`` checks this after the run, and checks the
    convex region instead when it does not hold)."""
    if not seeds:
        return set()
    groups = [view.convex(g) for g in view.components(seeds)]
    merged = True
    while merged:
        merged = False
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                if groups[i] & groups[j]:
                    groups[i] = view.convex(groups[i] | groups.pop(j))
                    merged = True
                    break
            if merged:
                break
    return set().union(*groups)


def extract(model: onnx.ModelProto, view: GraphView, nodes: set[int] | frozenset[int], inputs: Values,
            outputs: list[str]) -> onnx.ModelProto:
    """``nodes`` of ``model`` as a model of their own: ``inputs`` (tensors given as arrays) and
    the graph inputs they read become inputs, the initializers they read come along (also
    those their bodies read), ``outputs`` are its outputs (types left to onnxruntime)."""
    g = model.graph
    order = [i for i in view.topological() if i in nodes]
    reads = {name for i in order for name in view.inputs[i] if name}
    init_names = {t.name for t in g.initializer}
    sub = onnx.GraphProto(name=f"{g.name}_region")
    sub.node.extend(g.node[i] for i in order)
    sub.initializer.extend(t for t in g.initializer if t.name in reads and t.name not in inputs)
    for vi in g.input:
        if vi.name in reads and vi.name not in init_names and vi.name not in inputs:
            sub.input.append(vi)
    for name, value in inputs.items():
        if name in reads:
            elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            sub.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
    sub.output.extend(onnx.ValueInfoProto(name=name) for name in outputs)
    out = onnx.ModelProto(ir_version=model.ir_version, producer_name="segc-region")
    out.opset_import.extend(model.opset_import)
    out.graph.CopyFrom(sub)
    return out


@dataclass(frozen=True)
class _PassCheck:
    """What every region check of one pass shares: the graph before (its state), the graph
    after and its view, the inputs it is verified at, and the pass's rule."""

    before: GraphState
    after_model: onnx.ModelProto
    view: GraphView
    feeds: list[Feed]
    contract: Contract
    tolerances: dict[str, float] | None


class BoundaryChecker:
    """Per-pass checks for ``--verify each`` (``each-full``: always whole-model)."""

    def __init__(self, verifier: Verifier, *, full: bool = False, synthesize: bool = True) -> None:
        self.verifier = verifier
        self.full = full
        # made-up region inputs first (segc.boundary_synth); never with the user's own data
        self.synthesize = synthesize and verifier.user_inputs is None
        self._cache = _Cache()
        self._oracle: ShapeOracle | None = None
        # region models run once per input shape, several alive at once: no arena (SessionConfig.arena)
        self._region_config = dataclasses.replace(verifier.config, arena=False)

    def check(
        self,
        before: GraphState,
        after_model: onnx.ModelProto,
        label: str,
        contract: Contract,
        tolerances: dict[str, float] | None,
    ) -> CheckOutcome:
        after = self.verifier.new_state(after_model, label)
        reason = "--verify each-full" if self.full else None
        if reason is None and contract is not Contract.EXACT:
            reason = f"a {contract.value} pass is judged on the graph outputs"
        region: Region | NoRegion | None = None
        if reason is None:
            region = find_region(before.model, after_model, self.verifier.watch, before.exposed)
            if isinstance(region, NoRegion):
                reason = region.reason
        feeds = self.verifier.feeds_for(after_model) if reason is None else []
        if reason is None and [f.shape_key for f in feeds] != [
            f.shape_key for f in self.verifier.feeds_for(before.model)
        ]:
            reason = "the pass changed the shapes the graph is verified at"
        if reason is None and isinstance(region, Region):
            try:
                outcome = self._at_boundary(before, after, after_model, region, feeds, contract, tolerances)
            except SegcError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bug here must not fail the compile: the whole check decides
                outcome, reason = None, f"the boundary check raised {type(exc).__name__}: {_first_line(exc)}"
            if outcome is not None:
                return outcome
            reason = reason or "the region could not run on its own"
        return self._whole(before, after, contract, tolerances, reason or "")

    # ---------------------------------------------------------------- whole-model path
    def _whole(
        self,
        before: GraphState,
        after: GraphState,
        contract: Contract,
        tolerances: dict[str, float] | None,
        reason: str,
    ) -> CheckOutcome:
        self.verifier.ensure_reference(before)
        if contract is not Contract.OUTPUTS:  # (an outputs pass is compared with a copy exposing more)
            for feed in self.verifier.feeds_for(after.model):
                before.run(feed)  # what compare reads first; computed here so one session lives at a time
        before.close()  # its outputs are kept; its arena need not live beside the next session's
        verdict = self.verifier.compare(before, after, contract, tolerances)
        before.close()
        after.close()  # the next pass reads its outputs, computed now for every feed
        verdict.warnings.insert(0, f"verified by a whole-model run: {reason}")
        self._cache = _Cache()  # values of `before` say nothing certain about `after`
        return CheckOutcome(after, verdict, VerifiedBy.WHOLE, reason=reason)

    # ---------------------------------------------------------------- boundary path
    def _at_boundary(
        self,
        before: GraphState,
        after: GraphState,
        after_model: onnx.ModelProto,
        region: Region,
        feeds: list[Feed],
        contract: Contract,
        tolerances: dict[str, float] | None,
    ) -> CheckOutcome | None:
        b = region.boundary
        if not b.nodes:  # every node and constant the same: the same function by construction
            self._carry(after, after_model, b, exact=True)
            verdict = Verdict(ok=True, contract=contract.value)
            verdict.warnings.append("verified at the boundary: no node or constant changed")
            return CheckOutcome(after, verdict, VerifiedBy.BOUNDARY, region_nodes=0)
        view = GraphView.from_onnx(after_model.graph)
        check = _PassCheck(before, after_model, view, feeds, contract, tolerances)
        if region.parts is not None:
            # the convex region's inputs ride along in the reference run (no extra compute: they
            # lie upstream of the parts' inputs) and stay cached for a later pass over the same area
            ran = self._run_region(check, region.parts, keep=b.inputs)
            if ran is not None and not self._reads_a_changed_value(view, region.parts, ran.metrics):
                return self._finish(after, after_model, region, region.parts, feeds, ran)
        ran = self._run_region(check, b)
        return None if ran is None else self._finish(after, after_model, region, b, feeds, ran)

    @staticmethod
    def _reads_a_changed_value(view: GraphView, b: Boundary, metrics: list[OutputMetrics]) -> bool:
        """Whether a node of ``b`` reads, through nodes outside it, an output of ``b`` that
        differs at all from the value before (then the parts were checked on inputs the graph
        after does not compute, and the convex region is checked instead)."""
        changed = {m.output for m in metrics if m.max_abs != 0 or m.ref_nonfinite or m.nonfinite_mismatch}
        outside = {c for t in changed for c in view.consumers(t) if c not in b.nodes}
        return bool((outside | view.downstream(outside)) & b.nodes)

    def _finish(
        self,
        after: GraphState,
        after_model: onnx.ModelProto,
        region: Region,
        b: Boundary,
        feeds: list[Feed],
        ran: RegionRun,
    ) -> CheckOutcome:
        verdict, metrics = ran.verdict, ran.metrics
        verdict.warnings.insert(
            0,
            f"verified at the boundary of {len(b.nodes)} changed node(s) of "
            f"{region.after_nodes}: {len(b.inputs)} tensor(s) in ({ran.inputs_from.value}), "
            f"{len(b.outputs)} compared",
        )
        if ran.note:
            verdict.warnings.insert(1, f"region inputs from the reference run: {ran.note}")
        if verdict.ok:
            # bit-identical boundary on the real values: every downstream value is unchanged
            # too (cache point 4); made-up inputs prove that for no real value
            exact = ran.values is not None and len(metrics) == len(feeds) * len(b.outputs) and all(
                m.max_abs == 0 and not m.ref_nonfinite for m in metrics
            )
            self._carry(after, after_model, b, exact=exact, region_values=ran.values)
        return CheckOutcome(after, verdict, VerifiedBy.BOUNDARY, region_nodes=len(b.nodes),
                            inputs_from=ran.inputs_from, inputs_note=ran.note)

    def _run_region(self, check: _PassCheck, b: Boundary, keep: tuple[str, ...] = ()) -> RegionRun | None:
        """Judge ``b``'s nodes of the graph after: on made-up inputs when that passes, else on
        the real values around them (which decide every failure; segc.boundary_synth)."""
        note: str | None = None
        if self.synthesize and not self._all_cached(check.before, self._needed(check.after_model, b), check.feeds):
            try:
                synth = self._run_synthesized(check, b)
            except Exception as exc:  # noqa: BLE001 - a made-up input onnxruntime refuses: the real values decide
                synth = NoSynth(f"the synthesized run raised {type(exc).__name__}: {_first_line(exc)}")
            if isinstance(synth, RegionRun) and synth.verdict.ok and not synth.verdict.unverified:
                return synth
            if isinstance(synth, NoSynth):
                note = synth.reason
            elif synth.verdict.unverified:
                note = "the check on synthesized inputs had no signal"
            else:
                note = (f"the check on synthesized inputs failed ({'; '.join(synth.verdict.reasons[:1])}); "
                        "decided on the real values")
        ran = self._run_on_reference(check, b, keep)
        if ran is not None:
            ran.note = note
        return ran

    @staticmethod
    def _needed(after_model: onnx.ModelProto, b: Boundary) -> list[str]:
        """The reference values a check of ``b`` on real values reads: its inputs (unchanged
        constants the region reads travel inside the region model) and its outputs."""
        after_inits = {t.name for t in after_model.graph.initializer}
        return list(dict.fromkeys([*(n for n in b.inputs if n not in after_inits), *b.outputs]))

    def _all_cached(self, before: GraphState, names: list[str], feeds: list[Feed]) -> bool:
        """Whether the real values of ``names`` are all known without running anything (then
        the region alone runs, on them: cheaper than both sides on made-up ones)."""
        if self._cache.model is not before.model:
            return False
        inits = {t.name for t in before.model.graph.initializer}
        for feed in feeds:
            known = self._cache.values.get(feed.label, {})
            outputs = before.outputs.get(feed.label) or {}
            if any(n not in known and n not in outputs and n not in inits and n not in feed.shapes for n in names):
                return False
        return True

    def _oracle_for(self, model: onnx.ModelProto) -> ShapeOracle:
        if self._oracle is None or self._oracle.model is not model:
            self._oracle = ShapeOracle(model)
        return self._oracle

    def _run_synthesized(self, check: _PassCheck, b: Boundary) -> RegionRun | NoSynth:
        """Run the region and the graph before's cone of its outputs on the same made-up leaves."""
        after_model, view, feeds = check.after_model, check.view, check.feeds
        model = check.before.model
        before_view = GraphView.from_onnx(model.graph)
        oracle = self._oracle_for(model)
        p = plan(model, before_view, b, after_model, view, oracle)
        if isinstance(p, NoSynth):
            return p
        shape_values = self._shape_values(model, before_view, p, feeds, oracle, self._region_config)
        if isinstance(shape_values, NoSynth):
            return shape_values
        region_inputs = {leaf.name for leaf in p.leaves} & set(b.inputs)
        leaves0 = leaf_values(p, feeds[0], 0, self.verifier.seed, oracle, shape_values[0])
        if isinstance(leaves0, NoSynth):
            return leaves0
        kinds = {leaf.name: leaf.kind for leaf in p.leaves}
        smallest = min(range(len(feeds)), key=lambda k: sum(math.prod(s) for s in feed_shapes(feeds[k]).values()))
        groups: list[_OutputGroup] = []
        for names in _output_groups(list(b.outputs), oracle, feeds):
            ref_nodes = _cone_within(before_view, p.before_nodes, names)
            cand_nodes = _cone_within(view, b.nodes, names)
            ref_model = extract(model, before_view, ref_nodes, leaves0, names)
            given = {k: v for k, v in leaves0.items() if k in region_inputs}
            cand_model = extract(after_model, view, cand_nodes, given, names)
            ref_wanted, cand_wanted = {i.name for i in ref_model.graph.input}, {i.name for i in cand_model.graph.input}
            at = _feeds_to_run(model, ref_nodes, after_model, cand_nodes, ref_wanted | cand_wanted, kinds,
                               shape_values, oracle, feeds, smallest)
            groups.append(_OutputGroup(names, make_session(ref_model, self._region_config), ref_wanted,
                                       make_session(cand_model, self._region_config), cand_wanted, at))
        metrics: list[OutputMetrics] = []
        for index, feed in enumerate(feeds):
            running = [g for g in groups if index in g.at]
            if not running:
                continue
            read = {n for g in running for n in g.ref_wanted | g.cand_wanted}
            leaves = leaves0 if index == 0 else leaf_values(p, feed, index, self.verifier.seed, oracle,
                                                             shape_values[index], read)
            if isinstance(leaves, NoSynth):
                return leaves
            if index == 0:
                del leaves0  # (the loop's reference is the one left)
            for g in running:
                ref, cand = run_pair((g.ref_session, {k: v for k, v in leaves.items() if k in g.ref_wanted}, g.names),
                                     (g.cand_session, {k: v for k, v in leaves.items() if k in g.cand_wanted}, g.names))
                for name, value in ref.items():
                    known = oracle.shape(feed_shapes(feed), name)
                    if known is not None and known != tuple(value.shape):
                        return NoSynth(f"{name!r} came out {tuple(value.shape)} at {feed.label}, the shape analysis "
                                       f"said {known}")
                metrics.extend(boundary_metrics(n, feed.label, ref[n], cand[n]) for n in g.names)
                del ref, cand  # (buffers of 1 MiB or more are unmapped as they go: segc.memory.map_big_blocks)
            del leaves
        verdict = self._judge(check.contract, metrics, check.tolerances, len(b.outputs))
        counts = ", ".join(f"{p.count(k)} {k.value}" for k in LeafKind if p.count(k))
        verdict.warnings.append(f"region inputs synthesized ({counts}); the graph before ran "
                                f"{len(p.before_nodes)} node(s) on them")
        once = [n for g in groups if len(g.at) < len(feeds) for n in g.names]
        if once:
            verdict.warnings.append(f"{len(once)} of {len(b.outputs)} output(s) checked at {feeds[smallest].label} "
                                    "alone: computed by a shape-blind part of the region (segc.shape_blind), the same "
                                    "function at every shape")
        return RegionRun(verdict, metrics, None, InputsFrom.SYNTHESIZED)

    @staticmethod
    def _shape_values(model: onnx.ModelProto, view: GraphView, p: SynthPlan, feeds: list[Feed],
                      oracle: ShapeOracle, config: SessionConfig) -> list[Values] | NoSynth:
        """The SHAPE_VALUE leaves per feed: Shape/Size results from the known shapes, the rest
        by running their cone of the graph before on those (and on the real graph inputs)."""
        wanted = [leaf.name for leaf in p.leaves if leaf.kind is LeafKind.SHAPE_VALUE]
        out: list[Values] = []
        for feed in feeds:
            given: Values = {}
            for i in p.shape_reads:
                node = model.graph.node[i]
                read = oracle.shape(feed_shapes(feed), node.input[0])
                if read is None:
                    return NoSynth(f"the shape of {node.input[0]!r} at {feed.label} is not known")
                given[node.output[0]] = shape_result(node, read)
            out.append(given)
        rest = [n for n in wanted if n not in out[0]]
        if not rest:
            return out
        cone = extract(model, view, set(p.shape_nodes), out[0], rest)
        session = make_session(cone, config)
        names = {i.name for i in cone.graph.input}
        for feed, given in zip(feeds, out, strict=True):
            real = {k: feed.arrays[k] for k in names if k in feed.shapes}  # (made only when read)
            arrays = {**real, **{k: v for k, v in given.items() if k in names}}
            given.update(run_session(session, arrays, rest))
        return out

    def _judge(self, contract: Contract, metrics: list[OutputMetrics], tolerances: dict[str, float] | None,
               outputs: int) -> Verdict:
        verdict = judge(
            contract,
            metrics,
            self.verifier.tolerances.relaxed(tolerances or {}, keep=self.verifier.tolerances.user_set),
        )
        if verdict.unverified and len(verdict.unverified) < outputs:
            # a constant boundary tensor (a folded scale) is a real check: only an all-silent
            # boundary says nothing about the pass
            verdict.warnings.extend(verdict.unverified)
            verdict.unverified = []
        verdict.ok = not verdict.reasons
        return verdict

    def _run_on_reference(self, check: _PassCheck, b: Boundary, keep: tuple[str, ...] = ()) -> RegionRun | None:
        """Run ``b``'s nodes of the graph after on the reference values around them; judge."""
        after_model, view, feeds = check.after_model, check.view, check.feeds
        reference = self._reference(check.before, self._needed(after_model, b), feeds, keep)
        if reference is None:
            return None
        feeds_in = [{n: ref[n] for n in b.inputs if n in ref} for ref in reference]
        model = extract(after_model, view, b.nodes, feeds_in[0], list(b.outputs))
        try:
            session = make_session(model, self._region_config)
        except Exception:  # noqa: BLE001 - onnxruntime raises many types; the whole graph is judged instead
            return None
        metrics: list[OutputMetrics] = []
        results: dict[str, Values] = {}
        wanted = {i.name for i in model.graph.input}
        for feed, ref, given in zip(feeds, reference, feeds_in, strict=True):
            arrays = {**{k: v for k, v in feed.arrays.items() if k in wanted}, **given}
            try:
                cand = run_session(session, arrays, list(b.outputs))
            except Exception:  # noqa: BLE001 - the whole graph is judged instead, and says why
                return None
            results[feed.label] = cand
            for n in b.outputs:
                r, c = ref[n], cand[n]
                same = r.shape == c.shape and r.dtype == c.dtype and r.dtype.kind == "f" and _same_bits(r, c)
                metrics.append(boundary_metrics(n, feed.label, r, c, same=same))
                if same:
                    cand[n] = r  # the same bits: the cache keeps one array, not two
        verdict = self._judge(check.contract, metrics, check.tolerances, len(b.outputs))
        return RegionRun(verdict, metrics, results, InputsFrom.REFERENCE)

    def _reference(
        self, before: GraphState, names: list[str], feeds: list[Feed], keep: tuple[str, ...] = ()
    ) -> list[Values] | None:
        """``names``' values in the graph before, per feed: cached, else computed by its cone
        (one session for every feed)."""
        if self._cache.model is not before.model:
            self._cache = _Cache(before.model)
        model = before.model
        inits = {t.name: t for t in model.graph.initializer}
        real_inputs = {i.name for i in model.graph.input} - set(inits)
        knowns: list[Values] = []
        for feed in feeds:
            known = self._cache.values.setdefault(feed.label, {})
            known.update({k: v for k, v in (before.outputs.get(feed.label) or {}).items() if k not in known})
            for name in names:
                if name in real_inputs and name in feed.arrays:
                    known.setdefault(name, feed.arrays[name])
                elif name in inits and name not in known:
                    known[name] = tensor_array(inits[name])
            knowns.append(known)
        missing = list(dict.fromkeys(n for known in knowns for n in names if n not in known))
        if missing:
            common = set.intersection(*(set(k) for k in knowns)) - real_inputs
            view = GraphView.from_onnx(model.graph)
            also = [n for n in keep if n not in common and n not in missing and n not in real_inputs]
            computed = self._cone(before, view, common, missing, feeds, knowns, also)
            if computed is None:
                return None
            for known, values in zip(knowns, computed, strict=True):
                known.update(values)
        return [{n: known[n] for n in names} for known in knowns]

    def _cone(
        self,
        before: GraphState,
        view: GraphView,
        common: set[str],
        missing: list[str],
        feeds: list[Feed],
        knowns: list[Values],
        also: Sequence[str] = (),
    ) -> list[Values] | None:
        """Run the part of the graph before that computes ``missing`` from the tensors known
        (``common``) on every feed: the upstream cone of ``missing``, cut at known tensors."""
        nodes: set[int] = set()
        stack = [p for p in (view.producer(n) for n in missing) if p is not None]
        while stack:
            i = stack.pop()
            if i in nodes:
                continue
            nodes.add(i)
            for name in view.inputs[i]:
                p = view.producer(name) if name and name not in common else None
                if p is not None and p not in nodes:
                    stack.append(p)
        reads = {name for i in nodes for name in view.inputs[i]}
        given = {n: knowns[0][n] for n in common if n in reads}
        produced = {o for i in nodes for o in view.outputs[i]}
        outputs = [*missing, *(n for n in also if n in produced)]  # `also`: only what the cone computes anyway
        model = extract(before.model, view, nodes, given, outputs)
        wanted = {i.name for i in model.graph.input}
        try:
            session = make_session(model, self.verifier.config)
            out: list[Values] = []
            for feed, known in zip(feeds, knowns, strict=True):
                arrays = {**{k: v for k, v in feed.arrays.items() if k in wanted}, **{k: known[k] for k in given}}
                out.append(run_session(session, arrays, outputs, own=True))  # cached: must not hold the arena
            return out
        except Exception:  # noqa: BLE001 - the graph before cannot run on its own here
            if not before.checked:
                self.verifier.ensure_reference(before)  # the input model itself: a usage error
            return None

    def _carry(
        self,
        after: GraphState,
        after_model: onnx.ModelProto,
        b: Boundary,
        *,
        exact: bool,
        region_values: dict[str, Values] | None = None,
    ) -> None:
        """Move the cache to the graph after the pass (module docstring, point 4)."""
        view = GraphView.from_onnx(after_model.graph)
        stale = {name for i in b.nodes for name in view.outputs[i]}
        if not exact:
            stale |= {name for i in view.downstream(b.nodes) for name in view.outputs[i]}
        g = after_model.graph
        present = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
        for label in list(self._cache.values):
            values = {n: v for n, v in self._cache.values[label].items() if n in present and n not in stale}
            values.update((region_values or {}).get(label, {}))
            self._cache.values[label] = values
        self._cache.model = after.model


def boundary_metrics(name: str, feed: str, ref: np.ndarray, cand: np.ndarray, *,
                     same: bool | None = None) -> OutputMetrics:
    """What the exact rule needs for one boundary tensor, in one pass over each array.

    Boundary tensors are inner activations, often 64+ channels at a quarter of the input's
    resolution, far larger than the graph outputs: ``compare_output``'s cosine and per-pixel
    argmax (it takes a 64-channel tensor for class scores) cost seconds each there and the
    exact rule reads neither. ``same``: whether the caller found the two bit-identical
    (None: found here). Finite float tensors get max error, scale and spread here (in
    float32 arithmetic for float32 tensors); anything else (NaN/Inf, integers, mismatched
    shapes or types) goes through ``compare_output``.
    """
    if ref.shape != cand.shape or ref.dtype != cand.dtype or ref.dtype.kind != "f" or not ref.size:
        return compare_output(name, feed, ref, cand)
    lo, hi = float(ref.min()), float(ref.max())  # NaN propagates: finite extremes mean a finite reference
    if same if same is not None else _same_bits(ref, cand):  # usual for an exact pass: no difference array
        diff = 0.0
    else:
        diff = _max_abs_diff(ref, cand)
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(diff)):  # NaN/Inf somewhere: the full rule
        return compare_output(name, feed, ref, cand)
    scale = max(abs(lo), abs(hi))
    return OutputMetrics(
        output=name,
        feed=feed,
        shape=list(cand.shape),
        ref_shape=list(ref.shape),
        dtype=str(ref.dtype),
        cand_dtype=str(cand.dtype),
        max_abs=diff,
        ref_scale=scale,
        ref_spread=hi - lo,
        max_rel=diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf")),
        compared=int(ref.size),
    )


# Boundary outputs compared at once on synthesized inputs, in bytes at the largest input shape
# (a larger one alone): both sides' outputs are alive together, so on DBNet's six Resize
# outputs at 1280x1280 (206 MB a side) one run for all of them raised the peak by 500 MB.
OUTPUT_GROUP_BYTES = 64 << 20


def _output_groups(names: list[str], oracle: ShapeOracle, feeds: list[Feed]) -> list[list[str]]:
    """``names`` in runs of at most OUTPUT_GROUP_BYTES (all in one when a size is unknown)."""
    types = oracle.elem_types()
    sizes: list[int] = []
    for name in names:
        shapes = [oracle.shape(feed_shapes(f), name) for f in feeds]
        if name not in types or any(s is None for s in shapes):
            return [names]
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(types[name])).itemsize
        sizes.append(max(int(np.prod(s)) for s in shapes if s is not None) * itemsize)
    groups: list[list[str]] = []
    total = 0
    for name, size in zip(names, sizes, strict=True):
        if groups and total + size <= OUTPUT_GROUP_BYTES:
            groups[-1].append(name)
            total += size
        else:
            groups.append([name])
            total = size
    return groups


@dataclass(frozen=True)
class _OutputGroup:
    """Boundary outputs checked together on synthesized inputs: both sides' sessions, the
    leaves each reads, and the feeds (by index) it runs at."""

    names: list[str]
    ref_session: ort.InferenceSession
    ref_wanted: set[str]
    cand_session: ort.InferenceSession
    cand_wanted: set[str]
    at: frozenset[int]


def _feeds_to_run(before: onnx.ModelProto, ref_nodes: set[int], after: onnx.ModelProto, cand_nodes: set[int],
                  leaves: set[str], kinds: dict[str, LeafKind], shape_values: list[Values], oracle: ShapeOracle,
                  feeds: list[Feed], smallest: int) -> frozenset[int]:
    """Every feed, or only the smallest where both sides of the group are shape-blind, read
    made-up activations and values the same at every shape (a weight the graph before
    computes from constants), and that feed's leaves are large enough to hold every border
    pattern (segc.shape_blind)."""
    every = frozenset(range(len(feeds)))
    if len(feeds) < 2:
        return every
    constants: dict[str, list[int]] = {}
    for name in leaves:
        if kinds.get(name) is LeafKind.SHAPE_VALUE:
            values = [v.get(name) for v in shape_values]
            first = values[0]
            if first is None or any(v is None or not np.array_equal(v, first) for v in values):
                return every  # a value that follows the shape
            constants[name] = list(first.shape)
        elif kinds.get(name) not in (LeafKind.RANDOM, LeafKind.GRAPH_INPUT):
            return every
    ref_reach, cand_reach = reach(before, ref_nodes, constants), reach(after, cand_nodes, constants)
    if ref_reach is None or cand_reach is None:
        return every
    shapes = [oracle.shape(feed_shapes(feeds[smallest]), n) for n in leaves if n not in constants]
    if any(s is None for s in shapes) or not big_enough([s for s in shapes if s is not None],
                                                        max(ref_reach, cand_reach)):
        return every
    return frozenset({smallest})


def _cone_within(view: GraphView, nodes: frozenset[int] | set[int], names: list[str]) -> set[int]:
    """The nodes of ``nodes`` that ``names`` depend on (their producers included)."""
    out: set[int] = set()
    stack = [p for p in (view.producer(n) for n in names) if p is not None and p in nodes]
    while stack:
        i = stack.pop()
        if i in out:
            continue
        out.add(i)
        stack.extend(p for p in view.predecessors(i) if p in nodes and p not in out)
    return out


# values per step of _max_abs_diff: a 4 MiB scratch buffer for float32
DIFF_CHUNK = 1 << 20


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| over two arrays of one shape, a chunk at a time: one small scratch buffer
    instead of a difference array the size of the tensor (105 MB for a DBNet boundary output
    at 1280x1280, whose fresh pages cost more than the arithmetic). NaN when any is NaN."""
    fa, fb = a.reshape(-1), b.reshape(-1)
    buf = np.empty(min(DIFF_CHUNK, max(1, fa.size)), dtype=np.result_type(a, b))
    worst = 0.0
    for start in range(0, fa.size, DIFF_CHUNK):
        part = buf[: min(DIFF_CHUNK, fa.size - start)]
        np.subtract(fa[start : start + part.size], fb[start : start + part.size], out=part)
        np.abs(part, out=part)
        value = float(part.max())
        if value != value:  # NaN
            return value
        worst = max(worst, value)
    return worst


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two float arrays of one shape and type hold the same bits (compared as
    unsigned integers of the same width: one read of each, no float arithmetic; -0.0 and 0.0
    differ, which only sends them to the subtraction). A chunk at a time into one small
    boolean buffer (a 100 MB output's 26 MB of fresh boolean pages cost more than the
    comparison), stopping at the first chunk that differs."""
    width = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(a.dtype.itemsize)
    if width is None:
        return False
    fa = np.ascontiguousarray(a).reshape(-1).view(width)
    fb = np.ascontiguousarray(b).reshape(-1).view(width)
    buf = np.empty(min(DIFF_CHUNK, max(1, fa.size)), dtype=bool)
    for start in range(0, fa.size, DIFF_CHUNK):
        part = buf[: min(DIFF_CHUNK, fa.size - start)]
        np.equal(fa[start : start + part.size], fb[start : start + part.size], out=part)
        if not part.all():
            return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
