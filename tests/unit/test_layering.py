"""The layering of raftctl/ (DESIGN §3, issue 14), read from the source with ``ast``: every ``import`` and
``from ... import`` of every module, at module level and inside functions.

- no import cycle between modules (a cycle kept open by a function-level import is still a cycle);
- statemachine/ and scheduler/ import nothing of node/, agent/, cli/, discovery/ (their purity, no I/O, clock
  or randomness, is test_statemachine.py's test_pure_packages_import_no_io_clock_or_randomness);
- node/ and agent/ do not import each other (what both need is neutral: raftctl/oci/, raftctl/clusterid.py);
- cli/ imports node/ only to run a replica (server.py) or to seed one's data dir (snapshot.py); its HTTP goes
  through raftctl/client.py (test_cli_options.py's test_the_cli_speaks_http_to_the_control_plane_only_through_the_client);
- outside raftctl/node/raft/, nothing touches pysyncobj's privates: RaftNode has the small interface;
- a function-level import is allowed only of a module on LAZY (heavy, needed by few commands: why each).
"""
from __future__ import annotations

import ast
import functools
import pathlib
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[2] / "raftctl"

# (importing module's prefix, imported module's prefix) -> why it is imported inside a function.
# Times: `python -c "import X"` on the dev machine, loaded.
LAZY: dict[tuple[str, str], str] = {
    ("raftctl.", "raftctl.tls"): "cryptography (~80 ms), needed only with TLS options",
    ("raftctl.cli.", "rich"): "terminal rendering (~60 ms), only `raftctl top` and progress bars",
    ("raftctl.cli.", "raftctl.node.replica"): "a control replica (aiohttp, pysyncobj: ~230 ms), only `raftctl server`",
    ("raftctl.cli.", "raftctl.node.raft"): "pysyncobj (~85 ms), only `raftctl snapshot restore` (writes a data dir)",
    ("raftctl.cli.", "raftctl.agent."): "the agent (aiohttp, psutil: ~280 ms), only `raftctl agent|image|up`",
    ("raftctl.cli.", "raftctl.devcluster"): "only `raftctl up`",
    ("raftctl.cli.", "raftctl.statemachine."): "spec validation and the backup codec (gate, cbor2: 35-60 ms), "
                                               "only the commands reading a spec or a backup file",
    ("raftctl.cli.", "raftctl.gate"): "the same, for `raftctl job run` (~25 ms)",
    ("raftctl.cli.", "raftctl.oci"): "the image format (tarfile, gate), only `raftctl image`",
    ("raftctl.agent.runtime", "raftctl.agent.runtime."): "a runtime driver (runc: ~85 ms) is loaded when chosen",
    ("raftctl.aio", "uvloop"): "the daemons' event loop (~70-90 ms): only `raftctl server` and `raftctl agent` run "
                              "on it (aio.run), not every CLI command",
}

PURE = ("raftctl.statemachine", "raftctl.scheduler")
OUTER = ("raftctl.node", "raftctl.agent", "raftctl.cli", "raftctl.discovery", "raftctl.devcluster", "raftctl.client")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str          # the raftctl module it resolves to, or the top-level name of another package
    lineno: int
    in_function: bool


def _module_names() -> dict[str, pathlib.Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, pathlib.Path]) -> str:
    """The module ``name`` is (``a.b.c`` may be the name ``c`` in module ``a.b``)."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


@functools.lru_cache(maxsize=1)
def graph() -> tuple[dict[str, pathlib.Path], tuple[Import, ...]]:
    modules = _module_names()
    found = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        is_pkg = path.name == "__init__.py"

        def visit(node: ast.AST, in_function: bool, mod: str = mod, is_pkg: bool = is_pkg) -> None:
            for child in ast.iter_child_nodes(node):
                targets: list[str] = []
                if isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:  # relative: from the package of this module
                        pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                        pkg = pkg[:len(pkg) - (child.level - 1)]
                        base = ".".join(pkg + ([child.module] if child.module else []))
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
                for t in targets:
                    target = _resolve(t, modules) if t.split(".")[0] == "raftctl" else t.split(".")[0]
                    if target != mod:
                        found.append(Import(mod, target, child.lineno, in_function))
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(tree, False)
    return modules, tuple(found)


def _inside(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_the_graph_is_read_from_every_module() -> None:
    modules, imports = graph()
    internal = [i for i in imports if i.target in modules]
    lazy = [i for i in imports if i.in_function]
    print(f"\nraftctl/: {len(modules)} modules, {len(internal)} imports between them, "
          f"{len(lazy)} function-level imports ({sum(i.target in modules for i in lazy)} of raftctl modules)")
    assert len(modules) > 80 and "raftctl.node.http" in modules and "raftctl.oci" in modules
    # the reader sees both kinds: api.py imports the handler modules at module level, the CLI loads the
    # replica inside `raftctl server`
    assert any(i.importer == "raftctl.node.api" and i.target == "raftctl.node.blobs" and not i.in_function
               for i in imports)
    assert any(i.importer == "raftctl.cli.server" and i.target == "raftctl.node.replica" and i.in_function
               for i in imports)


def test_no_import_cycle_between_modules() -> None:
    modules, imports = graph()
    edges: dict[str, set[str]] = {}
    for i in imports:
        if i.target in modules:
            edges.setdefault(i.importer, set()).add(i.target)
    # a package's __init__ that loads its own submodules on demand (agent/runtime's drivers) is no cycle:
    # a submodule's import of its parent package is Python loading the package, not a dependency
    for mod in list(edges):
        edges[mod] = {t for t in edges[mod] if not mod.startswith(t + ".")}
    assert _cycles(edges) == []


def test_the_pure_layers_import_nothing_of_the_outer_ones() -> None:
    _, imports = graph()
    bad = sorted(f"{i.importer}:{i.lineno} imports {i.target}" for i in imports
                 if _inside(i.importer, PURE) and _inside(i.target, OUTER))
    assert bad == []


def test_node_and_agent_do_not_import_each_other() -> None:
    _, imports = graph()
    bad = sorted(f"{i.importer}:{i.lineno} imports {i.target}" for i in imports
                 if (_inside(i.importer, ("raftctl.node",)) and _inside(i.target, ("raftctl.agent", "raftctl.cli")))
                 or (_inside(i.importer, ("raftctl.agent",)) and _inside(i.target, ("raftctl.node", "raftctl.cli"))))
    assert bad == []


def test_the_cli_imports_the_node_only_to_run_a_replica_or_seed_its_data_dir() -> None:
    _, imports = graph()
    reached = {(i.importer, i.target) for i in imports
               if _inside(i.importer, ("raftctl.cli",)) and _inside(i.target, ("raftctl.node",))}
    assert reached == {("raftctl.cli.server", "raftctl.node.replica"), ("raftctl.cli.snapshot", "raftctl.node.raft")}
    assert not any(_inside(i.importer, ("raftctl.devcluster", "raftctl.client")) and
                   _inside(i.target, ("raftctl.cli",)) for i in imports)


def test_function_level_imports_only_of_heavy_optional_modules() -> None:
    _, imports = graph()
    unexplained = []
    for i in imports:
        if not i.in_function:
            continue
        if any(i.importer.startswith(who) and (i.target == what or i.target.startswith(what.rstrip(".") + "."))
               for who, what in LAZY):
            continue
        unexplained.append(f"{i.importer}:{i.lineno} imports {i.target} inside a function")
    assert unexplained == []


PYSYNCOBJ_PRIVATE = ("_getLeader", "_isLeader", "isReady", "getStatus", "_SyncObj__")


def test_only_raft_touches_pysyncobj() -> None:
    """Handlers and the replica use RaftNode's interface (leader_address, is_ready, is_leader, raft_status)."""
    modules, _ = graph()
    bad = []
    for mod, path in modules.items():
        if _inside(mod, ("raftctl.node.raft",)):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith(PYSYNCOBJ_PRIVATE):
                bad.append(f"{mod}:{node.lineno} .{node.attr}")
    assert bad == []
