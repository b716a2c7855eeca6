"""Pass ordering from what the passes declare: one constraint graph.

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

Why two representations: every compile registers every pass (a cycle check each) and checks
its pipeline, on a graph of some twenty nodes, which plain dicts answer in microseconds
(:class:`Constraints`); importing networkx for that cost each compile about 0.1 s (issue 11).
networkx is imported only to word an error (which declarations order two passes, which cycle
closes) and for :func:`canonical_order`, on the same edges added in the same order as before,
so those messages and that order are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from segc.errors import SegcError

if TYPE_CHECKING:
    import networkx as nx

    from segc.passbase import Pass


class Constraints:
    """The declared edges ``A -> B`` (A runs before B) as successor and predecessor sets."""

    def __init__(self, classes: Iterable[type[Pass]]) -> None:
        self.succ: dict[str, set[str]] = {}
        self.pred: dict[str, set[str]] = {}
        for cls in classes:
            self._node(cls.name)
            for before in (*cls.runs_after, *cls.requires):
                self._edge(before, cls.name)
            for after in cls.runs_before:
                self._edge(cls.name, after)

    def _node(self, name: str) -> None:
        self.succ.setdefault(name, set())
        self.pred.setdefault(name, set())

    def _edge(self, a: str, b: str) -> None:
        self._node(a)
        self._node(b)
        self.succ[a].add(b)
        self.pred[b].add(a)

    def __contains__(self, name: object) -> bool:
        return name in self.succ

    @staticmethod
    def _reach(step: dict[str, set[str]], source: str) -> set[str]:
        seen: set[str] = set()
        stack = [source]
        while stack:
            for n in step[stack.pop()]:
                if n not in seen:
                    seen.add(n)
                    stack.append(n)
        seen.discard(source)  # as networkx's descendants/ancestors: never the node itself
        return seen

    def descendants(self, name: str) -> set[str]:
        """Every pass that must run after ``name``."""
        return self._reach(self.succ, name)

    def ancestors(self, name: str) -> set[str]:
        """Every pass that must run before ``name``."""
        return self._reach(self.pred, name)

    def has_cycle(self) -> bool:
        """Kahn's algorithm: a cycle is whatever is left once every node without a predecessor is peeled."""
        indegree = {n: len(p) for n, p in self.pred.items()}
        ready = [n for n, d in indegree.items() if d == 0]
        peeled = 0
        while ready:
            n = ready.pop()
            peeled += 1
            for m in self.succ[n]:
                indegree[m] -= 1
                if indegree[m] == 0:
                    ready.append(m)
        return peeled < len(indegree)


def constraint_graph(classes: Iterable[type[Pass]]) -> nx.DiGraph[str]:
    """The same edges as a networkx graph, to word errors: ``by`` names the pass that declared
    the edge, ``reason`` its ``order_reason``."""
    import networkx as nx

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
    classes = list(classes)
    if not Constraints(classes).has_cycle():
        return None
    import networkx as nx

    edges = nx.find_cycle(constraint_graph(classes))
    return [str(a) for a, _ in edges] + [str(edges[0][0])]


def _registered() -> list[type[Pass]]:
    from segc.passbase import all_passes

    return list(all_passes().values())


def registered_graph() -> nx.DiGraph[str]:
    return constraint_graph(_registered())


def _why(first: str, then: str) -> str:
    """Which declarations order ``first`` before ``then``, for the error message."""
    import networkx as nx

    graph = registered_graph()
    path = [str(n) for n in nx.shortest_path(graph, first, then)]
    edge = graph.edges[path[0], path[1]]
    declared = f"declared by {edge['by']}" + (f": {edge['reason']}" if edge.get("reason") else "")
    return declared if len(path) == 2 else f"{' -> '.join(path)}; {declared}"


def check_order(names: Sequence[str], where: str = "the pipeline") -> None:
    """Refuse a pass list that breaks a declared constraint, before any pass runs (exit 2)."""
    from segc.passbase import get_pass

    graph = Constraints(_registered())
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
        must_follow = graph.descendants(name)
        for earlier in names[:i]:
            if earlier in must_follow:
                raise SegcError(f"pass {earlier} must run after {name} ({_why(name, earlier)}); "
                                f"list {name} before {earlier} in {where}")


def insertion_index(names: Sequence[str], name: str) -> int:
    """Where ``name`` goes in ``names``: before the first pass that must follow it, else at the end.

    Refused (exit 2) when a pass that must precede it comes after that point: no place in
    this list satisfies both."""
    graph = Constraints(_registered())
    if name not in graph:
        return len(names)
    after, before = graph.descendants(name), graph.ancestors(name)
    at = next((i for i, n in enumerate(names) if n in after), len(names))
    late = [n for n in names[at:] if n in before]
    if late:
        raise SegcError(f"pass {name} cannot be inserted into {', '.join(names)}: it must run before {names[at]} "
                        f"({_why(name, names[at])}) and after {late[0]} ({_why(late[0], name)})")
    return at


def canonical_order() -> list[str]:
    """Every registered pass in one order that satisfies all constraints (ties by name)."""
    import networkx as nx

    return [str(n) for n in nx.lexicographical_topological_sort(registered_graph())]
