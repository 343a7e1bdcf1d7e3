#!/usr/bin/env python
"""Open notebooks in a real JupyterLab in headless Chromium, run them, and look at the page.

    python scripts/browser_check.py notebooks/06_kv_cache_and_costs.ipynb notebooks/10_agent_format.ipynb

For each notebook: copy it to a temporary folder (the committed file is never touched), open it in
JupyterLab, wait for the kernel to be idle, run all cells from the Run menu, wait until every code
cell has run, and report errors, images and widgets; screenshots go to ``artifacts/screenshots/``.
``tests/test_notebooks_browser.py`` drives the same functions and adds the assertions.

Needs Debian's ``chromium`` (``apt-get install chromium``) and ``pip install playwright``; the
browser that ``playwright install`` would download is not used.  Chromium runs with
``--headless --no-sandbox --disable-gpu`` and without background networking; JupyterLab runs on
127.0.0.1 with a random token, news and update checks off, in temporary config, runtime, settings
and workspace folders.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("V4LAB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
# user settings of the temporary JupyterLab: no news / update toasts, every cell in the DOM
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
        {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}


def missing_requirements() -> str | None:
    """Why the browser check cannot run here, or None when it can."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    try:
        import jupyterlab  # noqa: F401
        import ipywidgets  # noqa: F401
    except ImportError as e:
        return f"{e.name} is not installed (pip install jupyterlab ipywidgets)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    """A JupyterLab server on 127.0.0.1 serving a temporary copy of some notebooks.

    Use as a context manager; ``url(name)`` gives the address of a notebook.  On exit the server
    is asked to shut down (which stops its kernels), then terminated, and the folders removed."""

    def __init__(self, notebooks, startup_timeout: float = 90.0):
        self.notebooks = [Path(n).resolve() for n in notebooks]
        self.startup_timeout = startup_timeout
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, name: str) -> str:
        return f"{self.base}/lab/tree/{name}?reset&token={self.token}"

    def __enter__(self) -> "LabServer":
        self.tmp = tempfile.TemporaryDirectory(prefix="v4lab-lab-")
        top = Path(self.tmp.name)
        root, cfg = top / "root", top / "config"
        for d in (root, cfg, top / "runtime", top / "workspaces", top / "settings", top / "data"):
            d.mkdir()
        for nb in self.notebooks:
            shutil.copy(nb, root / nb.name)
        for rel, value in LAB_SETTINGS.items():
            path = top / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        env = dict(os.environ)
        env.update(
            JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(top / "runtime"),
            JUPYTERLAB_SETTINGS_DIR=str(top / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(top / "workspaces"),
            JUPYTER_DATA_DIR=str(top / "data"), PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        )
        self.log_path = top / "lab.log"
        cmd = [
            sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={root}",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.expose_app_in_browser=True",
        ]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"jupyter lab did not answer within {self.startup_timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:  # a clean shutdown also stops the kernels
                req = urllib.request.Request(f"{self.base}/api/shutdown?token={self.token}", method="POST")
                urllib.request.urlopen(req, timeout=5).close()
                self.proc.wait(timeout=15)
            except Exception:  # noqa: BLE001 - fall through to signals
                pass
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
        if self.tmp is not None:
            self.tmp.cleanup()
            self.tmp = None


def launch_browser(playwright):
    """Debian's Chromium, headless, driven by Playwright."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


# JavaScript run in the page: the notebook's model, through the application object that
# --LabApp.expose_app_in_browser puts on window.jupyterapp
_MODEL_STATE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  if (!w || !w.content || !w.content.model) return null;
  const cells = w.content.model.cells;
  const out = {code: 0, run: 0, errors: []};
  for (let i = 0; i < cells.length; i++) {
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    out.code += 1;
    if (c.executionCount !== null && c.executionCount !== undefined) out.run += 1;
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j).toJSON();
      if (o.output_type === 'error') out.errors.push(`cell ${i}: ${o.ename}: ${o.evalue}`);
    }
  }
  const status = document.querySelector('#jp-main-statusbar');
  out.status = status ? status.innerText : '';
  out.busy = !!(w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel
                && w.sessionContext.session.kernel.status !== 'idle');
  return out;
}"""


def _wait(page, predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        page.wait_for_timeout(int(poll * 1000))
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what} (last state: {last!r})")


def model_state(page) -> dict | None:
    return page.evaluate(_MODEL_STATE)


def open_notebook(page, server: LabServer, name: str, timeout: float = 90.0) -> None:
    """Open ``name`` and wait until its kernel is idle."""
    page.goto(server.url(name))
    page.wait_for_selector(".jp-NotebookPanel", timeout=timeout * 1000)

    def idle():
        st = model_state(page)
        return st is not None and re.search(r"\bIdle\b", st["status"]) and not st["busy"]

    _wait(page, idle, timeout, f"the kernel of {name} to be Idle")


def clear_outputs(page) -> None:
    """Clear every output and execution count (the stored ones came from nbconvert), so that
    what the page shows afterwards comes from this browser session."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs')")
    _wait(page, lambda: (lambda st: st is not None and st["run"] == 0)(model_state(page)), 30,
          "the outputs to be cleared")


def run_all(page, timeout: float = 180.0) -> dict:
    """Clear the outputs, run all cells from the Run menu, and return the model state once every
    code cell has run (or one failed) and the kernel is idle again."""
    clear_outputs(page)
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

    def done():
        st = model_state(page)
        if st is None or st["busy"] or not re.search(r"\bIdle\b", st["status"]):
            return None
        if page.locator(".jp-InputPrompt", has_text="[*]").count():
            return None
        return st if st["run"] == st["code"] or st["errors"] else None

    return _wait(page, done, timeout, "all cells to run")


def page_report(page) -> dict:
    """What the rendered page shows: error-looking outputs, images, widgets."""
    stderr = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = [t for t in stderr.all_inner_texts() if "Traceback" in t or "Error" in t]
    return {
        "error_outputs": tracebacks,
        "images": page.locator(".jp-OutputArea-output img").count(),
        "widgets": page.locator(".jp-OutputArea-output .widget-box, .jp-OutputArea-output .jupyter-widgets").count(),
    }


def screenshot(target, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    target.screenshot(path=str(path))
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+")
    args = ap.parse_args(argv)
    why = missing_requirements()
    if why:
        print(f"cannot run: {why}")
        return 2
    from playwright.sync_api import sync_playwright

    bad = 0
    with LabServer(args.notebooks) as server, sync_playwright() as p:
        browser = launch_browser(p)
        try:
            for nb in args.notebooks:
                name = Path(nb).name
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                t0 = time.monotonic()
                open_notebook(page, server, name)
                st = run_all(page)
                rep = page_report(page)
                shot = screenshot(page, f"{Path(name).stem}.png")
                ok = not st["errors"] and not rep["error_outputs"]
                bad += not ok
                print(f"{'ok ' if ok else 'BAD'} {name}: {st['run']}/{st['code']} code cells run, "
                      f"{len(st['errors'])} errors, {rep['images']} images, {rep['widgets']} widget elements, "
                      f"{time.monotonic() - t0:.0f} s; screenshot {shot.relative_to(ROOT)}")
                for e in st["errors"] + rep["error_outputs"]:
                    print("    " + e[:300])
                page.close()
        finally:
            browser.close()
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
