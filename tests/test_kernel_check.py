"""v4lab.kernels.check (the harness of notebook 07) and the GPU-section reader of bench_kernels."""
import pytest
import torch


def test_check_all_covers_every_op_and_catches_a_wrong_kernel(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from v4lab import kernels as K
    from v4lab.kernels import check

    res = check.check_all(dtypes=(torch.float32,))
    assert {r.op for r in res} == set(K.OPS) and all(r.ok and r.dtype == "float32" for r in res)
    good = K.sparse_attention
    monkeypatch.setattr(K, "sparse_attention", lambda *a, **k: good(*a, **k) * 1.001)
    with pytest.raises(AssertionError, match="sparse_attention .*above"):
        check.check_all(dtypes=(torch.float32,))


def test_max_err_compares_finite_entries_and_the_inf_pattern():
    from v4lab.kernels.check import max_err

    inf = float("-inf")
    a, b = torch.tensor([1.0, inf, 3.0]), torch.tensor([1.5, inf, 3.0])
    assert max_err(a, b) == 0.5 and max_err(a, b, rel=True) == 0.5 / 3.0
    with pytest.raises(AssertionError, match="-inf pattern"):
        max_err(torch.tensor([1.0, 2.0]), torch.tensor([1.0, inf]))


def test_gpu_sections_and_what_benchmarks_md_records(tmp_path):
    from v4lab.bench_kernels import gpu_sections, recorded_gpu_results

    md = "# Bench\n## CPU\na\n## On an NVIDIA H200 (2026-12-01)\nrows\n### decode\nmore\n## Later\nz\n"
    assert gpu_sections(md) == ["## On an NVIDIA H200 (2026-12-01)\nrows\n### decode\nmore"]
    p = tmp_path / "BENCHMARKS.md"
    p.write_text(md)
    assert recorded_gpu_results(p) == ("measured", gpu_sections(md))
    p.write_text("# Bench\n### GPU\nNot measured yet: no GPU was available.\n")
    assert recorded_gpu_results(p)[0] == "not measured"
    p.write_text("# Bench\n## CPU only\n")
    assert recorded_gpu_results(p) == ("absent", [])
    assert recorded_gpu_results(tmp_path / "missing.md") == ("absent", [])
