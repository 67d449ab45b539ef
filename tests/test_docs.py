"""docs/internals.md cannot drift from the code: its module list is the package's, and the import
direction it states holds."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("manualrag", "indexer", "retriever")


def _modules() -> set[str]:
    found = {p.relative_to(ROOT).as_posix() for d in FOLDERS for p in (ROOT / d).rglob("*.py")}
    return found - {"indexer/__init__.py", "retriever/__init__.py"}  # empty package markers


def _documented() -> set[str]:
    text = (ROOT / "docs" / "internals.md").read_text()
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^((?:manualrag|indexer|retriever)/\S+\.py)\s", section, re.M))


def test_internals_lists_every_module_and_no_other():
    code, doc = _modules(), _documented()
    assert code - doc == set(), f"modules missing from docs/internals.md: {sorted(code - doc)}"
    assert doc - code == set(), f"docs/internals.md lists modules that do not exist: {sorted(doc - code)}"


def test_every_package_folder_is_installed():
    """pyproject.toml lists packages explicitly: a new subpackage that is not listed is not installed."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    listed = set(re.search(r"^packages = \[(.*?)\]", pyproject, re.M | re.S)[1].replace('"', "").split(", "))
    folders = {p.parent for d in FOLDERS for p in (ROOT / d).rglob("__init__.py")}
    for folder in folders:
        rel = folder.relative_to(ROOT).parts
        name = ".".join(rel) if rel[0] == "manualrag" else ".".join(("manualrag", *rel))
        assert name in listed, f"{folder.relative_to(ROOT)} is not in pyproject.toml's packages"


def test_imports_go_one_way():
    def imports(folder: str) -> dict[str, set[str]]:
        out = {}
        for p in (ROOT / folder).rglob("*.py"):
            found = re.findall(
                r"^\s*(?:from|import) manualrag\.(indexer|retriever|cli|check|serve|integrations)\b",
                p.read_text(),
                re.M,
            )
            out[p.relative_to(ROOT).as_posix()] = set(found)
        return out

    upper = {"cli", "check", "serve", "integrations"}
    for path, found in imports("retriever").items():
        assert not found & (upper | {"indexer"}), f"{path} imports {found}"
    for path, found in imports("indexer").items():
        assert not found & (upper | {"retriever"}), f"{path} imports {found}"
    commands = ("manualrag/cli.py", "manualrag/__main__.py", "manualrag/check.py")
    for path, found in imports("manualrag").items():
        if path not in commands and not path.startswith(("manualrag/serve/", "manualrag/integrations/")):
            assert not found, f"the core module {path} imports {found}"
