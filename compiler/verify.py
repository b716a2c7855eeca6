"""Verification: run graph states in onnxruntime and judge each pass by its contract.

Each verified graph state gets exactly one onnxruntime session, and each input one run per
state: the outputs of the state before a pass are the reference for the state after it, so
a pipeline of k passes costs k+1 sessions, not 2k. Ops onnxruntime cannot run are lowered
to a runnable reference first (segc.lowering) inside ``make_session``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from segc.errors import SegcError, first_line
from segc.memory import release_memory
from segc.metrics import OutputMetrics, Tolerances, Verdict, compare_output, judge
from segc.modelio import readable_ir
from segc.onnx_graph import real_inputs
from segc.ortrun import SessionConfig, make_session, run_session
from segc.passbase import Contract
from segc.recipe import Recipe
from segc.shapes import OPT_SHAPE_KEY, SHAPE_RANGE_KEY, ShapeRange, ranges_from_metadata
from segc.input_roles import Role, input_roles
from segc.verify_inputs import DEFAULT_PIXEL_BUDGET, Feed, load_user_feeds, random_feed, verification_shapes

Outputs = dict[str, np.ndarray]


@dataclass
class GraphState:
    """One version of the model, its session, and its outputs per feed (computed lazily, once)."""

    model: onnx.ModelProto
    label: str
    config: SessionConfig
    session: ort.InferenceSession | None = None
    outputs: dict[str, Outputs | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    exposed: tuple[str, ...] = ()  # watched tensors this state's session exposes beyond the model's outputs
    checked: bool = True  # False: the input model, its reference run deferred (Verifier.ensure_reference)

    @property
    def output_names(self) -> list[str]:
        """The model's own outputs (not the watched tensors exposed for the verifier)."""
        return [o.name for o in self.model.graph.output if o.name not in self.exposed]

    def open(self) -> None:
        if self.session is None:
            self.session = make_session(self.model, self.config)

    def close(self) -> None:
        """Drop the session, keep the outputs: a session holds its memory arena (about one
        run's activations, 2.3 GiB for hrnet_w48_ocr at 1024x2048) until it is destroyed, and
        a state whose outputs are computed for every feed rarely runs again (:meth:`run`
        opens it anew when it must). The freed arena goes back to the system at once
        (segc.memory): glibc would keep most of it for the next session to grow beside."""
        if self.session is not None:
            self.session = None
            release_memory(collect=False)

    def run(self, feed: Feed) -> Outputs | None:
        """Outputs for ``feed``; None (with the error kept) when onnxruntime cannot run it.

        The outputs own their memory (``run_session(own=True)``): onnxruntime's own arrays
        would keep the session's whole arena alive after :meth:`close`."""
        if feed.label not in self.outputs:
            self.open()
            assert self.session is not None
            try:
                self.outputs[feed.label] = run_session(self.session, feed.arrays, own=True)
            except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no useful base class
                self.outputs[feed.label] = None
                self.errors[feed.label] = first_line(exc)
        return self.outputs[feed.label]


class Verifier:
    """Creates graph states and compares them (see module docstring)."""

    def __init__(self, *, recipe: Recipe | None = None, ranges: dict[str, ShapeRange] | None = None,
                 tolerances: Tolerances | None = None, config: SessionConfig | None = None, seed: int = 0,
                 user_inputs: str | Path | None = None, pixel_budget: int = DEFAULT_PIXEL_BUDGET,
                 watch: list[str] | tuple[str, ...] = ()) -> None:
        self.recipe = recipe
        self.ranges = dict(ranges or {})
        self.tolerances = tolerances or Tolerances()
        self.config = config or SessionConfig()
        self.seed = seed
        self.user_inputs = Path(user_inputs) if user_inputs else None
        self.pixel_budget = pixel_budget
        # tensors (e.g. the --outputs chosen on the input model) compared at every step, so a
        # pass that keeps a name but changes its value fails at that pass
        self.watch = tuple(watch)
        self._feeds: dict[tuple[tuple[str, tuple[int, ...]], ...], Feed] = {}
        self._user_feeds: list[Feed] | None = None
        # seeded inputs are natural-image-like until the input model shows no signal on them
        self.text_pages = False
        self.probe_runs = 0  # extra reference runs spent choosing the kind of seeded input (0 or 1)
        self.notes: list[str] = []

    @property
    def feed_labels(self) -> list[str]:
        """Every input set used so far (for the report)."""
        feeds = list(self._feeds.values()) + list(self._user_feeds or [])
        return [f.label for f in feeds]

    # -- inputs ---------------------------------------------------------------------------
    def _ranges_for(self, model: onnx.ModelProto) -> dict[str, ShapeRange]:
        """Command line over model metadata over the recipe's range (the seed deployment's)."""
        ranges = self._recipe_ranges()
        meta = {p.key: p.value for p in model.metadata_props}
        ranges.update({r.name: r for r in ranges_from_metadata(meta)})
        ranges.update(self.ranges)
        return ranges

    def _recipe_ranges(self) -> dict[str, ShapeRange]:
        if self.recipe is None or not self.recipe.shape_range:
            return {}
        meta = {SHAPE_RANGE_KEY: self.recipe.shape_range, OPT_SHAPE_KEY: self.recipe.opt_shape or ""}
        return {r.name: r for r in ranges_from_metadata(meta)}

    def feeds_for(self, model: onnx.ModelProto) -> list[Feed]:
        """The inputs this state is checked with; identical shapes give the identical Feed object."""
        shape_sets = verification_shapes(model, self._ranges_for(model), self.recipe, self.pixel_budget)
        if self.user_inputs is not None:
            if self._user_feeds is None:
                self._user_feeds = load_user_feeds(self.user_inputs, model, self.recipe,
                                                   shape_sets[0] if shape_sets else None)
            return self._user_feeds
        feeds = []
        for shapes in shape_sets:
            key = tuple(sorted(shapes.items()))
            if key not in self._feeds:
                self._feeds[key] = random_feed(
                    model, shapes, self.recipe, self.seed + len(self._feeds), text=self.text_pages
                )
            feeds.append(self._feeds[key])
        return feeds

    # -- states ---------------------------------------------------------------------------
    def initial_state(self, model: onnx.ModelProto, *, defer: bool = False) -> GraphState:
        """The reference state; an input model onnxruntime cannot run is a usage error.

        ``defer`` (boundary verification, segc.boundary_verify): no session and no run yet,
        when no probe needs one; the first check runs only what it needs of the input model,
        and :meth:`ensure_reference` makes the usage-error checks when a check needs them.
        """
        state = self.new_state(model, "input model")
        if defer and (self.user_inputs is not None or self.recipe is not None or self.text_pages):
            state.checked = False
            return state
        _open_input(state)
        if self._prefers_text(state, model):
            self._feeds.clear()  # the first text feed is the probe's, whose outputs the state holds
        self._run_reference(state, model)
        return state

    def ensure_reference(self, state: GraphState) -> None:
        """Load and run a deferred input model on every feed (raises SegcError as
        :meth:`initial_state` would); nothing for any other state."""
        if state.checked:
            return
        state.checked = True
        _open_input(state)
        self._run_reference(state, state.model)

    def _run_reference(self, state: GraphState, model: onnx.ModelProto) -> None:
        for feed in self.feeds_for(model):
            if state.run(feed) is None:
                raise SegcError(
                    f"onnxruntime cannot run the input model at {feed.label}: {state.errors[feed.label]}"
                    f"{self._derived_hint(model) or self._shape_hint(feed)}"
                )

    def _shape_hint(self, feed: Feed) -> str:
        """The input model itself fails at a shape segc picked from the range: say how to narrow it."""
        if self.user_inputs is not None:
            return ""
        return (
            "; the model does not take every shape of its range (some only take H == W, or multiples of a "
            "stride): give --input-shape a range it takes (e.g. NAME:1,3,LO~HI/64), a static shape, or "
            "--verify-inputs data at shapes it takes"
        )

    def _prefers_text(self, state: GraphState, model: onnx.ModelProto) -> bool:
        """Whether a model with no recipe answers rendered text far more than photo-like fields.

        A recipe says what a model is (its task); a bare ONNX file does not. A trained text
        detector answers photo-like inputs with nothing: the real PP-OCRv4 detector's maximum
        probability is 9e-6 at 256x256 against 1.0 on a page of words. Checks judged on such
        outputs say nothing, so at the smallest shape both kinds are run once and text pages
        are used when their outputs spread over 100 times as far. One extra reference run,
        only for models without a recipe and without user data.
        """
        if self.user_inputs is not None or self.recipe is not None or self.text_pages:
            return False
        feeds = self.feeds_for(model)
        if not feeds or not feeds[0].label.startswith("random["):
            return False  # no image input was seeded
        photo = state.run(feeds[0])
        shapes = {k: tuple(v.shape) for k, v in feeds[0].arrays.items()}
        probe = random_feed(model, shapes, self.recipe, self.seed, text=True)
        text = state.run(probe)
        self.probe_runs += 1  # whichever kind loses, one of the two runs is spent on choosing
        if photo is None or text is None:
            return False
        a, b = _spread(photo), _spread(text)
        if not b > 100 * a:
            return False
        self.text_pages = True
        self.notes.append(
            f"no recipe: the model answers rendered text pages (output spread {b:.3g}) far more than "
            f"photo-like inputs ({a:.3g}), so it is verified on text pages"
        )
        return True

    def _derived_hint(self, model: onnx.ModelProto) -> str:
        """When segc made up values for non-data inputs, say which and how to give real ones."""
        if self.user_inputs is not None:
            return ""
        names = [vi.name for vi in real_inputs(model)]
        derived = [r for r in input_roles(model, names).values() if r.role is not Role.DATA]
        if not derived:
            return ""
        listed = ", ".join(f"{r.name!r} ({r.what})" for r in derived)
        return (
            f"; segc derived values for {listed}: give real ones with --verify-inputs data.npz "
            "(one array per input name)"
        )

    def new_state(self, model: onnx.ModelProto, label: str) -> GraphState:
        """A state of ``model``; watched tensors it computes but does not output are exposed."""
        outputs = {o.name for o in model.graph.output}
        produced = {o for n in model.graph.node for o in n.output}
        extra = [w for w in self.watch if w in produced and w not in outputs]
        if extra:
            return GraphState(expose_tensors(model, extra), label, self.config, exposed=tuple(extra))
        return GraphState(model, label, self.config)

    def compare(
        self,
        before: GraphState,
        after: GraphState,
        contract: Contract,
        pass_tolerances: dict[str, float] | None = None,
        *,
        outputs_may_change: bool = False,
    ) -> Verdict:
        """Judge ``after`` against ``before`` by ``contract`` (and a pass's own tolerance defaults).

        Which outputs are compared: for a pass that may choose the outputs (contract
        ``outputs``, or ``outputs_may_change`` when several passes are judged at once) each
        output of ``after`` against the same tensor exposed in ``before``; for every other
        contract each output of ``before``, which ``after`` must still have under the same name
        (a lost or renamed output fails). Inputs: the shapes ``after`` is checked at, and when
        none of those ran in both graphs, the shapes ``before`` is checked at, so two graphs
        with different input shapes compare at some shape or fail with "nothing compared".
        """
        try:
            after.open()
        except Exception as exc:  # noqa: BLE001
            return Verdict(
                ok=False, contract=contract.value, reasons=[f"onnxruntime cannot load the graph: {first_line(exc)}"]
            )
        warnings: list[str] = []
        reasons: list[str] = []
        if contract is Contract.OUTPUTS or outputs_may_change:
            produced = (
                {o for n in before.model.graph.node for o in n.output}
                | set(before.output_names)
                | {i.name for i in before.model.graph.input}
            )
            names = []
            for name in after.output_names:
                if name in produced:
                    names.append(name)
                else:
                    reasons.append(f"{name}: no tensor of that name in the graph before, nothing to compare it with")
            # a pass may make intermediate tensors outputs (pruning): compare them with the
            # same tensors exposed in the graph before it
            reference = self._exposing(before, names)
        else:
            names = list(before.output_names)
            for name in names:
                if name not in after.output_names:
                    reasons.append(f"output {name!r} is gone (the graph now has {after.output_names})")
            names = [n for n in names if n in after.output_names]
            reference = before
        for name in self.watch:  # chosen on the input model: must keep its meaning through every pass
            if name in names:
                continue
            if name in before.exposed or name in before.output_names:
                if name in after.exposed or name in after.output_names:
                    names.append(name)
                else:
                    reasons.append(f"tensor {name!r} chosen by --outputs on the input model is gone after this pass")
        watched = [n for n in self.watch if n in names]
        if watched:
            warnings.append(
                f"compared also {watched}, chosen by --outputs on the input model: a pass that changes "
                f"their values fails; --skip it to keep them"
            )
        metrics: list[OutputMetrics] = []
        skipped: list[str] = []
        tried: set[tuple[tuple[str, tuple[int, ...]], ...]] = set()
        both_failed: list[str] = []  # shapes neither graph could run
        for feeds in (self.feeds_for(after.model), self.feeds_for(before.model)):
            for feed in feeds:
                if feed.shape_key in tried:
                    continue
                tried.add(feed.shape_key)
                cand = after.run(feed)
                ref = reference.run(feed)
                if ref is None and cand is None:
                    both_failed.append(f"{feed.label}: {after.errors[feed.label]}")
                    continue
                if cand is None:
                    reasons.append(f"onnxruntime failed at {feed.label}: {after.errors[feed.label]}")
                    continue
                if ref is None:
                    skipped.append(feed.label)
                    continue
                metrics.extend(compare_output(n, feed.label, ref[n], cand[n]) for n in names)
            if metrics:
                break
        if not metrics and both_failed:
            reasons.append(f"neither graph runs at {'; '.join(both_failed[:2])}")
        if skipped:
            warnings.append(f"{', '.join(skipped)}: the graph before cannot take this shape; not compared there")
        tolerances = self.tolerances.relaxed(pass_tolerances or {}, keep=self.tolerances.user_set)
        verdict = judge(contract, metrics, tolerances)
        verdict.reasons = reasons + verdict.reasons
        verdict.warnings = warnings + verdict.warnings
        verdict.ok = not verdict.reasons
        return verdict

    def _exposing(self, state: GraphState, names: list[str]) -> GraphState:
        """``state`` itself when it already has ``names`` as outputs, else a copy exposing them."""
        session_outputs = [o.name for o in state.model.graph.output]
        missing = [n for n in names if n not in session_outputs]
        if not missing:
            return state
        return GraphState(
            expose_tensors(state.model, missing), f"{state.label} (exposing {len(missing)} tensors)", self.config
        )


def expose_tensors(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` with the given intermediate tensors added as graph outputs."""
    out = onnx.ModelProto()
    out.CopyFrom(readable_ir(model))
    known = {vi.name: vi for vi in out.graph.value_info}
    if any(n not in known for n in names):
        try:
            inferred = onnx.shape_inference.infer_shapes(out)
            known.update({vi.name: vi for vi in inferred.graph.value_info})
        except Exception:  # noqa: BLE001 - inference is a help here, not a requirement
            pass
    for name in names:
        vi = onnx.ValueInfoProto()
        if name in known:
            vi.CopyFrom(known[name])
        else:
            vi.name = name
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        out.graph.output.append(vi)
    return out


def _spread(outputs: Outputs) -> float:
    """The largest max - min over the finite values of the float outputs."""
    spreads = [0.0]
    for value in outputs.values():
        if value.dtype.kind == "f" and value.size:
            finite = value[np.isfinite(value)]
            if finite.size:
                spreads.append(float(finite.max() - finite.min()))
    return max(spreads)


def _open_input(state: GraphState) -> None:
    """Open the input model's session; one onnxruntime cannot load is the user's model, not a
    pass's fault, so it is a usage error that names the way round it."""
    try:
        state.open()
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; all mean "cannot run"
        raise SegcError(
            f"onnxruntime cannot load the input model ({first_line(exc)}); use --verify none to skip verification"
        ) from None
