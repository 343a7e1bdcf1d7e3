"""A layer's attention on the Triton kernels, with the signature of ``reference.attention``.

Window entries and CSA picks become one index list into a shared table (``sparse_attention``);
an HCA layer attends its window and every complete entry densely (``hca_attention``)."""
from __future__ import annotations

import torch

from .hca_attention import hca_attention
from .sparse_attention import sparse_attention


def attention(q, q_start, win_kv, win_start, window, comp, ratio, sel, sink, scale, *, query_block=256,
              observe=None):
    """See ``v4lab.kernels.reference.attention``; ``query_block`` is the torch path's and is
    ignored here, and the kernels keep no probabilities to ``observe``."""
    if observe is not None:
        raise ValueError("attention: the Triton kernels keep no probabilities; observe on the torch backend")
    B, S = q.shape[:2]
    pos = torch.arange(q_start, q_start + S, device=q.device)
    sink = sink.float()
    if comp is not None and sel is None:  # HCA: dense over the compressed entries, no gather
        win_pos = torch.arange(win_start, win_start + win_kv.shape[1], device=q.device)
        return hca_attention(q, win_kv, win_pos, comp, pos, ratio, window, sink, scale)
    # window entries as indices into win_kv: positions t-window+1 .. t
    offs = torch.arange(-window + 1, 1, device=q.device)
    widx = pos[:, None] + offs[None, :] - win_start  # [S, window]
    widx = torch.where(pos[:, None] + offs[None, :] >= 0, widx, torch.full_like(widx, -1))
    idx, table = widx[None].expand(B, S, window), win_kv
    if sel is not None and sel.shape[-1]:  # CSA picks index the compressed entries after the window
        idx = torch.cat([idx, torch.where(sel >= 0, sel + win_kv.shape[1], sel)], dim=-1)
        table = torch.cat([win_kv, comp.to(win_kv.dtype)], dim=1)
    return sparse_attention(q, table.contiguous(), idx.contiguous(), sink, scale)
