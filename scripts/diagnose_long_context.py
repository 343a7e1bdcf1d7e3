"""Where does flash-mini's attention go while it answers a needle question, and what breaks at long range?

For each context length, hides needles at several depths, answers greedily with
``ForwardContext(record=True)`` and reports, per layer (window-only / CSA / HCA), averaged over the
answer steps: the softmax mass on the sliding window, on the compressed entries, on the sink, and on
the compressed entries that pool a byte of the asked value ("needle mass"), plus accuracy.

Inference-time ablations (``--variant``) separate the causes without training:
  base       the shipped model as it is
  yarn       YaRN for the compressed layers with original_max_position_embeddings = the training
             length (``--train-len``) and factor = context / training length, or ``--yarn-factor``

    python scripts/diagnose_long_context.py --lengths 8192 65536 --trials 4 --variant base yarn
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time

import torch


def run_variant(model, text, length, trials, depths, seed):
    from v4lab.data import decode_ids, make_needle_task
    from v4lab.eval import answer_task, attention_mass

    rng = random.Random(seed)
    results = []
    for d in depths:
        for _ in range(trials):
            task = make_needle_task(text, length - 1, rng, depth=d, position_offset=1)
            got, want, recs = answer_task(model, task, chunk=2048, record=True)
            results.append({"depth": d, "correct": got == want, "answer": decode_ids(got).strip(),
                            "value": task.value, "layers": attention_mass(recs, task)})
    return results


def apply_variant(model, variant: str, length: int, train_len: int, factor: float | None = None):
    from v4lab.rope import Rope

    cfg = model.config
    for layer in model.layers:
        att = layer.attn
        if variant == "yarn" and att.ratio:
            scaling = {"type": "yarn", "factor": factor or max(1.0, length / train_len),
                       "original_max_position_embeddings": train_len, "beta_fast": 32, "beta_slow": 1}
            att.rope = Rope(cfg.replace(rope_scaling=scaling), compressed=True)  # compressor and indexer use it
        elif variant == "base" and att.ratio:
            att.rope = Rope(cfg, compressed=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 65536])
    p.add_argument("--trials", type=int, default=2, help="needles per depth")
    p.add_argument("--depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    p.add_argument("--variant", nargs="+", default=["base"], choices=["base", "yarn"])
    p.add_argument("--train-len", type=int, default=2048)
    p.add_argument("--yarn-factor", type=float, default=None, help="a fixed YaRN factor (default: context / train-len)")
    p.add_argument("--weights", default=None, help="a weights directory (default: the shipped flash-mini)")
    p.add_argument("--external", action="store_true", help="haystack from a text not in data/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from v4lab.data import external_text, long_document
    from v4lab.pretrained import load_flash_mini

    if a.weights:
        from v4lab.checkpoint import load_checkpoint

        model = load_checkpoint(a.weights).eval().requires_grad_(False)
    else:
        model = load_flash_mini()
    text = external_text(max(a.lengths) + 4096) if a.external else long_document(max(a.lengths) + 4096, split="val").text
    out = []
    for variant in a.variant:
        for L in a.lengths:
            apply_variant(model, variant, L, a.train_len, a.yarn_factor)
            t0 = time.time()
            res = run_variant(model, text, L, a.trials, a.depths, a.seed)
            acc = sum(r["correct"] for r in res) / len(res)
            print(f"\n== {variant} @ {L:,}: accuracy {acc:.2f} ({len(res)} trials, {time.time() - t0:.0f} s)")
            layers = sorted(res[0]["layers"])
            print("layer kind    window  compr.  sink    needle   (needle: ok / wrong)")
            for l in layers:
                rows = [r["layers"][l] for r in res]
                m = {k: sum(x.get(k, 0.0) for x in rows) / len(rows) for k in ("window", "compressed", "sink", "needle")}
                ok = [r["layers"][l].get("needle", 0.0) for r in res if r["correct"]]
                bad = [r["layers"][l].get("needle", 0.0) for r in res if not r["correct"]]
                f = lambda v: f"{sum(v) / len(v):.3f}" if v else "  -  "
                print(f"{l:5d} {rows[0]['kind']:6s}  {m['window']:.3f}   {m['compressed']:.3f}   {m['sink']:.3f}   "
                      f"{m['needle']:.3f}   ({f(ok)} / {f(bad)})")
            print("answers:", [(r["value"], r["answer"]) for r in res if not r["correct"]][:6])
            out.append({"variant": variant, "length": L, "accuracy": acc, "trials": res})
            sys.stdout.flush()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
