"""A Hypothesis state machine (as chromadb tests its own store) over a small manual library: it adds, modifies,
corrupts, touches and deletes files, runs `manualrag index`, and runs `manualrag remove`; after every step
the index must equal a fresh index, built from scratch, of what the index should hold: the library as of the
last index run, less the documents removed since. "Equal" covers the manifest rows, the lexical index, the
per-file errors, the crop files and every vector (ids, metadata, documents, embeddings: tiny CLIP).

MANUALRAG_STATEFUL_EXAMPLES (default 2) and MANUALRAG_STATEFUL_STEPS (default 10) size the search.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests import rel_helpers as rh

EXAMPLES = int(os.environ.get("MANUALRAG_STATEFUL_EXAMPLES", "2"))
STEPS = int(os.environ.get("MANUALRAG_STATEFUL_STEPS", "10"))

NAMES = ("a.pdf", "b.md", "sub/c.pdf", "d.txt")
_CONTENT: dict[tuple[str, int], bytes] = {}


def content(name: str, variant: int) -> bytes:
    """Variant 0 and 1: two versions of a good file (different pages, passages, figures); 2: a bad file."""
    key = (name, variant)
    if key not in _CONTENT:
        tag = f"{Path(name).stem}v{variant}"
        if variant == 2:
            data = rh.corrupt_pdf() if name.endswith(".pdf") else b"\x00\x01binary\x00" * 64
        elif name.endswith(".pdf"):
            data = rh.versioned_pdf(tag, pages=1 + variant, figure=variant == 0, photo=variant == 1)
        else:
            data = rh.versioned_md(tag, sections=2 + variant)
        _CONTENT[key] = data
    return _CONTENT[key]


class IndexMachine(RuleBasedStateMachine):
    """The model: ``expected`` = what the index should hold (path -> bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="manualrag-sm-"))
        self.lib = self.root / "lib"
        self.idx = self.root / "index"
        self.lib.mkdir()
        self.files: dict[str, bytes] = {}  # the library now
        self.expected: dict[str, bytes] = {}  # what the index should hold
        self.indexed_ok: set[str] = set()

    @initialize(start=st.dictionaries(st.sampled_from(NAMES), st.integers(0, 2), min_size=1))
    def first_run(self, start: dict[str, int]) -> None:
        """A library of 1-4 files (good or bad), indexed."""
        for name, variant in start.items():
            self.write(name, variant)
        self.run_index()

    # ------------------------------------------------------------------------------------- the library
    @rule(name=st.sampled_from(NAMES), variant=st.integers(0, 2))
    def write(self, name: str, variant: int) -> None:
        """Add a file, or give it new content (another good version, or a bad file)."""
        STATS["writes"] += 1
        path = self.lib / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content(name, variant)
        path.write_bytes(data)
        self.files[name] = data

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def delete(self, data) -> None:
        STATS["deletes"] += 1
        name = data.draw(st.sampled_from(sorted(self.files)))
        (self.lib / name).unlink()
        del self.files[name]

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def touch(self, data) -> None:
        """A new modification time, same bytes: the next run must not re-embed it, nor lose it."""
        name = data.draw(st.sampled_from(sorted(self.files)))
        st_ = (self.lib / name).stat()
        os.utime(self.lib / name, ns=(st_.st_atime_ns, st_.st_mtime_ns + 5_000_000_000))

    # ------------------------------------------------------------------------------------- the indexer
    @rule()
    def run_index(self) -> None:
        STATS["runs"] += 1
        rc, s, out = rh.cli(*rh.index_args(MODEL["cfg"], self.lib, self.idx, dense=True))
        failed = {f["path"] for f in s.get("failed", [])}
        assert rc == (1 if failed else 0), out
        self.expected = dict(self.files)
        self.indexed_ok = {n for n in self.files if n not in failed}
        assert failed == {n for n, d in self.files.items() if d == content(n, 2)}, (failed, out)

    @precondition(lambda self: self.indexed_ok)
    @rule(data=st.data())
    def remove(self, data) -> None:
        name = data.draw(st.sampled_from(sorted(self.indexed_ok)))
        rc, _, out = rh.cli("--config", str(MODEL["cfg"]), "remove", name, "--index-dir", str(self.idx))
        assert rc == 0 and f"removed {name}" in out, out
        STATS["removes"] += 1
        del self.expected[name]
        self.indexed_ok.discard(name)

    # ------------------------------------------------------------------------------------- the check
    @invariant()
    def index_equals_a_fresh_index_of_its_library(self) -> None:
        STATS["checks"] += 1
        rh.assert_same_index(rh.index_snapshot(self.idx), fresh_snapshot(self.expected), "incremental index")

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


MODEL: dict = {}
STATS: Counter = Counter()
_FRESH: dict[frozenset, dict] = {}


def fresh_snapshot(files: dict[str, bytes]) -> dict:
    """The snapshot of an index built from scratch over a library holding ``files`` (cached per library)."""
    key = frozenset(files.items())
    if key not in _FRESH:
        root = Path(tempfile.mkdtemp(prefix="manualrag-fresh-"))
        try:
            lib = root / "lib"
            lib.mkdir()
            for name, data in files.items():
                (lib / name).parent.mkdir(parents=True, exist_ok=True)
                (lib / name).write_bytes(data)
            rc, _, out = rh.cli(*rh.index_args(MODEL["cfg"], lib, root / "index", dense=True))
            assert rc in (0, 1), out
            _FRESH[key] = rh.index_snapshot(root / "index")
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return _FRESH[key]


@pytest.mark.slow
def test_index_state_machine(tmp_path, tiny_clip_dir):
    MODEL["cfg"] = rh.write_cfg(tmp_path / "cfg.yaml", model=str(tiny_clip_dir), ocr={"enabled": False})
    _FRESH.clear()
    STATS.clear()
    run_state_machine_as_test(
        IndexMachine,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    print(f"\nstate machine: {dict(STATS)}, {len(_FRESH)} distinct libraries indexed from scratch")
    assert STATS["runs"] >= EXAMPLES and STATS["writes"] >= EXAMPLES and STATS["checks"] >= 2 * EXAMPLES
