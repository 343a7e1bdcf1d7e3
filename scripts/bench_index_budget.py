"""Prefill of 128K tokens with the indexer's scoring blocks at 2^22 and at 2^20 values, in one run, logits compared
(the figures in BENCHMARKS.md, "Indexer scoring blocks"):  python scripts/bench_index_budget.py"""
import time

import torch

from v4lab.pretrained import load_flash_mini
from v4lab.generation import prefill
import v4lab.indexer as ix
L = 131072
model = load_flash_mini(verify=False).eval(); model.requires_grad_(False)
ids = torch.randint(32, 160, (1, L), generator=torch.Generator().manual_seed(1))
orig = ix.index_scores
res = {}
for budget in (1 << 22, 1 << 20):
    ix.index_scores = lambda q, w, k, p, r=4, b=None, _b=budget: orig(q, w, k, p, r, _b)
    cache = model.new_cache(1)
    t0 = time.perf_counter()
    with torch.inference_mode():
        last = prefill(model, ids, cache, chunk=4096, progress=False)
    res[budget] = (time.perf_counter() - t0, last.clone())
    print(f"budget 2^{budget.bit_length() - 1}: {res[budget][0]:.1f} s = {L / res[budget][0]:,.0f} tok/s", flush=True)
print("identical last logits:", torch.equal(res[1 << 22][1], res[1 << 20][1]))
