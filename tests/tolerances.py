"""How close two float32 results must be: stated once, with the reason, for every test.

Our modules and their references (torch, transformers, peft, an equation written out) do the same
arithmetic in another order, so float32 rounding (unit roundoff 6e-8) differs in the last bits. A
wrong formula is off by far more: a missing scale, a dropped term or a swapped mask moves outputs by
1e-2 or more, and the mutation tests (`make mutants`) show these tolerances catch such bugs.
"""

FLOAT32 = {"rtol": 1e-5, "atol": 1e-5}
"""A few layers of a tiny model, or a loss over a batch: rounding grows with each reduction and
layer (sums of 16 to 128 terms, up to a dozen operations deep) but stays well below 1e-5."""

ONE_LAYER = {"rtol": 1e-6, "atol": 1e-6}
"""A single linear layer and its low-rank update (LoRA against peft): two matmuls, no depth for
rounding to grow through, so a tighter bound still holds."""
