"""An import-linter contract type (pyproject's `contract_types`): no module of the package
outside the allowed ones (dae.compat) reaches into a library's private modules.

import-linter's own `forbidden` contract cannot say this: grimp squashes an external
package to its top-level name, so `keras.src` is just `keras` to it. This contract reads
each module's source instead and finds, lazy ones inside functions included:
`import x.y`, `from x.y import z` (and `from x import _z`), `importlib.import_module("x.y")`
or `__import__("x.y")` with a literal name, and attribute chains on an imported library
(`keras.src.ops`, `np._core`). A module is private if it is listed in `private_modules`
(or under one), or if a part of its dotted name starts with an underscore (Python's own
convention: `numpy._core`, `grpc._channel`); the standard library is not judged.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

from importlinter import Contract, ContractCheck, fields, output


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _private_part(name: str) -> bool:
    return any(p.startswith("_") and not p.startswith("__") for p in name.split(".")[1:])


class PrivateModulesContract(Contract):
    """Options: private_modules (library modules private beyond the underscore rule),
    allowed_modules (modules of the package, with their submodules, that may use them)."""

    type_name = "private_modules"

    private_modules = fields.ListField(subfield=fields.StringField())
    allowed_modules = fields.ListField(subfield=fields.StringField(), required=False, default=[])

    def check(self, graph, verbose: bool) -> ContractCheck:
        roots = _root_packages(self.session_options)
        violations = []
        for module in sorted(graph.modules):
            if not _under(module, roots) or _under(module, self.allowed_modules):
                continue
            path = _source(module)
            if path is None:
                continue
            uses = sorted(set(_uses(ast.parse(path.read_text(), str(path)))))
            for line, name in uses:
                if self._private(name, roots):
                    violations.append({"module": module, "line": line, "uses": name})
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def _private(self, name: str, roots) -> bool:
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or _under(top, roots):
            return False
        return _under(name, self.private_modules) or _private_part(name)

    def render_broken_contract(self, check: ContractCheck) -> None:
        allowed = ", ".join(self.allowed_modules) or "no module"
        for v in check.metadata["violations"]:
            output.print_error(f"{v['module']}:{v['line']} uses {v['uses']}", bold=False)
        output.new_line()
        output.print_error(f"Only {allowed} may use a library's private modules.", bold=False)


def _root_packages(options) -> list[str]:
    if "root_packages" in options:
        return list(options["root_packages"])
    return [options["root_package"]]


def _source(module: str) -> Path | None:
    """The file of a module of the package, found from its root package's folder (the
    package itself is not imported)."""
    root, *parts = module.split(".")
    spec = importlib.util.find_spec(root)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _uses(tree: ast.AST):
    """(line, dotted name) of each module or attribute of a library the source names."""
    aliases: dict[str, str] = {}  # a local name bound to an imported module -> its name
    inner: set[int] = set()  # attributes that are part of a longer chain
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
                local = a.asname or a.name.split(".")[0]
                aliases[local] = a.name if a.asname else local
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for a in node.names:
                yield node.lineno, f"{node.module}.{a.name}"
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
            inner.add(id(node.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            if chain and chain[0] in aliases:
                yield node.lineno, ".".join([aliases[chain[0]], *chain[1:]])


def _is_import_call(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__")


def _chain(node: ast.Attribute) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]
