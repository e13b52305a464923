"""The layers of the house, enforced: imports only go down, argv and gin only in cli/,
the model loads no TensorFlow, no import cycles, one contract per public name.

The declared order (docs/architecture.md):

    cli  ->  experiments  ->  inference  ->  training  ->  model | data
                               interop   ->  model, training.checkpoints

model/ and data/ are the ground floor and ignore each other; inference/ and
interop/ may use only training.checkpoints from training/; inference/ may read
an imported model's tokenizer through interop/; nothing imports cli/
except the `python -m` entry points (t5x_like/train.py, t5x_like/__main__.py).
"""
from __future__ import annotations

import ast
import collections
import inspect
import os
import subprocess
import sys

import pytest

from tests import REPO_ROOT

PACKAGE_DIR = os.path.join(REPO_ROOT, "t5x_like")
ALLOWED: dict[str, tuple[str, ...]] = {
    "model": ("t5x_like.model",),
    "data": ("t5x_like.data",),
    "training": ("t5x_like.training", "t5x_like.model", "t5x_like.data"),
    "inference": ("t5x_like.inference", "t5x_like.model", "t5x_like.data", "t5x_like.training.checkpoints",
                  "t5x_like.interop"),  # the harness reads an imported model's tokenizer
    "interop": ("t5x_like.interop", "t5x_like.model", "t5x_like.training.checkpoints"),
    "experiments": ("t5x_like.experiments", "t5x_like.inference", "t5x_like.training", "t5x_like.model",
                    "t5x_like.data"),
    "cli": ("t5x_like",),
    "entry": ("t5x_like.cli",),  # t5x_like/train.py and __main__.py: `python -m` shims
    "root": (),                  # t5x_like/__init__.py
}


def module_name(path: str) -> str:
    relative = os.path.relpath(path, REPO_ROOT)[: -len(".py")].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if len(parts) == 2 and parts[1] in ("train", "__main__"):
        return "entry"
    return parts[1]


def library_files() -> list[str]:
    return sorted(os.path.join(root, name) for root, _, names in os.walk(PACKAGE_DIR)
                  for name in names if name.endswith(".py"))


Import = collections.namedtuple("Import", "target line local source")


def imports_of(path: str) -> list[Import]:
    """Every t5x_like import of a module (function-local ones too), as absolute module names."""
    with open(path) as f:
        text = f.read()
    lines = text.splitlines()
    tree = ast.parse(text)
    local_nodes = {id(node) for function in ast.walk(tree) if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for node in ast.walk(function)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from t5x_like.x import y`: y may be a module; count the deeper name when it is one.
            targets = []
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = os.path.exists(os.path.join(REPO_ROOT, *candidate.split(".")) + ".py") or \
                    os.path.isdir(os.path.join(REPO_ROOT, *candidate.split(".")))
                targets.append(candidate if is_module else node.module)
        else:
            continue
        for target in targets:
            if target == "t5x_like" or target.startswith("t5x_like."):
                found.append(Import(target, node.lineno, id(node) in local_nodes, lines[node.lineno - 1]))
    return found


ALL_IMPORTS = {module_name(path): imports_of(path) for path in library_files()}


def test_imports_only_go_down_the_declared_layers():
    wrong = []
    for module, imports in ALL_IMPORTS.items():
        allowed = ALLOWED[layer_of(module)]
        for imp in imports:
            if not any(imp.target == prefix or imp.target.startswith(prefix + ".") for prefix in allowed):
                wrong.append(f"{module.replace('.', '/')}.py:{imp.line}: {layer_of(module)} imports {imp.target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_function_local_imports_only_defer_a_heavy_load_and_say_so():
    unexplained = [f"{module}:{imp.line}: {imp.source.strip()}" for module, imports in ALL_IMPORTS.items()
                   for imp in imports if imp.local and "deferred" not in imp.source]
    assert not unexplained, ("function-local imports of t5x_like without a '# deferred: <what it defers>' "
                             "comment:\n" + "\n".join(unexplained))


def test_no_import_cycles():
    graph = {module: {imp.target for imp in imports if imp.target in ALL_IMPORTS}
             for module, imports in ALL_IMPORTS.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def _uses(path: str, names: tuple[str, ...]) -> list[int]:
    """Lines importing one of `names` (top-level package names, or "sys.argv" for reading argv)."""
    with open(path) as f:
        tree = ast.parse(f.read())
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in names for a in node.names):
            hits.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in names:
            hits.append(node.lineno)
        elif isinstance(node, ast.Attribute) and f"{getattr(node.value, 'id', '')}.{node.attr}" in names:
            hits.append(node.lineno)
    return hits


@pytest.mark.parametrize("names", [("argparse", "sys.argv"), ("gin",)], ids=["argv", "gin"])
def test_argv_and_gin_only_in_cli(names):
    outside = [f"{os.path.relpath(path, REPO_ROOT)}:{line}" for path in library_files()
               if layer_of(module_name(path)) not in ("cli", "entry") for line in _uses(path, names)]
    assert not outside, f"{' / '.join(names)} used outside cli/: {outside}"


def test_orbax_only_in_the_checkpoint_modules():
    """Every checkpoint is written and read through training/checkpoints/ (one writer, one reader)."""
    home = os.path.join(PACKAGE_DIR, "training", "checkpoints")
    outside = [f"{os.path.relpath(path, REPO_ROOT)}:{line}" for path in library_files()
               if not path.startswith(home + os.sep) for line in _uses(path, ("orbax",))]
    assert not outside, f"orbax used outside training/checkpoints/: {outside}"


def test_experiments_build_no_gin_strings():
    """Grids make their runs in Python (experiments/cells.py); only cli/ writes or parses gin."""
    folder = os.path.join(PACKAGE_DIR, "experiments")
    found = [f"experiments/{name}" for name in sorted(os.listdir(folder)) if name.endswith(".py")
             and "--gin." in open(os.path.join(folder, name)).read()]
    assert not found, f"'--gin.' strings in {found}"


def test_importing_the_model_loads_neither_tensorflow_seqio_nor_gin():
    code = ("import sys, t5x_like.model, t5x_like.model.sizing, t5x_like.model.transformer; "
            "print(sorted(m for m in ('tensorflow', 'seqio', 'gin') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": REPO_ROOT}, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def _public_functions() -> dict[str, list[tuple[str, str]]]:
    """name -> [(module, signature)] for every public top-level function and class (cli/ too)."""
    import importlib
    found = collections.defaultdict(list)
    for path in library_files():
        module = module_name(path)
        if layer_of(module) in ("entry", "root") or module.endswith("__init__"):
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]
        if not names:
            continue
        loaded = importlib.import_module(module)
        for name in names:
            try:
                signature = str(inspect.signature(getattr(loaded, name)))
            except (TypeError, ValueError):
                signature = "?"
            found[name].append((module, signature))
    return found


def test_one_public_name_one_contract():
    clashes = [f"{name}: " + "; ".join(f"{m}{s}" for m, s in defs) for name, defs in _public_functions().items()
               if len(defs) > 1 and len({s for _, s in defs}) > 1]
    assert not clashes, "public names with different contracts in different modules:\n" + "\n".join(clashes)
