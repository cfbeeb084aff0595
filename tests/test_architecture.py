"""Architecture rules of the package, checked statically (``ast`` only; nothing is imported).

The rules agree with the project's ``arch-check`` tool:

* private-cross: no module reaches into another easyfit module's underscore names:
  ``from easyfit.x import _y``, ``mod._f`` on an imported easyfit module, and ``obj._attr``
  (or ``getattr(obj, "_attr")`` and friends) where ``obj`` is not ``self``/``cls`` and
  ``_attr`` belongs to a class of another easyfit module while the accessing module's own
  classes do not define it (so ``other._x`` between instances of one class is fine).
  Stricter than the tool: any other ``obj._attr`` whose name the module's own code does
  not define (a third-party object's private, or an easyfit attribute set where the scan
  cannot see it), and an import of a private third-party module or name, is an offence too
  unless ALLOWED_PRIVATE lists it with a reason.
* cycles: no import cycles among easyfit modules. Imports inside functions count (a lazy
  import still ties the modules together); ``if TYPE_CHECKING:`` bodies do not.
* big-files: no easyfit file over 400 lines.
* py.typed: ``easyfit/py.typed`` exists and pyproject.toml ships it as package data.
* __all__: every public module (file name not starting with ``_``; an ``__init__.py`` that
  binds no public name is exempt) defines ``__all__``, and each name in it is bound there.

Each failure lists its offences as ``path:line name``.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "easyfit"
MAX_LINES = 400

# Private names of objects that easyfit does not own, allowed where there is no public way.
# name -> (files allowed to use it, or None for any file; the reason).
ALLOWED_PRIVATE: dict[str, tuple[frozenset[str] | None, str]] = {
    "_replace": (None, "NamedTuple's public API: the underscore only avoids field clashes"),
    "_fields": (None, "NamedTuple's public API (how a namedtuple is told from a tuple)"),
    "_inputs": (frozenset({"easyfit/data/tf_dataset.py"}),
                "tf.data has no public way to walk a pipeline's inputs (is_batched)"),
    "_parents": (frozenset({"easyfit/data/grain_dataset.py"}),
                 "grain has no public way to walk a dataset's parents (is a batch step there?)"),
    "_cache_size": (frozenset({"easyfit/training/step.py"}),
                    "jax: a jitted function's compiled-program count has no public API"),
}
# Private third-party modules that may be imported: module prefix -> reason. (None now.)
ALLOWED_PRIVATE_MODULES: dict[str, str] = {}


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def load() -> dict[str, tuple[str, ast.Module, str]]:
    """module name -> (path relative to the root, tree, text)."""
    mods = {}
    for path in sorted((ROOT / PKG).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        mods[module_name(rel)] = (rel, ast.parse(text, filename=rel), text)
    return mods


MODS = load()
PACKAGES = {m for m, (rel, _, _) in MODS.items() if rel.endswith("__init__.py")}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def walk(node: ast.AST, into_defs: bool = True):
    """``ast.walk`` in source order, skipping ``if TYPE_CHECKING:`` bodies (and, unless
    ``into_defs``, function bodies)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        if isinstance(n, ast.If) and is_type_checking(n.test):
            stack.extend(reversed(n.orelse))
            continue
        if not into_defs and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(n))))


def resolve_from(mod: str, node: ast.ImportFrom) -> str:
    """The absolute module of an ``ImportFrom`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = mod if mod in PACKAGES else mod.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        base = base.rsplit(".", 1)[0]
    return base + ("." + node.module if node.module else "")


def report(offences: list[tuple[str, int, str]], what: str) -> str:
    lines = [f"{path}:{line} {name}" for path, line, name in sorted(offences)]
    return f"{len(lines)} {what}:\n" + "\n".join(lines)


# ------------------------------------------------------------------------- private-cross
def self_attrs(target: ast.AST, out: set[str]) -> None:
    if isinstance(target, (ast.Tuple, ast.List)):
        for t in target.elts:
            self_attrs(t, out)
    elif isinstance(target, ast.Starred):
        self_attrs(target.value, out)
    elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) \
            and target.value.id in ("self", "cls") and is_private(target.attr):
        out.add(target.attr)


def class_privates(tree: ast.Module) -> set[str]:
    """Private names of the module's classes: methods, class attributes, ``self._x = ``."""
    names: set[str] = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        for item in cls.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_private(item.name):
                names.add(item.name)
            elif isinstance(item, ast.Assign):
                names.update(t.id for t in item.targets
                             if isinstance(t, ast.Name) and is_private(t.id))
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                    and is_private(item.target.id):
                names.add(item.target.id)
        for n in ast.walk(cls):
            if isinstance(n, ast.Assign):
                for t in n.targets:
                    self_attrs(t, names)
            elif isinstance(n, (ast.AnnAssign, ast.AugAssign)):
                self_attrs(n.target, names)
    return names


def module_privates(tree: ast.Module) -> set[str]:
    """Private module-level names: functions, classes, assignments."""
    top: set[str] = set()
    for item in tree.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                and is_private(item.name):
            top.add(item.name)
        elif isinstance(item, ast.Assign):
            top.update(t.id for t in item.targets if isinstance(t, ast.Name) and is_private(t.id))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                and is_private(item.target.id):
            top.add(item.target.id)
    return top


CLASS_PRIVATE = {m: class_privates(tree) for m, (_, tree, _) in MODS.items()}
MODULE_PRIVATE = {m: module_privates(tree) for m, (_, tree, _) in MODS.items()}
OWNERS: dict[str, set[str]] = {}   # private class-attribute name -> modules defining it
for _m, _names in CLASS_PRIVATE.items():
    for _n in _names:
        OWNERS.setdefault(_n, set()).add(_m)


def module_aliases(tree: ast.Module) -> dict[str, str]:
    """Local names bound to easyfit modules (``import easyfit.x as y``, ``from easyfit import x``)."""
    aliases = {}
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == PKG:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases[PKG] = PKG
        elif isinstance(n, ast.ImportFrom) and n.level == 0 \
                and (n.module or "").split(".")[0] == PKG:
            for a in n.names:
                if f"{n.module}.{a.name}" in MODS:
                    aliases[a.asname or a.name] = f"{n.module}.{a.name}"
    return aliases


def dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def easyfit_target(value: ast.AST, aliases: dict[str, str]) -> str | None:
    """The easyfit module that ``value`` names (``alias``, ``easyfit.x``), if any."""
    d = dotted(value)
    head = d.split(".")[0] if d else None
    if not d or head not in aliases:
        return None
    if aliases[head] != PKG or d == head:
        return aliases[head] + d[len(head):]
    return d if d.startswith(PKG + ".") else None


def allowed_third_party(rel: str, name: str) -> bool:
    files, _reason = ALLOWED_PRIVATE.get(name, (frozenset(), ""))
    return files is None or rel in files


def private_offences() -> list[tuple[str, int, str]]:
    found = []
    for m, (rel, tree, _) in MODS.items():
        own = CLASS_PRIVATE[m] | MODULE_PRIVATE[m]
        aliases = module_aliases(tree)

        def access(line: int, value: ast.AST, name: str) -> None:
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                return
            target = easyfit_target(value, aliases)
            if target in MODS and target != m \
                    and name in MODULE_PRIVATE[target] | CLASS_PRIVATE[target]:
                found.append((rel, line, f"{name} [{target}.{name}]"))
            elif name in OWNERS and name not in own:
                found.append((rel, line, f"{name} [attr of {','.join(sorted(OWNERS[name]))}]"))
            elif name not in own and not allowed_third_party(rel, name):
                found.append((rel, line, f"{name} [private name no class of this module defines]"))

        for n in ast.walk(tree):
            if isinstance(n, ast.Attribute) and is_private(n.attr):
                access(n.lineno, n.value, n.attr)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Name) \
                    and n.func.id in ("getattr", "setattr", "hasattr", "delattr") \
                    and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) \
                    and isinstance(n.args[1].value, str) and is_private(n.args[1].value):
                access(n.lineno, n.args[0], n.args[1].value)
            elif isinstance(n, ast.ImportFrom):
                src = resolve_from(m, n)
                if src == m:
                    continue
                if src.split(".")[0] == PKG:
                    found.extend((rel, n.lineno, f"{a.name} [imported from {src}]")
                                 for a in n.names
                                 if is_private(a.name) and f"{src}.{a.name}" not in MODS)
                elif src != "__future__":
                    if any(is_private(p) for p in src.split(".")) and \
                            not any(src.startswith(p) for p in ALLOWED_PRIVATE_MODULES):
                        found.append((rel, n.lineno, f"{src} [private third-party module]"))
                    found.extend((rel, n.lineno, f"{a.name} [imported from {src}]")
                                 for a in n.names
                                 if is_private(a.name) and not allowed_third_party(rel, a.name))
            elif isinstance(n, ast.Import):
                for a in n.names:
                    if a.name.split(".")[0] != PKG and any(is_private(p) for p in a.name.split(".")) \
                            and not any(a.name.startswith(p) for p in ALLOWED_PRIVATE_MODULES):
                        found.append((rel, n.lineno, f"{a.name} [private third-party module]"))
    return found


def test_no_private_access_across_modules():
    found = private_offences()
    assert not found, report(found, "cross-module private accesses")


# ------------------------------------------------------------------------- import cycles
def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported easyfit module: line of the first such import}."""
    graph: dict[str, dict[str, int]] = {m: {} for m in MODS}
    for m, (_, tree, _) in MODS.items():
        for n in walk(tree):
            targets = []
            if isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                src = resolve_from(m, n)
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in MODS else src
                           for a in n.names]
            for t in targets:
                while t and t not in MODS and "." in t:   # easyfit.x.name -> easyfit.x
                    t = t.rsplit(".", 1)[0]
                if t in MODS and t != m:
                    graph[m].setdefault(t, n.lineno)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycles():
    graph = import_graph()
    found = []
    for comp in cycles(graph):
        members = set(comp)
        found.extend((MODS[m][0], line, f"{target} [cycle: {', '.join(comp)}]")
                     for m in comp for target, line in graph[m].items() if target in members)
    assert not found, report(found, "imports that close a cycle among easyfit modules")


# ------------------------------------------------------------------------- big files
def test_no_file_over_400_lines():
    found = [(rel, len(text.splitlines()), f"{len(text.splitlines())} lines > {MAX_LINES}")
             for rel, _, text in MODS.values() if len(text.splitlines()) > MAX_LINES]
    assert not found, report(found, f"files over {MAX_LINES} lines")


# ------------------------------------------------------------------------- py.typed
def test_py_typed_is_shipped():
    found = []
    if not (ROOT / PKG / "py.typed").is_file():
        found.append((f"{PKG}/py.typed", 0, "py.typed [missing]"))
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["build-system"]["build-backend"] == "setuptools.build_meta", \
        "the check below reads setuptools' package-data; update it with the backend"
    package_data = config.get("tool", {}).get("setuptools", {}).get("package-data", {})
    patterns = [p for key in (PKG, "*", "") for p in package_data.get(key, [])]
    if not any(fnmatch.fnmatch("py.typed", p) for p in patterns):
        found.append(("pyproject.toml", 0, "py.typed [not in tool.setuptools.package-data]"))
    assert not found, report(found, "py.typed problems")


# ------------------------------------------------------------------------- __all__
def module_bindings(tree: ast.Module) -> set[str]:
    """Names bound at module level (imports, defs, classes, assignments; not in functions)."""
    names: set[str] = set()
    for n in walk(tree, into_defs=False):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.Import):
            names.update((a.asname or a.name.split(".")[0]) for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            names.update((a.asname or a.name) for a in n.names)
        elif isinstance(n, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for t in (n.targets if isinstance(n, ast.Assign) else [n.target]):
                names.update(x.id for x in ast.walk(t) if isinstance(x, ast.Name))
    return names


def dunder_all(tree: ast.Module) -> tuple[int, list[str] | None] | None:
    """``(line, names)`` of the module's ``__all__``; names is ``None`` when it is not a
    literal list or tuple of strings."""
    for n in tree.body:
        if isinstance(n, (ast.Assign, ast.AnnAssign)):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                try:
                    value = ast.literal_eval(n.value)
                except ValueError:
                    return n.lineno, None
                return n.lineno, list(value)
    return None


def test_public_modules_define_all():
    found = []
    for m, (rel, tree, _) in MODS.items():
        name = os.path.basename(rel)
        if is_private(name) or any(is_private(part) for part in m.split(".")):
            continue
        bound = module_bindings(tree)
        declared = dunder_all(tree)
        if declared is None:
            if name != "__init__.py" or any(not n.startswith("_") for n in bound):
                found.append((rel, 1, "__all__ [missing]"))
            continue
        line, names = declared
        if names is None:
            found.append((rel, line, "__all__ [not a literal list of names]"))
            continue
        packages = {m2.rsplit(".", 1)[-1] for m2 in MODS if m2.rsplit(".", 1)[0] == m}
        found.extend((rel, line, f"{n} [in __all__ but not defined]")
                     for n in names if n not in bound and n not in packages)
    assert not found, report(found, "modules without a valid __all__")
