"""The import structure of ``spotlight/`` (DESIGN.md "Layout", issue 19), read from the source.

Every file's imports are parsed with ``ast``: top-level ones, lazy ones inside functions and
those under ``if TYPE_CHECKING:`` all count, since each is a dependency a reader has to follow.
Checked here: no import circle between modules; the one-way rules between layers and between
the role packages of ``spotlight.actors``; nothing directly under ``spotlight/actors/`` but its
``__init__``; and the third-party packages a light layer must not pull in.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "spotlight"

ACTOR_ROLES: dict[str, set[str]] = {
    # role package -> the other role packages it may import (runtime and models always)
    "scheduling": set(),
    "weights": set(),
    "monitor": set(),
    "spot": set(),
    "pull": {"scheduling", "weights"},
    "rollout": {"pull", "scheduling", "weights"},
    "sp": {"weights"},
    "rewards": {"monitor"},
    "exploration": {"pull", "scheduling", "weights", "sp", "monitor"},
    "trainer": {"exploration", "rollout", "weights", "monitor"},
    "cluster": {"spot", "scheduling", "weights", "monitor"},
}
ACTORS = {f"actors.{role}" for role in ACTOR_ROLES}
LAYERS: dict[str, set[str]] = {
    # top-level part of spotlight -> what it may import besides itself
    "runtime": set(),
    "models": set(),
    "actors": {"runtime", "models"},  # refined per role package by ACTOR_ROLES
    "config": {"actors", "runtime", "models"},
    "nodes": {"config", "actors", "runtime", "models"},
    "commands": {"nodes", "config", "actors", "runtime", "models"},
    "cli": {"commands"},
}
THIRD_PARTY_BANS = {
    # a light layer stays light: the runtime never loads diffusers, the models never zmq
    "runtime": {"diffusers", "torch.distributed"},
    "models": {"zmq", "msgpack", "uvloop"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(imported name, line) of every import in ``path``, anywhere in the file; relative
    imports resolved, ``from pkg import mod`` reported as ``pkg.mod`` when that is a module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield (full if full in modules() else base), node.lineno


def _owner(name: str) -> str | None:
    """The module of ``spotlight`` that ``name`` (a module or a module's attribute) is in."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


@cache
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported spotlight module: first line}."""
    out: dict[str, dict[str, int]] = {}
    for module, path in modules().items():
        edges: dict[str, int] = {}
        for name, line in _imported(module, path):
            target = _owner(name) if name.startswith("spotlight") else None
            if target is not None and target != module:
                edges.setdefault(target, line)
        out[module] = edges
    return out


def _layer(module: str) -> str:
    """``runtime``, ``models``, ``actors.<role>``, ``config``, ... (``spotlight`` for the root)."""
    parts = module.split(".")[1:]
    if not parts:
        return "spotlight"
    if parts[0] == "actors" and len(parts) > 1:
        return f"actors.{parts[1]}"
    return parts[0]


def _allowed(src: str, dst: str) -> bool:
    if src == dst or dst == "spotlight":
        return True
    if src in ACTORS:
        if dst in ACTORS:
            return dst.partition(".")[2] in ACTOR_ROLES[src.partition(".")[2]]
        return dst in LAYERS["actors"]
    top = dst.partition(".")[0]
    return top in LAYERS.get(src, set())


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in g:
        if root in index:
            continue
        work = [(root, iter(g[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(g[child])))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_import_reader_sees_lazy_and_type_checking_imports() -> None:
    """Guard the guard: the graph has edges that only a lazy or TYPE_CHECKING import makes."""
    g = graph()
    assert g, "no modules found under spotlight/"
    # the stand-alone worker imports the scheduler only inside a function (a light fork server)
    assert "spotlight.actors.scheduling.scheduler" in g["spotlight.nodes.pull_worker"]
    assert "spotlight.runtime.host" in g["spotlight.runtime.transport"]  # under TYPE_CHECKING


def test_no_import_circle() -> None:
    cycles = _cycles()
    assert not cycles, "import circles (lazy and TYPE_CHECKING imports count):\n" + "\n".join(
        "  " + " <-> ".join(c) for c in cycles
    )


def test_one_way_rules() -> None:
    bad = [
        f"{src} (line {line}) imports {dst}: {_layer(src)} may not import {_layer(dst)}"
        for src, edges in graph().items()
        for dst, line in edges.items()
        if not _allowed(_layer(src), _layer(dst))
    ]
    assert not bad, "layering rules broken:\n" + "\n".join(f"  {b}" for b in sorted(bad))


def test_third_party_bans() -> None:
    bad = []
    for module, path in modules().items():
        banned = THIRD_PARTY_BANS.get(_layer(module), set())
        for name, line in _imported(module, path):
            if any(name == b or name.startswith(b + ".") for b in banned):
                bad.append(f"{module} (line {line}) imports {name}")
    assert not bad, "\n".join(bad)


def test_actors_is_only_role_packages() -> None:
    actors = PKG / "actors"
    loose = sorted(p.name for p in actors.glob("*.py") if p.name != "__init__.py")
    assert not loose, (
        f"modules directly under spotlight/actors/ (put them in a role package): {loose}"
    )
    roles = sorted(p.name for p in actors.iterdir() if (p / "__init__.py").is_file())
    assert roles == sorted(ACTOR_ROLES), (
        f"role packages {roles}; the rules know {sorted(ACTOR_ROLES)}"
    )
