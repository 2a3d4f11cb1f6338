"""The house rule: imports run one way, down the stack, and no two modules import each other.

config/data/processes → models → tasks → labelers → judges → labeling_app → stages → eval → pipeline → experiments → cli.
A module may import from its own layer or a lower one; `rlhf` imports sit at the top of the module (a
function-level import is kept only for a heavy optional third-party dependency, never for an `rlhf` module).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "rlhf"

# Bottom first. A module belongs to the layer of the longest prefix it starts with.
LAYERS: list[tuple[str, ...]] = [
    (
        "rlhf.config",
        "rlhf.config_loading",
        "rlhf.config_checks",
        "rlhf.config_methods",
        "rlhf.processes",
        "rlhf.run",
        "rlhf.losses",
        "rlhf.policy_losses",
        "rlhf.stats",
        "rlhf.data",
    ),
    ("rlhf.models",),
    ("rlhf.tasks",),
    ("rlhf.labelers",),
    ("rlhf.judges",),
    ("rlhf.labeling_app",),
    ("rlhf.stages",),
    ("rlhf.eval",),
    ("rlhf.pipeline",),
    ("rlhf.experiments",),
    ("rlhf.cli", "rlhf.data_cli", "rlhf.export_cli"),
]


def layer_of(module: str) -> int | None:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def rlhf_imports(source: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported rlhf module, line, at module level) for each import of an `rlhf` module in `source`.
    `from rlhf.pkg import name` counts as importing `rlhf.pkg.name` when that is a module, else `rlhf.pkg`."""
    tree = ast.parse(source)
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # imports under `if TYPE_CHECKING:` or try/except at module level are module level too
        if isinstance(node, (ast.If, ast.Try)):
            top_level |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name == "rlhf" or a.name.startswith("rlhf.")]
        elif (
            isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "rlhf"
        ):
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names
            ]
        else:
            continue
        found += [(name, node.lineno, id(node) in top_level) for name in dict.fromkeys(names)]
    return found


def layering_violations(sources: dict[str, str]) -> list[str]:
    """Every upward import, function-level `rlhf` import, and import cycle among `sources` {module: source}."""
    known = set(sources)
    problems, graph = [], {m: set() for m in sources}
    for module, source in sorted(sources.items()):
        if module == "rlhf":  # the empty top-level package
            continue
        mine = layer_of(module)
        if mine is None:
            problems.append(f"{module}: in no layer (add it to LAYERS in tests/test_layering.py)")
            continue
        for target, line, at_top in rlhf_imports(source, known):
            if target not in known and target != "rlhf":
                problems.append(f"{module}:{line}: imports {target}, which does not exist")
                continue
            if not at_top:
                problems.append(f"{module}:{line}: imports {target} inside a function (import it at the top)")
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                problems.append(
                    f"{module}:{line}: imports {target} from a layer above it ({LAYERS[theirs][0]} over {LAYERS[mine][0]})"
                )
            if target != module and target in graph:
                graph[module].add(target)
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in import_cycles(graph)]
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(shortest_cycle(graph, sorted(component)[0], set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def shortest_cycle(graph: dict[str, set[str]], start: str, within: set[str]) -> list[str]:
    """The shortest import path from `start` back to itself through the modules `within` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected component but on no cycle")


def package_sources(root: Path = ROOT) -> dict[str, str]:
    return {module_name(p, root): p.read_text() for p in sorted(root.rglob("*.py")) if "migrations" not in p.parts}


def test_the_package_imports_down_the_stack_only():
    problems = layering_violations(package_sources())
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_an_upward_import_is_caught():
    sources = {"rlhf.models.roles": "from rlhf.stages.ppo import train_ppo\n", "rlhf.stages.ppo": "import torch\n"}
    problems = layering_violations(sources)
    assert len(problems) == 1 and "from a layer above it" in problems[0] and "rlhf.models.roles:1" in problems[0]


def test_a_cycle_is_caught_even_inside_one_layer():
    sources = {
        "rlhf.models.roles": "import torch\nfrom rlhf.models.sampling import sample_tokens\n",
        "rlhf.models.sampling": "from rlhf.models.roles import Episodes\n",
    }
    assert layering_violations(sources) == [
        "import cycle: rlhf.models.roles -> rlhf.models.sampling -> rlhf.models.roles"
    ]


def test_a_function_level_import_is_caught():
    sources = {"rlhf.eval.report": "def f():\n    from rlhf.data.io import read_jsonl\n", "rlhf.data.io": ""}
    problems = layering_violations(sources)
    assert problems == ["rlhf.eval.report:2: imports rlhf.data.io inside a function (import it at the top)"]


def test_downward_and_same_layer_imports_pass():
    sources = {
        "rlhf.stages.ppo": "from rlhf.stages.sft import response_nll\nfrom rlhf.models.roles import Backbone\nimport rlhf.config\n",
        "rlhf.stages.sft": "from rlhf.losses import gae\n",
        "rlhf.models.roles": "",
        "rlhf.config": "",
        "rlhf.losses": "",
    }
    assert layering_violations(sources) == []
