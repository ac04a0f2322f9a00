"""Re-execute notebooks in place and store their outputs: ``python -m vrn_site.execute [NOTEBOOK ...]``.

With no argument, every notebook under notebooks/. Each notebook runs in its own folder, in a fresh
kernel of this Python, and records when and where it ran in its metadata (``vrn.executed``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from vrn_site import project_root
from vrn_site.ledger import notebook_paths
from vrn_site.record import run_environment


def execute(path: Path, timeout: int = 600) -> float:
    """Run every cell of ``path`` and write the notebook back with its outputs; return seconds."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # per-cell timestamps would change every stored cell on each run
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        raise SystemExit(f"{path}: a cell failed while executing:\n{err}") from None
    except CellTimeoutError:
        raise SystemExit(
            f"{path}: a cell ran longer than {timeout} s and was stopped; a notebook should run "
            "in under a minute (tiny models, few steps)"
        ) from None
    except DeadKernelError as err:
        raise SystemExit(f"{path}: the kernel died while executing ({err})") from None
    seconds = time.perf_counter() - start
    nb.metadata["vrn"] = {"executed": run_environment() | {"seconds": round(seconds, 1)}}
    nbformat.write(nb, path)
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds a cell may run")
    args = parser.parse_args(argv)
    for path in args.notebooks or notebook_paths(project_root() / "notebooks"):
        seconds = execute(path, args.timeout)
        print(f"{path}: executed in {seconds:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
