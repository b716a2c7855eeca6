"""Pass ordering from what the passes declare: one constraint graph on networkx.

Each pass says what it needs (``runs_after``, ``runs_before``, ``requires`` on
``segc.passbase.Pass``, after torch.fx's pass-manager constraints and TVM's ``required``).
They become edges ``A -> B`` ("A runs before B") of one directed graph, and everything that
needs an order reads it from there:

- registration refuses a pass whose constraints close a cycle (:func:`find_cycle`);
- a pipeline (``--passes``, a recipe's list, what legalisation inserted) is checked before
  any pass runs (:func:`check_order`): ``pass X must run after Y (...)``, exit 2;
- legalisation inserts a pass before the first listed pass that must follow it
  (:func:`insertion_index`), which replaced a hand-kept rank table.

Constraints bind only passes that are both in a pipeline; order is transitive, so
``A -> B -> C`` orders A before C even when B is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import networkx as nx

from segc.errors import SegcError

if TYPE_CHECKING:
    from segc.passbase import Pass


def constraint_graph(classes: Iterable[type[Pass]]) -> nx.DiGraph[str]:
    """Edges ``A -> B``: A runs before B; ``by`` names the pass that declared the edge."""
    graph: nx.DiGraph[str] = nx.DiGraph()
    for cls in classes:
        graph.add_node(cls.name)
        for before in (*cls.runs_after, *cls.requires):
            graph.add_edge(before, cls.name, by=cls.name, reason=cls.order_reason)
        for after in cls.runs_before:
            graph.add_edge(cls.name, after, by=cls.name, reason=cls.order_reason)
    return graph


def find_cycle(classes: Iterable[type[Pass]]) -> list[str] | None:
    """The pass names of a cycle in the declared constraints (first repeated at the end), or None."""
    try:
        edges = nx.find_cycle(constraint_graph(classes))
    except nx.NetworkXNoCycle:
        return None
    return [str(a) for a, _ in edges] + [str(edges[0][0])]


def registered_graph() -> nx.DiGraph[str]:
    from segc.passbase import all_passes

    return constraint_graph(all_passes().values())


def _why(graph: nx.DiGraph[str], first: str, then: str) -> str:
    """Which declarations order ``first`` before ``then``, for the error message."""
    path = [str(n) for n in nx.shortest_path(graph, first, then)]
    edge = graph.edges[path[0], path[1]]
    declared = f"declared by {edge['by']}" + (f": {edge['reason']}" if edge.get("reason") else "")
    return declared if len(path) == 2 else f"{' -> '.join(path)}; {declared}"


def check_order(names: Sequence[str], where: str = "the pipeline") -> None:
    """Refuse a pass list that breaks a declared constraint, before any pass runs (exit 2)."""
    from segc.passbase import get_pass

    graph = registered_graph()
    for i, name in enumerate(names):
        for needed in get_pass(name).requires:
            if needed not in names[:i]:
                reason = get_pass(name).order_reason
                why = f" ({reason})" if reason else ""
                raise SegcError(f"pass {name} requires pass {needed} earlier in {where}{why}; "
                                f"add {needed} before {name}")
    for i, name in enumerate(names):
        if name not in graph:
            continue
        must_follow = nx.descendants(graph, name)
        for earlier in names[:i]:
            if earlier in must_follow:
                raise SegcError(f"pass {earlier} must run after {name} ({_why(graph, name, earlier)}); "
                                f"list {name} before {earlier} in {where}")


def insertion_index(names: Sequence[str], name: str) -> int:
    """Where ``name`` goes in ``names``: before the first pass that must follow it, else at the end.

    Refused (exit 2) when a pass that must precede it comes after that point: no place in
    this list satisfies both."""
    graph = registered_graph()
    if name not in graph:
        return len(names)
    after, before = nx.descendants(graph, name), nx.ancestors(graph, name)
    at = next((i for i, n in enumerate(names) if n in after), len(names))
    late = [n for n in names[at:] if n in before]
    if late:
        raise SegcError(f"pass {name} cannot be inserted into {', '.join(names)}: it must run before {names[at]} "
                        f"({_why(graph, name, names[at])}) and after {late[0]} ({_why(graph, late[0], name)})")
    return at


def canonical_order() -> list[str]:
    """Every registered pass in one order that satisfies all constraints (ties by name)."""
    return [str(n) for n in nx.lexicographical_topological_sort(registered_graph())]
