"""Prints shell `export` lines that make uv install what pip would, for the Makefile (`eval "$(...)"`):
uv reads no pip.conf, and a machine may keep wheels pip finds only through its configuration (a
find-links folder with the CPU torch build, extra indexes, a global constraints file). Also: resolve
across indexes as pip does (`unsafe-best-match`), and compile bytecode as pip does (without .pyc files
every process compiles torch and transformers again: imports took twice as long).

    eval "$(.venv/bin/python tools/uv_env.py)"     # the venv's python: `pip config list` must work
"""
from __future__ import annotations

import shlex
import subprocess
import sys

UV_NAMES = {"index-url": "UV_INDEX_URL", "extra-index-url": "UV_EXTRA_INDEX_URL",
            "find-links": "UV_FIND_LINKS", "constraint": "UV_CONSTRAINT"}
FIXED = {"UV_INDEX_STRATEGY": "unsafe-best-match", "UV_COMPILE_BYTECODE": "1", "UV_HTTP_TIMEOUT": "180"}


def pip_settings() -> dict[str, str]:
    """pip's effective values of the settings uv has a name for (environment over files, as pip)."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    found: dict[str, tuple[int, str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        scope, _, name = key.partition(".")
        if name in UV_NAMES:
            rank = 1 if scope == ":env:" else 0
            if rank >= found.get(name, (-1, ""))[0]:
                found[name] = (rank, value.strip().strip("'\""))
    return {name: value for name, (_, value) in found.items()}


def main() -> int:
    settings = dict(FIXED)
    for name, value in sorted(pip_settings().items()):
        if value:   # uv's find-links list is comma-separated, pip's space-separated
            settings[UV_NAMES[name]] = ",".join(value.split()) if name == "find-links" else value
    print("\n".join(f"export {key}={shlex.quote(value)}" for key, value in settings.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
