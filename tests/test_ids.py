"""Record ids (manualrag.ids): building, parsing, and mapping a vector id back to its passage or figure."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manualrag import ids

paths = st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s)
counts = st.integers(min_value=0, max_value=10_000)
digests = st.text(alphabet="0123456789abcdef", min_size=32, max_size=64)


def test_doc_id_is_sha256_of_the_path():
    assert ids.doc_id("manuals/pump.pdf") == hashlib.sha256(b"manuals/pump.pdf").hexdigest()[:16]


def test_the_documented_spellings():
    d = "0123456789abcdef"
    assert ids.passage_id(d, 3, 0) == f"{d}:p3:0"
    assert ids.window_id(f"{d}:p3:0", ids.CLIP_TAG, 2) == f"{d}:p3:0:w2"
    assert ids.window_id(f"{d}:p3:0", ids.SEM_TAG, 0) == f"{d}:p3:0:s0"
    fid = ids.figure_id(d, "ab" * 32)
    assert fid == f"{d}:f:{'ab' * 8}"
    assert ids.figure_label_id(fid) == f"{fid}:t" and ids.figure_sem_id(fid) == f"{fid}:s"
    assert ids.figure_caption_id(fid) == f"{fid}:c"
    with pytest.raises(ValueError, match="window tag"):
        ids.window_id(f"{d}:p3:0", "x", 0)


@given(paths, counts, counts, st.sampled_from(ids.WINDOW_TAGS), counts)
def test_passage_and_window_ids_round_trip(path, page, n, tag, m):
    d = ids.doc_id(path)
    pid = ids.passage_id(d, page, n)
    wid = ids.window_id(pid, tag, m)
    assert ids.parse(pid) == ids.ParsedId("passage", d, page=page, n=n)
    parsed = ids.parse(wid)
    assert (parsed.kind, parsed.doc_id, parsed.page, parsed.n, parsed.tag, parsed.m) == (
        "window",
        d,
        page,
        n,
        tag,
        m,
    )
    assert parsed.parent == pid
    kind = "text" if tag == ids.CLIP_TAG else "sem"
    assert ids.ref_of(kind, wid) == ("passage", pid)


@given(paths, digests)
def test_figure_ids_round_trip(path, digest):
    d = ids.doc_id(path)
    fid = ids.figure_id(d, digest)
    assert ids.parse(fid) == ids.ParsedId("figure", d, digest=digest[:16])
    label, sem = ids.figure_label_id(fid), ids.figure_sem_id(fid)
    assert ids.parse(label).kind == "figure_label" and ids.parse(label).parent == fid
    assert ids.parse(sem).kind == "figure_sem" and ids.parse(sem).parent == fid
    cap = ids.figure_caption_id(fid)
    assert ids.parse(cap).kind == "figure_caption" and ids.parse(cap).parent == fid
    assert ids.ref_of("image", fid) == ("figure", fid)
    assert ids.ref_of("image_text", label) == ("figure", fid)
    assert ids.ref_of("sem", sem) == ("figure", fid)
    assert ids.ref_of("sem", cap) == ("figure", fid)


@pytest.mark.parametrize("bad", ["", "abc", "0123456789abcdef:q1:0", "0123456789abcdef:p1:0:x3", ":f:"])
def test_parse_refuses_what_is_not_an_id(bad):
    with pytest.raises(ValueError, match="not a manualrag record id"):
        ids.parse(bad)


def test_vector_ids_by_kind():
    d = "0123456789abcdef"
    fid = ids.figure_id(d, "cd" * 32)
    out = ids.vector_ids([(f"{d}:p1:0:w0", "clip"), (f"{d}:p1:0:s0", "sem")], [fid])
    assert out == {
        "text": [f"{d}:p1:0:w0"],
        "sem": [f"{d}:p1:0:s0", f"{fid}:s", f"{fid}:c"],
        "image": [fid],
        "image_text": [f"{fid}:t"],
    }
