"""The import contract of rdfs, checked on the source alone (``ast``; nothing is imported).

Rules (each a ``Violation.rule``):

- ``pyfuse3``: only ``rdfs/fuse/`` imports pyfuse3.
- ``sqlite``: only ``rdfs/store/`` imports sqlite3 or sqlite_utils, or holds an SQL string (a
  string constant that starts like a statement: ``SELECT ...``, ``INSERT INTO``, ``UPDATE t SET``,
  ``DELETE FROM``, ``CREATE TABLE``, ``PRAGMA x``, ``BEGIN``, ``WITH x AS (``, ...; any case).
  Docstrings and other bare string statements are prose, not SQL, and are skipped.
- ``api``: ``rdfs/api/`` imports nothing from rdfs outside ``rdfs.api``.
- ``emulator``: ``rdfs/emulator/`` imports nothing from rdfs outside ``rdfs.emulator``.
- ``layers``: cli -> fuse -> control -> sync -> (tree, data) -> store -> api. A module imports its
  own package and lower layers only; ``tree`` and ``data`` are siblings and import neither each
  other. The common modules (``COMMON``) may be imported by every layer but api and emulator, and
  import only api and each other. The emulator is imported by the CLI only (``rdfs emulator``);
  the ``rdfs`` package itself imports nothing from rdfs.
- ``cycles``: no import cycle between modules.

Which imports count: for the layers, every import, ``if TYPE_CHECKING:`` ones included (naming a
type from a higher layer is a dependency on it). For cycles, imports inside functions count (a
deferred import hides a cycle, it does not remove it) but ``if TYPE_CHECKING:`` ones do not: they
never run, so they cannot meet a half-initialised module, and the layer rule already keeps them
inside one package or pointing down.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LAYERS: dict[str, int] = {
    "cli": 7,
    "fuse": 6,
    "control": 5,
    "sync": 4,
    "tree": 3,
    "data": 3,
    "store": 2,
    "api": 1,
}
COMMON = frozenset({"config", "logs", "outcome", "credentials", "events"})
CLI_MODULES = frozenset({"cli", "__main__"})

_SQL = re.compile(
    r"""\s*(?:
        select\s(?:.*?\bfrom\b|[^a-z]*$)
      | (?:insert|replace)\s+(?:or\s+\w+\s+)?into\b
      | update\s+\w+\s+set\b
      | delete\s+from\b
      | (?:create|drop)\s+(?:unique\s+|temp\w*\s+|virtual\s+)?(?:table|index|view|trigger)\b
      | alter\s+table\b
      | pragma\s+\w
      | begin(?:\s+(?:deferred|immediate|exclusive|transaction))*\s*(?:;|$)
      | (?:commit|rollback)(?:\s+transaction)?\s*(?:;|$)
      | (?:savepoint|release\s+savepoint)\s+\w
      | with\s+(?:recursive\s+)?\w+\s*(?:\([^)]*\)\s*)?as\s*(?:not\s+)?(?:materialized\s*)?\(
      | vacuum\b
      | attach\s+database\b
    )""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


def is_sql(text: str) -> bool:
    """True when ``text`` starts like an SQL statement."""
    return _SQL.match(text) is not None


@dataclass(frozen=True)
class Import:
    target: str  # a module name: "rdfs.api.client", "pyfuse3", ...
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


@dataclass
class Module:
    name: str  # "rdfs.sync.syncer"
    path: Path
    shown: str  # the path relative to the checked root, for reports
    imports: list[Import] = field(default_factory=list)
    sql: list[tuple[int, str]] = field(default_factory=list)  # (line, start of the string)

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@dataclass(frozen=True)
class Violation:
    rule: str
    module: str
    line: int
    message: str
    path: str = ""

    def __str__(self) -> str:
        return f"[{self.rule}] {self.path}:{self.line}: {self.message}"


def load(root: Path, package: str = "rdfs") -> dict[str, Module]:
    """Parse every module of ``root/package`` (nothing is imported)."""
    base = root / package
    modules: dict[str, Module] = {}
    for path in sorted(base.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = Module(".".join(parts), path, str(path.relative_to(root)))
    for module in modules.values():
        _scan(module, set(modules))
    return modules


def _scan(module: Module, known: set[str]) -> None:
    tree = ast.parse(module.path.read_text(), str(module.path))
    prose: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            prose.add(id(node.value))
    for node, type_only in _walk(tree, False):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module.imports.append(Import(alias.name, node.lineno, type_only))
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in known else base
                module.imports.append(Import(target, node.lineno, type_only))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in prose
            and is_sql(node.value)
        ):
            module.sql.append((node.lineno, " ".join(node.value.split())[:60]))


def _walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node``, with whether it sits under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        yield child, type_only
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_only
                yield from _walk(stmt, type_only)
        else:
            yield from _walk(child, type_only)


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = module.name.split(".")
    if not module.is_package:
        parts.pop()
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def group(name: str, package: str = "rdfs") -> str:
    """The contract group of a module: a layer, "common", "emulator", "root" or "unknown"."""
    parts = name.split(".")
    if parts == [package]:
        return "root"
    top = parts[1]
    if top in CLI_MODULES:
        return "cli"
    if top in COMMON and len(parts) == 2:
        return "common"
    if top == "emulator":
        return "emulator"
    if top in LAYERS and top != "cli":
        return top
    return "unknown"


def check(modules: dict[str, Module], package: str = "rdfs") -> list[Violation]:
    """Every violation of the contract, sorted by rule, file and line."""
    found: list[Violation] = []
    for module in modules.values():
        found.extend(_check_module(module, modules, package))
    found.extend(_check_cycles(modules))
    return sorted(found, key=lambda v: (v.rule, v.path, v.line, v.message))


def _check_module(module: Module, modules: dict[str, Module], package: str) -> Iterator[Violation]:
    src = group(module.name, package)
    where = module.shown

    def violation(rule: str, line: int, message: str) -> Violation:
        return Violation(rule, module.name, line, message, where)

    if src == "unknown":
        yield violation("layers", 1, f"{module.name} belongs to no layer: place it in the contract")
    for imp in module.imports:
        top = imp.target.split(".")[0]
        if top == "pyfuse3" and src != "fuse":
            yield violation("pyfuse3", imp.line, f"{module.name} imports pyfuse3 (only fuse/ may)")
        if top in ("sqlite3", "sqlite_utils") and src != "store":
            yield violation("sqlite", imp.line, f"{module.name} imports {top} (only store/ may)")
        if top != package or imp.target not in modules:
            continue
        dst = group(imp.target, package)
        if src in ("api", "emulator"):
            if dst != src:
                yield violation(
                    src, imp.line, f"{module.name} imports {imp.target} (outside rdfs.{src})"
                )
            continue
        reason = _layer_refusal(src, dst)
        if reason:
            kind = " (TYPE_CHECKING)" if imp.type_only else ""
            yield violation(
                "layers", imp.line, f"{module.name} ({src}) imports {imp.target}{kind}: {reason}"
            )
    if src != "store":
        for line, text in module.sql:
            yield violation("sqlite", line, f"SQL outside store/ in {module.name}: {text!r}")


def _layer_refusal(src: str, dst: str) -> str:
    """Why a module of group ``src`` may not import one of group ``dst`` ("" when it may)."""
    if src == dst or src == "unknown" or dst == "unknown":
        return ""
    if src == "root":
        return "the rdfs package imports nothing from rdfs"
    if dst == "emulator":
        return "" if src == "cli" else "only the CLI imports the emulator"
    if dst in ("root", "common"):
        return ""
    if src == "common":
        return "" if dst == "api" else "common modules import only api/ and each other"
    if LAYERS[dst] < LAYERS[src]:
        return ""
    if LAYERS[dst] == LAYERS[src]:
        return f"{src}/ and {dst}/ are siblings and do not import each other"
    return f"{dst}/ is above {src}/ (cli -> fuse -> control -> sync -> tree|data -> store -> api)"


def _check_cycles(modules: dict[str, Module]) -> Iterator[Violation]:
    edges: dict[str, dict[str, int]] = {name: {} for name in modules}
    for module in modules.values():
        for imp in module.imports:
            if not imp.type_only and imp.target in modules and imp.target != module.name:
                edges[module.name].setdefault(imp.target, imp.line)
    for component in _strongly_connected(edges):
        if len(component) < 2:
            continue
        cycle = _a_cycle(sorted(component)[0], edges, component)
        hops = " -> ".join(
            f"{a} (line {edges[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)
        )
        first = modules[cycle[0]]
        yield Violation(
            "cycles",
            first.name,
            edges[cycle[0]][cycle[1]],
            f"import cycle: {hops} -> {cycle[0]}; all in the knot: {', '.join(sorted(component))}",
            first.shown,
        )


def _strongly_connected(edges: dict[str, dict[str, int]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[set[str]] = []
    for start in edges:
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(edges[succ])))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                result.append(component)
    return result


def _a_cycle(start: str, edges: dict[str, dict[str, int]], within: set[str]) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for succ in edges[node]:
                if succ not in within:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if succ not in previous:
                    previous[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def report(violations: Iterable[Violation]) -> str:
    lines = [str(v) for v in violations]
    return "\n".join([f"{len(lines)} import-contract violation(s):", *lines])
