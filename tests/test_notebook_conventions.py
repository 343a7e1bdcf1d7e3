"""Conventions of the notebook series that a reader sees: markers as tags, a way in from 00."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
TAGS = {"nbval-ignore-output", "nbval-skip", "nbval-raises-exception", "nbval-check-output"}


def _cells(nb: Path):
    return json.loads(nb.read_text())["cells"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_nbval_markers_are_cell_tags_not_code_comments(nb):
    for i, cell in enumerate(_cells(nb)):
        src = "".join(cell["source"])
        assert not re.search(r"#\s*NBVAL_", src), f"{nb.name} cell {i}: an NBVAL comment in the code; use a tag"
        tags = set(cell.get("metadata", {}).get("tags", []))
        odd = {t for t in tags if t.startswith("nbval")} - TAGS
        assert not odd, f"{nb.name} cell {i}: unknown nbval tag(s) {odd}"


def test_the_tour_links_every_notebook():
    tour = "".join("".join(c["source"]) for c in _cells(NOTEBOOKS[0]) if c["cell_type"] == "markdown")
    missing = [nb.name for nb in NOTEBOOKS[1:] if f"({nb.name})" not in tour]
    assert not missing, f"00_tour does not link {missing}"


def test_the_readme_says_how_to_open_the_series():
    readme = (ROOT / "README.md").read_text()
    assert "jupyter lab notebooks/00_tour.ipynb" in readme
    assert ".[notebooks]" in readme or ".[dev,notebooks" in readme
    for nb in NOTEBOOKS:
        assert nb.name in readme, f"README does not point to {nb.name}"


def test_the_index_prints_a_measured_time_within_budget_for_every_notebook():
    """scripts/time_notebooks.py records each notebook's wall time at its defaults; the index
    shows it with the date, and no notebook may take more than 30 s on the 2-core CPU."""
    rec = json.loads((ROOT / "notebooks" / "timings.json").read_text())
    index = (ROOT / "notebooks" / "README.md").read_text()
    assert f"measured {rec['date']}" in index
    for nb in NOTEBOOKS:
        s = rec["seconds"].get(nb.stem)
        assert s is not None, f"{nb.name} was never timed: run scripts/time_notebooks.py"
        assert s <= rec["budget_s"] <= 30, f"{nb.name} takes {s} s"
        row = re.search(rf"^\| \[{nb.stem}\]\({nb.name}\) \|.*\| (\d+) s \|$", index, re.M)
        assert row and int(row.group(1)) == round(s), f"notebooks/README.md row of {nb.name}"
        # a notebook that states its own run time states the measured one (rounded up to 5 s)
        said = re.search(r"Runs in about (\d+) seconds", nb.read_text())
        if said:
            assert int(said.group(1)) - 5 < s <= int(said.group(1)), f"{nb.name} says {said.group(0)}, measured {s} s"
