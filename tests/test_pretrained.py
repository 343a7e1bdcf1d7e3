"""The shipped flash-mini: sha256 of the files, and its figures against the recorded ones."""
import json

import pytest

from v4lab.pretrained import has_weights, load_flash_mini, verify_weights, weights_dir

pytestmark = pytest.mark.skipif(not has_weights(), reason="data/flash-mini is not in this checkout")


def test_weights_match_their_sha256():
    sums = verify_weights()
    assert any(n.endswith(".safetensors") for n in sums)


def test_tampered_weights_are_refused(tmp_path):
    import shutil

    d = tmp_path / "w"
    shutil.copytree(weights_dir(), d)
    f = next(d.glob("*.safetensors"))
    b = bytearray(f.read_bytes())
    b[-1] ^= 1
    f.write_bytes(bytes(b))
    with pytest.raises(ValueError, match="sha256"):
        verify_weights(d)


def test_shipped_model_reproduces_its_recorded_figures():
    from v4lab.eval import quick_check

    recorded = json.loads((weights_dir() / "metrics.json").read_text())["quick_check"]
    (needle_key,) = [k for k in recorded if k.startswith("needle_acc_")]
    context_len = int(needle_key.split("_")[2])
    got = quick_check(load_flash_mini(), context_len=context_len)
    assert set(got) == set(recorded)
    assert abs(got["val_bpb_8x1024"] - recorded["val_bpb_8x1024"]) < 0.02
    assert abs(got[needle_key] - recorded[needle_key]) <= 0.125        # 2 of 16 trials
