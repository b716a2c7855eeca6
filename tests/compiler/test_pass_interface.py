"""The pass interface as declared: typed options, the two pass kinds, ordering constraints.

Each test drives the public surface (``PassOption``, ``run_pipeline``, ``segc compile`` /
``segc passes``) with small onnx.helper graphs; throw-away passes are registered and removed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper

import segc.passes
from segc import passbase
from segc.cli import main
from segc.errors import SegcError
from segc.legalise import insert_pass
from segc.pass_order import Constraints, canonical_order, check_order, registered_graph
from segc.passbase import (
    Contract,
    GraphPass,
    ModelPass,
    OptionKind,
    PassContext,
    PassOption,
    PassResult,
    all_passes,
    register_pass,
    unregister_pass,
)
from segc.pipeline import PassSpec, run_pipeline

#: legalise's insertion order before it was derived from the declared constraints (its
#: PASS_RANK table, lowest rank first): the declarations must keep it valid.
OLD_RANK_ORDER = ["fix_input_shapes", "simplify", "fold_resize_scales", "resize_broadcast", "resize_to_nearest",
                  "prune_outputs", "expand_functions", "rewrite_deform_conv", "convert_opset", "set_shape_range",
                  "cleanup"]


def relu_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def saved(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    onnx.save(relu_model(), path)
    return path


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("segc: error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------ typed options

BOOL = PassOption(OptionKind.BOOL, "a flag", default=True)


@pytest.mark.parametrize("given, expected", [("off", False), ("on", True), ("true", True), ("FALSE", False),
                                             ("no", False), (0, False), (1, True), ("0", False), ("1", True),
                                             (False, False)])
def test_bool_option_coerces_words_and_digits(given: object, expected: bool) -> None:
    assert BOOL.coerce(given, "p.flag") is expected


@pytest.mark.parametrize("given", ["maybe", 2, 0.5, ["on"]])
def test_bool_option_refuses_anything_else_naming_valid_values(given: object) -> None:
    with pytest.raises(SegcError, match=r"option p\.flag=.* is not a valid bool; valid values: true, on, yes, 1, f"):
        BOOL.coerce(given, "p.flag")


def test_int_float_choice_and_list_options_coerce() -> None:
    integer = PassOption(OptionKind.INT, "n")
    assert integer.coerce("16", "p.n") == 16 and integer.coerce(3.0, "p.n") == 3 and integer.coerce(7, "p.n") == 7
    for bad in ("1.5", 2.5, True, "x"):
        with pytest.raises(SegcError, match="is not a valid int; valid values: a whole number"):
            integer.coerce(bad, "p.n")
    number = PassOption(OptionKind.FLOAT, "x")
    assert number.coerce("0.25", "p.x") == 0.25 and number.coerce(1, "p.x") == 1.0
    with pytest.raises(SegcError, match="is not a valid float"):
        number.coerce("high", "p.x")
    choice = PassOption(OptionKind.CHOICE, "form", choices=("onnx", "ascend"))
    assert choice.coerce("ASCEND", "p.form") == "ascend"
    with pytest.raises(SegcError, match="p.form=mmcv is not a valid choice; valid values: onnx, ascend"):
        choice.coerce("mmcv", "p.form")
    texts = PassOption(OptionKind.STR_LIST, "shapes")
    assert texts.coerce("x:1,3;y:2", "p.s") == ["x:1,3", "y:2"] and texts.coerce(["a", " b "], "p.s") == ["a", "b"]
    with pytest.raises(ValueError, match="choices"):
        PassOption(OptionKind.STR, "no choices here", choices=("a",))
    with pytest.raises(SegcError, match="not a valid int"):
        PassOption(OptionKind.INT, "bad default", default="many")  # a declaration error shows at import


def test_resolve_options_fills_defaults_and_refuses_unknown_keys() -> None:
    simplify = all_passes()["simplify"]
    assert simplify.resolve_options({}) == {"fold_constants": True}
    assert simplify.resolve_options({"fold_constants": "off"}) == {"fold_constants": False}
    with pytest.raises(SegcError, match="pass simplify has no option fold; it accepts: fold_constants"):
        simplify.resolve_options({"fold": True})


def test_builtin_passes_parse_no_strings_themselves() -> None:
    """rewrite_deform_conv's own "off" parser is gone: the declaration decides."""
    deform = all_passes()["rewrite_deform_conv"]
    given = {"fold_reorder": "off", "form": "Ascend"}
    assert deform.resolve_options(given) == {"form": "ascend", "fold_reorder": False}
    import segc.passes.rewrite_deform_conv as module

    assert not hasattr(module, "parse_bool") and not hasattr(module, "parse_form")


def test_cli_option_of_the_wrong_type_is_one_line_before_any_work(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    line = one_error_line(capsys, ["compile", str(saved(tmp_path)), "--target", "onnxruntime", "--passes", "simplify",
                                   "--option", "simplify.fold_constants=maybe", "-o", str(out)])
    assert line == ("segc: error: option simplify.fold_constants=maybe is not a valid bool; "
                    "valid values: true, on, yes, 1, false, off, no, 0")
    assert not out.exists()


def test_report_records_the_coerced_option_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert main(["compile", str(saved(tmp_path)), "--target", "onnxruntime", "--passes", "simplify,cleanup",
                 "--option", "simplify.fold_constants=off", "-o", str(out)]) == 0, capsys.readouterr().err
    passes = json.loads((out / "report.json").read_text())["passes"]
    assert passes[0]["options"] == {"fold_constants": False}  # "off" was truthy before the declaration
    assert passes[1]["options"] == {}


def test_segc_passes_lists_types_defaults_choices_and_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["simplify"]["options"]["fold_constants"] == {"type": "bool", "default": True, "choices": None,
                                                             "help": "fold constant subgraphs", "required": False}
    assert rows["convert_opset"]["options"]["version"]["required"] is True
    form = rows["rewrite_deform_conv"]["options"]["form"]
    assert form["type"] == "choice" and form["default"] == "onnx"
    assert form["choices"] == ["onnx", "ascend", "mmcv", "decomposed"]
    assert rows["rewrite_deform_conv"]["contract"] == "exact (depends on options)"
    assert rows["simplify"]["kind"] == "model" and rows["cleanup"]["kind"] == "graph"
    assert rows["fix_input_shapes"]["runs_before"] == ["simplify"]
    assert main(["passes"]) == 0
    text = capsys.readouterr().out
    flat = " ".join(text.replace("│", " ").split())  # the table wraps cells; compare the words
    assert "fold_constants (bool, default" in flat and "(model pass)" in flat and "after simplify" in flat


# ------------------------------------------------------------------ the two pass kinds, declared hooks


class Marker(GraphPass):
    """Renames the Relu: a real, exact change made on the shared graph."""

    name = "test_marker"
    seen: list[type] = []

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        Marker.seen.append(type(graph))
        graph.nodes[0].name = "marked"
        return PassResult(changed=True)


class ProtoReader(ModelPass):
    """Receives the whole ModelProto; approximate when asked (``contract_for``), with a tolerance."""

    name = "test_proto_reader"
    options = {"loose": PassOption(OptionKind.BOOL, "declare approximate", default=False)}
    seen: list[str] = []

    @classmethod
    def contract_for(cls, options: Any) -> Contract:
        return Contract.APPROXIMATE if options["loose"] else Contract.EXACT

    @classmethod
    def tolerance_for(cls, options: Any) -> dict[str, float]:
        return {"rtol": 0.5} if options["loose"] else {}

    def run_model(self, model: onnx.ModelProto, ctx: PassContext) -> tuple[onnx.ModelProto, PassResult]:
        ProtoReader.seen.append(model.graph.node[0].name)
        return model, PassResult(changed=False)


@pytest.fixture
def kinds() -> Iterator[None]:
    Marker.seen.clear()
    ProtoReader.seen.clear()
    register_pass(Marker)
    register_pass(ProtoReader)
    yield
    unregister_pass(Marker.name)
    unregister_pass(ProtoReader.name)


def test_pipeline_dispatches_on_the_base_class(kinds: None) -> None:
    result = run_pipeline(relu_model(), [PassSpec("test_marker"), PassSpec("test_proto_reader", {"loose": "on"}),
                                         PassSpec("test_marker")], verify="none")
    assert result.ok
    assert Marker.seen == [gs.Graph, gs.Graph]
    assert ProtoReader.seen == ["marked"], "the model pass sees the graph pass's change, exported"
    assert [r.contract for r in result.records] == ["exact", "approximate", "exact"]
    assert result.records[1].options == {"loose": True}


def test_contract_and_tolerance_hooks_have_defaults() -> None:
    assert Marker.contract_for({}) is Contract.EXACT and Marker.tolerance_for({}) == {}
    assert ProtoReader.tolerance_for({"loose": True}) == {"rtol": 0.5}
    assert all_passes()["simplify"].contract_for({"fold_constants": False}) is Contract.EXACT


def test_every_builtin_pass_is_one_kind_and_complete() -> None:
    """No NotImplementedError stubs: each pass implements its kind's one abstract method."""
    for name, cls in all_passes().items():
        assert issubclass(cls, GraphPass) != issubclass(cls, ModelPass), name
        cls()  # an abstract method left unimplemented raises TypeError here

    class Half(ModelPass):
        name = "test_half"

    with pytest.raises(TypeError, match="abstract"):
        Half()  # type: ignore[abstract]


def test_cleanup_shortcut_skips_the_import_in_apply() -> None:
    out, result = all_passes()["cleanup"]().apply(relu_model(), PassContext())
    assert not result.changed and result.stats["nodes_removed"] == 0


# ------------------------------------------------------------------ ordering constraints


def test_old_rank_order_satisfies_the_declared_constraints() -> None:
    check_order(OLD_RANK_ORDER)
    order = canonical_order()
    assert set(order) == set(all_passes())
    check_order(order)


def test_the_plain_constraint_graph_answers_as_networkx_does() -> None:
    """Compiles read the order from plain dicts (no networkx import); errors and
    canonical_order still word it with networkx: both must agree on every pass."""
    import networkx as nx

    plain, graph = Constraints(all_passes().values()), registered_graph()
    assert set(plain.succ) == set(graph.nodes)
    for name in graph.nodes:
        assert plain.descendants(name) == nx.descendants(graph, name)
        assert plain.ancestors(name) == nx.ancestors(graph, name)
    assert not plain.has_cycle()

    class Loop(GraphPass):
        name = "test_loop_plain"
        runs_after = ("cleanup",)
        runs_before = ("simplify",)

    assert Constraints([*all_passes().values(), Loop]).has_cycle()


@pytest.mark.parametrize("target", ["onnxruntime", "ascend", "tensorrt", "magicmind"])
def test_target_default_pipelines_keep_the_order_and_option_types(target: str) -> None:
    from segc.targets.base import get_target

    t = get_target(target)
    check_order(t.pipeline(None), f"target {target}")
    for name, options in t.pass_options(None).items():
        all_passes()[name].resolve_options(options)


def test_legalise_inserts_each_pass_where_the_constraints_allow() -> None:
    for name in OLD_RANK_ORDER:
        specs = [PassSpec(n) for n in OLD_RANK_ORDER if n != name]
        insert_pass(specs, PassSpec(name))
        check_order([s.name for s in specs])


def test_user_pass_list_out_of_order_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error_line(capsys, ["compile", str(saved(tmp_path)), "--target", "onnxruntime", "--passes",
                                   "cleanup,simplify", "-o", str(tmp_path / "o")])
    assert line.startswith("segc: error: pass cleanup must run after simplify (declared by cleanup: ")
    assert line.endswith("list simplify before cleanup in --passes")
    line = one_error_line(capsys, ["compile", str(saved(tmp_path)), "--target", "onnxruntime", "--passes",
                                   "set_shape_range,fix_input_shapes", "-o", str(tmp_path / "o")])
    assert "must run after fix_input_shapes (fix_input_shapes -> simplify -> set_shape_range;" in line


def test_flags_that_add_a_pass_put_it_where_the_order_allows(tmp_path: Path) -> None:
    """--outputs adds prune_outputs: before the fp16 check, which must follow every rewrite."""
    from segc.cli import build_parser
    from segc.compile_cmd import plan_passes
    from segc.targets.base import get_target

    args = build_parser().parse_args(["compile", str(saved(tmp_path)), "--target", "tensorrt", "--passes", "simplify",
                                      "--precision", "fp16", "--outputs", "relu"])
    specs = plan_passes(args, get_target("tensorrt"), None)
    assert [s.name for s in specs] == ["simplify", "prune_outputs", "emulate_fp16"]
    check_order([s.name for s in specs])


class NeedsSimplify(GraphPass):
    name = "test_needs_simplify"
    requires = ("simplify",)
    order_reason = "it reads what simplify folded"

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        return PassResult(changed=False)


def test_a_required_pass_must_be_present_earlier() -> None:
    register_pass(NeedsSimplify)
    try:
        with pytest.raises(SegcError, match=r"pass test_needs_simplify requires pass simplify earlier in the "
                                            r"pipeline \(it reads what simplify folded\); add simplify before "
                                            r"test_needs_simplify"):
            run_pipeline(relu_model(), [PassSpec("test_needs_simplify")], verify="none")
        check_order(["simplify", "test_needs_simplify"])
    finally:
        unregister_pass(NeedsSimplify.name)


def test_a_cycle_in_declared_constraints_fails_at_registration() -> None:
    class Loop(GraphPass):
        name = "test_loop"
        runs_after = ("cleanup",)  # cleanup runs after simplify ...
        runs_before = ("simplify",)  # ... so this closes a cycle

        def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
            return PassResult(changed=False)

    with pytest.raises(ValueError, match="test_loop's ordering constraints close a cycle: .*simplify.*cleanup"):
        register_pass(Loop)
    assert "test_loop" not in all_passes()


# ------------------------------------------------------------------ a newcomer's pass: one file, no cli.py

NEW_PASS = '''
"""newcomer_identity: put ``copies`` Identity nodes before the output (a test pass)."""

import onnx_graphsurgeon as gs
import numpy as np

from segc.passbase import GraphPass, OptionKind, PassContext, PassOption, PassResult, register_pass


@register_pass
class NewcomerIdentity(GraphPass):
    name = "newcomer_identity"
    summary = "Identity nodes before the output"
    options = {"copies": PassOption(OptionKind.INT, "how many", default=1),
               "enabled": PassOption(OptionKind.BOOL, "do anything at all", default=True)}
    runs_after = ("simplify",)

    def run(self, graph: gs.Graph, ctx: PassContext) -> PassResult:
        if not ctx.option("enabled"):
            return PassResult(changed=False)
        out = graph.outputs[0]
        producer = out.inputs[0]
        tensor = gs.Variable("pre_identity", dtype=np.float32)
        producer.outputs[0] = tensor
        for k in range(ctx.option("copies")):
            nxt = out if k == ctx.option("copies") - 1 else gs.Variable(f"identity_{k}", dtype=np.float32)
            graph.nodes.append(gs.Node("Identity", inputs=[tensor], outputs=[nxt]))
            tensor = nxt
        return PassResult(changed=True, stats={"copies": ctx.option("copies")})
'''


@pytest.fixture
def newcomer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A new ``passes/newcomer_identity.py``: a folder on segc.passes' path, found by the loader."""
    folder = tmp_path / "more_passes"
    folder.mkdir()
    (folder / "newcomer_identity.py").write_text(textwrap.dedent(NEW_PASS))
    monkeypatch.setattr(segc.passes, "__path__", [*segc.passes.__path__, str(folder)])
    monkeypatch.setattr(passbase, "_LOADED", False)
    yield
    unregister_pass("newcomer_identity")
    sys.modules.pop("segc.passes.newcomer_identity", None)


def test_a_new_pass_module_is_listed_compiled_and_recorded(newcomer: None, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "newcomer_identity")
    assert row["options"]["copies"] == {"type": "int", "default": 1, "choices": None, "help": "how many",
                                        "required": False}
    assert row["runs_after"] == ["simplify"] and row["kind"] == "graph"

    out = tmp_path / "o"
    assert main(["compile", str(saved(tmp_path)), "--target", "onnxruntime", "--passes", "simplify,newcomer_identity",
                 "--option", "newcomer_identity.copies=2.0", "--option", "newcomer_identity.enabled=on",
                 "-o", str(out)]) == 0
    capsys.readouterr()
    record = json.loads((out / "report.json").read_text())["passes"][1]
    assert record["name"] == "newcomer_identity" and record["status"] == "ok"
    assert record["options"] == {"copies": 2, "enabled": True} and record["stats"] == {"copies": 2}
    built = onnx.load(out / "m.onnxruntime.onnx")
    assert [n.op_type for n in built.graph.node] == ["Relu", "Identity", "Identity"]

    line = one_error_line(capsys, ["compile", str(saved(tmp_path)), "--target", "onnxruntime", "--passes",
                                   "newcomer_identity,simplify", "-o", str(tmp_path / "o2")])
    assert line.startswith("segc: error: pass newcomer_identity must run after simplify")
    line = one_error_line(capsys, ["compile", str(saved(tmp_path)), "--target", "onnxruntime", "--passes",
                                   "newcomer_identity", "--option", "newcomer_identity.copies=two",
                                   "-o", str(tmp_path / "o3")])
    assert line == "segc: error: option newcomer_identity.copies=two is not a valid int; valid values: a whole number"
