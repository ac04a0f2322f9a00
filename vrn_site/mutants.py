"""Mutation testing of the paper code: ``python -m vrn_site.mutants`` (``make mutants``).

A mutant is a copy of one module of snippets/ with one small deliberate bug: ``<`` for ``<=``, ``+``
for ``-``, a constant off by one, a deleted statement, ... A good test suite fails on it ("kills"
it). For every mutant this harness runs the unit tests that execute the changed line, then, for
those that survive, the checking cells of the notebooks that import the module (``--nbval-lax``:
asserts and published values). A mutant that fails a check, crashes or runs past its time limit is
killed; one that passes everything survives. A survivor that no input can tell apart from the
original is *equivalent*: declared with its reason in vrn_site/mutants_equivalent.toml and left out
of the kill rate's denominator.

Speed: torch, transformers and the tests' other imports load once, in this process, while the
unmutated baseline runs (under coverage, one context per test: which tests execute which line).
Each mutant runs in a forked child that forgets the package and the test modules and imports the
mutated module from an import hook, running only the tests that execute the changed line, fastest
first, stopping at the first failure.

The report (docs/mutants.json) is rendered on the site by ``render``.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import importlib.abc
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vrn_site import project_root

# Before torch loads (in the baseline): every forked child computes on one thread, and a fork
# never inherits a half-used OpenMP or tokenizers thread pool.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EQUIVALENT_FILE = Path(__file__).with_name("mutants_equivalent.toml")
NOT_MUTATED = ("__init__.py", "runtime.py")  # runtime.py pins the notebooks' CPU: not paper code
NOTEBOOK_TIMEOUT_FACTOR = 3  # a notebook runs for minutes: a hang shows well before 10x
MEMORY_HEADROOM = 4 << 30  # bytes a unit-test child may map beyond the baseline's peak

OPERATORS = {
    "compare": "< ↔ <=, > ↔ >=, == ↔ !=, is ↔ is not, in ↔ not in",
    "arithmetic": "+ ↔ -, * ↔ /, // → /, % → /, ** → *, | ↔ & (also in augmented assignments)",
    "unary": "drop unary -, not, ~",
    "number": "0 → 1, 1 → 0, other integers n → n + 1, floats x → 1.5 x (0.0 → 1.0)",
    "boolean": "True ↔ False, and ↔ or",
    "statement": "an expression statement or (augmented) assignment → pass",
    "return": "return value → return None",
    "keyword": "a keyword argument dropped, so the callee's default applies (not device=, nor "
    "a True/False one: the boolean operator covers those)",
}
_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq}
_CMP |= {ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn}
_CMP |= {ast.NotIn: ast.In}
_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult}
_BIN |= {ast.FloorDiv: ast.Div, ast.Mod: ast.Div, ast.Pow: ast.Mult}
_BIN |= {ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr}
_UNARY = {ast.USub: "-", ast.Not: "not", ast.Invert: "~"}
_ATOMS = (ast.Constant, ast.Name, ast.Attribute, ast.Call, ast.Subscript)
_OUTPUT_CALLS = {"print", "warn", "debug", "info", "warning", "error", "exception", "log"}
# Figure styling: no check can say that a font size or a colour is right.
STYLE_KEYWORDS = {"figsize", "fontsize", "color", "ls", "lw", "ha", "va", "aspect", "cmap", "alpha"}


def _symbol(op: ast.AST) -> str:
    """The source text of an operator node: ``Lt()`` -> ``<``."""
    if isinstance(op, ast.cmpop):
        return ast.unparse(ast.Compare(ast.Name("a"), [op], [ast.Name("b")]))[2:-2]
    if isinstance(op, ast.boolop):
        return "and" if isinstance(op, ast.And) else "or"
    return ast.unparse(ast.BinOp(ast.Name("a"), op, ast.Name("b")))[2:-2]


# --- mutants -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutant:
    """One mutated copy of ``module``. ``id`` names the module, the enclosing function, the
    operator and the statement it changes (its code, or a compound statement's header): stable
    while that statement and its function's name stay the same, whatever moves around them."""

    id: str
    module: str  # path relative to the project root, e.g. snippets/gpt.py
    qualname: str  # enclosing function or class, "<module>" at top level
    line: int
    col: int
    operator: str  # e.g. "< → <="
    before: str  # the changed line(s) before and after, whitespace collapsed
    after: str
    lines: tuple[int, int]  # the lines whose execution decides whether a test can see it
    source: str = field(repr=False)

    def summary(self) -> dict:
        keys = ("id", "line", "col", "operator", "before", "after")
        return {key: getattr(self, key) for key in keys}


class _Finder(ast.NodeVisitor):
    """Collects (node, qualname, operator, replacement text, enclosing statement) candidates.

    Never mutated: docstrings, type annotations, decorators, f-strings and other strings, ``raise``
    statements (error messages), output calls (print, logging, warnings), ``__repr__``, figure
    styling keywords (``STYLE_KEYWORDS``)."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.AST, str, str, str, ast.stmt]] = []
        self.scope: list[str] = []
        self.stmt: list[ast.stmt] = []

    def add(self, node: ast.AST, operator: str, text: str) -> None:
        self.found.append((node, ".".join(self.scope) or "<module>", operator, text, self.stmt[-1]))

    def replace(self, node: ast.expr, new: ast.expr, operator: str) -> None:
        text = ast.unparse(new)
        self.add(node, operator, text if isinstance(new, _ATOMS) else f"({text})")

    def visit(self, node: ast.AST) -> None:
        if isinstance(node, ast.stmt):
            self.stmt.append(node)
            super().visit(node)
            self.stmt.pop()
        else:
            super().visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        if node.name == "__repr__":
            return
        self.scope.append(node.name)
        for default in [*node.args.defaults, *filter(None, node.args.kw_defaults)]:
            self.visit(default)
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self.scope.pop()

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.visit(node.body)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def skip(self, node: ast.AST) -> None:
        pass

    visit_JoinedStr = visit_Raise = visit_arg = visit_Import = visit_ImportFrom = skip

    def visit_If(self, node: ast.If) -> None:
        if ast.unparse(node.test) not in ("__name__ == '__main__'", "TYPE_CHECKING"):
            self.generic_visit(node)

    def visit_Expr(self, node: ast.Expr) -> None:
        if isinstance(node.value, ast.Constant):  # a docstring
            return
        call = node.value.func if isinstance(node.value, ast.Call) else None
        name = getattr(call, "attr", getattr(call, "id", None))
        if name in _OUTPUT_CALLS:
            return
        self.add(node, "statement → pass", "pass")
        self.generic_visit(node)

    def visit_Assign(self, node: ast.Assign | ast.AugAssign) -> None:
        self.add(node, "statement → pass", "pass")
        if isinstance(node, ast.AugAssign) and type(node.op) in _BIN:
            new = ast.AugAssign(node.target, _BIN[type(node.op)](), node.value)
            self.add(node, f"{_symbol(node.op)}= → {_symbol(new.op)}=", ast.unparse(new))
        self.generic_visit(node)

    visit_AugAssign = visit_Assign

    def visit_Return(self, node: ast.Return) -> None:
        if node.value is not None and not (
            isinstance(node.value, ast.Constant) and node.value.value is None
        ):
            self.add(node, "return → return None", "return None")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        for kw in node.keywords:
            if kw.arg in STYLE_KEYWORDS or kw.arg in (None, "device"):
                continue
            if not (isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, bool)):
                rest = [k for k in node.keywords if k is not kw]
                self.replace(node, ast.Call(node.func, node.args, rest), f"drop {kw.arg}=")
        for child in [node.func, *node.args]:
            self.visit(child)
        for kw in node.keywords:
            if kw.arg not in STYLE_KEYWORDS:
                self.visit(kw.value)

    def visit_Compare(self, node: ast.Compare) -> None:
        for i, op in enumerate(node.ops):
            if type(op) in _CMP:
                ops = [*node.ops]
                ops[i] = _CMP[type(op)]()
                new = ast.Compare(node.left, ops, node.comparators)
                self.replace(node, new, f"{_symbol(op)} → {_symbol(ops[i])}")
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if type(node.op) in _BIN:
            new = ast.BinOp(node.left, _BIN[type(node.op)](), node.right)
            self.replace(node, new, f"{_symbol(node.op)} → {_symbol(new.op)}")
        self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> None:
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self.replace(node, ast.BoolOp(other, node.values), f"{_symbol(node.op)} → {_symbol(other)}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> None:
        if type(node.op) in _UNARY:
            self.replace(node, node.operand, f"drop {_UNARY[type(node.op)]}")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool):
            new = not value
        elif isinstance(value, int):
            new = {0: 1, 1: 0}.get(value, value + 1)
        elif isinstance(value, float):
            new = float(f"{value * 1.5:.12g}") if value else 1.0
        else:
            return
        self.add(node, f"{value!r} → {new!r}", repr(new))


def _statement_text(stmt: ast.stmt) -> str:
    """The code of a simple statement, or the header of a compound one, without comments."""
    if isinstance(stmt, (ast.If, ast.While)):
        return f"{type(stmt).__name__.lower()} {ast.unparse(stmt.test)}"
    if isinstance(stmt, ast.For):
        return f"for {ast.unparse(stmt.target)} in {ast.unparse(stmt.iter)}"
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"def {stmt.name}({ast.unparse(stmt.args)})"
    if isinstance(stmt, ast.With):
        return f"with {', '.join(ast.unparse(item) for item in stmt.items)}"
    return ast.unparse(stmt)


def _collapse(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def mutants_of(path: Path, root: Path) -> list[Mutant]:
    """Every mutant of the module at ``path``, in source order."""
    source = path.read_text(encoding="utf-8")
    data = source.encode()
    starts = [0]  # byte offset of each line (ast columns count UTF-8 bytes)
    for line in source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line.encode()))
    finder = _Finder()
    finder.visit(ast.parse(source))
    module = path.relative_to(root).as_posix()
    mutants, seen = [], defaultdict(int)
    for node, qualname, operator, text, stmt in finder.found:
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        new = data[:begin] + text.encode() + data[end:]
        line_begin, line_end = starts[node.lineno - 1], starts[node.end_lineno]
        shift = len(text.encode()) - (end - begin)
        key = f"{module}::{qualname}::{operator}::{_collapse(_statement_text(stmt), 120)}"
        seen[key] += 1
        compound = hasattr(stmt, "body")  # only the header of an if/for/def decides
        mutants.append(
            Mutant(
                id=key if seen[key] == 1 else f"{key}#{seen[key]}",
                module=module,
                qualname=qualname,
                line=node.lineno,
                col=node.col_offset,
                operator=operator,
                before=_collapse(data[line_begin:line_end].decode()),
                after=_collapse(new[line_begin : line_end + shift].decode()),
                lines=(stmt.lineno, node.end_lineno if compound else stmt.end_lineno),
                source=new.decode(),
            )
        )
    return mutants


# --- which tests and notebooks can see a module --------------------------------------------------


@dataclass(frozen=True)
class Project:
    """Where the code under test, its tests and its notebooks live (the fixture tests use another)."""

    root: Path = field(default_factory=project_root)
    package: str = "snippets"
    tests: str = "tests"
    notebooks: str | None = "notebooks"

    def modules(self) -> list[Path]:
        files = sorted((self.root / self.package).glob("*.py"))
        return [f for f in files if f.name not in NOT_MUTATED]

    def module_name(self, path: Path) -> str:
        return f"{self.package}.{path.stem}"


def _imports(code: str) -> set[str]:
    """The modules ``code`` imports (``from pkg import name`` counts ``pkg`` and ``pkg.name``)."""
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _is_machinery(module: str) -> bool:
    return module == "vrn_site" or module.startswith("vrn_site.")


def _notebook_code(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def dependents(project: Project) -> dict[str, tuple[list[str], list[str]]]:
    """For each package module: (the test files, the notebooks) that import it, directly or
    through other package modules or test helpers (a static import graph). Tests of the site
    machinery (those importing vrn_site, such as the benchmarks') are not the paper code's checks
    and are left out."""
    tests_dir = project.root / project.tests
    sources = {project.module_name(p): p for p in (project.root / project.package).glob("*.py")}
    sources |= {p.stem: p for p in tests_dir.glob("*.py")}
    local = set(sources)
    imports = {name: _imports(p.read_text(encoding="utf-8")) for name, p in sources.items()}
    machinery = {name for name, found in imports.items() if any(_is_machinery(n) for n in found)}
    graph = {name: found & local for name, found in imports.items()}
    nb_dir = project.root / project.notebooks if project.notebooks else None
    notebooks = sorted(nb_dir.rglob("*.ipynb")) if nb_dir and nb_dir.is_dir() else []
    for nb in notebooks:
        graph[str(nb)] = _imports(_notebook_code(nb)) & local

    def closure(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            for dep in graph.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    reach = {name: closure(name) for name in graph}
    result = {}
    for path in project.modules():
        name = project.module_name(path)
        tests = [
            sources[t].relative_to(project.root).as_posix()
            for t in sorted(local)
            if t.startswith("test_") and t not in machinery and name in reach[t]
        ]
        nbs = [
            nb.relative_to(project.root).as_posix() for nb in notebooks if name in reach[str(nb)]
        ]
        result[path.relative_to(project.root).as_posix()] = (tests, nbs)
    return result


# --- running pytest in forked children -----------------------------------------------------------

PYTEST_ARGS = ["-q", "-p", "no:cacheprovider", "-m", "not site", "--no-header"]
# pytest's assertion rewriting would import the package itself (the distribution that provides a
# pytest plugin is rewritten whole), bypassing the mutant's import hook: plain asserts instead.
PYTEST_ARGS += ["--assert=plain"]


def _hypothesis_args() -> list[str]:
    """A deterministic hypothesis profile without a database (mutants must not leave examples
    behind) and without shrinking (a failure is all a mutant run needs to know)."""
    try:
        from hypothesis import Phase, settings
    except ImportError:
        return []
    settings.register_profile(
        "mutants",
        database=None,
        derandomize=True,
        deadline=None,
        print_blob=False,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    return ["--hypothesis-profile", "mutants"]


def _recorder(coverage=None):
    """A pytest plugin noting each test's duration and the failures; with ``coverage``, each test's
    call phase runs in a coverage context named after it (setup and import run in context "")."""
    import pytest

    class Recorder:
        def __init__(self) -> None:
            self.durations: dict[str, float] = defaultdict(float)
            self.failed: list[str] = []

        @pytest.hookimpl(wrapper=True)
        def pytest_runtest_call(self, item):
            if coverage is not None:
                coverage.switch_context(item.nodeid)
            try:
                return (yield)
            finally:
                if coverage is not None:
                    coverage.switch_context("")

        def pytest_runtest_logreport(self, report) -> None:
            self.durations[report.nodeid] += report.duration
            if report.failed:
                self.failed.append(report.nodeid)

        def pytest_collectreport(self, report) -> None:
            if report.failed:
                self.failed.append(f"collecting {report.nodeid or 'tests'}")

    return Recorder()


class _ServeMutant(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: ``name`` is imported from ``source`` instead of its file."""

    def __init__(self, name: str, path: Path, source: str) -> None:
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path))

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__file__ = str(self.path)
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)


@dataclass
class Job:
    """One pytest run in a forked child: ``args`` for pytest, a time limit, the mutant whose
    source the child imports (none: the unmutated code), extra environment variables, a memory
    limit. ``outcome``, ``failed`` and ``seconds`` are filled in when it ends."""

    args: list[str]
    timeout: float
    mutant: Mutant | None = None
    env: dict[str, str] = field(default_factory=dict)
    memory_limit: int | None = None
    outcome: str = ""  # killed, timeout, survived
    failed: str = ""  # the first failing test or cell
    seconds: float = 0.0


def _child(project: Project, job: Job, report_to: Path) -> None:
    """The forked child: forget the package and the tests, serve the mutant, run pytest, exit with
    its status (70 when the harness itself fails)."""
    status = 70
    try:
        os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
        if job.memory_limit:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (job.memory_limit, job.memory_limit))
        os.environ.update(job.env)
        fresh = [str(project.root / project.package), str(project.root / project.tests)]
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None) or ""
            if (
                name == project.package
                or name.startswith(project.package + ".")
                or (file and os.path.realpath(file).startswith(tuple(d + os.sep for d in fresh)))
            ):
                del sys.modules[name]
        if job.mutant is not None:
            path = project.root / job.mutant.module
            name = project.module_name(path)
            sys.meta_path.insert(0, _ServeMutant(name, path, job.mutant.source))
        import pytest

        recorder = _recorder()
        status = int(pytest.main(job.args, plugins=[recorder]))
        report_to.write_text(recorder.failed[0] if recorder.failed else "")
    except BaseException as err:  # noqa: BLE001 - the parent must hear of any failure
        report_to.write_text(f"harness error: {err!r}")
    finally:
        os._exit(status)


def run_jobs(project: Project, jobs: list[Job], n_parallel: int, on_done=None) -> None:
    """Run every job, ``n_parallel`` at a time, each in a forked child; fill in their outcomes.

    pytest's status: 0 all passed (the mutant survived), 5 nothing ran (survived: no test could
    see it), 1-3 a failure, an error while collecting or an internal error (killed), a signal
    (a crash: killed); past its time limit the child's process group is killed (timeout)."""
    pending, running = list(enumerate(jobs)), {}
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        try:
            while pending or running:
                while pending and len(running) < n_parallel:
                    i, job = pending.pop(0)
                    report_to = Path(tmp) / f"{i}.txt"
                    job.args = [*job.args, f"--basetemp={Path(tmp) / f'basetemp-{i}'}"]
                    pid = os.fork()
                    if pid == 0:
                        _child(project, job, report_to)
                    running[pid] = (job, time.monotonic(), report_to)
                time.sleep(0.02)
                for pid, (job, start, report_to) in list(running.items()):
                    done, status = os.waitpid(pid, os.WNOHANG)
                    elapsed = time.monotonic() - start
                    if not done and elapsed <= job.timeout:
                        continue
                    if not done:
                        _kill(pid)
                        os.waitpid(pid, 0)
                        job.outcome = "timeout"
                    else:
                        code = os.waitstatus_to_exitcode(status)
                        job.failed = report_to.read_text() if report_to.exists() else ""
                        if code == 70 or code == 4:
                            raise RuntimeError(f"pytest {' '.join(job.args)}: {job.failed}")
                        job.outcome = "survived" if code in (0, 5) else "killed"
                    job.seconds = elapsed
                    del running[pid]
                    if on_done is not None:
                        on_done(job)
        finally:
            for pid in running:
                _kill(pid)
                os.waitpid(pid, 0)


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Baseline:
    """What the unmutated run learned: each test's duration, and which tests executed each line of
    each module (None without coverage.py: then every mutant runs all of its module's tests)."""

    durations: dict[str, float]
    contexts: dict[str, dict[int, set[str]]] | None


def run_baseline(project: Project, test_files: list[str], extra_args: list[str]) -> Baseline:
    """Run the unmutated tests in this process (so their imports stay loaded for the children);
    exit with the failing tests' names if any fails."""
    import pytest

    try:
        import coverage
    except ImportError:
        cov = None
    else:
        cov = coverage.Coverage(
            data_file=None,
            config_file=False,
            include=[str(project.root / project.package / "*.py")],
        )
        cov.start()
    recorder = _recorder(cov)
    try:
        status = pytest.main([*test_files, *PYTEST_ARGS, *extra_args], plugins=[recorder])
    finally:
        if cov is not None:
            cov.stop()
    if status != 0 or recorder.failed:
        failing = "\n  ".join(recorder.failed) or f"pytest exited with status {status}"
        raise SystemExit(f"The unmutated baseline fails; fix it first:\n  {failing}")
    contexts = None
    if cov is not None:
        data = cov.get_data()
        contexts = {}
        for path in project.modules():
            lines = data.contexts_by_lineno(str(path))
            contexts[path.relative_to(project.root).as_posix()] = {
                line: set(ctx) for line, ctx in lines.items()
            }
    return Baseline(dict(recorder.durations), contexts)


def _peak_memory() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_equivalents(path: Path) -> dict[str, str]:
    """``[[equivalent]]`` tables of ``id`` and ``reason`` -> {id: reason}."""
    if not path.exists():
        return {}
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
        import tomli as tomllib
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    return {entry["id"]: entry["reason"] for entry in data.get("equivalent", [])}


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def mutate_module(
    project: Project,
    module: str,
    tests: list[str],
    notebooks: list[str],
    baseline: Baseline,
    equivalents: Mapping[str, str],
    jobs: int,
    min_timeout: float,
    factor: float,
    memory_limit: int | None,
    extra_args: list[str],
    log: Callable[[str], None],
) -> dict:
    """Run every mutant of ``module``; its entry of the report."""
    start = time.monotonic()
    mutants = mutants_of(project.root / module, project.root)
    durations = baseline.durations
    by_file = defaultdict(list)
    for nodeid in durations:
        by_file[nodeid.split("::")[0]].append(nodeid)
    files = sorted(tests, key=lambda f: sum(durations[n] for n in by_file[f]))
    contexts = None if baseline.contexts is None else baseline.contexts.get(module, {})
    unit_jobs, not_covered = [], []
    for m in mutants:
        if contexts is None:
            chosen = files
        else:
            ctx = set().union(*(contexts.get(n, ()) for n in range(m.lines[0], m.lines[1] + 1)))
            if not ctx:
                not_covered.append(m)
                continue
            # Tests that execute the line; all of them when it also runs at import or in a
            # fixture's setup (context ""), where no single test is to blame.
            chosen = files if "" in ctx else sorted(ctx, key=durations.get)
        cost = sum(durations.get(n, 0.0) for c in chosen for n in by_file.get(c, [c]))
        args = [*chosen, "-x", *PYTEST_ARGS, *extra_args]
        unit_jobs.append(Job(args, min_timeout + factor * cost, m, memory_limit=memory_limit))

    done, total = [0], [len(unit_jobs)]

    def progress(job: Job) -> None:
        done[0] += 1
        if job.outcome != "killed":
            log(
                f"  [{done[0]}/{total[0]}] {job.outcome}: line {job.mutant.line} "
                f"{job.mutant.operator}  {job.mutant.after}"
            )

    log(f"{module}: {len(mutants)} mutants, {len(not_covered)} on lines no test executes")
    run_jobs(project, unit_jobs, jobs, progress)
    outcome = {j.mutant.id: (j.outcome, j.failed) for j in unit_jobs}
    outcome |= {m.id: ("survived", "") for m in not_covered}
    covered = {j.mutant.id for j in unit_jobs}

    # Second stage: the notebooks' checking cells, for the mutants the unit tests missed (not
    # for those declared equivalent: the unit stage already shows a declaration gone stale).
    survivors = [m for m in mutants if outcome[m.id][0] == "survived" and m.id not in equivalents]
    if survivors and notebooks:
        nb_time = _notebook_baselines(project, notebooks, jobs, log)
        ordered = sorted(notebooks, key=nb_time.get)
        args = [*ordered, "--nbval-lax", "-x", "-q", "-p", "no:cacheprovider", "--no-header"]
        cost = sum(nb_time.values())
        nb_jobs = []
        with tempfile.TemporaryDirectory(prefix="mutant-package-") as tmp:
            for i, m in enumerate(survivors):
                shadow = Path(tmp) / str(i)
                shutil.copytree(project.root / project.package, shadow / project.package)
                (shadow / m.module).write_text(m.source, encoding="utf-8")
                record = Path(tmp) / f"ledger-{i}.json"  # never the project's verification record
                nb_jobs.append(
                    Job(
                        [*args, "--ledger-record", str(record)],
                        min_timeout + NOTEBOOK_TIMEOUT_FACTOR * cost,
                        m,
                        env={"PYTHONPATH": str(shadow)},
                    )
                )
            log(f"  {len(survivors)} survivors: running {len(notebooks)} notebooks on each")
            done[0], total[0] = 0, len(nb_jobs)
            run_jobs(project, nb_jobs, jobs, progress)
        for job in nb_jobs:
            if job.outcome == "killed":
                outcome[job.mutant.id] = ("notebook", job.failed)
            elif job.outcome == "timeout":
                outcome[job.mutant.id] = ("timeout", "notebooks")

    counts = dict.fromkeys(
        ("killed_by_tests", "killed_by_notebooks", "timeouts", "survived", "equivalent"), 0
    )
    survived, equivalent, stale = [], [], []
    for m in mutants:
        kind, _ = outcome[m.id]
        if kind == "survived" and m.id in equivalents:
            counts["equivalent"] += 1
            equivalent.append(m.summary() | {"reason": equivalents[m.id]})
            continue
        if m.id in equivalents:
            stale.append(m.id)  # declared equivalent, yet a check tells it apart
        key = {"killed": "killed_by_tests", "notebook": "killed_by_notebooks"}.get(kind, kind)
        counts["timeouts" if key == "timeout" else key] += 1
        if kind == "survived":
            survived.append(m.summary() | {"covered": m.id in covered})
    known = {m.id for m in mutants}
    prefix = f"{module}::"
    unmatched = [i for i in equivalents if i.startswith(prefix) and i not in known]
    entry = {"mutants": len(mutants), **counts}
    killed = counts["killed_by_tests"] + counts["killed_by_notebooks"] + counts["timeouts"]
    entry["kill_rate"] = round(killed / max(1, len(mutants) - counts["equivalent"]), 4)
    entry |= {
        "seconds": round(time.monotonic() - start, 1),
        "tests": tests,
        "notebooks": notebooks,
        "survivors": survived,
        "equivalents": equivalent,
        "stale_equivalents": stale,
        "unmatched_equivalents": unmatched,
    }
    log(
        f"{module}: kill rate {entry['kill_rate']:.1%} ({killed} of "
        f"{len(mutants) - counts['equivalent']}), {len(survived)} survived, {entry['seconds']} s"
    )
    return entry


_NOTEBOOK_SECONDS: dict[str, float] = {}


def _notebook_baselines(project: Project, notebooks: list[str], jobs: int, log) -> dict[str, float]:
    """Each notebook's seconds under ``--nbval-lax`` unmutated (run once per notebook); exit if one
    fails."""
    todo = [nb for nb in notebooks if nb not in _NOTEBOOK_SECONDS]
    if todo:
        log(f"  notebook baselines: {', '.join(todo)}")
        with tempfile.TemporaryDirectory(prefix="notebook-baseline-") as tmp:
            runs = [
                Job(
                    [
                        nb,
                        "--nbval-lax",
                        "-q",
                        "-p",
                        "no:cacheprovider",
                        "--no-header",
                        "--ledger-record",
                        str(Path(tmp) / "ledger.json"),
                    ],
                    3600.0,
                )
                for nb in todo
            ]
            run_jobs(project, runs, jobs)
        failing = [f"{j.args[0]}: {j.failed or j.outcome}" for j in runs if j.outcome != "survived"]
        if failing:
            raise SystemExit(
                "An unmutated notebook fails; fix it first:\n  " + "\n  ".join(failing)
            )
        _NOTEBOOK_SECONDS.update({j.args[0]: j.seconds for j in runs})
    return {nb: _NOTEBOOK_SECONDS[nb] for nb in notebooks}


def run(
    project: Project = Project(),
    modules: Iterable[str] | None = None,
    jobs: int = 1,
    notebooks: bool = True,
    equivalents: Mapping[str, str] | None = None,
    min_timeout: float = 10.0,
    factor: float = 10.0,
    previous: dict | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Mutation-test ``modules`` (paths relative to the root; default every module) and return the
    report; the entries of ``previous`` for other modules are kept."""
    start = time.monotonic()
    os.chdir(project.root)
    sys.path.insert(0, str(project.root))  # the package, installed or not
    equivalents = dict(equivalents or {})
    graph = dependents(project)
    modules = sorted(modules or graph)
    for module in modules:
        if module not in graph:
            raise SystemExit(f"{module} is not a mutated module of {project.package}/")
    test_files = sorted({t for m in modules for t in graph[m][0]})
    extra = _hypothesis_args()
    log(f"baseline: {len(test_files)} test files")
    baseline = run_baseline(project, test_files, extra)
    peak = _peak_memory()
    entries = dict((previous or {}).get("modules", {}))
    for module in modules:
        tests, nbs = graph[module]
        entries[module] = mutate_module(
            project,
            module,
            tests,
            nbs if notebooks else [],
            baseline,
            equivalents,
            jobs,
            min_timeout,
            factor,
            peak and peak + MEMORY_HEADROOM,
            extra,
            log,
        )
        entries[module] |= {
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _git_commit(project.root),
        }
    report = summarise(entries)
    report["last_run"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(project.root),
        "modules": modules,
        "jobs": jobs,
        "seconds": round(time.monotonic() - start, 1),
    }
    return report


COUNTS = ("mutants", "killed_by_tests", "killed_by_notebooks", "timeouts", "survived", "equivalent")


def summarise(entries: dict[str, dict]) -> dict:
    """The report: the totals over ``entries`` (one per module) and the entries themselves."""
    totals = {key: sum(e[key] for e in entries.values()) for key in COUNTS}
    killed = totals["killed_by_tests"] + totals["killed_by_notebooks"] + totals["timeouts"]
    totals["killed"] = killed
    totals["kill_rate"] = round(killed / max(1, totals["mutants"] - totals["equivalent"]), 4)
    return {
        "kill_rate": totals["kill_rate"],
        "totals": totals,
        "equivalents_in_denominator": False,
        "operators": OPERATORS,
        "modules": dict(sorted(entries.items())),
    }


# --- the site page -------------------------------------------------------------------------------


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def render(report: dict) -> str:
    """Markdown for the site page: the kill rate, a table per module, every survivor and every
    equivalent mutant with its reason."""
    t = report["totals"]
    run = report.get("last_run", {})
    lines = [
        f"**Kill rate: {t['kill_rate']:.1%}**: {t['killed']} of "
        f"{t['mutants'] - t['equivalent']} mutants killed ({t['mutants']} made, {t['equivalent']} "
        "equivalent and left out of the denominator).",
        "",
    ]
    if run:
        took = (
            f"{run['seconds'] / 60:.0f} min" if run["seconds"] >= 90 else f"{run['seconds']:.0f} s"
        )
        modules = len(run["modules"])
        lines += [
            f"Last run {run['date']} at commit `{run['commit']}`: {modules} "
            f"module{'s' if modules > 1 else ''} in {took} with {run['jobs']} jobs.",
            "",
        ]
    lines += [
        "| module | mutants | killed by tests | by notebooks | timeouts | survived | equivalent "
        "| kill rate |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for module, e in report["modules"].items():
        cells = [f"`{module}`", *(str(e[k]) for k in COUNTS), f"{e['kill_rate']:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**all**", *(str(t[k]) for k in COUNTS), f"**{t['kill_rate']:.1%}**"]
    lines += ["| " + " | ".join(cells) + " |", ""]
    for title, key in (("Surviving mutants", "survivors"), ("Equivalent mutants", "equivalents")):
        found = [(module, m) for module, e in report["modules"].items() for m in e[key]]
        lines += [f"### {title}", ""]
        if not found:
            lines += ["None.", ""]
            continue
        for module, m in found:
            note = ""
            if key == "survivors" and not m.get("covered", True):
                note = " (no test executes this line)"
            lines.append(
                f"- `{module}` line {m['line']}, {_code(m['operator'])}{note}: "
                f"{_code(m['before'])} → {_code(m['after'])}"
            )
            if key == "equivalents":
                lines.append(f"    {m['reason']}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="e.g. snippets/gpt.py (repeatable)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run in parallel")
    parser.add_argument("--report", type=Path, help="write the JSON report here (merged)")
    parser.add_argument("--no-notebooks", action="store_true", help="unit tests only")
    parser.add_argument("--equivalent", type=Path, default=EQUIVALENT_FILE)
    parser.add_argument("--min-timeout", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout-factor", type=float, default=10.0)
    parser.add_argument("--root", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--package", default="snippets", help=argparse.SUPPRESS)
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the children are ended too
    root = (args.root or project_root()).resolve()
    project = Project(root, args.package)
    modules = args.module or [p.relative_to(root).as_posix() for p in project.modules()]
    if args.list:
        for module in modules:
            for m in mutants_of(root / module, root):
                print(f"{m.module}:{m.line}:{m.col} {m.operator}  {m.after}")
        return
    report_path = args.report and (
        args.report if args.report.is_absolute() else Path.cwd() / args.report
    )
    previous = None
    if report_path and report_path.exists() and args.module:
        previous = json.loads(report_path.read_text(encoding="utf-8"))
    report = run(
        project,
        modules,
        jobs=args.jobs,
        notebooks=not args.no_notebooks,
        equivalents=load_equivalents(args.equivalent),
        min_timeout=args.min_timeout,
        factor=args.timeout_factor,
        previous=previous,
        log=lambda line: print(line, flush=True),
    )
    if report_path:
        report_path.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    print(render(report))


if __name__ == "__main__":
    main()
