"""mypy over the package as it installs: `manualrag.indexer` and `manualrag.retriever` live in the
repository's top-level indexer/ and retriever/ folders (setuptools package-dir), which mypy cannot map.
This builds a tree of symlinks with the installed shape (.mypy_cache/tree/manualrag/{indexer,retriever}),
runs mypy on it with pyproject.toml's [tool.mypy] settings, and reports repository paths.

    python scripts/typecheck.py [mypy options]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / ".mypy_cache" / "tree"
MAPPED = {"indexer": "indexer", "retriever": "retriever"}  # manualrag.<name> -> repository folder


def build_tree() -> Path:
    pkg = TREE / "manualrag"
    if TREE.exists():
        shutil.rmtree(TREE)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "manualrag").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (pkg / name).symlink_to(ROOT / folder)
    return pkg


def main() -> int:
    pkg = build_tree()
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        *sys.argv[1:],
        str(pkg),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ})
    prefix = re.escape(pkg.relative_to(ROOT).as_posix() + "/")
    out = re.sub(rf"(?m)^{prefix}(indexer|retriever)/", r"\1/", proc.stdout + proc.stderr)
    out = re.sub(rf"(?m)^{prefix}", "manualrag/", out)
    sys.stdout.write(out)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
