"""topk_lowest_index against the plain definition: a stable descending sort of each row, cut to k."""
import pytest
import torch

from v4lab.indexer import topk_lowest_index

NEG_INF = float("-inf")


def by_sorting(scores, k):
    k = min(k, scores.shape[-1])
    o = torch.sort(scores, dim=-1, descending=True, stable=True)
    v, i = o.values[..., :k], o.indices[..., :k]
    return torch.where(v > NEG_INF, i, torch.full_like(i, -1))


@pytest.mark.parametrize("spare", [None, 0, 1, 3])
def test_equals_a_stable_sort_on_rows_full_of_ties(spare):
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        N = int(torch.randint(1, 200, (1,), generator=g))
        k = int(torch.randint(1, 40, (1,), generator=g))
        x = torch.randint(-3, 4, (2, 5, N), generator=g).float()  # few distinct values: ties everywhere
        x = torch.where(torch.rand(x.shape, generator=g) < 0.3, torch.full_like(x, NEG_INF), x)
        assert torch.equal(topk_lowest_index(x, k, spare=spare), by_sorting(x, k)), (N, k)


def test_long_ties_and_repeated_keys():
    g = torch.Generator().manual_seed(1)
    zeros = torch.relu(-torch.rand(4, 5000, generator=g))  # all 0: the tie runs through the row
    zeros[:, 4000] = 1.0
    repeated = torch.randn(4, 50, generator=g).repeat(1, 100)  # every value 100 times
    for x in (zeros, repeated):
        got = topk_lowest_index(x, 16)
        assert torch.equal(got, by_sorting(x, 16))
    assert topk_lowest_index(zeros, 16)[0].tolist() == [4000] + list(range(15))


def test_fewer_finite_scores_than_k_and_k_zero():
    x = torch.tensor([[2.0, NEG_INF, 1.0, NEG_INF]])
    assert topk_lowest_index(x, 3).tolist() == [[0, 2, -1]]
    assert topk_lowest_index(x, 0).shape == (1, 0)
    assert topk_lowest_index(x, 10).shape == (1, 4)
