"""Checks that cannot fail: a checking cell must hold at least one assertion that runs and can fail.

A cell tagged ``claim:<id>`` is the claim's check only if some failure in it reaches nbval. These
pass whatever the code computes, and ``cannot_fail`` names each with its line:

- an assert whose test is constant (``assert True``) or always true (``assert (x, "msg")``);
- an assertion under a branch that never runs (``if False:``, the ``else:`` of ``if True:``);
- asserts inside a function that the notebook never calls;
- a call to an ``assert_*`` helper (defined in the notebook or in ``snippets/``) whose body cannot
  fail: it neither asserts, nor raises, nor calls something that can fail;
- an assertion inside ``try:`` (or ``contextlib.suppress``) whose handler swallows the failure;
- a cell nbval skips (``nbval-skip``, ``# NBVAL_SKIP``) or passes whatever it raises
  (``raises-exception``, ``# NBVAL_RAISES_EXCEPTION``);
- a cell with no assertion at all.

An assertion is an ``assert``, a ``raise``, or a call to something that can fail: a function of the
notebook, or an ``assert*`` helper of ``snippets/``, whose body holds one (read with ``ast``, followed
``MAX_DEPTH`` calls deep), or a library's ``assert*`` function (``torch.testing.assert_close``,
``np.testing.assert_*``, unittest's ``assertEqual``) and ``pytest.raises``. A function the notebook
defines counts if any cell uses its name (a hook or callback counts too).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

MAX_DEPTH = 5  # helper calls followed; deeper ones are trusted to be able to fail
SKIP_TAGS = ("nbval-skip",)
RAISES_TAGS = ("raises-exception", "nbval-raises-exception")
FAILING_CALLS = ("pytest.raises", "pytest.fail")  # fail without "assert" in their name
CATCH_ALL = {"Exception", "BaseException"}
COMPARISONS = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
NO_ASSERTION = "it has no assertion: no assert, no raise, no call to an asserting function"


@dataclass
class Assertion:
    """One place that could stop the cell: ``why`` it cannot, or None when it can fail."""

    label: str  # "the assert on line 3", "the call to `assert_close` on line 7"
    why: str | None = None


@dataclass
class Scope:
    """Where names are looked up: the notebook's cells, or one module of ``snippets/``."""

    where: str  # "the notebook", "snippets/checks.py"
    root: Path
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef]  # top-level definitions
    imports: dict[str, str]  # local name -> dotted name it was imported as
    used: set[str]  # every name read, as a variable or as an attribute

    def dotted(self, expr: ast.expr) -> str | None:
        """The imported name a call refers to (``np.testing.x`` -> ``numpy.testing.x``)."""
        if isinstance(expr, ast.Name):
            return self.imports.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            base = self.dotted(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None


@dataclass
class Catcher:
    """A handler that swallows what it catches: ``except`` without a ``raise``, or ``suppress``."""

    names: set[str] | None  # the exception names it catches; None: everything (bare ``except:``)
    why: str  # "is inside a `try:` whose `except Exception:` (line 5) swallows its failure"

    def catches(self, exception: str | None) -> bool:
        if self.names is None or self.names & CATCH_ALL:
            return True
        return exception in self.names


def cannot_fail(source: str, tags: list[str], notebook_sources: list[str], root: Path) -> list[str]:
    """Why a checking cell cannot fail, one reason per construct; [] when it is a real check.

    ``notebook_sources``: the code of every code cell of its notebook (to find the functions it
    defines and calls); ``root``: the repository root (to read ``snippets/`` helpers).
    """
    skipped = _nbval_markers(source, tags)
    if skipped:
        return skipped
    try:
        cell = ast.parse(_python(source))
    except SyntaxError as err:
        return [f"it is not valid Python (line {err.lineno}: {err.msg})"]
    found = Reader(_notebook_scope(tuple(notebook_sources), root)).body(cell.body)
    if any(a.why is None for a in found):
        return []
    if not found:
        return [NO_ASSERTION]
    return list(dict.fromkeys(f"{a.label} {a.why}" for a in found))


def describe(notebook: Path, cell: str, claim_ids: list[str], reasons: list[str]) -> str:
    """The ledger's message for a check that cannot fail (``cell``: ledger.cell_label's text)."""
    return (
        f"{notebook.as_posix()} {cell} (claim {', '.join(claim_ids)}): "
        f"the check cannot fail: {'; '.join(reasons)}"
    )


def _nbval_markers(source: str, tags: list[str]) -> list[str]:
    """The tags and comment markers (on any line, as nbval reads them) that defeat a check."""
    reasons = [f"tagged {t}: nbval does not run it" for t in tags if t in SKIP_TAGS]
    reasons += [
        f"tagged {t}: nbval passes it even when the assert fails" for t in tags if t in RAISES_TAGS
    ]
    for number, line in enumerate(source.splitlines(), 1):
        marker = line.strip().lstrip("#").strip() if line.strip().startswith("#") else ""
        if marker == "NBVAL_SKIP":
            reasons.append(f"marked `# NBVAL_SKIP` (line {number}): nbval does not run it")
        elif marker == "NBVAL_RAISES_EXCEPTION":
            reasons.append(
                f"marked `# NBVAL_RAISES_EXCEPTION` (line {number}): "
                "nbval passes it even when the assert fails"
            )
    return reasons


def _python(source: str) -> str:
    """Cell code with IPython's ``%magic`` and ``!shell`` lines blanked (line numbers kept)."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()
    )


@lru_cache(maxsize=4)  # the ledger asks once per checking cell, with the same notebook
def _notebook_scope(sources: tuple[str, ...], root: Path) -> Scope:
    trees = []
    for source in sources:
        try:
            trees.append(ast.parse(_python(source)))
        except SyntaxError:
            continue
    return _scope("the notebook", root, trees)


def _module_scope(root: Path, module: str) -> Scope | None:
    """The scope of a module of ``snippets/`` (``snippets.checks``), None if there is no such file."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            return _scope(path.relative_to(root).as_posix(), root, [tree], module)
    return None


def _scope(where: str, root: Path, trees: list[ast.Module], module: str = "") -> Scope:
    functions, imports, used = {}, {}, set()
    for tree in trees:
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[node.name] = node
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    local = alias.asname or alias.name.split(".")[0]
                    imports[local] = alias.name if alias.asname else local
            elif isinstance(node, ast.ImportFrom):
                package = module.rsplit(".", node.level)[0] if node.level else ""
                origin = ".".join(p for p in (package, node.module) if p)
                for alias in node.names:
                    imports[alias.asname or alias.name] = f"{origin}.{alias.name}"
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
    return Scope(where, root, functions, imports, used)


def _truth(test: ast.expr) -> bool | None:
    """True if ``test`` is true on every run, False if false on every run, None if it depends."""
    if isinstance(test, ast.Constant):
        return bool(test.value)
    if isinstance(test, (ast.Tuple, ast.List, ast.Set)):
        if any(not isinstance(e, ast.Starred) for e in test.elts):
            return True
        return None if test.elts else False
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        operand = _truth(test.operand)
        return None if operand is None else not operand
    if isinstance(test, ast.BoolOp):
        values = [_truth(v) for v in test.values]
        decisive = isinstance(test.op, ast.Or)  # the value that settles the whole expression
        if decisive in values:
            return decisive
        return (not decisive) if all(v is not None for v in values) else None
    if isinstance(test, ast.Compare) and _is_constant(test):
        try:  # literals only: literal_eval computes nothing that could take long
            values = [ast.literal_eval(e) for e in (test.left, *test.comparators)]
            pairs = zip(test.ops, values[:-1], values[1:], strict=True)
            return all(COMPARISONS[type(op)](a, b) for op, a, b in pairs)
        except (ValueError, TypeError):
            return None
    return None


def _is_constant(expr: ast.expr) -> bool:
    """Whether ``expr`` reads nothing from the run: no name, call, attribute or subscript."""
    reads = (ast.Name, ast.Call, ast.Attribute, ast.Subscript, ast.NamedExpr, ast.Await)
    return not any(isinstance(node, reads) for node in ast.walk(expr))


def _code(node: ast.AST) -> str:
    """The first line of a construct as code, shortened for a message."""
    text = ast.unparse(node).splitlines()[0]
    return text if len(text) <= 60 else text[:57] + "..."


def _last_name(expr: ast.expr) -> str:
    if isinstance(expr, ast.Call):
        expr = expr.func
    if isinstance(expr, ast.Attribute):
        return expr.attr
    return expr.id if isinstance(expr, ast.Name) else ""


def _caught(handler_type: ast.expr | None) -> set[str] | None:
    if handler_type is None:
        return None
    types = handler_type.elts if isinstance(handler_type, ast.Tuple) else [handler_type]
    return {_last_name(t) for t in types}


class Reader:
    """Finds the assertions of a block of code and whether each can fail."""

    def __init__(self, scope: Scope, depth: int = 0) -> None:
        self.scope = scope
        self.depth = depth

    def body(self, statements: list[ast.stmt]) -> list[Assertion]:
        return [a for s in statements for a in self._visit(s, None, ())]

    def _visit(
        self, node: ast.AST, dead: str | None, catchers: tuple[Catcher, ...]
    ) -> Iterator[Assertion]:
        """The assertions in ``node``; ``dead``: why it never runs; ``catchers``: who swallows."""
        if isinstance(node, ast.Assert):
            yield self._assert(node, dead, catchers)
        elif isinstance(node, ast.Raise):
            exception = _last_name(node.exc) if node.exc else None
            yield _site(f"the raise on line {node.lineno}", None, dead, catchers, exception)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from self._definition(node, dead)
        elif isinstance(node, (ast.If, ast.While)):
            yield from self._visit(node.test, dead, catchers)
            truth, header = _truth(node.test), _code(node)
            body_dead = f"is under `{header}` and never runs" if truth is False else None
            else_dead = f"is in the `else:` of `{header}` and never runs" if truth else None
            yield from self._block(node.body, dead or body_dead, catchers)
            yield from self._block(node.orelse, dead or else_dead, catchers)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            yield from self._visit(node.iter, dead, catchers)
            empty = _truth(node.iter) is False
            why = f"is under `{_code(node)}` (an empty loop) and never runs" if empty else None
            yield from self._block(node.body, dead or why, catchers)
            yield from self._block(node.orelse, dead, catchers)
        elif isinstance(node, ast.Try):
            swallowing = tuple(
                Catcher(
                    _caught(h.type),
                    f"is inside a `try:` whose `{_code(h)}` (line {h.lineno}) swallows its failure",
                )
                for h in node.handlers
                if not any(isinstance(n, ast.Raise) for n in ast.walk(h))
            )
            yield from self._block(node.body, dead, swallowing + catchers)
            for part in (*node.handlers, *node.orelse, *node.finalbody):
                yield from self._visit(part, dead, catchers)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                yield from self._visit(item.context_expr, dead, catchers)
            suppressing = [self._suppressing(item.context_expr) for item in node.items]
            inner = tuple(c for c in suppressing if c) + catchers
            yield from self._block(node.body, dead, inner)
        else:
            if isinstance(node, ast.Call):
                found = self._call(node, dead, catchers)
                if found:
                    yield found
            for child in ast.iter_child_nodes(node):
                yield from self._visit(child, dead, catchers)

    def _suppressing(self, expr: ast.expr) -> Catcher | None:
        """``contextlib.suppress(...)`` as the handler it is; None for any other context."""
        if not isinstance(expr, ast.Call) or self.scope.dotted(expr.func) != "contextlib.suppress":
            return None
        why = f"is inside `with {_code(expr)}:` (line {expr.lineno}), which swallows its failure"
        return Catcher({_last_name(a) for a in expr.args}, why)

    def _block(
        self, statements: list[ast.stmt], dead: str | None, catchers: tuple[Catcher, ...]
    ) -> Iterator[Assertion]:
        for statement in statements:
            yield from self._visit(statement, dead, catchers)

    def _assert(
        self, node: ast.Assert, dead: str | None, catchers: tuple[Catcher, ...]
    ) -> Assertion:
        truth, code = _truth(node.test), f"`{_code(node)}`"
        if truth is True and isinstance(node.test, ast.Tuple):
            own = f"tests a non-empty tuple, which is always true ({code}): drop the parentheses"
        elif truth is True and not _is_constant(node.test):
            own = f"is always true ({code})"
        elif truth is not False and _is_constant(node.test):
            own = f"is constant ({code}): its outcome does not depend on the run"
        else:  # a test of the run, or a plain `assert False`: the code reaching it is the check
            own = None
        return _site(f"the assert on line {node.lineno}", own, dead, catchers, "AssertionError")

    def _definition(
        self, node: ast.FunctionDef | ast.AsyncFunctionDef, dead: str | None
    ) -> Iterator[Assertion]:
        """A function's assertions count where it is defined, if the notebook ever uses it."""
        inner = Reader(self.scope, self.depth).body(node.body)
        if not inner:
            return
        label = f"`{node.name}()` (line {node.lineno})"
        dunder = node.name.startswith("__") and node.name.endswith("__")  # Python calls it
        if dead:
            yield Assertion(label, dead)
        elif any(a.why is None for a in inner):
            if node.name in self.scope.used or dunder:
                yield Assertion(label)
            else:
                yield Assertion(f"the asserts are inside {label}", "which is never called")
        else:
            yield from inner

    def _call(
        self, call: ast.Call, dead: str | None, catchers: tuple[Catcher, ...]
    ) -> Assertion | None:
        """The call as an assertion: a helper that can fail, or a library's ``assert*``."""
        name = _last_name(call.func)
        label = f"the call to `{name}` on line {call.lineno}"
        helper = self._helper(call.func)
        if helper is None:
            dotted = self.scope.dotted(call.func) or ""
            if name.startswith("assert") or dotted in FAILING_CALLS:
                return _site(label, None, dead, catchers, "AssertionError")
            return None
        function, scope = helper
        if self.depth >= MAX_DEPTH:
            return _site(label, None, dead, catchers, "AssertionError")
        inner = Reader(scope, self.depth + 1).body(function.body)
        if any(a.why is None for a in inner):
            return _site(label, None, dead, catchers, "AssertionError")
        if not inner and not name.startswith("assert"):
            return None  # an ordinary function, not meant as a check
        body = (
            "; ".join(f"{a.label} {a.why}" for a in inner)
            if inner
            else "its body neither asserts nor raises"
        )
        named = f"`{name}` ({scope.where}), called on line {call.lineno},"
        return _site(named, f"can never fail: {body}", dead, catchers, "AssertionError")

    def _helper(
        self, func: ast.expr
    ) -> tuple[ast.FunctionDef | ast.AsyncFunctionDef, Scope] | None:
        """The definition a call runs: any function of this scope, an ``assert*`` of ``snippets/``."""
        if isinstance(func, ast.Name) and func.id in self.scope.functions:
            return self.scope.functions[func.id], self.scope
        module, _, name = (self.scope.dotted(func) or "").rpartition(".")
        if module.split(".")[0] != "snippets" or not name.startswith("assert"):
            return None
        scope = _module_scope(self.scope.root, module)
        if scope is None or name not in scope.functions:
            return None
        return scope.functions[name], scope


def _site(
    label: str,
    own: str | None,
    dead: str | None,
    catchers: tuple[Catcher, ...],
    exception: str | None,
) -> Assertion:
    """An assertion, vacuous for the first reason that applies: never runs, swallowed, its own."""
    if dead:
        return Assertion(label, dead)
    for catcher in catchers:
        if catcher.catches(exception):
            return Assertion(label, catcher.why)
    return Assertion(label, own)
