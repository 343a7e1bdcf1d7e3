"""Evaluate the shipped flash-mini and record its figures (data/flash-mini/metrics.json).

    python scripts/evaluate_flash_mini.py --threads 2 \
        --lengths 2048,8192,32768,65536,131072,262144 --trials 20,20,20,20,10,5 \
        --mrcr-trials 16,16,8,8,4,2 --external 65536:20

Needle accuracy (depths 0.1-0.9, ``trials`` needles per length spread over the depths) and MRCR-8
accuracy (``v4lab.eval.mrcr_accuracy``: the i-th of 8 codes for one key) over context lengths on
the validation documents, needle accuracy on a long English text that is not in data/, indexer
recall of the needle per CSA layer against chance, bits per byte on the validation documents, MTP
self-speculative decoding, and the CI fingerprint (``v4lab.eval.quick_check``).

Every finished (suite, length) is written at once to ``--partial`` (JSON), and a rerun skips what
is there, so the run can be interrupted (Ctrl-C) and resumed; ``metrics.json`` and the figure are
written from it at the end.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from v4lab.data import external_text, load_documents
from v4lab.eval import bits_per_byte, mrcr_accuracy, needle_accuracy, quick_check, speculative_generate
from v4lab.generation import generate
from v4lab.pretrained import load_flash_mini, weights_dir

DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _ints(s):
    return [int(x) for x in s.split(",") if x]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-len", type=int, default=8192, help="the last training sequence length")
    p.add_argument("--lengths", default="2048,8192,32768,65536,131072,262144")
    p.add_argument("--trials", default="20,20,20,20,10,5", help="needle trials per length (spread over 5 depths)")
    p.add_argument("--mrcr-trials", default="16,16,8,8,4,2", help="MRCR-8 trials per length (0: skip)")
    p.add_argument("--external", default="65536:20", help="LENGTH:TRIALS,... of needles on a text not in data/")
    p.add_argument("--partial", default="artifacts/eval_partial.json")
    p.add_argument("--out", default=str(weights_dir() / "metrics.json"))
    p.add_argument("--figure", default="artifacts/needle_accuracy.png")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    model = load_flash_mini()
    partial_path = Path(a.partial)
    partial_path.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(partial_path.read_text()) if partial_path.exists() else {}

    def record(key, fn):
        if key in done:
            print(f"{key}: done before, skipped", flush=True)
            return done[key]
        t = time.perf_counter()
        done[key] = fn()
        done[key]["seconds"] = round(time.perf_counter() - t, 1)
        partial_path.write_text(json.dumps(done, indent=1))
        print(f"{key}: {json.dumps({k: v for k, v in done[key].items() if k in ('accuracy', 'trials', 'by_depth', 'by_ask', 'seconds')})}", flush=True)
        return done[key]

    val = "\n\n".join(d.text for d in load_documents("val"))
    lengths = _ints(a.lengths)
    ext = external_text(max(int(x.split(":")[0]) for x in a.external.split(",")) + 8192) if a.external else ""

    def needle(text, L, n, seed):
        per_depth = max(1, round(n / len(DEPTHS)))
        r = needle_accuracy(model, text, L, n_trials=per_depth, depths=DEPTHS, seed=seed, recall=True, progress=True)
        return {"accuracy": r.accuracy, "by_depth": r.by_depth(), "trials": len(r.trials), "recall": r.recall(),
                "answers": [(x["value"], x["answer"]) for x in r.trials]}

    def mrcr(text, L, n, seed):
        r = mrcr_accuracy(model, text, L, n_needles=8, n_trials=n, seed=seed, progress=True)
        return {"accuracy": r.accuracy, "by_ask": r.by_ask(), "by_depth": r.by_depth(), "trials": len(r.trials),
                "other_code_rate": r.other_code_rate,
                "answers": [(x["ask"], x["value"], x["answer"], x["other_rank"]) for x in r.trials]}

    record("quick_check", lambda: quick_check(model))
    for L, n, m in zip(lengths, _ints(a.trials), _ints(a.mrcr_trials)):
        record(f"needle_val/{L}", lambda: needle(val, L, n, seed=L))
        if m:
            record(f"mrcr_val/{L}", lambda: mrcr(val, L, m, seed=L + 7))
    for item in filter(None, a.external.split(",")):
        L, n = (int(x) for x in item.split(":"))
        record(f"needle_external/{L}", lambda: needle(ext, L, n, seed=L + 1))

    docs = load_documents("val")
    record("val_bpb", lambda: {"bpb": bits_per_byte(model, [d.text for d in docs], window=1024, stride=512,
                                                   max_windows=200)})

    def mtp():
        from v4lab.data import encode_text

        prompt = torch.tensor([[0] + encode_text(docs[1].text[5000:7000])])
        plain = generate(model, prompt, 64)
        spec = speculative_generate(model, prompt, 64)
        return {"identical_to_greedy": spec.tokens == plain.tokens, "acceptance": spec.acceptance,
                "plain_decode_s": plain.decode_seconds, "speculative_s_incl_prefill": spec.seconds,
                "prefill_s": plain.prefill_seconds,
                "speedup_decode": plain.decode_seconds / max(1e-9, spec.seconds - plain.prefill_seconds)}

    record("mtp", mtp)

    def suite(name):
        return {int(k.split("/")[1]): {kk: vv for kk, vv in v.items() if kk != "recall"}
                for k, v in done.items() if k.startswith(name + "/")}

    metrics = {"machine": "2-core CPU (the project's CI-class machine)",
               "quick_check": {k: v for k, v in done["quick_check"].items() if k != "seconds"},
               "needle_val": suite("needle_val"), "mrcr8_val": suite("mrcr_val"),
               "needle_external": suite("needle_external"),
               "indexer_recall": {int(k.split("/")[1]): v["recall"] for k, v in done.items()
                                  if k.startswith("needle_val/")},
               "val_bpb": done["val_bpb"]["bpb"], "mtp": {k: v for k, v in done["mtp"].items() if k != "seconds"}}
    Path(a.out).write_text(json.dumps(metrics, indent=1))
    from v4lab.plots.eval import plot_needle_accuracy

    fig = plot_needle_accuracy({L: v["by_depth"] for L, v in metrics["needle_val"].items()}, train_len=a.train_len)
    Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.figure, dpi=110, bbox_inches="tight")
    print(f"wrote {a.out} and {a.figure}")


if __name__ == "__main__":
    main()
