"""Fusion (retriever/fusion.py) and snippets (retriever/search.make_snippet), directly."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from manualrag.retriever.fusion import (
    PAGE_SUPPORT,
    PICTURE_BOOST,
    Fused,
    asks_for_picture,
    best_per_thing,
    fuse,
    page_support,
    prefer_pictures,
)
from manualrag.retriever.search import make_snippet

P = ("passage", "p")
F = ("figure", "f")
Q = ("passage", "q")


def _keys(fused):
    return [f.key for f in fused]


def test_rrf_is_the_weighted_sum_of_reciprocal_ranks():
    fused = fuse({"a": [(P, 9.0), (F, 5.0)], "b": [(F, 0.3)]}, {"a": 1.0, "b": 2.0}, method="rrf", rrf_k=60)
    by_key = {f.key: f for f in fused}
    assert by_key[F].score == pytest.approx(1 / 62 + 2 / 61)
    assert by_key[P].score == pytest.approx(1 / 61)
    assert _keys(fused) == [F, P] and by_key[F].ranks == {"a": 2, "b": 1}


def test_zscore_standardises_each_channel_on_its_own_candidates():
    scores = [0.9, 0.5, 0.4, 0.3]
    keys = [("passage", str(i)) for i in range(4)]
    fused = fuse({"a": list(zip(keys, scores, strict=True))}, method="zscore")
    sd, med = statistics.pstdev(scores), statistics.median(scores)
    assert fused[0].key == keys[0] and fused[0].score == pytest.approx((0.9 - med) / sd)
    assert {f.key: f.score for f in fused}[keys[3]] == 0.0  # at or below the median counts nothing


def test_a_sure_channel_is_not_outvoted_by_a_flat_one():
    """zscore: one far-ahead hit in a channel stays first though a flat channel ranks another first."""
    sure = [(P, 10.0), (Q, 1.0), (("passage", "x"), 0.9), (("passage", "y"), 0.8)]
    flat = [(Q, 0.51), (P, 0.50), (("passage", "x"), 0.50), (("passage", "y"), 0.49)]
    assert _keys(fuse({"sure": sure, "flat": flat}, method="zscore"))[0] == P


def test_few_or_equal_scores_count_one_each_and_duplicates_keep_the_best():
    assert [f.score for f in fuse({"a": [(P, 3.0), (F, 1.0)]})] == [1.0, 1.0]
    assert [f.score for f in fuse({"a": [(P, 2.0), (F, 2.0), (Q, 2.0)]})] == [1.0, 1.0, 1.0]
    assert best_per_thing([(P, 0.9), (F, 0.8), (P, 0.7)]) == [(P, 0.9), (F, 0.8)]
    assert fuse({"a": [(P, 0.9), (P, 0.1)]}, method="rrf")[0].ranks == {"a": 1}


def test_ties_go_to_the_better_best_rank_then_the_key():
    fused = fuse({"a": [(Q, 1.0)], "b": [(F, 1.0)], "c": [(P, 1.0)]}, method="rrf")
    assert _keys(fused) == [F, P, Q]


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="fusion method must be one of"):
        fuse({}, method="borda")


@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c"]),
        st.lists(st.tuples(st.sampled_from([P, F, Q]), st.floats(-5, 5, allow_nan=False)), max_size=6),
    ),
    st.sampled_from(["zscore", "rrf"]),
)
def test_fused_list_has_each_thing_once_best_first(channels, method):
    fused = fuse(channels, method=method)
    keys = _keys(fused)
    assert len(keys) == len(set(keys)) == len({k for res in channels.values() for k, _ in res})
    assert all(a.score >= b.score for a, b in zip(fused, fused[1:], strict=False))
    assert all(f.score >= 0 for f in fused)


G = ("figure", "g")
R = ("passage", "r")


def test_page_support_lifts_the_page_where_the_query_words_meet():
    # P and F (a paragraph and the figure it explains) share page 3; Q stands alone on page 9 with a score
    # just above each of them: the page holding both wins the near-tie, by the documented share of its mate
    fused = [Fused(Q, 2.0, {"a": 1}), Fused(P, 1.9, {"a": 2}), Fused(F, 1.8, {"b": 1})]
    place = {P: ("m.pdf", 3), F: ("m.pdf", 3), Q: ("m.pdf", 9)}
    out = {f.key: f.score for f in page_support(fused, place)}
    assert out[P] == pytest.approx(1.9 + PAGE_SUPPORT * 1.8)
    assert out[F] == pytest.approx(1.8 + PAGE_SUPPORT * 1.9)
    assert out[Q] == pytest.approx(2.0)
    assert _keys(page_support(fused, place))[0] == P


def test_page_support_never_overturns_a_thing_that_stands_out():
    # three page mates at 1.0 each cannot catch a hit at 2.0 alone on its page (at most top-2 mates count)
    fused = [Fused(Q, 2.0, {"a": 1})] + [Fused(k, 1.0, {"a": i}) for i, k in enumerate((P, F, G), 2)]
    place = {Q: ("a.pdf", 1), P: ("a.pdf", 2), F: ("a.pdf", 2), G: ("a.pdf", 2)}
    out = page_support(fused, place)
    assert _keys(out)[0] == Q
    assert out[1].score == pytest.approx(1.0 + PAGE_SUPPORT * 2.0)


def test_page_support_counts_same_page_of_the_same_file_only_and_skips_unplaced_things():
    fused = [
        Fused(P, 1.0, {"a": 1}),
        Fused(F, 1.0, {"a": 2}),
        Fused(R, 1.0, {"a": 3}),
        Fused(G, 5.0, {"a": 4}),
    ]
    place = {P: ("a.pdf", 4), F: ("b.pdf", 4), R: ("a.pdf", 5)}  # G has no place
    out = {f.key: f.score for f in page_support(fused, place)}
    assert out == {P: 1.0, F: 1.0, R: 1.0, G: 5.0}


@pytest.mark.parametrize(
    "query, picture",
    [
        ("sketch of an antenna lead hanging beside a wall outlet", True),
        ("Photo of the blue interface box", True),
        ("flow chart of HDL frontends", True),
        ("flowchart of the boot sequence", True),
        ("wiring diagrams of the pump", True),
        ("pad drawing with a square aperture", True),
        ("current drawn by the motor", False),  # the other senses of picture words
        ("figure out why the pump keeps restarting", False),
        ("write the firmware image to flash", False),
        ("Figure 3 shows the fuse box", True),
        ("how do I reset error E07", False),
        ("photon counting detector", False),  # a word that begins like one is not one
        ("configure the imager and the plotter", False),
    ],
)
def test_a_query_asks_for_a_picture_by_naming_one(query, picture):
    assert asks_for_picture(query) is picture


def test_pictures_are_preferred_by_their_share_and_the_rest_keeps_its_order():
    G = ("figure", "scan")
    fused = [
        Fused(P, 10.0, {"a": 1}),
        Fused(Q, 8.0, {"a": 2}),
        Fused(F, 7.0, {"a": 3}),
        Fused(G, 6.0, {"a": 4}),
    ]
    out = prefer_pictures(fused, {F})
    assert _keys(out) == [F, P, Q, G]  # 7 x 1.5 = 10.5 passes 10; the scanned page G is not a picture
    assert {f.key: f.score for f in out} == {P: 10.0, Q: 8.0, F: 7.0 * PICTURE_BOOST, G: 6.0}
    assert _keys(prefer_pictures(fused, {F}, factor=1.2)) == [P, F, Q, G]  # a clear lead stays ahead
    assert _keys(prefer_pictures(fused, set())) == _keys(fused)


def test_snippet_centres_on_the_query_terms_and_marks_them():
    text = (
        "Intro words. " * 40 + "Set the relief valve to 6 bar before the pump starts. " + "Tail text. " * 40
    )
    s = make_snippet(text, "relief valve pressure", width=120)
    assert "**relief** **valve**" in s
    assert s.startswith("…") and s.endswith("…") and len(s.replace("**", "")) == 122
    assert "Intro words" not in s.split("**relief**")[1]


def test_snippet_without_terms_is_the_start_and_marks_word_starts_only():
    assert make_snippet("A  short\npassage.", "a") == "A short passage."  # terms under 3 letters: none
    assert make_snippet("Pumps and pumping", "pump") == "**Pumps** and **pumping**"
    assert make_snippet("subpump", "pump") == "subpump"  # inside a word: not marked


def test_snippet_leaves_stopwords_unmarked_unless_the_query_has_nothing_else():
    text = "How the relief valve opens: what the pump does when the pressure rises."
    s = make_snippet(text, "how does the relief valve open")
    assert s == "How the **relief** **valve** **opens**: what the pump does when the pressure rises."
    assert make_snippet("To be or not to be", "to be or not") == "To be or **not** to be"
    assert make_snippet("What was that?", "what was") == "**What** **was** that?"


def test_snippet_marks_do_not_nest_inside_the_passages_own_bold():
    # a markdown manual's "**vector wiring diagram**" was shown as "**vector **wiring** **diagram****"
    s = make_snippet("A **vector wiring diagram** drawn with lines", "wiring diagram")
    assert s == "A vector **wiring** **diagram** drawn with lines"


def test_snippet_marks_a_words_endings_not_other_words_that_begin_like_it():
    assert make_snippet("Pumps, pumping and pumpkins", "pump") == "**Pumps**, **pumping** and pumpkins"
    assert make_snippet("The post and the Postscript format", "post format") == (
        "The **post** and the Postscript **format**"
    )
    assert make_snippet("Formats for the fans", "fan for") == "Formats for the **fans**"


def test_snippet_marks_a_long_word_where_the_manual_writes_it_apart():
    # the lexical channel finds "file system" for "filesystem" (compound_phrases): the snippet shows why
    text = "Mount the file system, then the File-System table; a ther- mometer reads 20. A filesys tem."
    s = make_snippet(text, "filesystem thermometer")
    assert "**file system**" in s and "**File-System**" in s and "**ther- mometer**" in s
    assert "filesys tem" in s and "**filesys" not in s  # a part under 4 letters: as lexical, no split
    assert make_snippet("the bootloader", "boot loader") == "the **bootloader**"  # joined: word start
