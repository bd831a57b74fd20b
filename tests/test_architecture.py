"""The shape of the code: one literal default per RAG setting across src/ and examples/, the package's modules import
each other without a cycle and only downwards (the layers of docs/architecture.md), no line over 120 characters in
src/."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "trl_bporag"
SETTINGS = ("k", "answer_prefix", "max_passage_tokens", "system_prompt", "max_new_tokens", "num_perturbations",
            "judge")
NONE_IS_A_VALUE = ("answer_prefix", "system_prompt", "max_passage_tokens")


def _files(*roots):
    return [p for root in roots for p in sorted(Path(root).rglob("*.py"))]


def literal_defaults(path: Path) -> list[tuple[str, int]]:
    """(setting, line) of every default of a setting that is written as a literal: a function argument's default, a
    dataclass field's ``default=`` or a class attribute's value."""
    tree = ast.parse(path.read_text())
    found = []

    def literal(node, name) -> bool:
        """A written value; None counts where it is a value of the setting (no prefix, no system prompt, whole
        passages), not where it means "not given" (k, judge, ... read from the data or a stage file)."""
        if isinstance(node, ast.Constant):
            return node.value is not None or name in NONE_IS_A_VALUE
        return isinstance(node, ast.BinOp) and literal(node.left, name) and literal(node.right, name)

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args
            positional = args.posonlyargs + args.args
            for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
                if arg.arg in SETTINGS and literal(default, arg.arg):
                    found.append((arg.arg, default.lineno))
            for arg, default in zip(args.kwonlyargs, args.kw_defaults):
                if default is not None and arg.arg in SETTINGS and literal(default, arg.arg):
                    found.append((arg.arg, default.lineno))
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and \
                        stmt.target.id in SETTINGS and stmt.value is not None:
                    value = stmt.value
                    if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
                        value = next((kw.value for kw in value.keywords if kw.arg == "default"), None)
                    if value is not None and literal(value, stmt.target.id):
                        found.append((stmt.target.id, stmt.lineno))
    return found


def test_one_literal_default_per_setting_across_src_and_examples():
    where = defaultdict(list)
    for path in _files(SRC, REPO / "examples"):
        for name, line in literal_defaults(path):
            where[name].append(f"{path.relative_to(REPO)}:{line}")
    many = {name: places for name, places in where.items() if len(places) > 1}
    assert not many, f"settings with more than one literal default: {many}"
    # the one place of each (trl_bporag.settings); system_prompt's and answer_prefix's are constants of that module
    assert {name for name in where} >= {"k", "max_passage_tokens", "max_new_tokens", "num_perturbations", "judge"}
    assert all(place.startswith("src/trl_bporag/settings.py") for places in where.values() for place in places)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports (relative and absolute), as dotted names under trl_bporag."""
    module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("trl_bporag"):
                out.add(target)
                for alias in node.names:
                    out.add(f"{target}.{alias.name}")
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("trl_bporag"))
    return out


#: Lower layers never import higher ones (docs/architecture.md, "Layers").
LAYERS = [
    {"settings", "hardware", "utils", "stage_files", "metrics", "monitor", "packaged"},
    {"data", "models", "generation", "likelihood", "artifacts", "hub", "report", "losses"},
    {"passage_listwise_loss"},
    {"retrieval", "evaluation"},
    {"preferences"},
    {"trainers"},
    {"pipeline"},
    {"scripts", "cli"},
]


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if module.count(".") >= 1 else None
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def test_modules_import_downwards_only_and_without_a_cycle():
    modules = {".".join(p.relative_to(SRC.parent).with_suffix("").parts): p for p in _files(SRC)}
    graph = {}
    for name, path in modules.items():
        targets = {t if t in modules else t.rsplit(".", 1)[0] for t in _imports(path)}
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")
                       and not t.endswith("__init__")}
    upward = [(a, b) for a, targets in graph.items() for b in targets
              if _layer(a) is not None and _layer(b) is not None and _layer(b) > _layer(a)
              and not a.endswith("__init__")]
    assert not upward, f"upward imports: {upward}"
    top_level = {name for name in modules if name.count(".") == 1 and name != "trl_bporag.__init__"}
    unplaced = [m for m in top_level if _layer(m) is None]
    assert not unplaced, f"modules not in a layer of docs/architecture.md: {unplaced}"
    state: dict = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                pytest.fail(f"import cycle: {' -> '.join(stack + [node, nxt])}")
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_line_over_120_characters_in_src():
    long = [f"{p.relative_to(REPO)}:{i}" for p in _files(SRC) for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > 120]
    assert not long, long
