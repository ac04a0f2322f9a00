"""The numerics pin of snippets.runtime: it wins over the environment, it refuses to run after torch
was imported, and with it a short training run gives the same bits whatever the outside settings.

Each case runs in a fresh Python process, as a notebook kernel does: the pin must act before torch
loads, so it cannot be tested inside this (already torch-importing) process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from vrn_site.pytest_plugin import within_tolerance

# A second choice of kernels, MKL branch and threads, as another CPU or a user's shell would set.
OTHER_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}
TRAIN = """
import json
from snippets.runtime import numerics, setup
device, gen = setup(seed=0)
import torch
from snippets.gpt import GPT, GPTConfig
model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layers=2, n_heads=2, d_model=32))
opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
for _ in range(30):
    ids = torch.randint(0, 32, (8, 16), generator=gen)
    logits = model(ids[:, :-1])  # (8, 15, 32)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 32), ids[:, 1:].reshape(-1))
    opt.zero_grad(); loss.backward(); opt.step()
print(json.dumps({"numerics": numerics(), "loss": loss.item().hex()}))
"""


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in OTHER_CPU}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_pin_wins_over_other_kernels_and_threads_set_outside():
    pinned = last_json(run(TRAIN, OTHER_CPU))["numerics"]
    assert pinned["aten_capability"] == "DEFAULT"
    assert pinned["mkl_cbwr"] in ("COMPATIBLE,STRICT", "n/a")  # n/a: a torch build without MKL
    assert pinned["threads"] == "1"


def test_training_gives_the_same_bits_whatever_the_outside_settings():
    here = last_json(run(TRAIN, {}))
    other = last_json(run(TRAIN, OTHER_CPU))
    assert here["loss"] == other["loss"], (here, other)


def test_importing_torch_first_is_refused_with_a_clear_message():
    result = run("import torch\nfrom snippets.runtime import setup\nsetup()", OTHER_CPU)
    assert result.returncode != 0
    assert "NumericsNotPinned" in result.stderr
    assert "torch was imported before snippets.runtime" in result.stderr


@pytest.mark.parametrize(
    "stored, now, ok",
    [
        ("3.87", "3.87", True),
        ("3.87", "3.95", True),  # within 10 %
        ("3.87", "4.50", False),
        ("0.00", "0.01", True),  # one unit of the last printed digit
        ("0.00", "0.02", False),
        ("4", "5", True),
        ("4", "6", False),
        ("1,048,576", "1,048,576", True),
        ("98% of 1000", "95% of 1000", True),
        ("98% of 1000", "98% of 2000", False),
        ("True", "False", False),
        ("cat", "basket", False),
    ],
)
def test_published_values_tolerance(stored, now, ok):
    assert within_tolerance(stored, now) is ok
