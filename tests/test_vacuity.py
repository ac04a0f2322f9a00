"""Checks that cannot fail (vrn_site.vacuity): each way of writing one is named with its line and
construct; real checks, among them every check in notebooks/, are accepted. Each bad case is one
small cell; helpers of ``snippets/`` come from tests/fixtures/vacuity/snippets/checks.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT

from vrn_site.ledger import claim_ids_in_tags, notebook_paths
from vrn_site.vacuity import NO_ASSERTION, cannot_fail, describe

HELPERS = ROOT / "tests" / "fixtures" / "vacuity"  # a root whose snippets/checks.py holds helpers


def reasons(
    source: str, tags: tuple[str, ...] = (), other_cells: tuple[str, ...] = ()
) -> list[str]:
    """Why one cell cannot fail, in a notebook of that cell and ``other_cells``."""
    return cannot_fail(source, list(tags), [*other_cells, source], HELPERS)


def checking_cells(path: Path) -> list[tuple[int, list[str], str, list[str], list[str]]]:
    """(cell index, claim ids, source, tags, every code cell's source) per checking cell."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    code = ["".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code"]
    found = []
    for index, cell in enumerate(cells):
        tags = (cell.get("metadata") or {}).get("tags") or []
        if cell.get("cell_type") == "code" and (ids := claim_ids_in_tags(tags)):
            found.append((index, ids, "".join(cell.get("source", "")), tags, code))
    return found


# --- checks that cannot fail, each named with its line ------------------------------------------

VACUOUS = [
    pytest.param("x = 1\nassert True\n", ["line 2", "is constant", "`assert True`"], id="true"),
    pytest.param("assert 1", ["line 1", "is constant", "`assert 1`"], id="one"),
    pytest.param('assert "x"', ["line 1", "is constant", "`assert 'x'`"], id="string"),
    pytest.param("assert 2 > 1", ["line 1", "is constant"], id="constant-comparison"),
    pytest.param(
        "x = f()\nassert (x == 1, 'x must be 1')",
        ["line 2", "non-empty tuple, which is always true"],
        id="tuple",
    ),
    pytest.param("assert x or True", ["line 1", "is always true"], id="or-true"),
    pytest.param(
        "if False:\n    assert x\n", ["line 2", "under `if False:`", "never runs"], id="if"
    ),
    pytest.param("if 0:\n    assert x\n", ["line 2", "under `if 0:`"], id="if-zero"),
    pytest.param("if 1 > 2:\n    assert x\n", ["line 2", "under `if 1 > 2:`"], id="if-compare"),
    pytest.param("if not True:\n    assert x\n", ["line 2", "under `if not True:`"], id="if-not"),
    pytest.param("while False:\n    assert x\n", ["line 2", "under `while False:`"], id="while"),
    pytest.param(
        "if True:\n    pass\nelse:\n    assert x\n",
        ["line 4", "in the `else:` of `if True:`", "never runs"],
        id="else-of-true",
    ),
    pytest.param("for i in []:\n    assert i\n", ["line 2", "`for i in []:`"], id="empty-loop"),
    pytest.param(
        "def check(x):\n    assert x > 0\n",
        ["the asserts are inside `check()` (line 1)", "never called"],
        id="uncalled-function",
    ),
    pytest.param(
        "from snippets.checks import assert_close_enough\n\nassert_close_enough(a, b)\n",
        ["`assert_close_enough` (snippets/checks.py)", "line 3", "neither asserts nor raises"],
        id="snippets-helper",
    ),
    pytest.param(
        "from snippets import checks\nchecks.assert_close_enough(a, b)\n",
        ["`assert_close_enough` (snippets/checks.py)", "line 2", "neither asserts nor raises"],
        id="snippets-helper-by-module",
    ),
    pytest.param(
        "from snippets.checks import assert_only_constant\nassert_only_constant(a)\n",
        ["`assert_only_constant` (snippets/checks.py)", "line 2", "can never fail", "constant"],
        id="snippets-helper-constant",
    ),
    pytest.param(
        "def assert_ok(x):\n    print(x)\n\n\nassert_ok(y)\n",
        ["`assert_ok` (the notebook)", "line 5", "neither asserts nor raises"],
        id="notebook-helper",
    ),
    pytest.param(
        "try:\n    assert x\nexcept AssertionError:\n    pass\n",
        ["line 2", "`except AssertionError:` (line 3) swallows its failure"],
        id="except-assertion-error",
    ),
    pytest.param(
        "try:\n    assert x\nexcept Exception as err:\n    print(err)\n",
        ["line 2", "`except Exception as err:` (line 3)"],
        id="except-exception",
    ),
    pytest.param(
        "try:\n    assert x\nexcept BaseException:\n    pass\n",
        ["line 2", "`except BaseException:` (line 3)"],
        id="except-base-exception",
    ),
    pytest.param(
        "try:\n    assert x\nexcept:\n    pass\n", ["line 2", "`except:` (line 3)"], id="bare"
    ),
    pytest.param(
        "try:\n    assert x\nexcept (ValueError, AssertionError):\n    pass\n",
        ["line 2", "`except (ValueError, AssertionError):` (line 3)"],
        id="except-tuple",
    ),
    pytest.param(
        "import torch\ntry:\n    torch.testing.assert_close(a, b)\nexcept AssertionError:\n    pass\n",
        ["`assert_close` on line 3", "`except AssertionError:` (line 4)"],
        id="swallowed-assert-close",
    ),
    pytest.param(
        "try:\n    if x:\n        raise ValueError(x)\nexcept ValueError:\n    pass\n",
        ["the raise on line 3", "`except ValueError:` (line 4)"],
        id="swallowed-raise",
    ),
    pytest.param(
        "from contextlib import suppress\nwith suppress(AssertionError):\n    assert x\n",
        ["line 3", "`with suppress(AssertionError):` (line 2)"],
        id="suppress",
    ),
    pytest.param(
        "# NBVAL_SKIP\nassert x\n", ["`# NBVAL_SKIP` (line 1)", "does not run"], id="skip"
    ),
    pytest.param(
        "x = f()\n# NBVAL_RAISES_EXCEPTION\nassert x\n",
        ["`# NBVAL_RAISES_EXCEPTION` (line 2)", "passes it even when the assert fails"],
        id="raises-exception-marker",
    ),
    pytest.param("print(total == 4)\n", [NO_ASSERTION], id="no-assertion"),
    pytest.param("%%time\ntotal == 4\n", [NO_ASSERTION], id="no-assertion-magic"),
]


@pytest.mark.parametrize(("source", "fragments"), VACUOUS)
def test_a_check_that_cannot_fail_is_named(source, fragments):
    message = "; ".join(reasons(source))
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [
        ("nbval-skip", "tagged nbval-skip: nbval does not run it"),
        ("raises-exception", "tagged raises-exception: nbval passes it even when the assert fails"),
    ],
)
def test_a_tag_that_defeats_nbval_is_named(tag, fragment):
    assert reasons("assert x == 1", tags=("claim:demo.addition", tag)) == [fragment]


def test_every_constant_assert_is_named_when_none_can_fail():
    assert reasons("assert True\nif False:\n    assert x\n") == [
        "the assert on line 1 is constant (`assert True`): its outcome does not depend on the run",
        "the assert on line 3 is under `if False:` and never runs",
    ]


def test_a_do_nothing_helper_from_another_cell_is_named():
    (reason,) = reasons("assert_ok(y)", other_cells=("def assert_ok(x):\n    return x",))
    assert "`assert_ok` (the notebook), called on line 1, can never fail" in reason


def test_the_ledger_message_names_notebook_cell_and_claim():
    message = describe(Path("notebooks/gpt/tiny_gpt.ipynb"), "Cell 6, In [7]", ["G3"], ["a", "b"])
    assert message == (
        "notebooks/gpt/tiny_gpt.ipynb Cell 6, In [7] (claim G3): the check cannot fail: a; b"
    )


# --- real checks are accepted --------------------------------------------------------------------

REAL = [
    pytest.param("assert total == 4", id="assert-on-a-name"),
    pytest.param("for row in rows:\n    assert row.sum() > 0\n", id="assert-in-a-loop"),
    pytest.param("assert True\nassert total == 4\n", id="one-real-among-constant"),
    pytest.param("if cfg.big:\n    assert n > 10\n", id="assert-under-a-real-if"),
    pytest.param("%%time\nassert total == 4\n", id="after-a-magic"),
    pytest.param("import torch\n\ntorch.testing.assert_close(a, b)\n", id="torch-assert-close"),
    pytest.param("from torch.testing import assert_close\nassert_close(a, b)\n", id="imported"),
    pytest.param("import numpy as np\nnp.testing.assert_allclose(a, b)\n", id="numpy-testing"),
    pytest.param("case.assertEqual(a, b)\n", id="unittest-style"),
    pytest.param(
        "import pytest\n\nwith pytest.raises(ValueError):\n    f(-1)\n", id="pytest-raises"
    ),
    pytest.param("def check(x):\n    assert x > 0\n\n\ncheck(y)\n", id="called-function"),
    pytest.param(
        "def assert_positive(x):\n    assert x > 0\n\n\nassert_positive(y)\n", id="notebook-helper"
    ),
    pytest.param(
        "def on_output(module, args, out):\n    assert out.isfinite().all()\n\n\n"
        "handle = model.register_forward_hook(on_output)\n",
        id="hook-function",
    ),
    pytest.param("from snippets.checks import assert_positive\nassert_positive(y)\n", id="snippet"),
    pytest.param(
        "from snippets.checks import assert_same\nassert_same(a, b)\n", id="snippet-torch"
    ),
    pytest.param("from snippets import checks\nchecks.assert_via_local(y)\n", id="snippet-chain"),
    pytest.param("if not ok:\n    raise RuntimeError('not ok')\n", id="conditional-raise"),
    pytest.param(
        "try:\n    MultiHeadAttention(512, 7)\n    raise AssertionError('must be refused')\n"
        "except ValueError as err:\n    print(err)\n",
        id="expected-error-pattern",
    ),
    pytest.param(
        "try:\n    f()\n    assert False, 'f must raise'\nexcept ValueError:\n    pass\n",
        id="assert-false-after-a-call",
    ),
    pytest.param("try:\n    assert x\nexcept AssertionError:\n    raise\n", id="re-raised"),
    pytest.param("assert_from_a_library(a, b)\n", id="unknown-assert-function"),
]


@pytest.mark.parametrize("source", REAL)
def test_a_real_check_is_accepted(source):
    assert reasons(source) == []


def test_a_function_called_in_another_cell_is_a_real_check():
    assert reasons("def check(x):\n    assert x > 0\n", other_cells=("check(y)",)) == []


def test_a_cell_that_does_not_parse_is_named():
    (reason,) = reasons("assert (")
    assert reason.startswith("it is not valid Python (line 1:")


# --- the project's own notebooks ------------------------------------------------------------------


def test_cells_with_null_metadata_are_read(tmp_path):
    path = tmp_path / "nb.ipynb"
    cells = [
        {"cell_type": "code", "metadata": None, "source": "x = 1", "outputs": []},
        {"cell_type": "code", "metadata": {"tags": None}, "source": "y = 2", "outputs": []},
        {"cell_type": "code", "metadata": {"tags": ["claim:a"]}, "source": ["assert True"]},
    ]
    path.write_text(json.dumps({"cells": cells}))
    ((index, ids, source, tags, code),) = checking_cells(path)
    assert (index, ids, code) == (2, ["a"], ["x = 1", "y = 2", "assert True"])
    assert "line 1 is constant" in cannot_fail(source, tags, code, HELPERS)[0]


@pytest.mark.parametrize(
    "notebook",
    notebook_paths(ROOT / "notebooks"),
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_every_check_of_the_notebooks_can_fail(notebook):
    cells = checking_cells(notebook)
    assert cells, f"{notebook} has no checking cell"
    problems = [
        describe(notebook.relative_to(ROOT), f"cell {index}", ids, found)
        for index, ids, source, tags, code in cells
        if (found := cannot_fail(source, tags, code, ROOT))
    ]
    assert problems == []
