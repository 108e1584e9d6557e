"""The layering the folders promise, checked on the import graph (every import, lazy ones too):
no import circles, no package importing one above it, and a generations lifecycle that knows no
entity and no particular store - a third store is an adapter, never an edit there."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "include" / "embedding_pipeline"

# Bottom to top: a package may import its own modules and those of the layers below it.
LAYERS = [
    {"errors"},
    {"retry"},
    {"settings"},
    {"model"},
    {"serving"},
    {"runs"},
    {"stores", "sample"},
    {"generations"},
    {"stages"},
    {"local"},
    {"cli", "task_preload"},
]
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _modules(root: Path, prefix: str) -> dict[str, Path]:
    found = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join((prefix, *parts) if prefix else parts).removesuffix(".__init__")
        found[name] = path
    return found


MODULES = {**_modules(PACKAGE, "embedding_pipeline"), **_modules(ROOT / "plugins", "")}


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


GRAPH = {
    module: {name for name in _imports(path) if name in MODULES and name != module}
    for module, path in MODULES.items()
}


def _package(module: str) -> str:
    return module.split(".")[1] if module.startswith("embedding_pipeline.") else ""


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return circles


def test_no_module_imports_itself_back_through_a_circle():
    assert _circles() == []


def test_every_package_imports_only_itself_and_the_layers_below():
    packages = {_package(m) for m in MODULES if m.startswith("embedding_pipeline.")}
    assert packages - {""} <= set(LEVEL), f"packages without a layer: {packages - set(LEVEL)}"
    upward = defaultdict(set)
    for module, targets in GRAPH.items():
        source = _package(module)
        if not source:
            continue
        for target in targets:
            wanted = _package(target)
            if wanted and wanted != source and LEVEL[wanted] >= LEVEL[source]:
                upward[module].add(target)
    assert dict(upward) == {}


def test_the_generations_lifecycle_knows_no_entity_and_no_particular_store():
    lifecycle = [m for m in GRAPH if m.startswith("embedding_pipeline.generations")]
    assert len(lifecycle) >= 5
    reached = {target for module in lifecycle for target in GRAPH[module]}
    allowed_stores = {
        "embedding_pipeline.stores",
        "embedding_pipeline.stores.protocol",
        "embedding_pipeline.stores.registry",
    }
    assert {t for t in reached if t.startswith("embedding_pipeline.stores")} <= allowed_stores
    assert not {t for t in reached if t.startswith("embedding_pipeline.stages")}
    for module in lifecycle:
        text = MODULES[module].read_text()
        for word in ('"qdrant"', '"es"', "'qdrant'", "'es'", "keyword_id", "product_id"):
            assert word not in text, f"{module} names {word}"


def test_the_library_imports_no_airflow_glue():
    """Airflow glue (``plugins/``) sits on top: no library module imports it."""
    library = [m for m in GRAPH if m.startswith("embedding_pipeline.")]
    assert not {t for m in library for t in GRAPH[m] if not t.startswith("embedding_pipeline")}


def _layout_block() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## What is here")
    block = readme[readme.index("```\n", start) + 4 :]
    return block[: block.index("```")].splitlines()


def _folder_entries(lines: list[str]) -> dict[str, str]:
    """README layout block -> {folder path: its description}, nesting taken from the indentation."""
    entries: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    current = None
    for line in lines:
        token = line.split()[0] if line.strip() else ""
        indent = len(line) - len(line.lstrip())
        if token.endswith("/") and indent < 30:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            current = "".join(name for _, name in stack) + token
            stack.append((indent, token))
            entries[current] = line[len(token) + indent :]
        elif current is not None:
            entries[current] += " " + line.strip()
    return entries


def test_the_readme_layout_names_every_module():
    """The layout block in the README is the map a newcomer reads: every module is on it, under its
    folder (a module added without a line there fails here)."""
    entries = {
        folder: set(re.findall(r"\w+", text)) for folder, text in _folder_entries(_layout_block()).items()
    }
    assert {"include/embedding_pipeline/stores/qdrant/edge/", "plugins/pipeline_stages/"} <= set(entries)
    missing = [
        str(path.relative_to(ROOT))
        for path in MODULES.values()
        if path.name != "__init__.py"
        and path.stem not in entries.get(path.relative_to(ROOT).parent.as_posix() + "/", set())
    ]
    assert missing == []
