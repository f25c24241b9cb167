"""The ability tree: what the student should know, as a networkx DiGraph keyed by path ids.

A node id is its path from the root, ``"clinical medicine/cardiology/acute coronary syndrome"``, so ids
are stable across runs and readable in every file the loop writes. A node's parent is its path prefix;
``link`` may give a node a second parent (an ability shared by two fields), which makes the graph a DAG,
never a cycle. Per iteration each node stores only its *own* counts (items that sit at it); everything
reported (accuracy, interval, trend) is aggregated over the node's whole subtree on demand, so a parent
always counts every item below it exactly once.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data.records import GeneratedItem, MCQItem, atomic_write_json, first_error
from tree.posterior import Posterior, beta_posterior

logger = logging.getLogger(__name__)

SEP = "/"  # path separator inside node ids (part of the file format, not a setting)
FORMAT = "atkd.ability_tree"
FORMAT_VERSION = 1


class TreeError(ValueError):
    """A tree operation that would corrupt the tree, or a bad tree file (the message names it)."""


def _normalize(component: str) -> str:
    return " ".join(str(component).split())


def split_path(path: str | Sequence[str]) -> list[str]:
    """Node path components; refuses empty components and separators inside a component."""
    parts = path.split(SEP) if isinstance(path, str) else list(path)
    out = []
    for part in parts:
        if not isinstance(part, str):
            raise TreeError(f"path component {part!r} in {path!r} is not text")
        if SEP in part and not isinstance(path, str):
            raise TreeError(f"path component {part!r} must not contain {SEP!r}")
        norm = _normalize(part)
        if not norm:
            raise TreeError(f"path {path!r} has an empty component")
        out.append(norm)
    if not out:
        raise TreeError("empty ability path")
    return out


@dataclass(frozen=True)
class NodeStats:
    """One node in one iteration, aggregated over its subtree."""

    node: str
    iteration: int
    posterior: Posterior
    own_n: int  # items sitting at the node itself
    trend: float | None  # posterior mean minus that of the last earlier iteration with data

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "iteration": self.iteration, "own_n": self.own_n, "trend": self.trend,
                **self.posterior.to_dict()}


class _Counts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(ge=0)
    correct: int = Field(ge=0)

    @model_validator(mode="after")
    def _bounded(self) -> "_Counts":
        if self.correct > self.n:
            raise ValueError(f"correct ({self.correct}) exceeds n ({self.n})")
        return self


class _NodeRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    name: str
    description: str = ""
    examples: list[str] = []
    diagnoses: list[str] = []
    stats: dict[int, _Counts] = {}


class _TreeFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: str
    version: int
    root: str
    nodes: list[_NodeRecord]
    edges: list[tuple[str, str]]


class AbilityTree:
    """A rooted DAG of abilities with per-iteration accuracy statistics."""

    def __init__(self, root: str = "clinical medicine") -> None:
        parts = split_path([root])
        self._graph = nx.DiGraph(root=parts[0])
        self._by_key: dict[str, str] = {}  # casefolded id -> id: "Cardiology" duplicates "cardiology"
        self._placed: dict[str, str] = {}  # item id -> the node whose examples list it
        self._add_node(parts[0], "")

    # ------------------------------------------------------------------------------------ structure

    @property
    def graph(self) -> nx.DiGraph:
        """The underlying graph (read it freely; change it only through this class)."""
        return self._graph

    @property
    def root(self) -> str:
        return self._graph.graph["root"]

    def __contains__(self, node: object) -> bool:
        return isinstance(node, str) and node.casefold() in self._by_key

    def __len__(self) -> int:
        return self._graph.number_of_nodes()

    def nodes(self) -> list[str]:
        return list(self._graph.nodes)

    def resolve(self, node: str) -> str:
        """The stored id for ``node`` (ids match case-insensitively); TreeError when absent."""
        try:
            return self._by_key[SEP.join(split_path(node)).casefold()]
        except (KeyError, TreeError):
            raise TreeError(f"no node {node!r} in the tree") from None

    def info(self, node: str) -> dict[str, Any]:
        """The node's attribute dict (name, description, examples, diagnoses, stats)."""
        return self._graph.nodes[self.resolve(node)]

    def _add_node(self, node_id: str, description: str) -> None:
        self._graph.add_node(
            node_id, name=node_id.rsplit(SEP, 1)[-1], description=description, examples=[], diagnoses=[], stats={}
        )
        self._by_key[node_id.casefold()] = node_id

    def add_ability(self, path: str | Sequence[str], description: str = "", *, exist_ok: bool = False) -> str:
        """Add the node at ``path`` (creating missing ancestors) and return its id.

        A path that already exists (case-insensitively) is refused unless ``exist_ok``, in which case the
        existing id is returned and an empty description leaves the stored one alone.
        """
        parts = split_path(path)
        if parts[0].casefold() != self.root.casefold():
            raise TreeError(f"path {SEP.join(parts)!r} must start at the root {self.root!r}")
        node_id = SEP.join(parts)
        if node_id in self:
            if not exist_ok:
                raise TreeError(f"ability {node_id!r} already exists")
            existing = self.resolve(node_id)
            if description and not self._graph.nodes[existing]["description"]:
                self._graph.nodes[existing]["description"] = description
            return existing
        parent = self.root
        for depth in range(2, len(parts) + 1):
            prefix = SEP.join(parts[:depth])
            if prefix in self:
                parent = self.resolve(prefix)
                continue
            # Keep the stored spelling of existing ancestors in the new id.
            prefix = f"{parent}{SEP}{parts[depth - 1]}"
            self._add_node(prefix, description if depth == len(parts) else "")
            self._graph.add_edge(parent, prefix)
            parent = prefix
        logger.debug("added ability %s", parent)
        return parent

    def link(self, parent: str, child: str) -> None:
        """Make ``child`` also a sub-ability of ``parent``; refuses self-links and cycles."""
        parent, child = self.resolve(parent), self.resolve(child)
        if parent == child or nx.has_path(self._graph, child, parent):
            raise TreeError(f"linking {child!r} under {parent!r} would create a cycle")
        self._graph.add_edge(parent, child)

    def children(self, node: str) -> list[str]:
        return list(self._graph.successors(self.resolve(node)))

    def parent(self, node: str) -> str | None:
        """The primary parent (the path prefix); None for the root."""
        node = self.resolve(node)
        return node.rsplit(SEP, 1)[0] if SEP in node else None

    def ancestors(self, node: str) -> list[str]:
        """Every ancestor (through all parents), root first."""
        return sorted(nx.ancestors(self._graph, self.resolve(node)), key=lambda n: (self.depth(n), n))

    def descendants(self, node: str) -> set[str]:
        return nx.descendants(self._graph, self.resolve(node))

    def leaves(self) -> list[str]:
        return [n for n in self._graph.nodes if self._graph.out_degree(n) == 0]

    def depth(self, node: str) -> int:
        return node.count(SEP)

    def set_diagnoses(self, node: str, diagnoses: Sequence[str]) -> None:
        """Replace the node's diagnoses (short texts about what the student gets wrong there)."""
        self.info(node)["diagnoses"] = list(dict.fromkeys(diagnoses))

    # ---------------------------------------------------------------------------------------- items

    def _item_path(self, item: MCQItem) -> list[str]:
        parts = split_path(item.ability_path) if item.ability_path else [self.root, item.source]
        if parts[0].casefold() != self.root.casefold():
            parts = [self.root, *parts]
        return parts

    @classmethod
    def from_items(cls, items: Iterable[MCQItem], root: str = "clinical medicine") -> "AbilityTree":
        """A tree with one node per distinct ``ability_path``; items without one sit under their source."""
        tree = cls(root)
        tree.add_items(items)
        return tree

    def add_items(self, items: Iterable[MCQItem]) -> None:
        """Create the nodes these items need and list their ids as the nodes' examples."""
        for item in items:
            self.place(item.id, self.add_ability(self._item_path(item), exist_ok=True))

    def place(self, item_id: str, node: str) -> str:
        """List ``item_id`` among ``node``'s examples (moving it if it was placed elsewhere): how items
        without an ability path, placed by ``tree.classify``, keep their node in the tree file."""
        node = self.resolve(node)
        previous = self._placed.get(item_id)
        if previous == node:
            return node
        if previous is not None:
            self._graph.nodes[previous]["examples"].remove(item_id)
        self._graph.nodes[node]["examples"].append(item_id)
        self._placed[item_id] = node
        return node

    def placed_at(self, item_id: str) -> str | None:
        """The node whose examples list ``item_id``, if any."""
        return self._placed.get(item_id)

    def node_of(self, item: MCQItem) -> str:
        """The node an item belongs to: a generated item's target node; else the node it was placed at
        (``place``, ``add_items``); else the deepest existing node on its ability path (or its source's
        node), so items from outside the tree land on an ancestor."""
        if isinstance(item, GeneratedItem) and item.target_node in self:
            return self.resolve(item.target_node)
        if item.id in self._placed:
            return self._placed[item.id]
        parts = self._item_path(item)
        for depth in range(len(parts), 0, -1):
            prefix = SEP.join(parts[:depth])
            if prefix in self:
                return self.resolve(prefix)
        return self.root

    # ------------------------------------------------------------------------------------- learning

    @property
    def iterations(self) -> list[int]:
        its = {it for _, stats in self._graph.nodes(data="stats") for it in stats}
        return sorted(its)

    def record(self, results: Iterable[tuple[str, str, bool]], iteration: int) -> None:
        """Store per-node counts for ``iteration`` from ``(item_id, node_id, correct)`` triples.

        Replaces whatever that iteration held, so re-running a stage of the loop is idempotent.
        An item scored twice, or an unknown node, is an error (it would silently skew the counts).
        """
        if iteration < 0:
            raise ValueError(f"iteration must be >= 0, got {iteration}")
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        seen: set[str] = set()
        for item_id, node, correct in results:
            if item_id in seen:
                raise TreeError(f"item {item_id!r} appears twice in the results of iteration {iteration}")
            seen.add(item_id)
            c = counts[self.resolve(node)]
            c[0] += 1
            c[1] += int(bool(correct))
        for _, stats in self._graph.nodes(data="stats"):
            stats.pop(iteration, None)
        for node, (n, correct) in counts.items():
            self._graph.nodes[node]["stats"][iteration] = {"n": n, "correct": correct}
        logger.info("recorded %d results on %d nodes for iteration %d", len(seen), len(counts), iteration)

    def counts(self, node: str, iteration: int, *, subtree: bool = True) -> tuple[int, int]:
        """(n, correct) at ``node`` in ``iteration``: over its subtree, or only its own items."""
        node = self.resolve(node)
        members = {node} | (self.descendants(node) if subtree else set())
        n = correct = 0
        for m in members:
            c = self._graph.nodes[m]["stats"].get(iteration)
            if c:
                n += c["n"]
                correct += c["correct"]
        return n, correct

    def stats(self, node: str, iteration: int | None = None, level: float = 0.9) -> NodeStats:
        """Posterior accuracy of the node's subtree under a Beta(1, 1) prior, and its trend."""
        node = self.resolve(node)
        iteration = self.latest_iteration(iteration)
        n, correct = self.counts(node, iteration)
        post = beta_posterior(correct, n, level)
        trend = None
        if n:
            for prev in reversed([it for it in self.iterations if it < iteration]):
                pn, pc = self.counts(node, prev)
                if pn:
                    trend = post.mean - beta_posterior(pc, pn, level).mean
                    break
        return NodeStats(node, iteration, post, self.counts(node, iteration, subtree=False)[0], trend)

    def latest_iteration(self, iteration: int | None = None) -> int:
        """``iteration`` itself, or when None the latest recorded one (0 before any record)."""
        if iteration is not None:
            return iteration
        its = self.iterations
        return its[-1] if its else 0

    def data_nodes(self, iteration: int | None = None) -> list[str]:
        """Nodes with items of their own in ``iteration`` (the latest when None)."""
        iteration = self.latest_iteration(iteration)
        return [n for n, stats in self._graph.nodes(data="stats") if stats.get(iteration, {}).get("n", 0) > 0]

    def weakest(self, n: int | None, iteration: int | None = None) -> list[tuple[str, float]]:
        """``(node, posterior mean)`` of the ``n`` weakest data nodes (all of them, ranked, for None).

        Ranked by the posterior mean of the node's own items; ties go to the lower upper bound.
        """
        if n is not None and n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        iteration = self.latest_iteration(iteration)
        ranked = []
        for node in self.data_nodes(iteration):
            own_n, own_c = self.counts(node, iteration, subtree=False)
            post = beta_posterior(own_c, own_n)
            ranked.append((post.mean, post.hi, node))
        return [(node, mean) for mean, _, node in sorted(ranked)[:n]]

    # ------------------------------------------------------------------------------------------ I/O

    def to_dict(self) -> dict[str, Any]:
        nodes = []
        for node, attrs in self._graph.nodes(data=True):
            nodes.append({
                "id": node,
                "name": attrs["name"],
                "description": attrs["description"],
                "examples": list(attrs["examples"]),
                "diagnoses": list(attrs["diagnoses"]),
                "stats": {str(it): dict(c) for it, c in sorted(attrs["stats"].items())},
            })
        return {"format": FORMAT, "version": FORMAT_VERSION, "root": self.root, "nodes": nodes,
                "edges": [list(e) for e in self._graph.edges]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def save(self, path: str | Path) -> Path:
        """Write the tree as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "tree") -> "AbilityTree":
        """Rebuild a tree from ``to_dict`` output; ``source`` names the file in error messages."""
        try:
            spec = _TreeFile.model_validate(data)
        except ValidationError as e:
            where, msg = first_error(e, "document")
            raise TreeError(f"{source}: field {where!r}: {msg}") from None
        if spec.format != FORMAT or spec.version != FORMAT_VERSION:
            raise TreeError(f"{source}: not an ability tree file (format {spec.format!r} version {spec.version}; "
                            f"expected {FORMAT!r} version {FORMAT_VERSION})")
        try:
            tree = cls(spec.root)
            if tree.root != spec.root:
                raise TreeError(f"root {spec.root!r} is not a normalized single path component")
            records = {r.id: r for r in spec.nodes}
            if len(records) != len(spec.nodes):
                raise TreeError("duplicate node ids")
            if spec.root not in records:
                raise TreeError(f"the root {spec.root!r} has no node record")
            for rec in spec.nodes:
                if SEP.join(split_path(rec.id)) != rec.id or split_path(rec.id)[0] != spec.root:
                    raise TreeError(f"node id {rec.id!r} is not a normalized path under the root")
                if rec.id != spec.root:
                    tree._add_node(rec.id, rec.description)
                attrs = tree._graph.nodes[rec.id]
                attrs.update(name=rec.name, description=rec.description, examples=list(rec.examples),
                             diagnoses=list(rec.diagnoses),
                             stats={it: c.model_dump() for it, c in sorted(rec.stats.items())})
            if len(tree._by_key) != len(records):
                raise TreeError("node ids differ only in case")
            for rec in spec.nodes:
                for item_id in rec.examples:
                    if tree._placed.setdefault(item_id, rec.id) != rec.id:
                        raise TreeError(f"item {item_id!r} is an example of two nodes: {tree._placed[item_id]!r} and {rec.id!r}")
            for u, v in spec.edges:
                if u not in records or v not in records:
                    raise TreeError(f"edge {u!r} -> {v!r} names a node that has no record")
                tree._graph.add_edge(u, v)
            for node in records:
                parent = tree.parent(node)
                if parent is not None and not tree._graph.has_edge(parent, node):
                    raise TreeError(f"node {node!r} is not linked to its parent {parent!r}")
            if not nx.is_directed_acyclic_graph(tree._graph):
                raise TreeError(f"the edges contain a cycle: {nx.find_cycle(tree._graph)}")
        except TreeError as e:
            raise TreeError(f"{source}: {e}") from None
        return tree

    @classmethod
    def load(cls, path: str | Path) -> "AbilityTree":
        """Read a tree JSON file; a missing, unreadable or malformed file raises TreeError naming it."""
        path = Path(path)
        if not path.is_file():
            raise TreeError(f"{path}: tree file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TreeError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(path))
