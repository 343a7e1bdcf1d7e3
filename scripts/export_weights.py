"""Export a training checkpoint as the shipped flash-mini weights.

    python scripts/export_weights.py runs/flash-mini-muon/checkpoint.pt data/flash-mini

Writes the official checkpoint layout (safetensors + index + config.json) and SHA256SUMS.
"""
import hashlib
import sys
from pathlib import Path

import torch

from v4lab import V4Config
from v4lab.checkpoint import save_checkpoint
from v4lab.model import V4Model


def main(src: str, dst: str) -> None:
    ck = torch.load(src, weights_only=False, map_location="cpu")
    cfg = V4Config.preset(ck["args"]["preset"])
    model = V4Model(cfg, init=False)
    model.load_state_dict(ck["model"])
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.safetensors"):
        old.unlink()
    save_checkpoint(model.eval(), out, format="official")
    # the checkpoint itself: weights, their index and config.json (not the logs and metrics beside it)
    files = sorted(p for p in out.iterdir()
                   if p.suffix == ".safetensors" or p.name in ("model.safetensors.index.json", "config.json"))
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in files]
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    print(f"step {ck['step']}: wrote {', '.join(p.name for p in files)} to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
