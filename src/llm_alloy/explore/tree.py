"""The knowledge tree: domains discovered by the sources, each with a Beta posterior over "the target loses here".

Persisted as JSON after every step; the write is atomic so a crash mid-save never leaves a half-written tree.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

from llm_alloy.explore.bandit import update_posterior
from llm_alloy.files import write_atomic

FORMAT_VERSION = 1
# A disabled unk arm keeps a Beta posterior (so every arm draws the same way) that never wins a draw.
DISABLED_BETA = 1e12
# Loops of per-node statistics kept for allocators that look at trends; bounds the file size.
HISTORY_LOOPS = 32


class TreeFileError(ValueError):
    """A knowledge-tree file that is missing, unreadable or not a valid tree."""


@dataclass
class Arm:
    """The `unk` child of a node: its draw decides whether a new domain is opened at that position."""

    alpha: float = 1.0
    beta: float = 1.0
    failures: int = 0
    disabled: bool = False

    def disable(self) -> None:
        self.disabled = True
        self.beta = DISABLED_BETA


class LoopStat(NamedTuple):
    """One loop's exploration outcomes at a node, with the samples of its subtree trained before them.

    Immutable and hashable so allocators can memoise fits on a node's recent history.
    """

    trained: int
    n: int
    successes: int


@dataclass
class Node:
    name: str
    path: tuple[str, ...]
    alpha: float = 1.0
    beta: float = 1.0
    window: list[int] = field(default_factory=list)
    count: int = 0
    children: dict[str, Node] = field(default_factory=dict)
    unk: Arm | None = None
    pool: list[dict] = field(default_factory=list)
    # Samples of this subtree drawn for training, and per-loop outcomes: what trend-based allocators read.
    trained: int = 0
    history: list[LoopStat] = field(default_factory=list)
    loop_n: int = 0
    loop_successes: int = 0


class KnowledgeTree:
    """Root (no posterior: only children and an unk arm) plus up to `max_depth` levels of domains.

    window=None is the paper's "global" mode: no sliding windows, so Introspection-Rebirth never fires.
    """

    def __init__(self, max_depth: int = 3, window: int | None = 20) -> None:
        if max_depth < 1:
            raise ValueError(f"max_depth must be >= 1, got {max_depth}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1 or None, got {window}")
        self.max_depth = max_depth
        self.window = window
        self.root = Node(name="", path=(), unk=Arm())

    @classmethod
    def seeded(cls, names: Iterable[str], max_depth: int = 3, window: int | None = 20) -> KnowledgeTree:
        """A tree whose main domains come from config rather than from the sources."""
        tree = cls(max_depth=max_depth, window=window)
        for name in names:
            tree.add_child((), name)
        return tree

    # --- structure -------------------------------------------------------------------------------------------

    def node(self, path: tuple[str, ...]) -> Node:
        current = self.root
        for depth, name in enumerate(path):
            try:
                current = current.children[name]
            except KeyError:
                raise KeyError(f"no node {name!r} under {path[:depth]!r}") from None
        return current

    def add_child(self, parent_path: tuple[str, ...], name: str) -> Node:
        if len(parent_path) >= self.max_depth:
            raise ValueError(f"cannot add {name!r} under {parent_path!r}: the tree's max depth is {self.max_depth}")
        if not name:
            raise ValueError("a domain name must be non-empty")
        parent = self.node(parent_path)
        if name in parent.children:
            raise ValueError(f"{name!r} already exists under {parent_path!r}")
        path = (*parent_path, name)
        child = Node(name=name, path=path, unk=Arm() if len(path) < self.max_depth else None)
        parent.children[name] = child
        return child

    def iter_nodes(self) -> Iterator[Node]:
        """Every node except the root, parents before children."""
        stack = list(reversed(self.root.children.values()))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    def leaves(self) -> list[Node]:
        """The nodes at max depth: the only ones that hold question pools."""
        return [node for node in self.iter_nodes() if len(node.path) == self.max_depth]

    def domain_names(self) -> set[str]:
        return {node.name for node in self.iter_nodes()}

    # --- outcomes --------------------------------------------------------------------------------------------

    def record(self, path: tuple[str, ...], reward: int | None, record: dict | None = None) -> None:
        """Add one question's outcome to every node on the path and keep its record in the leaf's pool.

        reward None stores the record without an outcome (a question whose verdict is unknown is still
        usable as training data).
        """
        if record is not None and len(path) != self.max_depth:
            raise ValueError(f"records belong to leaves at depth {self.max_depth}, got path {path!r}")
        nodes = [self.node(path[:depth]) for depth in range(1, len(path) + 1)]
        if reward is not None:
            for node in nodes:
                node.alpha, node.beta = update_posterior(node.alpha, node.beta, reward)
                node.count += 1
                node.loop_n += 1
                node.loop_successes += reward
                if self.window is not None:
                    node.window.append(reward)
                    del node.window[: -self.window]
        if record is not None:
            nodes[-1].pool.append(record)

    def mark_trained(self, path: tuple[str, ...], n: int = 1) -> None:
        for depth in range(1, len(path) + 1):
            self.node(path[:depth]).trained += n

    def close_exploration(self) -> None:
        """End a loop's exploration: file each node's outcomes since the last call under its trained count."""
        for node in self.iter_nodes():
            node.history.append(LoopStat(node.trained, node.loop_n, node.loop_successes))
            del node.history[:-HISTORY_LOOPS]
            node.loop_n = node.loop_successes = 0

    # --- persistence -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "max_depth": self.max_depth,
            "window": self.window,
            "root": {"children": [_node_to_dict(c) for c in self.root.children.values()], "unk": _arm(self.root.unk)},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KnowledgeTree:
        """Rebuild a tree; raises ValueError naming the first problem found."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported format {data.get('format')!r} (expected {FORMAT_VERSION})")
        tree = cls(max_depth=_int(data, "max_depth"), window=data.get("window"))
        root = _mapping(data, "root")
        tree.root.unk = _arm_from(root.get("unk"))
        _children_from(tree, (), root)
        return tree

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (a crash leaves the previous snapshot intact)."""
        write_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KnowledgeTree:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TreeFileError(f"knowledge tree {path}: file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TreeFileError(f"knowledge tree {path}: cannot read ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TreeFileError(f"knowledge tree {path}: corrupt JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise TreeFileError(f"knowledge tree {path}: invalid tree ({exc})") from None


def _arm(arm: Arm | None) -> dict[str, Any] | None:
    return None if arm is None else {"alpha": arm.alpha, "beta": arm.beta, "failures": arm.failures, "disabled": arm.disabled}


def _node_to_dict(node: Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "alpha": node.alpha,
        "beta": node.beta,
        "window": node.window,
        "count": node.count,
        "trained": node.trained,
        "history": [list(s) for s in node.history],
        "loop": [node.loop_n, node.loop_successes],
        "unk": _arm(node.unk),
        "pool": node.pool,
        "children": [_node_to_dict(c) for c in node.children.values()],
    }


def _mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data[key]
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} must be an object")
    return value


def _int(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key!r} must be an integer, got {value!r}")
    return value


def _arm_from(data: dict[str, Any] | None) -> Arm | None:
    if data is None:
        return None
    return Arm(float(data["alpha"]), float(data["beta"]), int(data["failures"]), bool(data["disabled"]))


def _children_from(tree: KnowledgeTree, parent_path: tuple[str, ...], data: dict[str, Any]) -> None:
    children = data.get("children", [])
    if not isinstance(children, list):
        raise ValueError(f"children of {parent_path!r} must be a list")
    for item in children:
        node = tree.add_child(parent_path, str(item["name"]))
        node.alpha, node.beta = float(item["alpha"]), float(item["beta"])
        if min(node.alpha, node.beta) <= 0:
            raise ValueError(f"non-positive posterior at {node.path!r}")
        node.window = [int(r) for r in item["window"]]
        node.count = _int(item, "count")
        node.trained = _int(item, "trained")
        node.history = [LoopStat(int(t), int(n), int(s)) for t, n, s in item["history"]]
        node.loop_n, node.loop_successes = (int(v) for v in item["loop"])
        node.unk = _arm_from(item.get("unk"))
        node.pool = list(item["pool"])
        _children_from(tree, node.path, item)
