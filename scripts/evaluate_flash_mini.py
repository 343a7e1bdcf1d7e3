"""Evaluate the shipped flash-mini and record its figures (data/flash-mini/metrics.json).

    python scripts/evaluate_flash_mini.py [--train-len 512] [--lengths 512,2048,8192,16384,32768,65536]
                                           [--trials 8,8,4,2,2,1]

Needle accuracy over context lengths and depths on the validation documents and on a long
English text that is not in data/, indexer recall of the needle block per CSA layer against
chance, bits per byte on the validation documents, MTP self-speculative decoding, and the CI
fingerprint (v4lab.eval.quick_check).  Prints a table and writes JSON + a figure.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from v4lab.data import external_text, load_documents
from v4lab.eval import bits_per_byte, needle_accuracy, quick_check, speculative_generate
from v4lab.generation import generate
from v4lab.plots.eval import plot_needle_accuracy
from v4lab.pretrained import load_flash_mini, weights_dir


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train-len", type=int, default=512, help="the training sequence length")
    p.add_argument("--lengths", default="512,2048,8192,16384,32768,65536")
    p.add_argument("--trials", default="8,8,4,2,2,1", help="trials per depth, one per length")
    p.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    p.add_argument("--out", default=str(weights_dir() / "metrics.json"))
    p.add_argument("--figure", default="artifacts/needle_accuracy.png")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_flash_mini()
    depths = tuple(float(x) for x in a.depths.split(","))
    val = "\n\n".join(d.text for d in load_documents("val"))
    ext = external_text(70_000)
    metrics = {"machine": "2-core CPU (the project's CI-class machine)", "quick_check": quick_check(model, context_len=a.train_len)}
    print("quick check:", metrics["quick_check"], flush=True)
    needle, recall, ext_res = {}, {}, {}
    for L, n in zip([int(x) for x in a.lengths.split(",")], [int(x) for x in a.trials.split(",")]):
        t = time.perf_counter()
        r = needle_accuracy(model, val, L, n_trials=n, depths=depths, seed=L, recall=True, progress=True)
        needle[L] = {"accuracy": r.accuracy, "by_depth": r.by_depth(), "trials": len(r.trials),
                     "answers": [(x["value"], x["answer"]) for x in r.trials]}
        recall[L] = r.recall()
        print(f"needle @ {L}: {r.accuracy:.0%} over {len(r.trials)} trials; recall {recall[L]}  [{time.perf_counter() - t:.0f} s]", flush=True)
        if L in (a.train_len, 16 * a.train_len) and len(ext) > L + 2048:
            e = needle_accuracy(model, ext, L, n_trials=n, depths=depths, seed=L + 1)
            ext_res[L] = {"accuracy": e.accuracy, "trials": len(e.trials)}
            print(f"  external text @ {L}: {e.accuracy:.0%}", flush=True)
    metrics["needle_val"] = needle
    metrics["indexer_recall"] = recall
    metrics["needle_external"] = ext_res
    docs = load_documents("val")
    metrics["val_bpb"] = bits_per_byte(model, [d.text for d in docs], window=1024, stride=512, max_windows=200)
    print(f"val bits/byte (200 windows of 1024): {metrics['val_bpb']:.3f}", flush=True)
    # MTP self-speculative decoding on a prompt from the validation text
    from v4lab.data import encode_text

    prompt = torch.tensor([[0] + encode_text(docs[1].text[5000:7000])])
    t = time.perf_counter()
    plain = generate(model, prompt, 64)
    t_plain = plain.decode_seconds
    spec = speculative_generate(model, prompt, 64)
    metrics["mtp"] = {"identical_to_greedy": spec.tokens == plain.tokens, "acceptance": spec.acceptance,
                      "plain_decode_s": t_plain, "speculative_s_incl_prefill": spec.seconds,
                      "prefill_s": plain.prefill_seconds,
                      "speedup_decode": t_plain / max(1e-9, spec.seconds - plain.prefill_seconds)}
    print("MTP:", metrics["mtp"], flush=True)
    Path(a.out).write_text(json.dumps(metrics, indent=1))
    fig = plot_needle_accuracy({L: v["by_depth"] for L, v in needle.items()}, train_len=a.train_len)
    Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.figure, dpi=110, bbox_inches="tight")
    print(f"wrote {a.out} and {a.figure}")


if __name__ == "__main__":
    main()
