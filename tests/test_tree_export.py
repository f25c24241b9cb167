"""Every export format of an ability tree, read back by the tools that consume it where we have them
(networkx for GraphML/GEXF, html.parser for the HTML page, the PNG signature and matplotlib's reader)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import matplotlib.image as mpimg
import networkx as nx
import pytest

from data.domains import get_domain
from tree import AbilityTree
from tree.__main__ import main
from tree.export import EXPORT_FORMATS, accuracy_colour, export, to_dot, to_html, to_mermaid

TRICKY = 'Misses "quoted" <b>tags</b> & back\\slashes | pipes'


@pytest.fixture(scope="module")
def tree() -> AbilityTree:
    items = get_domain("clinical").seed_items()[:120]
    t = AbilityTree.from_items(items)
    t.record([(it.id, t.node_of(it), i % 3 != 0) for i, it in enumerate(items)], iteration=1)
    t.record([(it.id, t.node_of(it), i % 2 == 0) for i, it in enumerate(items)], iteration=2)
    node = t.node_of(items[0])
    t.set_diagnoses(node, [TRICKY])
    t.add_ability(f"{node}/never seen")  # a node without data: grey, n=0
    return t


def test_colour_scale():
    assert accuracy_colour(0.0, 5) == "#e04f4f" and accuracy_colour(1.0, 5) == "#5cb85c"
    assert accuracy_colour(0.5, 5) == "#f2c14e" and accuracy_colour(0.9, 0) == "#d0d0d0"
    assert accuracy_colour(1.7, 3) == accuracy_colour(1.0, 3)  # clamped


@pytest.mark.parametrize("fmt", ["graphml", "gexf"])
def test_graph_formats_read_back_with_networkx(tree, tmp_path, fmt):
    path = export(tree, tmp_path / f"t.{fmt}", fmt)
    g = nx.read_graphml(path) if fmt == "graphml" else nx.read_gexf(path)
    assert g.number_of_nodes() == tree.graph.number_of_nodes()
    assert set(g.nodes) == set(tree.nodes()) and set(g.edges) == set(tree.graph.edges)
    assert g.nodes[tree.root]["n"] == tree.stats(tree.root, 2).posterior.n


def test_dot_is_well_formed(tree):
    dot = to_dot(tree)
    assert dot.startswith("digraph ability_tree {") and dot.rstrip().endswith("}")
    node_lines = [line for line in dot.splitlines() if "[label=" in line]
    assert len(node_lines) == tree.graph.number_of_nodes()
    assert sum(" -> " in line for line in dot.splitlines()) == tree.graph.number_of_edges()
    # every double quote inside a quoted string is escaped: quotes pair up on each line
    for line in dot.splitlines():
        assert len(re.findall(r'(?<!\\)"', line)) % 2 == 0, line
    assert 'fillcolor="#d0d0d0"' in dot  # the node without data


def test_mermaid_has_every_node_and_edge(tree):
    text = to_mermaid(tree)
    assert text.startswith("flowchart LR")
    assert len(re.findall(r'^  n\d+\["', text, re.M)) == tree.graph.number_of_nodes()
    assert len(re.findall(r"^  n\d+ --> n\d+$", text, re.M)) == tree.graph.number_of_edges()
    assert '"' not in "".join(re.findall(r'\["(.*)"\]', text))  # labels carry entities, not raw quotes


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_one_offline_page(tree, tmp_path):
    path = export(tree, tmp_path / "tree.html", "html")
    page = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(page)
    assert "script" not in parser.tags and not parser.urls, "self-contained: no scripts, no links"
    assert parser.tags.count("details") + parser.tags.count("div") >= tree.graph.number_of_nodes()
    assert TRICKY in "".join(parser.text)  # escaped in the file, the same text once parsed
    assert "<b>tags</b>" not in page
    assert to_html(tree, iteration=1) != page  # the iteration's statistics are what is shown


def test_png_is_an_image(tree, tmp_path):
    path = export(tree, tmp_path / "tree.png", "png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_cli_exports_every_format(tree, tmp_path):
    src = tree.save(tmp_path / "tree.json")
    for fmt in EXPORT_FORMATS:
        out = tmp_path / f"out.{fmt}"
        assert main(["export", str(src), "--format", fmt, "-o", str(out)]) == 0
        assert out.stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_format_is_a_clear_error(tree, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'svg'"):
        export(tree, tmp_path / "t.svg", "svg")
