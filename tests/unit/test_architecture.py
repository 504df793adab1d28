"""The layout keeps its promises: no import cycles, leaves that import nothing above them, the
library never imports `analysis/`, no module outside a task names that task's splits or tokens,
and every shipped YAML loads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mitigate import config as C

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mitigate"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, known: set[str], top_level_only: bool = False) -> set[str]:
    """Package modules imported by `path` (every import statement, or only module-level ones)."""
    tree = ast.parse(path.read_text())
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != this:
                out.add(name)
    return out


def graph(top_level_only: bool = False) -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods), top_level_only) for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_the_package():
    """Every import statement counts, including those inside functions: a late import that only
    hides a cycle is still a cycle."""
    assert find_cycle(graph()) is None


def test_core_leaves_import_nothing_above_them():
    for m, deps in graph().items():
        if m.startswith("mitigate.core"):
            assert all(d.startswith("mitigate.core") for d in deps), (m, deps)


# Late imports allowed, each for a reason other than hiding a cycle (the cycle test above counts
# them anyway). Not import statements, so not listed: the lazy API table of mitigate/__init__ and
# the registries' manifests (mitigate/registries.py), which import a built-in's module by name the
# first time its entry is needed, so that a config is checked before torch loads (issue 29).
LATE_OK = {"mitigate.cli": "parsing first: `--help` and `--version` answer without loading torch"}


def test_no_late_imports_of_the_package():
    """Package imports sit at module level (the lazy API table in mitigate/__init__ uses strings)."""
    everywhere, top = graph(), graph(top_level_only=True)
    late = {m: everywhere[m] - top[m] for m in everywhere if everywhere[m] - top[m] and m not in LATE_OK}
    assert late == {}, late


def test_library_never_imports_analysis():
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "analysis" or n.startswith("analysis.") for n in names), path


def test_graph_splits_and_tokens_stay_in_the_graph_task():
    own = PACKAGE / "tasks" / "graph.py"
    words = ('"closed_strategy"', "'closed_strategy'", '"rare_only"', "'rare_only'", "ood_closed", "ood_rare",
             "tasks.graph")
    for path in PACKAGE.rglob("*.py"):
        if path == own:
            continue
        text = path.read_text()
        assert not any(w in text for w in words), (path, [w for w in words if w in text])


def shipped_yaml() -> list[Path]:
    return sorted((ROOT / "baselines").rglob("*.yaml"))


@pytest.mark.parametrize("path", shipped_yaml(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_baselines_yaml_loads(path):
    cfg = C.load(path)
    from mitigate.recipes.reproduce import method_config

    for method in cfg.reproduce.methods:  # every method of a comparison resolves too
        if method != "base":
            method_config(cfg, method)


@pytest.mark.parametrize("preset", C.presets())
def test_every_preset_loads(preset):
    cfg = C.load(preset=preset)
    assert cfg.preset == preset
    assert C.load(preset=preset) == cfg  # resolution is a pure function of its inputs


def test_the_smoke_preset_runs_the_whole_default_comparison():
    smoke, default = C.load(preset="smoke"), C.load(preset="default")
    assert smoke.reproduce.methods == default.reproduce.methods
    assert smoke.reproduce.method_configs == default.reproduce.method_configs
    assert len(smoke.reproduce.seeds) == 2


def layout_paths(doc: Path, heading: str | None) -> list[str]:
    """First word of each line of the ```text block (after `heading`, if given) of a document."""
    text = doc.read_text()
    if heading:
        text = text[text.index(heading):]
    block = text[text.index("```text") + len("```text"):]
    block = block[: block.index("```")]
    return [line.split()[0] for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("doc,heading", [("README.md", "## Layout"), ("docs/design.md", None)])
def test_layout_pictures_name_only_paths_that_exist(doc, heading):
    paths = layout_paths(ROOT / doc, heading)
    assert len(paths) >= 15, paths
    missing = [p for p in paths if not (ROOT / p.rstrip("/")).exists()]
    assert missing == [], missing


def test_the_readme_layout_covers_every_package_folder():
    named = set(layout_paths(ROOT / "README.md", "## Layout"))
    folders = {f"mitigate/{p.name}/" for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders <= named, folders - named
