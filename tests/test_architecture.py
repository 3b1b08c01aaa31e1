"""The house rules of docs/architecture.md, checked on the source: the package's imports
form no cycle and never go up a layer (shelf -> plugin core -> pipelines -> commands), and
every console script's entry point lives in cli/."""
import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
PACKAGE = os.path.join(ROOT, "trelm_fairseq")

# layer of a module by its dotted name below trelm_fairseq (first match wins)
LAYERS = (
    (0, "shelf", r"^(errors|fileio|languages|language_pair|layout|scheduler|warm_start)$"),
    (1, "plugin core", r"^(models|modules|data|tasks|criterions|optim)(\.|$)|^(freezing|checkpoint|flops|divergence|stage_table)$"),
    (2, "pipelines", r"^(preprocess|parsing|sweep|comparison|export|hub|stages)(\.|$)|^(combine|classification|probes|language_centering)$"),
    (3, "commands", r"^cli(\.|$)"),
)


def layer_of(name: str):
    for rank, title, pattern in LAYERS:
        if re.search(pattern, name):
            return rank, title
    raise AssertionError(f"trelm_fairseq.{name} has no layer: add it to LAYERS and docs/architecture.md")


def package_modules():
    """{dotted name below the package: path}; the package's own __init__ is left out (it
    registers the plugin, so it imports across layers by design)."""
    mods = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), PACKAGE)[:-3].replace(os.sep, ".")
                rel = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                if rel != "__init__":
                    mods[rel] = os.path.join(folder, f)
    return mods


def imports_of(name: str, path: str, mods) -> set:
    """Package modules that `name` imports (at module level or inside functions)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("trelm_fairseq"):
                target = node.module[len("trelm_fairseq"):].lstrip(".")
            else:
                continue
            candidates = [target] + [f"{target}.{a.name}" if target else a.name for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name[len("trelm_fairseq."):] for a in node.names if a.name.startswith("trelm_fairseq.")]
        else:
            continue
        out.update(c for c in candidates if c in mods and c != name)
    return out


@pytest.fixture(scope="module")
def graph():
    mods = package_modules()
    return {m: imports_of(m, p, mods) for m, p in mods.items()}


def test_every_module_has_a_layer_and_imports_never_go_up(graph):
    upward = []
    for module, targets in graph.items():
        rank, title = layer_of(module)
        for t in targets:
            t_rank, t_title = layer_of(t)
            if t_rank > rank and not module.startswith(t + "."):  # a subpackage may import its own __init__
                upward.append(f"{module} ({title}) imports {t} ({t_title})")
    assert upward == []


def test_no_import_cycles(graph):
    # a subpackage's __init__ re-exports its modules: edges into an __init__ are not followed
    packages = {m for m in graph if os.path.isdir(os.path.join(PACKAGE, *m.split(".")))}
    edges = {m: {t for t in ts if t not in packages} for m, ts in graph.items()}
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert cycles == []


def test_console_scripts_enter_through_cli():
    text = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    entries = re.findall(r'"(trelm-[a-z-]+)=([\w.]+):(\w+)"', text)
    assert len(entries) >= 13
    for name, module, func in entries:
        assert module.startswith("trelm_fairseq.cli."), f"{name} enters through {module}, not cli/"
        assert func == "cli_main"
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        assert os.path.isfile(path), f"{name}: {module} is missing"
        defined = set()  # functions defined or imported at the top of the module
        for node in ast.parse(open(path, encoding="utf-8").read()).body:
            if isinstance(node, ast.FunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.ImportFrom):
                defined.update(a.asname or a.name for a in node.names)
        assert "build_parser" in defined, f"{module}: every command names its parser builder build_parser"
