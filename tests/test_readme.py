"""The README's Python blocks run (each in a fresh interpreter, from the repository root), and the
"Using it" block prints what its comments say: a comment ``# -> text`` after a ``print`` is the
line that print writes (``...`` stands for any text; a note in two spaces + parentheses after it
is commentary)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def claims(block: str) -> list[str | None]:
    """One entry per top-level print call, in order: the claimed output pattern or None."""
    out = []
    for line in block.splitlines():
        if not line.startswith("print("):
            continue
        m = re.search(r"#\s*->\s*(.*)$", line)
        if not m:
            out.append(None)
            continue
        claim = re.split(r"\s{2,}\(", m.group(1))[0].strip()
        out.append(claim)
    return out


def matches(claim: str, line: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in claim.split("..."))
    return re.fullmatch(pattern, line.strip()) is not None


def run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{p.stderr[-3000:]}"
    return p.stdout


def test_claim_matching_has_teeth():
    assert matches("SSCHCH...CHC|S", "SSCHCHCHCHC|S")
    assert not matches("SSCHCH...CHC|S", "SSCHCHCHCHC|SX")
    assert not matches("20 24", "20 23")
    block = 'print(1)  # -> 1  (one)\nx = 2\nprint(x)\n'
    assert claims(block) == ["1", None]


def test_readme_has_python_blocks_and_a_using_it_section():
    text = open(README, encoding="utf-8").read()
    assert len(python_blocks(text)) >= 1
    assert "## Using it\n\n```python\n" in text


_OUTPUTS: dict[str, str] = {}


def run_once(block: str) -> str:
    if block not in _OUTPUTS:
        _OUTPUTS[block] = run(block)
    return _OUTPUTS[block]


@pytest.mark.parametrize("index", range(len(python_blocks(open(README, encoding="utf-8").read()))))
def test_readme_python_block_runs_and_prints_what_it_claims(index):
    block = python_blocks(open(README, encoding="utf-8").read())[index]
    out = run_once(block).splitlines()
    want = claims(block)
    assert len(out) == len(want), (out, want)
    for claim, line in zip(want, out):
        if claim is not None:
            assert matches(claim, line), f"README claims {claim!r}, the code printed {line!r}"


def test_using_it_numbers_agree_with_the_model_and_the_report():
    """The "Using it" block's figures, checked from independent sources: the schedule from the
    paper's description of Flash (2 window-only layers, then CSA/HCA alternating from layer 2,
    43 layers, MTP window-only), parameter counts near the report's 284B / 13B, the cache bytes
    against the cost model."""
    text = open(README, encoding="utf-8").read()
    block = text[text.index("## Using it"):]
    block = python_blocks(block)[0]
    out = run_once(block).splitlines()
    assert out[0] == "SS" + "CH" * 20 + "C|S"
    nums = [float(x) for x in re.findall(r"([\d.]+)B", out[1])]
    without_mtp, activated = nums[1], nums[2]
    assert round(without_mtp) == 284 and round(activated) == 13
    n_new, pos = map(int, out[2].split())
    assert (n_new, pos) == (20, 24)
    code = ("import torch\nfrom v4lab import costs\nfrom v4lab.pretrained import load_flash_mini\n"
            "cfg = load_flash_mini(verify=False).config\n"
            "print(costs.kv_cache_bytes(cfg, 24, storage=torch.float32).total)\n")
    assert int(out[3]) == int(run(code).strip()) > 0


def notebook_prose_blocks() -> list[tuple[str, str, str]]:
    """(notebook, language, code) of every fenced block in the notebooks' markdown cells."""
    import glob
    import json

    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))):
        nb = json.load(open(path, encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                src = "".join(cell["source"])
                for lang, code in re.findall(r"^```(\w*)\n(.*?)^```", src, flags=re.S | re.M):
                    out.append((os.path.basename(path), lang, code))
    return out


def test_notebook_prose_python_blocks_run():
    """Code in the notebooks' prose that is marked as Python claims to run: it is executed here
    (from the repository root, in a fresh interpreter).  Other fenced blocks (diagrams, shell
    commands) are not Python and must not be labelled so."""
    blocks = notebook_prose_blocks()
    assert blocks, "the notebooks' prose has fenced blocks (notebook 10's diagram at least)"
    for name, lang, code in blocks:
        assert lang in ("", "python", "bash", "text", "json"), f"{name}: unknown block language {lang!r}"
        if lang == "python":
            run(code)
