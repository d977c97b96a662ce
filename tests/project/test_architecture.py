"""The package's import graph has no cycles, counting imports inside functions too: a layer
that imports back up (corpora -> core -> corpora) is a cycle even when it is deferred."""
import ast
import importlib.util
import os
import pkgutil

import lstm_engine


def _modules():
    """name -> source path of every module of lstm_engine (kernels included)."""
    import lstm_engine.kernels as kernels      # mapped from the checkout's kernels/, not under lstm_engine/
    out = {"lstm_engine": lstm_engine.__file__, "lstm_engine.kernels": kernels.__file__}
    found = list(pkgutil.walk_packages(lstm_engine.__path__, "lstm_engine."))
    found += list(pkgutil.walk_packages(kernels.__path__, "lstm_engine.kernels."))
    for info in found:
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            out[info.name] = spec.origin
    return out


def _imports(name, path, modules):
    """Names of the modules of `modules` that module `name` imports, anywhere in its source."""
    is_pkg = os.path.basename(path) == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_covers_the_package():
    graph = import_graph()
    assert {"lstm_engine.api", "lstm_engine.core.train", "lstm_engine.backends.numba_backend",
            "lstm_engine.kernels.numba.lstm_layer"} <= set(graph)
    assert "lstm_engine.core.model" in graph["lstm_engine.core.train"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_package_root_holds_only_the_api_and_errors():
    root = os.path.dirname(lstm_engine.__file__)
    modules = sorted(f for f in os.listdir(root) if f.endswith(".py"))
    assert modules == ["__init__.py", "api.py", "cli.py", "errors.py"]


def test_source_paths_that_explain_prints_exist():
    from lstm_engine.teaching import explain_render
    repo = os.path.dirname(os.path.dirname(lstm_engine.__file__))
    for path in {explain_render.REF_FILE, *explain_render.MODULE_OF.values()}:
        assert os.path.isfile(os.path.join(repo, path)), path
