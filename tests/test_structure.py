"""The package's shape: no import cycle, modules under 400 lines, Ray and MLflow only where they
belong. Read from the source (every import statement, function-level ones included), so a lazy
import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "stetune"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(stetune modules imported, top-level third-party packages imported) by one module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t.split(".")[0] == "stetune":
                while t not in modules:  # `import stetune.x.y` names a module or a package
                    t = t.rpartition(".")[0]
                if t != name:
                    internal.add(t)
            else:
                external.add(t.split(".")[0])
    return internal, external


def _graph():
    modules = _modules()
    edges, external = {}, {}
    for name, path in modules.items():
        edges[name], external[name] = _imports(name, path, modules)
    return modules, edges, external


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_graph_reader_sees_lazy_imports_and_cycles():
    # the reader must see what the cycle test relies on, or that test could pass vacuously
    modules, edges, _ = _graph()
    assert len(modules) > 40
    assert "stetune.sweep.phase" in edges["stetune.sweep.kinds.network"]  # a function-level import
    assert {"stetune.sweep.kinds.base", "stetune.sweep.kinds.network"} <= edges["stetune.sweep.kinds"]
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    _, edges, _ = _graph()
    assert _find_cycle(edges) is None, " -> ".join(_find_cycle(edges))


def test_no_module_over_400_lines():
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_ray_and_mlflow_stay_in_their_layers():
    _, edges, external = _graph()
    ray = {m for m, ext in external.items() if "ray" in ext}
    assert ray and all(m.startswith("stetune.sweep.") for m in ray), sorted(ray)
    # the writer (its batching thread, its store helpers), the reader (analysis), the sweep
    # benchmark's read-back and the analysis CLI (it names MLflow's errors); nobody else
    mlflow = {m for m, ext in external.items() if "mlflow" in ext}
    assert mlflow == {"stetune.tracking", "stetune.tracking_writer", "stetune.tracking_store",
                      "stetune.analysis", "stetune.sweep.bench", "stetune.cli_analysis"}, \
        sorted(mlflow)
    # analysis, report and export read: none of them imports the writer
    for reader in ("stetune.analysis", "stetune.report", "stetune.export"):
        assert "stetune.tracking" not in edges[reader], reader
    # upstream layers import nothing downstream of them
    upstream = [m for m in edges if m.split(".")[1:2] and m.split(".")[1] in (
        "spec", "quant", "models", "data", "train", "checkpoint", "naming", "stability", "pack",
        "pack_model", "pack_state", "pack_auto", "bench_pack")]
    downstream = ("stetune.sweep", "stetune.tracking", "stetune.analysis", "stetune.report",
                  "stetune.export", "stetune.cli")
    bad = {m: sorted(t for t in edges[m] if t.startswith(downstream)) for m in upstream}
    assert not any(bad.values()), bad


def test_readme_layout_matches_the_tree():
    """Every module is named in README's Layout block, and every file it names exists."""
    import re

    text = (PKG.parent / "README.md").read_text()
    layout = text[text.index("## Layout"):text.index("## Tests")]
    named = set(re.findall(r"[\w/]+\.py", layout))
    files = {p.name for p in PKG.rglob("*.py") if p.name != "__init__.py"}
    missing = sorted(f for f in files if not any(n.endswith(f) for n in named))
    assert not missing, f"modules missing from README's Layout: {missing}"
    unknown = sorted(n for n in named if Path(n).name not in files)
    assert not unknown, f"README's Layout names files that do not exist: {unknown}"
