#!/usr/bin/env python
"""Write a header-only DeepSeek-V4 checkpoint (real names, shapes and dtypes; sparse, all-zero
payloads that take no disk space) and print its inspection report.

    python scripts/make_synthetic_checkpoint.py flash /tmp/v4-flash            # 46 shards, 160 GB nominal
    python scripts/make_synthetic_checkpoint.py pro /tmp/v4-pro --shards 64
    python scripts/make_synthetic_checkpoint.py flash /tmp/v4-flash-hf --layout hf

The notebooks use such folders to show what the real download contains without fetching it.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from v4lab.checkpoint import inspect_checkpoint, write_synthetic_checkpoint  # noqa: E402
from v4lab.config import PRESETS, V4Config  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", choices=sorted(PRESETS), help="model configuration")
    ap.add_argument("folder", help="output folder (created; must be empty)")
    ap.add_argument("--layout", choices=["official", "hf"], default="official",
                    help="official DeepSeek files (FP8/FP4) or the transformers layout")
    ap.add_argument("--shards", type=int, default=None,
                    help="number of shards (default: Flash 46, Pro 64, others 1)")
    ap.add_argument("--quiet", action="store_true", help="do not print the report")
    args = ap.parse_args(argv)

    if os.path.isdir(args.folder) and os.listdir(args.folder):
        ap.error(f"{args.folder} is not empty")
    os.makedirs(args.folder, exist_ok=True)
    cfg = V4Config.preset(args.preset)
    shards = args.shards or {"flash": 46, "pro": 64}.get(args.preset, 1)
    write_synthetic_checkpoint(args.folder, cfg, layout=args.layout, n_shards=shards)
    if not args.quiet:
        print(inspect_checkpoint(args.folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
