"""The house (style.md): who may import whom, no import cycles, a complete `__all__` everywhere.

Read from the code with `ast`, so a new module is checked the day it lands. Each
rule is also run against a small bad example, so the checks themselves can fail.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "harmony_core", "harmony_fleet")
# Names a module may define without exporting: its logger and type variables.
_PRIVATE_BY_CONVENTION = {"log", "logger"}


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load_modules() -> list[Module]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            out.append(Module(_module_name(path), path, ast.parse(path.read_text(), str(path))))
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """Every node that runs (imports inside functions count), skipping `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk_runtime(other)
            continue
        yield child
        yield from _walk_runtime(child)


def imports_of(mod: Module, known: set[str]) -> set[str]:
    """Our modules that `mod` imports at run time (function-level imports included)."""
    found: set[str] = set()
    base = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    for node in _walk_runtime(mod.tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                root = ".".join(parts[: len(parts) - node.level + 1])
                src = f"{root}.{node.module}" if node.module else root
            else:
                src = node.module or ""
            targets = [src] + [f"{src}.{a.name}" for a in node.names]
        for t in targets:
            # The longest known module the name falls in: `from x.y import z` is x.y or x.y.z.
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != mod.name:
                found.add(t)
    return found


def _room(name: str) -> str:
    return name.split(".")[0]


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


# --- the rules ---------------------------------------------------------------------------------

# Pure parts: decisions with no I/O; they may import only each other and these.
_PURE = {
    "harmony_core.contracts",
    "harmony_core.errors",
    "harmony_core.durations",
    "harmony_core.journal_names",
    "harmony_core.labels",
    "harmony_core.settings",
    "harmony_core.selectors",
    "harmony_core.envelope",
    "harmony_core.versions",
    "agent.upgrade.checks",
    "agent.upgrade.states",
    "agent.upgrade.confirm",
    "agent.upgrade.semver",
    "agent.upgrade.admission",
    "agent.upgrade.boot",
    "harmony_fleet.rollout.plan",
    "harmony_fleet.rollout.state",
    "harmony_fleet.rollout.render",
    "harmony_fleet.terminal",
}
# The agent's capabilities never import each other (style.md: the heartbeat reads the
# others' summaries through what the daemon hands it).
_CAPABILITIES = ("agent.deviceinfo", "agent.heartbeat", "agent.logs", "agent.upgrade")
# Who the device is and what it runs on: facts any part may read (the root-side switch
# has no daemon to hand them over), not another capability's workings.
_DEVICE_FACTS = ("agent.deviceinfo.identity", "agent.deviceinfo.arch")


def violations(graph: dict[str, set[str]]) -> list[str]:
    bad: list[str] = []
    for src, dsts in sorted(graph.items()):
        for dst in sorted(dsts):
            edge = f"{src} -> {dst}"
            if _room(src) == "harmony_core" and _room(dst) != "harmony_core":
                bad.append(f"{edge}: the shared core imports neither side")
            if _room(src) == "harmony_fleet" and _room(dst) == "agent":
                bad.append(f"{edge}: the operator side never imports the device agent")
            if _room(src) == "agent" and _room(dst) == "harmony_fleet":
                bad.append(f"{edge}: the device agent never imports the operator side")
            if src in ("harmony_core.contracts", "harmony_core.errors"):
                bad.append(f"{edge}: contracts and errors import nothing of ours")
            if src in _PURE and dst not in _PURE:
                bad.append(f"{edge}: a pure module imports only pure modules (no I/O)")
            if src == "agent.config" and _under(dst, "harmony_core.bus"):
                bad.append(f"{edge}: config does no I/O beyond reading its file")
            if _under(src, "harmony_core.bus") and not (
                _under(dst, "harmony_core.bus") or dst in _PURE
            ):
                bad.append(f"{edge}: the bus knows nothing of heartbeats, logs or upgrades")
            for cap in _CAPABILITIES:
                if _under(src, cap):
                    for other in _CAPABILITIES:
                        if other != cap and _under(dst, other) and dst not in _DEVICE_FACTS:
                            bad.append(f"{edge}: {cap} and {other} never import each other")
            if dst in ("agent.cli", "harmony_fleet.cli") and not src.endswith("__main__"):
                bad.append(f"{edge}: a cli is a face; nothing imports it")
            if dst == "agent.daemon" and src != "agent.cli":
                bad.append(f"{edge}: only the cli starts the daemon")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's `__init__` importing its own submodules is how a facade works, not a cycle."""
    return {
        src: {d for d in dsts if not (_under(d, src) and d != src)} for src, dsts in graph.items()
    }


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    names.add(t.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def _declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
            and isinstance(node.value, ast.List | ast.Tuple)
        ):
            return [str(e.value) for e in node.value.elts if isinstance(e, ast.Constant)]
    return None


def all_problems(name: str, tree: ast.Module) -> list[str]:
    """What is wrong with a module's `__all__`: missing, naming nothing, or leaving names out."""
    declared = _declared_all(tree)
    defined = {
        n for n in _defined_names(tree) if not n.startswith("_") and n not in _PRIVATE_BY_CONVENTION
    }
    if declared is None:
        return [f"{name}: no __all__ (its public surface)"] if defined else []
    problems = []
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
    for n in declared:
        if n not in defined and n not in imported:
            problems.append(f"{name}: __all__ names {n!r}, which the module does not have")
    for n in sorted(defined - set(declared)):
        if _is_typevar(tree, n):
            continue
        problems.append(f"{name}: public name {n!r} is missing from __all__ (or make it _private)")
    return problems


def _is_typevar(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id in ("TypeVar", "ParamSpec")
        ):
            return True
    return False


# --- the checks on the code ------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = load_modules()
    known = {m.name for m in mods}
    return {m.name: imports_of(m, known) for m in mods}


def test_every_package_is_read(graph: dict[str, set[str]]) -> None:
    for must in ("agent.daemon", "harmony_core.contracts", "harmony_fleet.cli"):
        assert must in graph
    assert "harmony_core.contracts" in graph["agent.config"] | graph["agent.daemon"] or any(
        "harmony_core.contracts" in d for d in graph.values()
    )


def test_imports_follow_the_house(graph: dict[str, set[str]]) -> None:
    assert violations(graph) == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert cycles(_package_edges(graph)) == []


def test_every_module_has_a_complete_all() -> None:
    problems = [
        p
        for m in load_modules()
        if m.name.split(".")[-1] != "__main__"
        for p in all_problems(m.name, m.tree)
    ]
    assert problems == []


# --- the checks can fail ---------------------------------------------------------------------


def _edges(pairs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for a, b in pairs:
        g.setdefault(a, set()).add(b)
        g.setdefault(b, set())
    return g


@pytest.mark.parametrize(
    "src,dst",
    [
        ("harmony_core.bus", "agent.heartbeat"),
        ("harmony_fleet.devices", "agent.config"),
        ("agent.upgrade.service", "harmony_fleet.signing"),
        ("harmony_core.contracts", "harmony_core.durations"),
        ("agent.upgrade.checks", "harmony_core.bus"),
        ("agent.heartbeat", "agent.logs.service"),
        ("agent.logs.service", "agent.upgrade.layout"),
        ("agent.daemon", "agent.cli"),
        ("agent.heartbeat", "agent.daemon"),
    ],
)
def test_a_forbidden_import_is_caught(src: str, dst: str) -> None:
    assert violations(_edges([(src, dst)]))


def test_allowed_imports_pass() -> None:
    ok = [
        ("agent.daemon", "agent.heartbeat"),
        ("agent.heartbeat", "harmony_core.bus"),
        ("harmony_fleet.upgrade", "harmony_core.envelope"),
        ("agent.upgrade.checks", "harmony_core.contracts"),
        ("agent.cli", "agent.daemon"),
    ]
    assert violations(_edges(ok)) == []


def test_a_cycle_is_caught() -> None:
    g = _edges(
        [
            ("agent.upgrade.root", "agent.upgrade.switch"),
            ("agent.upgrade.switch", "agent.upgrade.root"),
        ]
    )
    assert cycles(g) == [["agent.upgrade.root", "agent.upgrade.switch"]]


def test_function_level_imports_count_and_type_checking_does_not() -> None:
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from agent.b import X\n"
        "def f():\n    from agent.c import y\n"
    )
    mod = Module("agent.a", REPO / "agent" / "a.py", ast.parse(src))
    assert imports_of(mod, {"agent.a", "agent.b", "agent.c"}) == {"agent.c"}


def test_a_missing_public_name_is_caught() -> None:
    tree = ast.parse('__all__ = ["f"]\ndef f(): ...\ndef g(): ...\nclass H: ...\n_x = 1\n')
    assert all_problems("m", tree) == [
        "m: public name 'H' is missing from __all__ (or make it _private)",
        "m: public name 'g' is missing from __all__ (or make it _private)",
    ]
    assert all_problems("m", ast.parse("def f(): ...\n")) == ["m: no __all__ (its public surface)"]
    assert all_problems("m", ast.parse('__all__ = ["nope"]\n'))
