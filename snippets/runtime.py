"""Every notebook's first cell: pin the CPU's numerical paths, pick the device, seed every RNG.

    from snippets.runtime import setup  # first import of the notebook: before torch loads
    device, gen = setup(seed=0)

Why pin: one thread does not make float results the same on every CPU. torch picks AVX-512, AVX2
or generic ATen kernels for the CPU it runs on, MKL picks its own code branch, and each choice
rounds the last bits differently; a few hundred training steps turn that into a different tiny
model, and a stored output that no longer matches. Importing this module before torch sets, for
this process only:

- ``ATEN_CPU_CAPABILITY=default``: ATen's generic kernels, which every x86-64 (and ARM) CPU runs;
- ``MKL_CBWR=COMPATIBLE,STRICT``: MKL's conditional numerical reproducibility branch, the same
  code on every Intel or AMD CPU whatever the memory alignment;
- ``ONEDNN_MAX_CPU_ISA=SSE41``: oneDNN's lowest common instruction set (its JIT reads it once);
- one thread (``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and ``torch.set_num_threads``), so that
  reductions add in one order.

``setup`` then checks that the pin took effect and raises if torch was imported first. The price
is speed (generic kernels are slower), which the tiny models of the notebooks do not notice.
"""

from __future__ import annotations

import ctypes
import os
import platform
import random
import sys
from pathlib import Path

PINNED = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "ONEDNN_MAX_CPU_ISA": "SSE41",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
_MKL_CBWR_COMPATIBLE, _MKL_CBWR_STRICT = 3, 0x10000  # constants of MKL's mkl_cbwr.h

_torch_was_loaded = "torch" in sys.modules
if not _torch_was_loaded:
    os.environ.update(PINNED)  # read by torch, MKL and OpenMP when they load, below

import numpy as np  # noqa: E402  (after the pin on purpose)
import torch  # noqa: E402


class NumericsNotPinned(RuntimeError):
    """The CPU's numerical paths are not the pinned ones: outputs would not match other CPUs."""


def cpu_model() -> str:
    """The CPU's model name, as the OS reports it."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def mkl_branch() -> str:
    """MKL's code branch as MKL itself reports it ('n/a' when torch has no MKL)."""
    if not torch.backends.mkl.is_available():
        return "n/a"
    libtorch = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    torch.ones(2, 2) @ torch.ones(2, 2)  # MKL reads MKL_CBWR when it first runs
    value = libtorch.mkl_serv_cbwr_get(-1)  # MKL_CBWR_ALL: the branch and its STRICT flag
    branch = {1: "OFF", 2: "AUTO", _MKL_CBWR_COMPATIBLE: "COMPATIBLE"}.get(
        value & 0xFFFF, str(value & 0xFFFF)
    )
    return branch + (",STRICT" if value & _MKL_CBWR_STRICT else "")


def numerics() -> dict[str, str]:
    """What this process computes with: CPU, ATen kernels, MKL branch, oneDNN ISA, threads."""
    return {
        "cpu": cpu_model(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": mkl_branch(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset"),
        "threads": str(torch.get_num_threads()),
    }


def check_pinned() -> dict[str, str]:
    """The pinned numerics of this process; NumericsNotPinned naming what differs otherwise."""
    torch.set_num_threads(1)
    found = numerics()
    expected = {"aten_capability": "DEFAULT", "threads": "1"}
    if torch.backends.mkl.is_available():
        expected["mkl_cbwr"] = "COMPATIBLE,STRICT"
    wrong = {k: found[k] for k, v in expected.items() if found[k] != v}
    if wrong:
        hint = (
            " torch was imported before snippets.runtime: make `from snippets.runtime import "
            "setup` the notebook's first import, and restart the kernel."
            if _torch_was_loaded
            else ""
        )
        raise NumericsNotPinned(f"expected {expected}, found {wrong}.{hint}")
    return found


def pick_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA); return a CPU generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global RNG, for code that still uses it)
    torch.manual_seed(seed)  # also seeds every CUDA device
    return torch.Generator().manual_seed(seed)


def _sharp_inline_figures() -> None:
    """In Jupyter, store figures as PNG at twice the figure's dpi (200 dpi), shown at its size."""
    try:
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if "IPython" in sys.modules and sys.modules["IPython"].get_ipython() is not None:
        set_matplotlib_formats("retina")


def setup(seed: int = 0) -> tuple[torch.device, torch.Generator]:
    """Check the numerics pin, pick the device, seed every RNG; return (device, CPU generator)."""
    check_pinned()
    _sharp_inline_figures()
    return pick_device(), seed_everything(seed)
