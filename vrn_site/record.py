"""The record of the last verifying run (build/verification.json), read and written only here.

``make unit`` writes it (vrn_site.pytest_plugin): when and where the notebooks' checks ran, with
which numerics, in which mode, and each claim's outcome. The site's ledger page, each claim's verdict
line and claims.json show it. Older records that lack a field still load; the field reads "unknown".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = "build/verification.json"
STRICT = "nbval: asserts and every stored output"
LAX = "nbval-lax: asserts only, stored outputs not compared"
UNKNOWN = "unknown"

# What a notebook kernel computes with on this machine: a fresh process that pins its numerics
# exactly as a notebook's first cell does, then reports them (see snippets/runtime.py).
_KERNEL_PROBE = """
import json
from snippets.runtime import numerics, setup
device, _ = setup()
import torch
name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
print(json.dumps({"torch": torch.__version__, "device": name} | numerics()))
"""


def run_environment() -> dict[str, str]:
    """Date, platform, Python, torch, device, CPU model and numerics settings of a notebook kernel."""
    probe = subprocess.run(
        [sys.executable, "-c", _KERNEL_PROBE], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise RuntimeError(f"the notebook kernels' numerics cannot be pinned here:\n{probe.stderr}")
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "platform": f"{platform.system()} {platform.machine()}",
        "python": platform.python_version(),
    } | json.loads(probe.stdout.strip().splitlines()[-1])


@dataclass
class RunRecord:
    date: str = UNKNOWN
    platform: str = UNKNOWN
    python: str = UNKNOWN
    torch: str = UNKNOWN
    device: str = UNKNOWN
    cpu: str = UNKNOWN
    aten_capability: str = UNKNOWN
    mkl_cbwr: str = UNKNOWN
    onednn_max_isa: str = UNKNOWN
    threads: str = UNKNOWN
    mode: str = UNKNOWN
    claims: dict[str, str] = field(default_factory=dict)  # claim id -> passed | failed | skipped

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "claims"}

    def describe(self) -> str:
        """One sentence: where and how the run happened."""
        return (
            f"{self.date}: {self.platform} ({self.cpu}), Python {self.python}, torch {self.torch}, "
            f"device {self.device}; ATen kernels {self.aten_capability}, MKL branch "
            f"{self.mkl_cbwr}, {self.threads} thread(s); {self.mode}"
        )


def read(path: Path) -> RunRecord | None:
    """The record at ``path``, None if there is none; ValueError naming the file if unreadable."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the verifying run's record is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the verifying run's record is not a JSON object")
    return RunRecord.from_json(data)


def write(path: Path, record: RunRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(record), indent=2) + "\n")
