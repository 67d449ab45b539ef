"""`manualrag query` / `context` / the Retriever API over an index of the generated sample manual.

The generated manual has known content: a vector wiring diagram (labels are PDF text: X3, GNYE, BK/WH),
a hydraulic schematic whose labels exist only as pixels (PS-4, ACC1 accumulator: OCR), warning symbols,
a scanned page and captions "Figure N: ...". Tiny CLIP (random weights) makes the dense channels real
but meaningless, so these tests check what must hold whatever the dense channels say.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main
from manualrag.config import load_config
from manualrag.retriever.context import build_context
from manualrag.retriever.search import Retriever

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "manuals"
PUMP = "pump-controller-manual.pdf"

HIT_FIELDS = {
    "rank",
    "kind",
    "score",
    "path",
    "page",
    "pages",
    "channels",
    "id",
    "heading",
    "text",
    "snippet",
    "suspect",
    "figure_kind",
    "caption",
    "labels",
    "ocr_text",
    "nearby_text",
    "crop_path",
    "bbox",
    "quality",
    "rotation",
    "figures",
    "copies",
}


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_clip_dir, minilm_dir):
    base = tmp_path_factory.mktemp("query")
    lib = base / "lib"
    lib.mkdir()
    for name in (PUMP, "quick-start-card.png", "release-notes.md"):
        shutil.copy(SAMPLE / name, lib / name)
    cfg_path = base / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({"model": str(tiny_clip_dir), "text_model": str(minilm_dir)}))
    idx = base / "index"
    res = CliRunner().invoke(
        main, ["--config", str(cfg_path), "index", str(lib), "--index-dir", str(idx), "-q"]
    )
    assert res.exit_code == 0, res.output
    return idx, cfg_path


@pytest.fixture(scope="module")
def retriever(index):
    idx, cfg_path = index
    r = Retriever.open(idx, load_config(cfg_path))
    yield r
    r.close()


def _image_hits(hits, page):
    return [h for h in hits if h.kind == "image" and h.path == PUMP and page in h.pages]


@pytest.mark.parametrize(
    "query, page",
    [
        ("PS-4 accumulator", 6),  # labels only in the pixels of Figure 3 (OCR)
        ("GNYE BK/WH X3", 4),  # labels of the vector wiring diagram (PDF text inside the drawing)
    ],
)
def test_label_inside_a_diagram_returns_that_diagram(retriever, query, page):
    hits = retriever.search(query, k=10).hits
    top3 = hits[:3]
    assert _image_hits(top3, page), [(h.kind, h.path, h.pages) for h in top3]


def test_caption_query_returns_the_figure_with_its_caption(retriever):
    hits = retriever.search("Electric wiring layout", k=5).hits
    fig = _image_hits(hits, 4)
    assert fig and fig[0].caption.startswith("Figure 2")
    assert fig[0].figure_kind == "vector"
    assert fig[0].crop_path and Path(fig[0].crop_path).is_file()
    assert "lexical" in fig[0].channels and len(fig[0].channels) >= 2


def test_one_hit_per_passage_and_per_figure(retriever):
    hits = retriever.search("thermal shutdown motor overheating thermistor", k=20).hits
    ids = [h.id for h in hits]
    assert len(ids) == len(set(ids))
    assert all(":w" not in i and ":s" not in i and not i.endswith(":c") for i in ids), (
        "windows and figure texts collapse into their parent passage or figure"
    )
    text = [h for h in hits if h.kind == "text"]
    assert text and len(text[0].text) >= len(text[0].snippet.replace("**", "").strip("…")) - 2


def test_modality_and_source_filters(retriever):
    only_images = retriever.search("pump", k=10, modality="image").hits
    assert only_images and all(h.kind == "image" for h in only_images)
    only_text = retriever.search("pump", k=10, modality="text").hits
    assert only_text and all(h.kind == "text" for h in only_text)
    md = retriever.search("firmware E07", k=10, source="*.md").hits
    assert md and all(h.path.endswith(".md") for h in md)


def test_source_glob_double_star_matches_files_at_the_library_root(index):
    """`--source '**/*.pdf'` finds the manual at the library root, as `*.pdf` does (the usual glob
    convention: `**/` matches zero or more folders), and still filters the other files out."""
    idx, cfg_path = index

    def paths(source):
        res = CliRunner().invoke(
            main,
            ["--config", str(cfg_path), "query", "pump", "--index-dir", str(idx), "--json", "-k", "20"]
            + ["--source", source],
        )
        assert res.exit_code == 0, res.output
        return {h["path"] for h in json.loads(res.stdout)}

    assert paths("**/*.pdf") == paths("*.pdf") == {PUMP}
    assert paths("**/*.md") == {"release-notes.md"}
    assert paths("nowhere/**/*.pdf") == set()


@pytest.mark.parametrize(
    "channel, query", [("lexical", "pump motor"), ("text", "hydraulic accumulator pressure")]
)
def test_source_finds_a_file_beyond_the_candidate_pool(index, channel, query):
    """A source filter restricts each channel's own search: a file whose best hit ranks beyond the
    candidates a channel takes for the whole library (``retrieve.candidates``) is found, its hits in the order
    of the whole ranking. (The filter used to keep the matching hits among the fused candidates: none.)"""
    idx, cfg_path = index
    notes = "release-notes.md"

    def open_with(candidates: int) -> Retriever:
        cfg = load_config(cfg_path)
        cfg["retrieve"].update(candidates=candidates, fusion="rrf")  # rrf: one channel's order, unchanged
        return Retriever.open(idx, cfg)

    k = 2  # candidates per channel: max(retrieve.candidates, 3 * k) = 6
    with open_with(3) as small, open_with(500) as whole:
        ranking = whole.search(query, k=500, channels=[channel]).hits
        first = next(i for i, h in enumerate(ranking) if h.path == notes)
        assert first >= 3 * k, "the premise: release-notes.md ranks beyond the candidates of the library"
        assert notes not in {h.path for h in small.search(query, k=k, channels=[channel]).hits}
        want = [h.id for h in ranking if h.path == notes][:k]
        for source in (notes, "*.md", "release-*", "*notes*"):
            got = small.search(query, k=k, channels=[channel], source=source)
            assert [h.id for h in got.hits] == want, source
        got = small.search(query, k=k, channels=[channel], source="*.txt")
        assert got.hits == [] and got.notes == ["no indexed file matches the source filter '*.txt'"]


def test_a_loose_image_and_its_ocr_text_are_one_hit(retriever):
    """A trial user saw a screenshot twice: its OCR text as a text hit, the picture as an image hit. The
    text's channel scores now count for the picture; a text-only search still gets the text."""
    card = "quick-start-card.png"
    mine = [h for h in retriever.search("quick start card", k=10).hits if h.path == card]
    assert [h.kind for h in mine] == ["image"], mine
    assert {"lexical", "text"} <= set(mine[0].channels)  # found through the text as well
    text = retriever.search("quick start card", k=10, modality="text").hits
    assert [h.kind for h in text if h.path == card][:1] == ["text"]


def test_source_on_the_command_line_finds_a_file_outside_the_top_candidates(index, tmp_path):
    """The user's case: `query WORD --source FILE` with a small candidate pool (default fusion) gives that
    file's hits, not `no hits`; a glob matching no indexed file says so."""
    idx, cfg_path = index
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["retrieve"] = {"candidates": 3}
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(cfg))

    def query(*args: str):
        res = CliRunner().invoke(
            main,
            [
                "--config",
                str(small),
                "query",
                "pump",
                "--index-dir",
                str(idx),
                "-k",
                "1",
                "--channels",
                "lexical",
                *args,
            ],
        )
        assert res.exit_code == 0, res.output
        return res

    # (the lexical channel alone: the premise holds whatever the fixture's random tiny CLIP ranks)
    assert "release-notes.md" not in query("-k", "3").stdout
    out = query("--source", "release-notes.md", "--json")
    hits = json.loads(out.stdout)
    assert hits and {h["path"] for h in hits} == {"release-notes.md"}
    none = query("--source", "*.docx")
    assert none.stdout.strip() == "no hits"
    assert "no indexed file matches the source filter '*.docx'" in none.stderr
    empty = CliRunner().invoke(
        main, ["--config", str(small), "query", "pump", "--index-dir", str(idx), "--source", " "]
    )
    assert empty.exit_code == 2 and "an empty glob; leave the option out" in empty.output, empty.output


def test_a_file_held_twice_shows_its_hits_once_naming_the_copy(tmp_path):
    """Two files with the same bytes (a manual copied into a second folder) give each hit once, the other
    file named on it (before: every hit twice, the second copy pushing other manuals out of the top k)."""
    lib = tmp_path / "lib"
    (lib / "old").mkdir(parents=True)
    shutil.copy(SAMPLE / PUMP, lib / PUMP)
    shutil.copy(SAMPLE / PUMP, lib / "old" / PUMP)
    shutil.copy(SAMPLE / "release-notes.md", lib / "release-notes.md")
    idx = tmp_path / "idx"
    run = CliRunner().invoke(main, ["index", str(lib), "--index-dir", str(idx), "--no-dense", "-q"])
    assert run.exit_code == 0, run.output
    res = CliRunner().invoke(
        main, ["query", "pump relief valve", "--index-dir", str(idx), "-k", "6", "--json"]
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert len(hits) == 6
    same = [(h["kind"], h["page"], h["id"].split(":", 1)[1]) for h in hits]
    assert len(set(same)) == len(same), same  # no hit twice
    for h in hits:  # shown under the copy at the library's top, the other named
        assert h["path"] in (PUMP, "release-notes.md"), h
        assert h["copies"] == ([f"old/{PUMP}"] if h["path"] == PUMP else []), h
    text = CliRunner().invoke(main, ["query", "pump relief valve", "--index-dir", str(idx), "-k", "3"])
    assert f"also in (same file): old/{PUMP}" in text.stdout
    # a source filter on one copy searches that file alone: its hits, no copies to name
    only = CliRunner().invoke(
        main, ["query", "pump relief valve", "--index-dir", str(idx), "--source", "old/*", "--json"]
    )
    assert {h["path"] for h in json.loads(only.stdout)} == {f"old/{PUMP}"}
    assert all(h["copies"] == [] for h in json.loads(only.stdout))


def test_text_hit_links_figures_on_its_page(retriever):
    hits = retriever.search("fuse kit PC-200-F3 fuses F1 F2", k=10, modality="text").hits
    on_p4 = [h for h in hits if h.page == 4]
    assert on_p4 and any(f.caption.startswith("Figure 2") for f in on_p4[0].figures)


def test_query_by_image_finds_that_figure(retriever, index):
    hit = _image_hits(retriever.search("Hydraulic circuit", k=5).hits, 6)[0]
    res = retriever.search(image=hit.crop_path, k=3, channels=["dense"])
    assert res.hits[0].id == hit.id


def test_queries_without_words_and_images_without_their_channel_are_usage_errors(retriever, index):
    """Spaces alone are no query; punctuation alone gave confident-looking junk from the dense channels; a
    query image left out by --channels was silently ignored. Each is now a one-line error (CLI exit 2)."""
    from manualrag.errors import ManualragError

    with pytest.raises(ManualragError, match=r"^give a query text or an image \(or both\)$"):
        retriever.search("   ")
    with pytest.raises(ManualragError, match=r"has no word to search for"):
        retriever.search("?!.,;:")
    crop = _image_hits(retriever.search("Hydraulic circuit", k=5).hits, 6)[0].crop_path
    with pytest.raises(ManualragError, match=r"query image is searched by the dense \(CLIP\) channels"):
        retriever.search("pump", image=crop, channels=["lexical"])
    assert retriever.search("   ", image=crop, k=3).hits  # spaces beside an image: the image alone
    assert retriever.search("Ω", k=3) is not None  # a letter of any script is a word
    idx, cfg_path = index
    for text in ("   ", "?!"):
        res = CliRunner().invoke(main, ["--config", str(cfg_path), "query", text, "--index-dir", str(idx)])
        assert res.exit_code == 2 and res.output.startswith("error: ") and "Traceback" not in res.output


def test_channels_ablation_reports_what_found_each_hit(retriever):
    res = retriever.search("PS-4", k=5, channels=["lexical"])
    assert res.channels_used == ["lexical"]
    assert all(set(h.channels) == {"lexical"} for h in res.hits)


def test_channel_names_are_read_whatever_their_case_and_spaces(tmp_path):
    """`--channels " Text "` was refused as an unknown channel: names are now read without case and
    surrounding spaces (CLI, Python API, the server's ?channels=); an unknown one keeps its message."""
    from manualrag.errors import ManualragError
    from manualrag.serve.limits import check_channels
    from tests.rel_helpers import keyword_index

    _, idx = keyword_index(tmp_path, {"pump.md": "# Pump\n\nBleed the pump before the first start.\n"})
    base = ["query", "bleed pump", "--index-dir", str(idx), "--json"]
    res = CliRunner().invoke(main, [*base, "--channels", " Lexical "])
    assert res.exit_code == 0, res.output
    assert [set(h["channels"]) for h in json.loads(res.stdout)] == [{"lexical"}], res.output
    res = CliRunner().invoke(main, [*base, "--channels", "LEXICAL, Bogus"])
    assert res.exit_code == 2 and "unknown channel 'Bogus'; choose from dense, text, lexical" in res.output
    with Retriever.open(idx, load_config()) as r:
        assert r.search("bleed pump", channels=[" LEXICAL "]).channels_used == ["lexical"]
        with pytest.raises(ManualragError, match="unknown channel 'bogus': choose from dense, text, lexical"):
            r.search("bleed pump", channels=["bogus"])
    assert check_channels(" Text ,LEXICAL") == ["text", "lexical"]


def test_context_block_budget_citations_and_fence(retriever):
    res = retriever.search("how do I reset error E07 after thermal shutdown", k=8)
    block = build_context(res, max_chars=1500)
    assert len(block) <= 1500
    assert "[1] " in block and f"{PUMP} p." in block
    assert "untrusted" in block and "BEGIN SOURCE [1]" in block and "END SOURCE [1]" in block
    js = build_context(res, max_chars=3000, fmt="json", with_images=True)
    assert js["sources"] and all({"n", "path", "pages", "kind", "text"} <= set(s) for s in js["sources"])
    imgs = [s for s in js["sources"] if s["kind"] == "image"]
    assert all(s.get("image_base64") for s in imgs)


def test_query_json_has_documented_fields(index):
    idx, cfg_path = index
    res = CliRunner().invoke(
        main,
        [
            "--config",
            str(cfg_path),
            "query",
            "Hydraulic circuit",
            "--index-dir",
            str(idx),
            "--json",
            "-k",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert hits and all(set(h) == HIT_FIELDS for h in hits)


def test_query_table_shows_image_hit_with_caption_and_crop(index):
    idx, cfg_path = index
    res = CliRunner().invoke(
        main, ["--config", str(cfg_path), "query", "electric wiring layout", "--index-dir", str(idx)]
    )
    assert res.exit_code == 0, res.output
    assert (
        "image" in res.stdout and "Figure 2: Electric wiring layout" in res.stdout and "crop:" in res.stdout
    )


def test_query_table_columns_line_up_with_wide_file_names(tmp_path):
    """File names in Chinese or Japanese take two terminal columns a character: the "found by" column of the
    query table starts at the same place on every row (it was pushed right by their width)."""
    import unicodedata

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "油泵手册.md").write_text("# Pump\n\nThe oil pump seal is ceramic.\n")
    (lib / "valve.md").write_text("# Valve\n\nThe valve seal is rubber.\n")
    idx = tmp_path / "idx"
    assert CliRunner().invoke(main, ["index", str(lib), "--index-dir", str(idx), "--no-dense"]).exit_code == 0
    res = CliRunner().invoke(main, ["query", "seal", "--index-dir", str(idx)])
    assert res.exit_code == 0, res.output
    rows = [ln for ln in res.stdout.splitlines() if ln.rstrip().endswith("lexical")]
    assert {".md:1" in r for r in rows} == {True} and len(rows) == 2, res.stdout

    def col(line: str) -> int:
        head = line[: line.rindex("lexical")]
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in head)

    assert col(rows[0]) == col(rows[1]), res.stdout


def test_hits_that_share_no_word_with_the_query_say_so(index, retriever):
    """A query none of whose words occurs in the manuals ("zzqqxx", a language they are not written in) still
    gets the nearest hits by meaning, with confident-looking scores: they come with a note saying that no
    text holds a word of the query, in the table, in the results front ends show, and in the LLM's context
    block. A query the manuals answer gets no such note."""
    from manualrag.retriever.context import build_context
    from manualrag.retriever.search import NO_QUERY_WORD, NO_QUERY_WORD_IN_SOURCE

    idx, cfg_path = index
    for q in ("zzqqxx", "如何接线"):
        res = retriever.search(q, k=3)
        assert res.hits and NO_QUERY_WORD in res.notes, (q, res.notes)
        assert f"Note: {NO_QUERY_WORD}." in build_context(res)
        out = CliRunner().invoke(main, ["--config", str(cfg_path), "query", q, "--index-dir", str(idx)])
        assert out.exit_code == 0 and f"note: {NO_QUERY_WORD}" in out.stderr, out.output
    res = retriever.search("electric wiring layout", k=3)
    assert res.hits and NO_QUERY_WORD not in res.notes
    assert "Note:" not in build_context(res)
    # with a source filter the note is about those files: another file of the library holds the words
    res = retriever.search("hydraulic impeller relay", k=3, source="release-notes.md")
    assert NO_QUERY_WORD_IN_SOURCE in res.notes and NO_QUERY_WORD not in res.notes, res.notes
    assert f"Note: {NO_QUERY_WORD_IN_SOURCE}." in build_context(res)


def test_query_model_none_turns_the_dense_channels_off_instead_of_loading_a_model_named_none(index):
    """`--model none` on an index built with CLIP: the query runs without the dense channels (no attempt to
    load a checkpoint called 'none', whose error would advise --model none); asking for them anyway is a
    one-line usage error."""
    idx, cfg_path = index
    base = ["--config", str(cfg_path), "query", "electric wiring layout", "--index-dir", str(idx)]

    def dense_found(hits):
        return any(c.startswith("dense") for h in hits for c in h["channels"])

    res = CliRunner().invoke(main, [*base, "--json"])
    assert res.exit_code == 0 and dense_found(json.loads(res.stdout)), res.output
    res = CliRunner().invoke(main, [*base, "--model", "none", "--json"])
    assert res.exit_code == 0, res.output
    hits = json.loads(res.stdout)
    assert hits and not dense_found(hits)
    assert "Hugging Face" not in res.output and "no CLIP model for queries (model: none)" in res.stderr
    res = CliRunner().invoke(main, [*base, "--model", "none", "--channels", "dense"])
    assert res.exit_code == 2 and "no CLIP model for queries (model: none)" in res.output
    assert "Traceback" not in res.output


def test_a_query_model_named_on_the_command_line_that_cannot_load_is_an_error(index, tmp_path):
    """``query --text-model /nonexistent/model`` ran lexical only, rc 0, with a note advising ``--no-dense``,
    an option of ``index`` that ``query`` lacks. A model the user names is now an error (rc 2, one line
    naming it and why, with the ways out of a query); one the index names and that cannot be loaded stays
    a note, worded for a query too."""
    idx, cfg_path = index
    base = ["--config", str(cfg_path), "query", "electric wiring layout", "--index-dir", str(idx)]
    for command in ("query", "context"):  # context had --text-model only
        for flag in ("--text-model", "--model"):
            missing = str(tmp_path / "nonexistent" / "model")
            res = CliRunner().invoke(main, [*base[:2], command, *base[3:], flag, missing])
            assert res.exit_code == 2, (command, res.output)
            assert res.output.splitlines() == [
                f"error: model folder '{missing}' does not exist. Pass an existing folder ({flag} /path/to/folder) "
                f"or a Hugging Face model name, or run with {flag} none (without that model's vectors) or "
                "--channels lexical (keyword search only)."
            ], (command, res.output)
    # the index's own text model gone (a copy of the index that names a folder no longer there): a note
    copy = tmp_path / "index"
    shutil.copytree(idx, copy)
    gone = str(tmp_path / "moved-away" / "minilm")
    with sqlite3.connect(copy / "index.sqlite") as db:
        models = json.loads(db.execute("SELECT value FROM meta WHERE key = 'models'").fetchone()[0])
        db.execute("UPDATE meta SET value = ? WHERE key = 'models'", (json.dumps({**models, "text": gone}),))
    db.close()
    res = CliRunner().invoke(main, [*base[:-1], str(copy), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout), res.output
    assert f"note: text channel off: model folder '{gone}' does not exist." in res.stderr, res.stderr
    assert "--channels lexical (keyword search only)" in res.stderr and "--no-dense" not in res.output


def test_missing_index_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(main, ["query", "anything", "--index-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "manualrag index" in res.output and "Traceback" not in res.output
    # --debug adds the traceback, never changes the exit code (1 would read "some files failed")
    res = CliRunner().invoke(main, ["--debug", "query", "anything", "--index-dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "Traceback" in res.output and "error: no index in" in res.output


def test_paraphrased_question_finds_the_passage_through_the_text_channel(retriever):
    q = "what stops the pump motor when it runs too hot"
    hits = retriever.search(q, k=5, channels=["text"], modality="text").hits
    assert hits[0].path == PUMP and hits[0].page == 2
    assert "thermal" in hits[0].text.lower() or "thermal" in hits[0].heading.lower()


def test_a_passage_that_is_only_a_caption_counts_for_its_figure(tmp_path):
    """xfig-howto.pdf page 13 shows Figure 3 and no body text: its caption line is also extracted as a
    passage. That passage is the figure: its scores count for the figure hit, and it is never a hit of its
    own (a question about the figure finds one thing, found by both its caption and its labels)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    shutil.copy(SAMPLE / "xfig-howto.pdf", lib / "xfig-howto.pdf")
    idx = tmp_path / "index"
    res = CliRunner().invoke(main, ["index", str(lib), "--index-dir", str(idx), "--no-dense", "-q"])
    assert res.exit_code == 0, res.output
    db = sqlite3.connect(f"file:{idx / 'index.sqlite'}?mode=ro", uri=True)
    try:
        caption_passages = [
            pid
            for pid, text in db.execute(
                "SELECT id, text FROM passages WHERE doc_path = 'xfig-howto.pdf' AND page = 13"
            )
            if text.strip() == "Figure 3: Schematic Symbols"
        ]
    finally:
        db.close()
    assert caption_passages, "the sample has the caption line as a passage of its own"
    with Retriever.open(idx, load_config(None, overrides={"index_dir": str(idx)})) as r:
        hits = r.search(
            "schematic symbols sheet with DAC0800 and 74HC parts", k=10, channels=["lexical"]
        ).hits
    assert caption_passages[0] not in [h.id for h in hits]
    assert hits[0].kind == "image" and hits[0].page == 13 and hits[0].caption == "Figure 3: Schematic Symbols"


@pytest.mark.parametrize("modality", ["all", "image", "text"])
def test_figure_rows_read_in_batches_give_the_same_hits(retriever, monkeypatch, modality):
    """_hits reads figure rows a batch of fused things at a time (not all ~150 up front): the hits are the
    ones reading every row first gives, also when the walk passes several batches (image hits only, with
    passages skipped; one thing a batch)."""
    from manualrag.retriever import search

    def hits(batch: int) -> list[dict]:
        monkeypatch.setattr(search, "FIGURE_BATCH", batch)
        return [
            h.to_dict() for h in retriever.search("wiring diagram X3 sensor", k=8, modality=modality).hits
        ]

    every_row_first = hits(10**9)
    assert every_row_first and hits(1) == every_row_first


def test_a_query_of_one_endless_word_answers_at_once(retriever):
    """A 100,000-letter "word" (a key held down, a pasted blob) tried every split point as a word written
    apart: the snippet's regex grew with the square of its length (4,000 letters: 41 s and 2.3 GB; 100,000:
    killed at 23.6 GB) and one such request stalled every search of `manualrag serve`. Words longer than any
    real compound are no longer split. Run in a thread with a deadline: without the bound it never returns."""
    import threading

    out: dict = {}

    def run() -> None:
        out["hits"] = retriever.search("a" * 100_000, k=3, channels=["lexical", "text"]).hits
        out["many"] = retriever.search(" ".join(f"word{i}" for i in range(20_000)), k=3).hits

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "a search of one endless word did not return"
    assert "hits" in out and "many" in out


def test_a_context_block_has_a_source_or_says_the_budget_is_too_small(retriever):
    """A budget just above the preamble and question (the error's own advice: "give at least 595") gave a
    block with no source at all and rc 0, as if nothing matched: the first source's fence and title did not
    fit. Every size now gives a source, or the one-line error naming a size that does."""
    from manualrag.errors import ManualragError

    res = retriever.search("electric wiring layout", k=8)
    needs: set[int] = set()
    for size in range(300, 1200, 7):
        try:
            out = build_context(res, max_chars=size, fmt="json")
        except ManualragError as exc:
            assert f"a context block of {size} characters leaves no room" in str(exc)
            needs.add(int(str(exc).rsplit(" ", 1)[1]))
            continue
        assert out["sources"] and len(out["context"]) <= size, size
    for need in needs:  # the size the error names is enough
        assert build_context(res, max_chars=need, fmt="json")["sources"]
    with pytest.raises(ManualragError, match="format must be markdown or json"):
        build_context(res, fmt="xml")  # it returned markdown
