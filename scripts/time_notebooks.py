"""Measure how long each notebook takes at its defaults and write the figures where readers see them.

    python scripts/time_notebooks.py                 # every notebooks/NN_*.ipynb
    python scripts/time_notebooks.py --check         # only say whether every notebook is <= 30 s

Each notebook is executed once, in order, from a temporary copy (the committed outputs are not
touched), in a fresh kernel; the wall time of the execution is what is recorded.  The results go
to ``notebooks/timings.json`` (seconds, date, machine, whether the machine was otherwise idle is
up to the person running it: run it alone) and into the runtime column of ``notebooks/README.md``;
each notebook's own "Runs in about N seconds" line is set to the measured time rounded up to 5 s.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NB = ROOT / "notebooks"
BUDGET_S = 30.0


def run_one(path: Path, workdir: Path) -> float:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    t0 = time.perf_counter()
    client.execute()
    return time.perf_counter() - t0


def about(seconds: float) -> int:
    return max(5, 5 * math.ceil(seconds / 5))


def write_index(times: dict, date: str) -> None:
    readme = NB / "README.md"
    text = readme.read_text()
    header = re.compile(r"^\| notebook \| what it shows \| runtime[^|]*\|$", re.M)
    text = header.sub(f"| notebook | what it shows | runtime (2 CPU cores, measured {date}) |", text)
    for name, s in times.items():
        row = re.compile(rf"^(\| \[{re.escape(name)}\]\({re.escape(name)}\.ipynb\) \|.*\| )[^|]*(\|)$", re.M)
        text, n = row.subn(lambda m: f"{m.group(1)}{s:.0f} s {m.group(2)}", text)
        if n != 1:
            raise SystemExit(f"notebooks/README.md has no row for {name}")
    readme.write_text(text)
    for name, s in times.items():
        p = NB / f"{name}.ipynb"
        raw = p.read_text()
        new = re.sub(r"Runs in about \d+ seconds", f"Runs in about {about(s)} seconds", raw, count=1)
        if new != raw:
            p.write_text(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to time (default: all)")
    ap.add_argument("--check", action="store_true", help="measure only; exit 1 if one takes over 30 s")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(NB.glob("[0-9][0-9]_*.ipynb"))
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "notebooks"
        shutil.copytree(NB, work)
        for p in paths:
            s = run_one(work / p.name, work)
            times[p.stem] = round(s, 1)
            flag = "" if s <= BUDGET_S else f"   over the {BUDGET_S:.0f} s budget"
            print(f"{p.stem:28s} {s:6.1f} s{flag}", flush=True)
    over = [n for n, s in times.items() if s > BUDGET_S]
    if args.check:
        return 1 if over else 0
    date = datetime.date.today().isoformat()
    out = NB / "timings.json"
    old = json.loads(out.read_text())["seconds"] if out.exists() else {}
    record = {"date": date, "machine": f"{os.cpu_count()}-core CPU, {platform.machine()}, Python {platform.python_version()}",
              "budget_s": BUDGET_S, "seconds": {**old, **times}}
    out.write_text(json.dumps(record, indent=1) + "\n")
    write_index(times, date)
    print(f"wrote {out.relative_to(ROOT)} and the runtime column of notebooks/README.md")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
