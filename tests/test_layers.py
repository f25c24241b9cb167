"""The import-layer contracts of pyproject.toml (import-linter): they hold for the code as it is, and they
fail, naming the import, when a change adds an upward import, a forbidden one, or a cycle.

Each case runs ``lint-imports`` on a copy of the packages (Python files only) with one line added, so the
working tree is never touched. The command itself also runs before pytest in ``make test``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter brings tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


@pytest.fixture(scope="module")
def lint_imports():
    if not LINT.exists():
        pytest.fail(f"{LINT} not found: import-linter is in the dev extra (make install)")

    def run(tree: Path) -> subprocess.CompletedProcess:
        # The copy comes first on the path, so grimp analyses it and not the installed (editable) packages.
        env = {**os.environ, "PYTHONPATH": str(tree)}
        return subprocess.run([str(LINT), "--no-cache", "--no-logo"], cwd=tree, env=env,
                              capture_output=True, text=True, timeout=120)

    return run


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    def not_source(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or not (n.endswith(".py") or (Path(folder) / n).is_dir())]

    for package in CONFIG["root_packages"]:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=not_source)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + code + "\n", encoding="utf-8")


def test_every_root_package_is_under_contract():
    """A new top-level package must be placed in the layers, or nothing checks what it imports."""
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert set(CONFIG["root_packages"]) == packages
    layers = next(c for c in CONFIG["contracts"] if c["id"] == "layers")["layers"]
    in_layers = {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}
    assert in_layers == packages


def test_architecture_doc_lists_the_real_package_imports():
    """docs/architecture.md's table of package-level imports is the graph import-linter builds."""
    grimp = pytest.importorskip("grimp")  # installed with import-linter
    packages = CONFIG["root_packages"]
    graph = grimp.build_graph(*packages, cache_dir=None)
    real = {a: {b for b in packages if b != a and graph.direct_import_exists(importer=a, imported=b, as_packages=True)}
            for a in packages}
    documented = {}
    for line in (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit() and cells[1] in packages:
            documented[cells[1]] = set() if cells[2] == "–" else {c.strip() for c in cells[2].split(",")}
    assert documented == real


def test_contracts_hold_on_the_code(copy, lint_imports):
    result = lint_imports(copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(CONFIG['contracts'])} kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "code", "contract", "expected"),
    [
        # the ground floor reaching up, even lazily inside a function
        ("data/records.py", "def _f():\n    from tree import AbilityTree", "Packages import only the layers below",
         "data.records -> tree"),
        ("engines/base.py", "from data.records import MCQItem", "Packages import only the layers below",
         "engines.base -> data.records"),
        ("tree/propose.py", "from eval.metrics import summarize", "Packages import only the layers below",
         "tree.propose -> eval.metrics"),
        ("tree/build.py", "from synth.dedup import ngrams", "Packages import only the layers below",
         "tree.build -> synth.dedup"),
        ("eval/report.py", "from synth.report import node_table", "Packages import only the layers below",
         "eval.report -> synth.report"),
        ("prompts/mcq.py", "from tree import AbilityTree", "Packages import only the layers below",
         "prompts.mcq -> tree"),
        ("eval/mcq.py", "import agents.loop", "Packages import only the layers below", "eval.mcq -> agents.loop"),
        ("training/distill.py", "from tree import AbilityTree", "training stays usable alone", "training.distill -> tree"),
        # the circle that existed between the tree and its export formats
        ("tree/ability_tree.py", "def _g():\n    from tree.export import write_graphml", "No import cycle",
         "No cycles are allowed in tree"),
    ],
    ids=["data->tree", "engines->data", "tree->eval", "tree->synth", "eval->synth", "prompts->tree",
         "eval->agents", "training->tree", "tree-cycle"],
)
def test_a_bad_import_breaks_its_contract(copy, lint_imports, module, code, contract, expected):
    _append(copy / module, code)
    result = lint_imports(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, result.stdout
    assert expected in broken, result.stdout
