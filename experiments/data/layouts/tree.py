"""Expected folder trees, rendered as indented ASCII trees (one source for the layout errors and the README)."""

from __future__ import annotations

from typing import NamedTuple, Sequence


class Node(NamedTuple):
    """One folder (or file) of an expected tree, with a short note and its children."""

    name: str
    note: str = ""
    children: tuple["Node", ...] = ()


def render_tree(top: str, nodes: Sequence[Node]) -> str:
    """``top`` then ``nodes`` drawn with ``|--`` / ```--`` branches; notes aligned in one column."""
    rows: list[tuple[str, str]] = []

    def walk(children: Sequence[Node], prefix: str) -> None:
        for i, node in enumerate(children):
            last = i == len(children) - 1
            rows.append((prefix + ("`-- " if last else "|-- ") + node.name, node.note))
            walk(node.children, prefix + ("    " if last else "|   "))

    walk(nodes, "")
    width = max((len(head) for head, note in rows if note), default=0) + 2
    lines = [top] + [f"{head:<{width}}{note}" if note else head for head, note in rows]
    return "\n".join(lines)


def class_nodes(real: str, fake: str, notes: bool = True) -> tuple[Node, Node]:
    """The two class folders, in the order ``ls`` lists them."""
    pair = (Node(f"{real}/", "real images (label 0)" if notes else ""),
            Node(f"{fake}/", "synthetic images (label 1)" if notes else ""))
    return tuple(sorted(pair, key=lambda n: n.name))  # type: ignore[return-value]
