"""What the CLI makes of the paths, model names and empty input a new user gives it (a new-user trial):
``--source``/``--exclude`` take a file path as ``remove`` does, a query model the index has no vectors for
is named as unused, a file given as a model is called a file, a keyword-only index says which channels are
off and the command that adds each, and the index summary and ``stats`` print what is true.

Real CLI (click's runner, in the folder a user would be in), real files, real SQLite/Chroma indexes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from manualrag.cli import main
from tests.rel_helpers import keyword_index

FILES = {
    "a.md": "# Pump\n\nThe layout of the pump wiring is shown below.\n",
    "b.md": "# Valve\n\nThe layout of the valve wiring is shown below.\n",
}


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch):
    monkeypatch.delenv("MANUALRAG_CONFIG", raising=False)
    monkeypatch.delenv("MANUALRAG_INDEX_DIR", raising=False)


def cli(*args: str, cwd: Path, monkeypatch) -> tuple[int, str, str]:
    monkeypatch.chdir(cwd)
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture
def kw(tmp_path) -> tuple[Path, Path]:
    """A keyword-only (--no-dense) index of two notes: (library, index)."""
    return keyword_index(tmp_path, FILES)


# ------------------------------------------------------------------------------- 1: paths as remove takes them
@pytest.mark.parametrize("form", ["relative", "absolute", "glob"])
def test_query_source_takes_a_path_of_the_library_from_the_current_folder(kw, tmp_path, monkeypatch, form):
    lib, _ = kw
    source = {"relative": "lib/a.md", "absolute": str(lib / "a.md"), "glob": "a.*"}[form]
    rc, out, err = cli(
        "query",
        "layout",
        "--source",
        source,
        "--index-dir",
        "idx",
        "--json",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert rc == 0, err
    hits = json.loads(out)
    assert hits and {h["path"] for h in hits} == {"a.md"}, (out, err)
    assert "matches the source filter" not in err


def test_query_source_outside_the_library_is_an_error(kw, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere.md"
    other.write_text("layout\n")
    rc, out, err = cli(
        "query",
        "layout",
        "--source",
        "elsewhere.md",
        "--index-dir",
        "idx",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: --source elsewhere.md: ") and "outside the library" in lines[0], err
    assert str(other) in lines[0] and str(tmp_path / "lib") in lines[0]


def index_lib5(tmp_path: Path, monkeypatch, exclude: str, *extra: str):
    """``manualrag index lib5 --no-dense --index-dir idx --exclude EXCLUDE`` run from ``tmp_path``."""
    return cli(
        "index", "lib5", "--no-dense", "--index-dir", "idx", "--exclude", exclude, *extra,
        cwd=tmp_path, monkeypatch=monkeypatch,
    )  # fmt: skip


def test_index_exclude_takes_a_path_of_the_library_from_the_current_folder(tmp_path, monkeypatch):
    lib = tmp_path / "lib5"
    lib.mkdir()
    (lib / "old.md").write_text("# Old\n\nkept\n")
    (lib / "new.md").write_text("# New\n\nleft out\n")
    rc, out, err = index_lib5(tmp_path, monkeypatch, "lib5/new.md", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["indexed"] == ["old.md"] and d["skipped"] == {"excluded": 1}, d
    assert not any("matches no file" in w for w in d["warnings"]), d["warnings"]
    # absolute, on the next run: still left out, and not "matches no file"
    rc, out, err = index_lib5(tmp_path, monkeypatch, str(lib / "new.md"), "--json")
    d = json.loads(out)
    assert rc == 0 and d["indexed"] == [] and d["documents"]["unchanged"] == 1 and not d["warnings"], d


def test_index_exclude_outside_the_library_is_an_error_before_anything_changes(tmp_path, monkeypatch):
    lib = tmp_path / "lib5"
    lib.mkdir()
    (lib / "old.md").write_text("# Old\n\nkept\n")
    (tmp_path / "notes.md").write_text("not in the library\n")
    rc, out, err = index_lib5(tmp_path, monkeypatch, "notes.md")
    assert rc == 2 and not (tmp_path / "idx").exists(), (out, err)
    assert err.strip().splitlines() == [
        f"error: --exclude notes.md: {tmp_path / 'notes.md'} is outside the library {lib} (give a path "
        "inside it, or a glob relative to it such as '*.pdf')"
    ]


# -------------------------------------------------------------------------- 2: a named model that is not used
@pytest.mark.parametrize(("flag", "what"), [("--model", "CLIP"), ("--text-model", "text-model")])
def test_a_query_model_the_index_has_no_vectors_for_is_named_as_unused(kw, tmp_path, monkeypatch, flag, what):
    rc, out, err = cli(
        "query", "layout", flag, "./nomodel", "--index-dir", "idx", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert rc == 0 and "a.md" in out, err
    assert f"note: {flag} ./nomodel is not used: this index has no {what} vectors" in err.splitlines(), err


# ------------------------------------------------------------------------------------ 3: a file as a model
def test_a_file_given_as_a_model_is_called_a_file(tmp_path, monkeypatch):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.md").write_text("# A\n\ntext\n")
    rc, out, err = cli(
        "index", "lib", "--index-dir", "idx", "--model", "lib/a.md", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert rc == 2, (out, err)
    line = err.strip()
    assert line.startswith("error: model 'lib/a.md' is a file, not a model folder"), err
    assert "config.json" in line and "hf download" not in line and "Hugging Face cache" not in line
    assert "\n" not in line and "Traceback" not in err


# ------------------------------------------------------------------------- 4: which channels are off, and why
def test_a_keyword_only_index_says_both_vector_channels_are_off_and_how_to_add_each(
    kw, tmp_path, monkeypatch
):
    rc, out, err = cli("query", "layout", "--index-dir", "idx", cwd=tmp_path, monkeypatch=monkeypatch)
    assert rc == 0 and "a.md" in out, err
    lines = err.splitlines()
    assert "note: text channel off: the index has no text-model vectors" in lines, err
    assert (
        "hint: `manualrag index LIBRARY --model none` adds text-model vectors (semantic search; "
        "all-MiniLM-L6-v2 comes installed: no download)"
    ) in lines, err
    assert (
        "hint: `manualrag index LIBRARY --model NAME_OR_FOLDER` adds CLIP vectors (figure pictures) and "
        "text-model vectors"
    ) in lines, err


@pytest.mark.slow
def test_the_hinted_command_adds_the_text_model_vectors_offline(kw, tmp_path, monkeypatch):
    """The hint is true: on the keyword-only index, `index LIBRARY --model none` embeds with the installed
    text model, and the query then searches the text channel."""
    rc, out, err = cli(
        "index",
        "lib",
        "--index-dir",
        "idx",
        "--model",
        "none",
        "--json",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert rc == 0, err
    assert json.loads(out)["embedded"].get("sem"), out
    rc, out, err = cli(
        "query", "layout", "--index-dir", "idx", "--json", cwd=tmp_path, monkeypatch=monkeypatch
    )
    assert rc == 0 and any("text" in h["channels"] for h in json.loads(out)), (out, err)
    assert "text channel off" not in err and "adds text-model vectors" not in err, err


def test_an_index_without_the_text_model_names_it_in_the_hint(tmp_path, monkeypatch, tiny_clip_dir):
    """Built with CLIP and --text-model none: a plain `index` run keeps those models, so the hint names the
    text model to add."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "a.md").write_text(FILES["a.md"])
    rc, _, err = cli(
        "index",
        "lib",
        "--index-dir",
        "idx",
        "--model",
        str(tiny_clip_dir),
        "--text-model",
        "none",
        "-q",
        cwd=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert rc == 0, err
    rc, out, err = cli("query", "layout", "--index-dir", "idx", cwd=tmp_path, monkeypatch=monkeypatch)
    assert rc == 0, err
    lines = err.splitlines()
    assert "note: text channel off: the index has no text-model vectors" in lines, err
    assert (
        "hint: `manualrag index LIBRARY --text-model sentence-transformers/all-MiniLM-L6-v2` adds text-model "
        "vectors (semantic search; all-MiniLM-L6-v2 comes installed: no download)"
    ) in lines, err
    assert not any("adds CLIP vectors" in line for line in lines), err


# ------------------------------------------------------------------------------------- 5: no query text
@pytest.mark.parametrize("text", ["", "   "])
def test_no_query_text_has_one_message(kw, tmp_path, monkeypatch, text):
    rc, out, err = cli("query", text, "--index-dir", "idx", cwd=tmp_path, monkeypatch=monkeypatch)
    assert rc == 2 and out == ""
    assert err.strip() == "error: give a query text, --image FILE, or both"


# ------------------------------------------------------------------------------------- 6: stats index_dir
def test_stats_prints_the_index_folder_normalised(kw, tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "config.yaml").write_text("index_dir: ../idx\n")
    (tmp_path / "sub2").mkdir()
    rc, out, err = cli(
        "stats", "--config", "../proj/config.yaml", cwd=tmp_path / "sub2", monkeypatch=monkeypatch
    )
    assert rc == 0, err
    assert f"index_dir: {tmp_path / 'idx'}" in [line.strip() for line in out.splitlines()], out
    rc, out, err = cli(
        "stats", "--config", "../proj/config.yaml", "--json", cwd=tmp_path / "sub2", monkeypatch=monkeypatch
    )
    assert rc == 0 and json.loads(out)["index_dir"] == str(tmp_path / "idx"), err


# -------------------------------------------------------------------------------------- 7: index summary
def test_an_empty_library_names_no_models(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    rc, out, err = cli("index", "empty", "--index-dir", "idx-empty", cwd=tmp_path, monkeypatch=monkeypatch)
    assert rc == 0, err
    assert "documents: 0 indexed" in out and "models:" not in out, out


def test_the_index_folder_inside_the_library_is_not_counted_as_a_skipped_file(tmp_path, monkeypatch):
    lib = tmp_path / "lib4"
    lib.mkdir()
    (lib / "a.md").write_text(FILES["a.md"])
    (lib / "notes.txt").write_text("left out by a glob\n")
    for _ in range(2):  # the second run walks the index folder the first one made
        rc, out, err = cli("index", ".", "--no-dense", "--exclude", "*.txt", cwd=lib, monkeypatch=monkeypatch)
        assert rc == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert "skipped: data/index (the index folder)" in lines, out
    assert "skipped files: 1 excluded (notes.txt)" in lines, out
