"""count_parameters(config) builds one block per kind; it must equal counting a whole built model."""
import pytest

from v4lab.config import V4Config
from v4lab.model import V4Model
from v4lab.params import count_parameters


@pytest.mark.parametrize("name", ["tiny", "flash-mini"])
def test_counts_from_the_config_equal_the_built_model(name):
    cfg = V4Config.preset(name)
    model = V4Model(cfg, device="meta", init=False)
    got = count_parameters(cfg)
    assert got == count_parameters(model)
    assert got.total == sum(p.numel() for p in model.parameters())
    routed = sum(p.numel() for n, p in model.named_parameters() if ".ffn.experts." in n)
    assert got.routed_experts == routed
    mtp = sum(p.numel() for n, p in model.named_parameters() if n.startswith("mtp."))
    assert got.mtp == mtp and got.total_without_mtp == got.total - mtp
