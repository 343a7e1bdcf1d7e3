"""The README's Python blocks run, and the "Using it" block prints what its comments say."""
from __future__ import annotations

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks() -> list[tuple[str, str]]:
    """(the heading above it, code) for every fenced ```python block of the README."""
    out, heading, block = [], "", None
    for line in README.read_text().splitlines():
        if block is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif line.strip() == "```python":
                block = []
        elif line.strip() == "```":
            out.append((heading, "\n".join(block) + "\n"))
            block = None
        else:
            block.append(line)
    assert block is None, "README.md: a ```python block is not closed"
    return out


@functools.lru_cache(maxsize=None)
def run_block(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (nothing imported beforehand) from the repository root."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)


BLOCKS = python_blocks()


def test_the_readme_has_python_blocks():
    assert any(h == "Using it" for h, _ in BLOCKS)


@pytest.mark.parametrize("i", range(len(BLOCKS)), ids=[f"{i}-{h}" for i, (h, _) in enumerate(BLOCKS)])
def test_readme_block_runs(i):
    _, code = BLOCKS[i]
    res = run_block(code)
    assert res.returncode == 0, f"README block {i} failed:\n{code}\n--- stderr ---\n{res.stderr[-4000:]}"


def _claims(code: str) -> list[tuple[str, str]]:
    """(printed expression, the comment on its line) for every top-level print() of a block."""
    out = []
    for line in code.splitlines():
        m = re.match(r"print\((.*)\)\s*#\s*(.*)$", line)
        if m:
            out.append((m.group(1).strip(), m.group(2).strip()))
        elif line.startswith("print("):
            out.append((line, ""))
    return out


def test_using_it_prints_what_its_comments_claim():
    code = next(c for h, c in BLOCKS if h == "Using it")
    res = run_block(code)
    assert res.returncode == 0, res.stderr[-4000:]
    printed = res.stdout.splitlines()
    claims = _claims(code)
    assert len(printed) == len(claims), (printed, claims)
    checked = 0
    for (expr, comment), got in zip(claims, printed):
        assert comment, f"print({expr}) has no comment saying what it prints"
        if expr == "cfg.schedule_string()":
            # "SSCHCH...C|S": the literal parts around "..." with layer letters in between
            pattern = comment.split()[0]
            rx = "[SCH]*".join(re.escape(p) for p in pattern.split("..."))
            assert re.fullmatch(rx, got), (pattern, got)
            body, mtp = got.split("|")
            assert set(body) <= set("SCH") and mtp == "S", got  # letters as the comment explains them
            checked += 1
        elif expr.startswith("count_parameters("):
            without = re.search(r"([\d.]+[KMBT]) without MTP", comment).group(1)
            active = re.search(r"([\d.]+[KMBT]) activated per token", comment).group(1)
            assert re.search(r"without MTP ([\d.]+[KMBT])", got).group(1) == without, got
            assert re.search(r"activated/token ([\d.]+[KMBT])", got).group(1) == active, got
            checked += 1
        elif expr == "len(out.tokens)":
            want = int(re.match(r"(\d+) new tokens", comment).group(1))
            assert int(got) == want
            assert f"max_new_tokens={want}" in code  # the count the comment states is the one asked for
            checked += 1
        elif expr.startswith("cache.nbytes("):
            assert comment.startswith("bytes the cache holds")
            assert re.fullmatch(r"\d+", got) and int(got) > 0, got
            checked += 1
        else:
            pytest.fail(f"no check for the claim of print({expr})  # {comment}")
    assert checked == len(claims) == 4
