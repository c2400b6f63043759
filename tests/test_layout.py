"""The code's shape: imports in one direction (no cycle in pipelines/), layers that never call up,
and documentation whose every link resolves."""

import ast
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from pipelines.settings import PROJECT_ROOT

pytestmark = pytest.mark.unit
PACKAGE = PROJECT_ROOT / "pipelines"


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `name` imports, at the top or inside a function."""
    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(known(a.name) for a in node.names if a.name.startswith("pipelines"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[:len(here) - node.level + 1] + ([base] if base else []))
            if base.startswith("pipelines"):
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else known(base)
                             for a in node.names)
    return {m for m in found if m and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_imports_resolve_relative_and_function_level_forms(tmp_path):
    modules = {"pipelines": tmp_path / "__init__.py", "pipelines.a": tmp_path / "a.py",
               "pipelines.b": tmp_path / "b.py", "pipelines.b.c": tmp_path / "c.py"}
    source = tmp_path / "a.py"
    source.write_text("def f():\n    from pipelines.b import c\n    from . import b\n    import pipelines.b.c.x\n")
    assert imports_of("pipelines.a", source, modules) == {"pipelines.b", "pipelines.b.c"}


@pytest.mark.parametrize("lower, upper", [
    ("pipelines.sync", "pipelines.versions"),   # the run core knows nothing of versions
    ("pipelines.sync", "pipelines.ingest"),
    ("pipelines.search", "pipelines.sync"),     # search never imports the run core
    ("pipelines.search", "pipelines.ingest"),
    ("pipelines.store", "pipelines.sync"),
    ("pipelines.collection", "pipelines.versions"),
    ("pipelines.service.page", "pipelines.service.app"),
])
def test_a_layer_never_reaches_the_one_above(lower, upper):
    graph = import_graph()
    assert lower in graph and upper in graph
    below = reachable(graph, lower)
    assert not any(m == upper or m.startswith(upper + ".") for m in below), f"{lower} reaches {upper}"


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def doc_files() -> list[Path]:
    return [PROJECT_ROOT / "README.md", PROJECT_ROOT / "SECURITY.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not (m := re.match(r"#{1,6}\s+(.*)", line)):
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower().replace("`", "")).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no file {linked})")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    return broken


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_every_link_in_the_documentation_resolves(path):
    assert broken_links(path) == []


def test_the_link_check_catches_a_missing_file_and_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Real heading\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#real-heading) [gone](missing.md) [bad](other.md#nope) [web](https://x.org/a)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert [b.split(" ")[0] for b in broken_links(page)] == ["missing.md", "other.md#nope"]


def test_the_readme_stays_short():
    assert len((PROJECT_ROOT / "README.md").read_bytes()) < 15_000, "move reference material to docs/"


def named_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) for each `tests/x.py::test_y` in the text; a bare `::test_z` belongs to the file before it."""
    found, current = [], None
    for file, test in re.findall(r"(tests/test_\w+\.py)?::(test_\w+)", text):
        current = file or current
        found.append((current, test))
    return found


def test_every_guarantee_names_a_test_that_exists():
    text = (PROJECT_ROOT / "docs" / "guarantees.md").read_text()
    named = named_tests(text)
    assert len(named) > 30
    missing = [f"{file}::{test}" for file, test in named
               if not re.search(rf"^def {test}\(", (PROJECT_ROOT / file).read_text(), re.M)]
    assert missing == []
    for file in set(re.findall(r"`(tests/test_\w+\.py)`", text)):
        assert (PROJECT_ROOT / file).exists(), file
