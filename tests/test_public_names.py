"""Every public name of ``v4lab`` is one thing: no lazily exported function shares its name with a
submodule (once the submodule is imported, ``from v4lab import name`` would give the module)."""
import pkgutil
import subprocess
import sys
import types

import v4lab


def test_no_lazy_name_is_also_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(v4lab.__path__)}
    clash = sorted(set(v4lab.__all__) & submodules)
    assert not clash, f"public names that are also submodules of v4lab: {clash}"


def test_public_names_stay_what_they_are_after_every_submodule_is_imported():
    # a fresh interpreter: import every submodule first, then ask for each public name
    code = (
        "import importlib, pkgutil, types, v4lab\n"
        "for m in pkgutil.iter_modules(v4lab.__path__):\n"
        "    if m.name not in ('demo',):\n"
        "        importlib.import_module('v4lab.' + m.name)\n"
        "bad = [n for n in v4lab.__all__ if isinstance(getattr(v4lab, n), types.ModuleType)]\n"
        "assert not bad, bad\n"
        "from v4lab import generate\n"
        "assert callable(generate) and not isinstance(generate, types.ModuleType), generate\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_lazy_names_resolve_to_callables():
    for name in v4lab.__all__:
        obj = getattr(v4lab, name)
        assert not isinstance(obj, types.ModuleType), name
        assert callable(obj), name
