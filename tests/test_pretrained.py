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


def test_demo_answers_a_short_needle_and_reports_its_cache(tmp_path):
    import io

    from v4lab.demo import run

    out = io.StringIO()
    res = run(context=2048, depth=0.5, figure=str(tmp_path / "picks.png"), out=out)
    text = out.getvalue()
    cfg = load_flash_mini(verify=False).config
    assert res["correct"] and res["answer"] == res["value"]           # 100% at 2K in metrics.json
    assert f"answer: {res['value']}\n" in text and "expected" in text and "prefill:" in text
    assert text.count("CSA layer") == cfg.layer_types.count("csa")
    # the prompt is 2048 tokens minus the answer "ddddd\n"; the cache ends at the end of the returned
    # sequence, so all 6 answer tokens (the 5 digits and the stop newline) were fed: 2048 positions
    pos = 2048
    assert res["dense_kv_bytes"] == cfg.num_hidden_layers * pos * cfg.head_dim * 4
    assert res["kv_bytes"] < res["dense_kv_bytes"] and (tmp_path / "picks.png").stat().st_size > 0


def test_demo_mrcr_asks_the_chosen_one_of_eight_codes_and_refuses_a_ninth():
    import io
    import re

    from v4lab.demo import run

    out = io.StringIO()
    res = run(context=4096, seed=2, mrcr=True, ask=3, out=out)
    text = out.getvalue()
    facts = re.findall(r"hidden fact at depth ([0-9.]+): 'The code of the (.+?) is (\d+)\.'(  <- asked)?", text)
    asked = [f for f in facts if f[3]]
    assert len(asked) == 1 and asked[0][2] == res["value"]
    same_key = [f for f in facts if f[1] == asked[0][1]]
    assert len(same_key) == 8 and same_key.index(asked[0]) == 2      # the third of the 8, in document order
    assert "What is the third of them?" in text and f"expected {res['value']}" in text
    with pytest.raises(ValueError, match="ask must lie in 1 .. 8"):
        run(context=4096, mrcr=True, ask=9, out=io.StringIO())
