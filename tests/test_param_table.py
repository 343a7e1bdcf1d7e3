"""The parameter lists written out by hand (the checkpoint schema, the cost model's closed-form
counts) agree with the modules themselves, for every preset and for the configs only
transformers can express, so neither can drift from the model."""
import pytest
import torch

from v4lab import V4Config, costs
from v4lab.checkpoint import _logical
from v4lab.model import V4Model
from v4lab.params import count_parameters

KINDS = ["window", "csa", "hca", "csa", "hca", "window"]
CONFIGS = {
    "tiny": V4Config.preset("tiny"),
    "flash-mini": V4Config.preset("flash-mini"),
    "tiny-mlp-bias": V4Config.preset("tiny", mlp_bias=True),
    "tiny-csa8-hca4": V4Config.preset("tiny", compress_ratios=[0, 8, 4, 8, 4, 0], attention_kinds=KINDS),
    "tiny-no-shared-no-mtp": V4Config.preset("tiny", n_shared_experts=0, num_nextn_predict_layers=0),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_checkpoint_schema_lists_exactly_the_modules_tensors(name):
    cfg = CONFIGS[name]
    with torch.device("meta"):
        model = V4Model(cfg, init=False)
    own = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    schema = {n: tuple(shape) for n, _, shape in _logical(cfg)}
    assert schema == own


@pytest.mark.parametrize("name", ["tiny", "flash-mini", "flash", "pro", "tiny-mlp-bias", "tiny-csa8-hca4"])
def test_closed_form_activated_count_equals_the_counted_modules(name):
    cfg = CONFIGS.get(name) or V4Config.preset(name)
    assert costs.activated_params(cfg)["total"] == count_parameters(cfg).activated
