"""service_kit's two layers: the inference core loads no web framework (a process that only
prepares inputs, or another HTTP layer, can use it)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import service_kit.core


def test_the_core_imports_no_web_framework():
    modules = [f"service_kit.core.{m.name}" for m in pkgutil.iter_modules(service_kit.core.__path__)]
    assert len(modules) >= 5
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(sorted({n.split('.')[0] for n in sys.modules} & {'flask', 'werkzeug', 'gunicorn', 'gevent'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]", f"the core loaded {loaded.stdout.strip()}"
