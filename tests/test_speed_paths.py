"""The fast paths change no result: a decode step reads the cache's buffers in place (no copy of
anything that grows with the context) and still equals the full forward."""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from v4lab import V4Config
from v4lab.attention import _entries
from v4lab.cache import EntryStore
from v4lab.model import V4Model

CFG = V4Config.preset("tiny", sliding_window=16, compress_ratios=[0, 4, 16, 4, 16, 0], index_topk=5)


class _CopyProbe(TorchDispatchMode):
    """Largest output of a copying op (cat, clone, copy, contiguous copies) seen."""

    COPIES = ("aten.cat", "aten.clone", "aten._to_copy", "aten.copy_", "aten.index.Tensor", "aten.stack")

    def __init__(self):
        super().__init__()
        self.max = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket) if hasattr(func, "overloadpacket") else str(func)
        if any(name.startswith(c) or name == c.split(".", 1)[1] for c in self.COPIES):
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.max[name] = max(self.max.get(name, 0), t.numel())
        return out


def test_entries_of_a_native_store_are_a_view_of_its_buffer():
    st = EntryStore(1, 8, "native", torch.float32, "cpu")
    old = torch.randn(1, 5, 8)
    st.append(old)
    new = torch.randn(1, 2, 8)
    st.append(new)
    got = _entries(st, 5, new)
    assert torch.equal(got, torch.cat([old, new], 1))
    assert got.data_ptr() == st._bufs["x"].data_ptr()  # in place, not a copy
    assert torch.equal(_entries(st, 7, new[:, :0]), torch.cat([old, new], 1))
    # with gradients the chunk's own entries are used (the store keeps detached copies)
    g = new.clone().requires_grad_()
    assert _entries(st, 5, g).requires_grad


def test_deployed_store_keeps_the_unrounded_new_entries():
    st = EntryStore(1, 64, "deployed", torch.float32, "cpu", rope_dim=16)
    old, new = torch.randn(1, 3, 64), torch.randn(1, 2, 64)
    st.append(old)
    st.append(new)
    got = _entries(st, 3, new)
    assert torch.equal(got[:, 3:], new)  # this chunk's entries as computed
    assert torch.equal(got[:, :3], st.get(0, 3))  # earlier ones as stored


def test_decode_step_copies_nothing_that_grows_with_the_context():
    model = V4Model(CFG, seed=0)
    ids = torch.randint(0, CFG.vocab_size, (1, 1025), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1)
        model(ids[:, :-1], cache=cache)
        with _CopyProbe() as probe:
            last = model(ids[:, -1:], cache=cache)
    assert torch.allclose(last[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)
    n_entries = 1024 // 4  # CSA pool / indexer keys at this context
    bound = n_entries * min(CFG.head_dim, CFG.index_head_dim)
    assert probe.max, "the probe saw no copying op at all"
    big = {k: v for k, v in probe.max.items() if v >= bound}
    assert not big, big  # before: torch.cat of the whole pool and indexer keys in every layer
