"""The training recipe, in a smoke version that runs in CI: loss falls, checkpoints resume."""
import json

import torch

from v4lab.train import Muon, build_parser, newton_schulz, train


def _args(tmp_path, *extra):
    return build_parser().parse_args([
        "--out", str(tmp_path), "--steps", "24", "--seq-len", "256", "--batch", "2", "--dense-warmup", "12",
        "--warmup", "3", "--task-fraction", "0.5", "--numerics", "hf", "--save-every-min", "0", "--no-autocast", *extra])


def test_smoke_training_loss_falls_and_all_losses_are_present(tmp_path):
    torch.manual_seed(0)
    res = train(_args(tmp_path))
    h = res["history"]
    assert len(h) == 24
    first = sum(r["lm"] for r in h[:4]) / 4
    last = sum(r["lm"] for r in h[-4:]) / 4
    assert last < first - 0.5, (first, last)
    assert all("mtp" in r and "indexer_kl" in r for r in h)
    assert any("answer" in r for r in h) and all(0 <= r.get("answer_acc", 0) <= 1 for r in h)
    assert h[0]["dense_csa"] and not h[-1]["dense_csa"]
    log = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))


def test_answer_loss_is_the_mean_over_answer_tokens_only():
    import torch.nn.functional as F

    from v4lab.config import V4Config
    from v4lab.model import V4Model
    from v4lab.train import losses

    model = V4Model(V4Config.preset("tiny"), numerics="hf", seed=0)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, model.config.vocab_size, (2, 41), generator=g)
    mask = torch.ones(2, 40)
    amask = torch.zeros(2, 40)
    amask[0, 30:36] = 1
    amask[1, 10:12] = 1
    out = losses(model, tokens, mask, False, 0.0, 0.0, autocast=False, answer_mask=amask, answer_weight=2.0)
    logits = model(tokens[:, :-1])
    ce = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view(2, 40)
    assert torch.allclose(out["answer"], ce[amask > 0].mean(), atol=1e-5)
    assert torch.allclose(out["lm"], ce.mean(), atol=1e-5)
    assert torch.allclose(out["total"], out["lm"] + 2.0 * out["answer"], atol=1e-5)
    hits = (logits.argmax(-1) == tokens[:, 1:])[amask > 0].float().mean()
    assert float(out["answer_acc"]) == float(hits)
    none = losses(model, tokens, mask, False, 0.0, 0.0, autocast=False, answer_mask=torch.zeros(2, 40))
    assert "answer" not in none and torch.allclose(none["total"], none["lm"])


def test_training_resumes_from_its_checkpoint(tmp_path):
    train(_args(tmp_path, "--steps", "4"))
    b = train(_args(tmp_path, "--steps", "6", "--resume"))
    assert b["steps"] == 6 and len(b["history"]) == 2  # continued at step 5


def test_newton_schulz_orthogonalises():
    g = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    u = newton_schulz(g, steps=10)
    s = torch.linalg.svdvals(u)
    assert s.min() > 0.5 and s.max() < 1.3  # singular values pushed towards 1
    p = torch.nn.Parameter(torch.randn(8, 8))
    p.grad = torch.ones(8, 8)
    before = p.detach().clone()
    Muon([p], lr=0.1).step()
    assert not torch.equal(before, p.detach())


def test_init_continues_from_a_checkpoint_folder_and_refuses_another_architecture(tmp_path):
    import pytest

    from v4lab.checkpoint import load_checkpoint, save_checkpoint
    from v4lab.config import V4Config
    from v4lab.model import V4Model

    # a flash-mini-shaped checkpoint whose positions differ (another YaRN, shorter max length)
    cfg = V4Config.preset("flash-mini")
    other = cfg.replace(rope_scaling={**cfg.rope_scaling, "factor": 16, "original_max_position_embeddings": 2048},
                        max_position_embeddings=32768)
    src = V4Model(other, seed=5)
    save_checkpoint(src, str(tmp_path / "init"))
    res = train(_args(tmp_path / "run", "--steps", "0", "--init", str(tmp_path / "init")))
    got, want = res["model"].state_dict(), load_checkpoint(str(tmp_path / "init")).state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert res["model"].config == cfg                     # the preset's positions, not the init's
    with pytest.raises(ValueError, match="differs from the preset 'tiny'"):
        train(_args(tmp_path / "run2", "--preset", "tiny", "--steps", "0", "--init", str(tmp_path / "init")))
