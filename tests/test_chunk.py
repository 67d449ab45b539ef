"""Passages and windows, measured with the real CLIP tokenizer (and the real MiniLM one)."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from manualrag.ids import doc_id as doc_id_for
from manualrag.indexer.chunk import make_passages, make_windows, sentence_spans
from manualrag.models import Document, Passage, TextBlock, Window


@pytest.fixture(scope="module")
def count_clip(clip_tokenizer):
    calls: list[int] = []

    def count(texts: list[str]) -> list[int]:
        calls.append(len(texts))
        if not texts:
            return []
        enc = clip_tokenizer(list(texts), truncation=False, verbose=False, return_attention_mask=False)
        return [len(ids) for ids in enc["input_ids"]]

    count.calls = calls  # type: ignore[attr-defined]
    return count


def _doc(blocks: list[TextBlock], path: str = "manuals/pump.pdf") -> Document:
    return Document(path=path, digest="0" * 64, size=1, mtime=0.0, file_type="pdf", blocks=blocks)


def _passage(text: str, pid: str = "d:p1:0") -> Passage:
    return Passage(passage_id=pid, doc_path="x.pdf", page=1, bbox=(0, 0, 1, 1), heading="", text=text)


def _spans(passage_text: str, windows: list[Window]) -> list[tuple[int, int]]:
    """Where each window sits in its passage (windows are raw substrings, in order)."""
    spans, pos = [], 0
    for w in windows:
        at = passage_text.find(w.text, pos)
        assert at >= 0, f"window is not a substring of its passage: {w.text!r}"
        spans.append((at, at + len(w.text)))
        pos = at
    return spans


def _check_windows(passages: list[Passage], windows: list[Window], count, max_tokens: int, tag: str = "w"):
    by_passage: dict[str, list[Window]] = {}
    for w in windows:
        by_passage.setdefault(w.passage_id, []).append(w)
    assert set(by_passage) == {p.passage_id for p in passages if p.text.strip()}
    real = count([w.text for w in windows])
    for w, n in zip(windows, real, strict=True):
        assert n <= max_tokens, f"{w.window_id} has {n} tokens"
        assert w.n_tokens == n
        assert w.text == w.text.strip() and w.text
    for p in passages:
        ws = by_passage.get(p.passage_id, [])
        assert [w.window_id for w in ws] == [f"{p.passage_id}:{tag}{m}" for m in range(len(ws))]
        covered = [False] * len(p.text)
        for s, e in _spans(p.text, ws):
            covered[s:e] = [True] * (e - s)
        missing = [i for i, c in enumerate(p.text) if not c and not p.text[i].isspace()]
        assert not missing, (
            f"{p.passage_id}: text not in any window near {p.text[missing[0] : missing[0] + 40]!r}"
        )
    return by_passage


# ---- ids -------------------------------------------------------------------------------------------


def test_doc_id():
    assert doc_id_for("manuals/pump.pdf") == hashlib.sha256(b"manuals/pump.pdf").hexdigest()[:16]
    assert len(doc_id_for("a")) == 16 and doc_id_for("a") != doc_id_for("b")


# ---- passages ----------------------------------------------------------------------------------------


def test_passages_merge_and_split_rules():
    blocks = [
        TextBlock("Remove the cover.", 1, (10, 10, 100, 20), heading="3 Pump > 3.1 Cover"),
        TextBlock("Unscrew the four screws.", 1, (10, 22, 120, 30), heading="3 Pump > 3.1 Cover"),
        TextBlock("   ", 1, (0, 0, 1, 1), heading="3 Pump > 3.1 Cover"),  # empty: skipped
        TextBlock("Check the seal.", 1, (10, 40, 90, 50), heading="3 Pump > 3.2 Seal"),  # new heading
        TextBlock("Hidden text", 1, (10, 60, 90, 70), heading="3 Pump > 3.2 Seal", suspect="white"),
        TextBlock("More hidden", 1, (10, 72, 90, 80), heading="3 Pump > 3.2 Seal", suspect="white"),
        TextBlock("Scanned words", 1, (10, 90, 90, 99), heading="3 Pump > 3.2 Seal", ocr=True),
        TextBlock("Next page text.", 2, (5, 5, 50, 15), heading="3 Pump > 3.2 Seal"),  # new page
    ]
    doc = _doc(blocks)
    ps = make_passages(doc)
    did = doc_id_for(doc.path)
    assert [p.passage_id for p in ps] == [f"{did}:p1:{n}" for n in range(4)] + [f"{did}:p2:0"]
    assert ps[0].text == "Remove the cover.\nUnscrew the four screws."
    assert ps[0].bbox == (10, 10, 120, 30)
    assert ps[0].heading == "3 Pump > 3.1 Cover" and ps[0].doc_path == "manuals/pump.pdf"
    assert ps[1].text == "Check the seal." and ps[1].suspect is None
    assert ps[2].text == "Hidden text\nMore hidden" and ps[2].suspect == "white"
    assert ps[3].ocr and not ps[2].ocr
    assert ps[4].page == 2
    assert make_passages(doc) == ps  # deterministic


def test_a_lone_page_number_is_dropped_and_a_label_joins_what_follows_it():
    """netgen's chapter pages left passages "2" and "Chapter 6" that matched any query near them in meaning."""
    blocks = [
        TextBlock("The mesher reads CSG files.", 1, (10, 10, 200, 20), heading="5 Formats"),
        TextBlock("2", 1, (300, 780, 310, 790), heading="5 Formats", ocr=True),  # a page number set apart
        TextBlock("Chapter 6", 2, (10, 100, 80, 120), heading="5 Formats"),
        TextBlock("Use the menus to mesh a geometry.", 2, (10, 150, 220, 160), heading="6 GUI"),
        TextBlock("Page 3 of 40", 2, (10, 800, 80, 810), heading="6 GUI", ocr=True),
        TextBlock("See also", 3, (10, 10, 60, 20), heading="6 GUI"),  # last on its page: stays
    ]
    ps = make_passages(_doc(blocks))
    did = doc_id_for("manuals/pump.pdf")
    assert [(p.passage_id, p.text) for p in ps] == [
        (f"{did}:p1:0", "The mesher reads CSG files."),
        (f"{did}:p2:0", "Chapter 6\nUse the menus to mesh a geometry."),
        (f"{did}:p3:0", "See also"),
    ]
    assert ps[1].heading == "6 GUI" and ps[1].bbox == (10, 100, 220, 160)
    assert make_passages(_doc(blocks[:1] + blocks[2:4])) == ps[:2]  # the page numbers left nothing behind


def test_words_cut_at_a_line_end_are_written_whole():
    """A word hyphenated at a line end was two words to the lexical index ("compu", "tational") and to the
    text model. Written whole as the document writes it elsewhere, else as a compound when both halves
    are words of their own, else joined; a capital after the cut (a name) and a soft hyphen are handled."""
    blocks = [
        TextBlock(
            "Netgen is a mesh generator of the Institute for Compu-\ntational Mathematics.", 1, (0, 0, 9, 9)
        ),
        TextBlock("Computational geometry. Mount it read-only first.", 1, (0, 10, 9, 19)),
        TextBlock(
            "Disks are mounted read-\nonly; the data-\ndriven check runs; the mesh is trian-\ngulated.",
            2,
            (0, 0, 9, 9),
        ),
        TextBlock(
            "The data and what is driven. Made at IIT-\nKANPUR; the soft\u00ad\nware is free.",
            3,
            (0, 0, 9, 9),
        ),
    ]
    text = "\n".join(p.text for p in make_passages(_doc(blocks)))
    assert "Institute for Computational Mathematics" in text  # the whole word is in the document
    assert "mounted read-only;" in text  # the compound is
    assert "the data-driven check" in text  # both halves are words of their own
    assert "is triangulated." in text  # neither: a cut word
    assert "IIT-\nKANPUR" in text and "the software is" in text
    assert "-\n" not in text.replace("IIT-\nKANPUR", "")


def test_passages_respect_the_size_limit():
    rng = random.Random(1)
    sentences = [
        " ".join(rng.choice(["pump", "valve", "seal", "torque", "M6"]) for _ in range(12)) + "."
        for _ in range(200)
    ]
    blocks = [TextBlock(" ".join(sentences[i : i + 5]), 1, (0, i, 10, i + 1)) for i in range(0, 100, 5)]
    blocks.append(TextBlock(" ".join(sentences[100:]), 1, (0, 200, 10, 300)))  # one huge block (an OCR page)
    ps = make_passages(_doc(blocks))
    assert all(len(p.text) <= 1200 for p in ps)
    assert sum(len(p.text) for p in ps) > 0.9 * sum(len(b.text) for b in blocks)
    words = " ".join(p.text for p in ps).split()
    assert words == " ".join(b.text for b in blocks).split()  # nothing lost, order kept


# ---- sentences ---------------------------------------------------------------------------------------


def test_sentence_spans():
    text = "See Fig. 3 for the pump. Use e.g. the M6 screw! Then stop.\nStep 2 next line"
    got = [text[s:e] for s, e in sentence_spans(text)]
    assert got == ["See Fig. 3 for the pump.", "Use e.g. the M6 screw!", "Then stop.", "Step 2 next line"]
    assert sentence_spans("   ") == []


# ---- windows -----------------------------------------------------------------------------------------


def _long_passages(seed: int = 0) -> list[Passage]:
    rng = random.Random(seed)
    vocab = [
        "pump",
        "valve",
        "hydraulic",
        "filter",
        "replace",
        "M6x20",
        "N·m",
        "torque",
        "seal",
        "(see",
        "Fig.",
        "3-2)",
        "WARNING:",
        "disconnect",
        "Schraube",
        "überprüfen",
        "10.5",
        "mm",
        "O-ring",
        "X12-4711",
    ]

    def sentence(n: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(n)).capitalize() + "."

    texts = [
        "Short passage that fits.",
        " ".join(sentence(rng.randint(4, 14)) for _ in range(40)),  # ordinary prose
        sentence(250),  # one very long sentence
        "Checksum " + hashlib.sha256(b"x").hexdigest() * 5 + " follows. " + sentence(10),  # a 320-char word
        "\n".join(sentence(rng.randint(2, 30)) for _ in range(30)),  # list-like lines
        "ÄÖÜ " * 120 + "日本語のテキスト" * 30,  # non-ASCII, CJK without spaces
        "   ",  # nothing to window
    ]
    return [_passage(t, f"doc:p1:{i}") for i, t in enumerate(texts)]


@pytest.mark.parametrize("max_tokens", [77, 64, 20])
def test_windows_fit_cover_and_are_deterministic(count_clip, max_tokens: int):
    passages = _long_passages()
    windows = make_windows(passages, count_clip, max_tokens)
    by_passage = _check_windows(passages, windows, count_clip, max_tokens)
    assert len(by_passage["doc:p1:0"]) == 1 and by_passage["doc:p1:0"][0].text == "Short passage that fits."
    assert "doc:p1:6" not in by_passage
    assert make_windows(passages, count_clip, max_tokens) == windows


def test_windows_overlap(count_clip):
    passages = _long_passages()
    by_passage = _check_windows(passages, make_windows(passages, count_clip, 77), count_clip, 77)
    for pid in ("doc:p1:1", "doc:p1:2", "doc:p1:4"):
        spans = _spans(passages[int(pid[-1])].text, by_passage[pid])
        assert len(spans) > 2
        pairs = list(zip(spans, spans[1:], by_passage[pid][1:], strict=False))
        for (_s0, e0), (s1, _e1), w in pairs:
            # a window that is one long sentence filling the budget has no room for repeated words
            assert s1 < e0 or w.n_tokens > 77 - 2 - 12, f"{pid}: consecutive windows do not overlap"
        assert sum(s1 < e0 for (_s0, e0), (s1, _e1), _ in pairs) >= 0.8 * len(pairs)
    # ordinary prose: windows end at sentence ends (or the passage end)
    for w in by_passage["doc:p1:1"]:
        assert w.text.endswith(".")
    no_overlap = make_windows(passages, count_clip, 77, overlap_tokens=0)
    spans = _spans(passages[1].text, [w for w in no_overlap if w.passage_id == "doc:p1:1"])
    assert all(s1 >= e0 for (_s0, e0), (s1, _e1) in zip(spans, spans[1:], strict=False))


def test_windows_tag_and_other_tokenizer(minilm_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(list(texts), truncation=False, verbose=False)["input_ids"]]

    passages = _long_passages(3)
    windows = make_windows(passages, count, 48, tag="s")
    _check_windows(passages, windows, count, 48, tag="s")


def test_windows_are_efficient(count_clip):
    """Batched tokenizer calls: a handful per document, not one per window; text counted ~2x."""
    rng = random.Random(5)
    words = "the pump valve seal must be replaced every 500 hours using torque wrench M6 screws".split()
    passages = [
        _passage(
            " ".join(" ".join(rng.choices(words, k=rng.randint(5, 25))) + "." for _ in range(8)), f"d:p{i}:0"
        )
        for i in range(300)
    ]
    count_clip.calls.clear()
    windows = make_windows(passages, count_clip, 77)
    assert len(windows) > 300
    assert len(count_clip.calls) <= 10  # special tokens, sentences, words, overlaps (+retries), check
    assert sum(count_clip.calls) < 3 * (sum(len(re.findall(r"[.]", p.text)) for p in passages) + len(windows))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(["pump", "M6", "valve.", "Fig.", "3-2", "N·m", "\n", "WARNING!", "—", "ü"]),
            st.text(alphabet="abcxyz0123456789-_./", min_size=1, max_size=200),
        ),
        min_size=1,
        max_size=150,
    ),
    st.integers(min_value=8, max_value=77),
    st.integers(min_value=0, max_value=20),
)
def test_windows_property(count_clip, tokens: list[str], max_tokens: int, overlap: int):
    passage = _passage(" ".join(tokens))
    windows = make_windows([passage], count_clip, max_tokens, overlap_tokens=overlap)
    _check_windows([passage], windows, count_clip, max_tokens)


def test_windows_on_a_real_manual(corpus_dir: Path, count_clip):
    pymupdf = pytest.importorskip("pymupdf")
    pdf_path = corpus_dir / "netgen-manual.pdf"
    if not pdf_path.exists():
        pytest.skip(f"{pdf_path} missing")
    with pymupdf.open(pdf_path) as pdf:
        blocks = [
            TextBlock(b[4], pno, tuple(b[:4]))
            for pno, page in enumerate(pdf, 1)
            for b in page.get_text("blocks")
            if b[6] == 0
        ]
    passages = make_passages(_doc(blocks, "netgen-manual.pdf"))
    assert len(passages) > 20
    windows = make_windows(passages, count_clip, 77)
    _check_windows(passages, windows, count_clip, 77)
    assert len(windows) >= len(passages)


def test_bad_limit(count_clip):
    with pytest.raises(ValueError, match="no room"):
        make_windows([_passage("text")], count_clip, 3)
    assert make_windows([], count_clip, 77) == []


@pytest.mark.parametrize(
    "run",
    ["A" * 200_000, "." * 200_000, "a-" * 100_000, "ab-\n" * 50_000, "Stop! " + "?!" * 100_000 + " Go."],
    ids=["letters", "dots", "hyphens", "cut-words", "marks"],
)
def test_a_long_run_of_one_character_is_chunked_at_once(tmp_path: Path, count_clip, run: str):
    """Found by the fuzzer (a mutated .txt of 89 KB held the parent 31 s): a run of 60,000 letters or dots
    tried every start of the run against the compound-word and sentence-end regexes, time growing with the
    square of its length (200,000 dots: minutes), in the parent, which has no time limit. Both regexes now
    match from the start of a run without backtracking into it. Run in a thread with a deadline: with the
    quadratic regexes it does not return in time on any machine."""
    import threading

    from manualrag.config import DEFAULTS
    from manualrag.indexer.extract import extract_file

    path = tmp_path / "blob.txt"
    path.write_text(f"Torque 12 Nm.\n\n{run}\n\nEnd of the notes.", encoding="utf-8")
    doc = extract_file(path, "blob.txt", DEFAULTS)
    out: dict = {}

    def work() -> None:
        passages = make_passages(doc)
        out["windows"] = make_windows(passages, count_clip, 77)
        out["passages"] = passages

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout=60)
    assert not t.is_alive(), "chunking a long run of one character did not return"
    text = "\n".join(p.text for p in out["passages"])
    assert "Torque 12 Nm." in text and "End of the notes." in text
    letters = sum(c.isalpha() for c in run)  # none lost (the cut words are joined: their hyphens go)
    assert sum(c.isalpha() for c in text) == letters + sum(c.isalpha() for c in "TorqueNmEndofthenotes")
