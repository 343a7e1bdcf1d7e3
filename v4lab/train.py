"""Train flash-mini on a CPU: ``python -m v4lab.train --out runs/mini --minutes 50``.

The recipe (``data/flash-mini/README.md`` has the exact command of the shipped model):

* data: ``v4lab.data.TrainingMix``: windows of Shakespeare / KJV text mixed with needle,
  multi-needle and multi-round-recall tasks at the training length, multi-fact tasks followed by
  more questions about their other facts; optionally a last phase on longer sequences
  (``--long-from``, ``--long-seq-len``) with the same tokens per step;
* loss: next-token cross-entropy + ``answer_loss`` x the mean cross-entropy of the answer tokens
  alone (a few dozen tokens in a batch of thousands: inside the plain mean their gradient would be
  too weak to teach retrieval) + ``mtp_weight`` x the MTP block's next-next-token loss +
  ``indexer_weight`` x the Lightning Indexer's KL loss;
* the indexer has no gradient through top-k, so it gets its own signal, as DeepSeek did for DSA:
  KL(main attention's distribution over compressed entries || softmax of the indexer scores),
  with the indexer's inputs detached so that this loss trains only the indexer.  During a dense
  warm-up (``--dense-warmup`` steps) CSA attends to every complete entry and the indexer learns
  to imitate that; afterwards CSA attends to the indexer's top-k and the KL runs over the picks;
* MoE load balance: the auxiliary-loss-free bias update of V3/V4 (bias += u * sign(mean - load));
* optimiser: Muon (Newton-Schulz orthogonalised momentum) for the hidden weight matrices and
  AdamW for embeddings, head, norms, mHC, sinks and biases; or AdamW for everything;
* bf16 autocast on CPU, a progress bar, a JSONL log, resumable checkpoints every few minutes;
  Ctrl-C saves a checkpoint before leaving.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .attention import ForwardContext
from .config import V4Config
from .model import V4Model
from .moe import MoE


# ----------------------------------------------------------------------------------------------
# Muon
# ----------------------------------------------------------------------------------------------
def newton_schulz(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately orthogonalise G (the polar factor U V^T) with a quintic Newton-Schulz
    iteration, coefficients (3.4445, -4.7750, 2.0315)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.float()
    transposed = X.shape[0] > X.shape[1]
    if transposed:
        X = X.T
    X = X / (X.norm() + 1e-7)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if transposed else X


class Muon(torch.optim.Optimizer):
    """Momentum SGD whose update is orthogonalised: W -= lr * scale * NS(momentum)."""

    def __init__(self, params, lr=0.02, momentum=0.95, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state.setdefault(p, {})
                buf = st.setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                u = newton_schulz(g)
                scale = max(1.0, p.shape[0] / p.shape[1]) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(u.to(p.dtype), alpha=-group["lr"] * scale)


def make_optimizers(model: V4Model, kind: str, lr: float, muon_lr: float, weight_decay: float = 0.0):
    matrices, others = [], []
    for name, p in model.named_parameters():
        is_hidden_matrix = p.dim() == 2 and not name.startswith(("embed", "head")) and not name.endswith("_fn")
        (matrices if is_hidden_matrix and kind == "muon" else others).append(p)
    opts = [torch.optim.AdamW(others, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)]
    if matrices:
        opts.append(Muon(matrices, lr=muon_lr))
    return opts


# ----------------------------------------------------------------------------------------------
# One training step
# ----------------------------------------------------------------------------------------------
def weighted_ce(logits, targets, weights):
    ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view_as(weights)
    return (ce * weights).sum() / weights.sum().clamp(min=1e-6)


def losses(model: V4Model, tokens: torch.Tensor, mask: torch.Tensor, dense_csa: bool, mtp_weight: float,
           indexer_weight: float, autocast: bool = True, answer_mask: torch.Tensor | None = None,
           answer_weight: float = 0.0) -> dict:
    """The training losses of one batch.  ``lm`` is the mask-weighted next-token loss; with an
    ``answer_mask``, ``answer`` is the mean loss over answer tokens alone (added to the total
    with ``answer_weight``, so retrieval is trained with the same strength however few answer
    tokens a batch has) and ``answer_acc`` the fraction of them predicted right."""
    x, y = tokens[:, :-1], tokens[:, 1:]
    ctx = ForwardContext(dense_csa=dense_csa, indexer_loss=indexer_weight > 0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits, H = model(x, ctx=ctx, return_hidden=True)
        out = {"lm": weighted_ce(logits, y, mask)}
        if mtp_weight > 0 and len(model.mtp):
            mlog = model.mtp_logits(H[:, :-1], y[:, :-1])
            out["mtp"] = weighted_ce(mlog, y[:, 1:], mask[:, 1:])
    total = out["lm"] + mtp_weight * out.get("mtp", 0.0)
    if answer_mask is not None and answer_mask.sum() > 0:
        out["answer"] = weighted_ce(logits, y, answer_mask)
        sel = answer_mask > 0
        out["answer_acc"] = (logits.detach().argmax(-1)[sel] == y[sel]).float().mean()
        total = total + answer_weight * out["answer"]
    if ctx.losses:
        out["indexer_kl"] = torch.stack(ctx.losses).mean()
        total = total + indexer_weight * out["indexer_kl"]
    out["total"] = total
    return out


@torch.no_grad()
def update_router_bias(model: V4Model, speed: float) -> None:
    """Auxiliary-loss-free load balancing: raise the bias of under-loaded experts."""
    for mod in model.modules():
        if isinstance(mod, MoE) and mod.gate.bias is not None and mod.last_load is not None:
            load = mod.last_load.float()
            mod.gate.bias.add_(speed * torch.sign(load.mean() - load))


def lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def train(args) -> dict:
    from tqdm.auto import tqdm

    from .data import TASK_KINDS, TrainingMix, load_documents

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = V4Config.preset(args.preset, max_position_embeddings=V4Config.preset(args.preset).max_position_embeddings)
    model = V4Model(cfg, numerics=args.numerics, seed=args.seed)
    if args.init:
        # continue from trained weights (a checkpoint folder) with fresh optimiser state; the
        # architecture must be the preset's, positions (rope_scaling, max_position_embeddings) may differ
        from .checkpoint import load_checkpoint

        init = load_checkpoint(args.init)
        same = cfg.replace(rope_scaling=init.config.rope_scaling,
                           max_position_embeddings=init.config.max_position_embeddings)
        if same != init.config:
            raise ValueError(f"--init {args.init}: its config differs from the preset {args.preset!r} "
                             "in more than rope_scaling / max_position_embeddings")
        model.load_state_dict(init.state_dict())
        del init
    opts = make_optimizers(model, args.optimizer, args.lr, args.muon_lr)
    docs = load_documents("train")

    def make_mix(seq_len, batch):
        return TrainingMix(docs, seq_len, task_fraction=args.task_fraction, seed=args.seed, batch_size=batch,
                           answer_weight=args.answer_weight, follow_ups=args.follow_ups, max_facts=args.max_facts,
                           task_weights=dict(zip(TASK_KINDS, args.task_weights)))

    mix = make_mix(args.seq_len, args.batch)
    # the long phase: same tokens per step in fewer, longer sequences
    long_mix = make_mix(args.long_seq_len, max(1, args.batch * args.seq_len // args.long_seq_len)) \
        if args.long_from is not None else None
    step, elapsed_before = 0, 0.0
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        for o, s in zip(opts, ck["optim"]):
            o.load_state_dict(s)
        step, elapsed_before = ck["step"], ck["elapsed"]
        print(f"resumed from {ckpt_path} at step {step}")
    (out / "config.json").write_text(json.dumps(cfg.to_official(), indent=1))
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    log = open(out / "log.jsonl", "a")

    def save(final=False):
        torch.save({"model": model.state_dict(), "optim": [o.state_dict() for o in opts], "step": step,
                    "elapsed": elapsed_before + time.perf_counter() - t0, "args": vars(args)}, ckpt_path.with_suffix(".tmp"))
        os.replace(ckpt_path.with_suffix(".tmp"), ckpt_path)

    stop = {"flag": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
    t0 = time.perf_counter()
    last_save = t0
    budget = args.minutes * 60 if args.minutes else float("inf")
    total = args.steps
    bar = tqdm(total=total, initial=step, desc="train", unit="step")
    history = []
    model.train()
    while step < total and not stop["flag"]:
        if elapsed_before + time.perf_counter() - t0 > budget:
            print("time budget reached")
            break
        long_phase = long_mix is not None and step >= args.long_from
        batch = (long_mix if long_phase else mix).batch(step)
        f = lr_factor(step, total, args.warmup)
        for o in opts:
            for g in o.param_groups:
                g.setdefault("base_lr", g["lr"])
                g["lr"] = g["base_lr"] * f
        dense = step < args.dense_warmup
        ls = losses(model, batch.tokens, batch.loss_mask, dense, args.mtp_weight, args.indexer_weight,
                    not args.no_autocast, batch.answer_mask, args.answer_loss)
        for o in opts:
            o.zero_grad(set_to_none=True)
        ls["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
        update_router_bias(model, args.bias_speed)
        step += 1
        rec = {"step": step, "elapsed": round(elapsed_before + time.perf_counter() - t0, 1), "dense_csa": dense,
               "seq_len": batch.tokens.shape[1] - 1,
               **{k: round(float(v.detach() if torch.is_tensor(v) else v), 4) for k, v in ls.items()}}
        history.append(rec)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        bar.update(1)
        bar.set_postfix(lm=f"{rec['lm']:.3f}", ans=f"{rec.get('answer_acc', 0):.2f}",
                        kl=f"{rec.get('indexer_kl', 0):.3f}")
        if time.perf_counter() - last_save > args.save_every_min * 60:
            save()
            last_save = time.perf_counter()
    bar.close()
    save(final=True)
    log.close()
    model.eval()
    if args.export:
        from .checkpoint import save_checkpoint

        save_checkpoint(model, args.export)
        print(f"weights written to {args.export}")
    return {"steps": step, "history": history, "model": model}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m v4lab.train", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="flash-mini")
    p.add_argument("--out", default="runs/flash-mini")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--minutes", type=float, default=0, help="stop after this much training time (0: no limit)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--long-from", type=int, default=None, metavar="STEP",
                   help="from this step on, train on --long-seq-len sequences (same tokens per step)")
    p.add_argument("--long-seq-len", type=int, default=2048)
    p.add_argument("--task-fraction", type=float, default=0.8)
    p.add_argument("--task-weights", type=float, nargs=3, default=(0.3, 0.5, 0.2), metavar=("NEEDLE", "MULTI", "MRCR"),
                   help="relative frequency of needle, multi-needle and multi-round-recall tasks")
    p.add_argument("--max-facts", type=int, default=5, help="most facts in a multi-fact task (MRCR-8 needs 8)")
    p.add_argument("--follow-ups", type=int, default=3, help="extra questions after a multi-fact task's answer")
    p.add_argument("--answer-weight", type=float, default=1.0, help="weight of answer tokens inside the lm loss")
    p.add_argument("--answer-loss", type=float, default=1.0,
                   help="weight of the separate mean loss over answer tokens")
    p.add_argument("--optimizer", choices=["muon", "adamw"], default="muon")
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate")
    p.add_argument("--muon-lr", type=float, default=0.02)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--dense-warmup", type=int, default=300, help="steps of dense CSA before top-k")
    p.add_argument("--mtp-weight", type=float, default=0.3)
    p.add_argument("--indexer-weight", type=float, default=1.0)
    p.add_argument("--bias-speed", type=float, default=1e-3)
    p.add_argument("--numerics", choices=["reference", "hf"], default="reference")
    p.add_argument("--no-autocast", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every-min", type=float, default=5.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", default="", metavar="DIR",
                   help="start from the weights of this checkpoint folder (fresh optimiser state)")
    p.add_argument("--export", default="", help="write the final weights as a checkpoint folder")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    res = train(args)
    h = res["history"]
    if h:
        first, last = h[0], h[-1]
        print(f"steps {res['steps']}: lm loss {first['lm']:.3f} -> {last['lm']:.3f}")


if __name__ == "__main__":
    main()


# ----------------------------------------------------------------------------------------------
# Reading a run's log
# ----------------------------------------------------------------------------------------------
def read_train_log(path, args: dict | str | os.PathLike | None = None, step_offset: int = 0,
                   elapsed_offset: float = 0.0) -> list[dict]:
    """The rows of a ``log.jsonl`` (one dict per step), each with a ``"phase"``: "dense warm-up"
    (CSA attends every complete entry while the indexer learns by KL) or "sparse <L>" (CSA reads
    the indexer's top-k at training length L).  Logs that predate the ``seq_len`` field take it
    from the run's ``train_args.json`` (``args``: its path or dict; ``long_from`` /
    ``long_seq_len`` mark the last phase).  ``step_offset`` / ``elapsed_offset`` place a run
    that continued another (``--init``) after it."""
    if isinstance(args, (str, os.PathLike)):
        args = json.loads(Path(args).read_text())
    rows = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if "seq_len" not in r:
                if args is None:
                    raise ValueError(f"{path}: step {r.get('step')} has no seq_len; pass the run's train_args.json")
                long_from = args.get("long_from")
                r["seq_len"] = args["long_seq_len"] if long_from and r["step"] >= long_from else args["seq_len"]
            r["phase"] = "dense warm-up" if r.get("dense_csa") else f"sparse {r['seq_len']:,}"
            r["step"] += step_offset
            r["elapsed"] = r.get("elapsed", 0.0) + elapsed_offset
            rows.append(r)
    return rows


def training_phases(rows: list[dict]) -> list[tuple[str, int, int]]:
    """(phase, first step, last step) for each run of equal ``phase`` in ``rows``, in order."""
    out = []
    for r in rows:
        if out and out[-1][0] == r["phase"]:
            out[-1] = (r["phase"], out[-1][1], r["step"])
        else:
            out.append((r["phase"], r["step"], r["step"]))
    return out
