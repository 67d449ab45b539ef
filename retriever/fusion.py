"""Fusion of per-channel results into one ranked list.

Raw scores of different channels are never compared directly: CLIP text->text cosines (~0.6-0.9), CLIP
text->image cosines (~0.2-0.35), BM25 scores and sentence-embedding cosines live on different scales.

Default rule, ``zscore`` (per-query calibration, as txtai's hybrid search calibrates dense scores): each
channel's candidate scores are standardised against that channel's own candidate list for this query,

    z_c(x) = (s_c(x) - median_c) / std_c          (0 when x is at or below the median, or not found)
    score(x) = sum over channels c of  w_c * z_c(x)

so a channel contributes in proportion to how far a thing stands out *within that channel*. With a source
filter the candidates are those of the channel's search within the matching files, so the scale is theirs. A channel
that is sure (one hit far above the rest) dominates; a channel whose scores are flat barely moves the
ranking. This is why adding a channel does not drag a confident top hit down, which plain reciprocal rank
fusion does (it rewards being found by many channels, whatever their confidence). A channel with fewer
than 3 candidates, or with equal scores, gives each candidate 1.0.

``rrf`` (reciprocal rank fusion, Cormack et al. 2009) is available as ``retrieve.fusion: rrf``:
score(x) = sum_c w_c / (k + rank_c(x)).

Things are passages and figures: a passage found through several of its windows, or a figure found through
its pixels, its labels and the lexical index, is one thing; its best score per channel counts.

**Page support** (``page_support``, after ``zscore`` fusion): a thing gains a small share of the fused scores of
the best other candidates on its own page,

    score'(x) = score(x) + PAGE_SUPPORT * (sum of the PAGE_SUPPORT_TOP best scores of the others on x's page)

so that when the query's words are spread over a page (a figure and the paragraph explaining it, a question
and its answer split into two passages) that page wins over a page where one passage matches alone. The
share is small: it reorders near-ties, never overturns a thing that stands out. Measured on both labelled
corpora (lexical,text, tests/bench/RESULTS.md): corpus R@1 1.000 -> 1.000, corpus2 0.767 -> 0.817.

**Pictures asked for** (``prefer_pictures``, last): a query that names a kind of picture ("sketch of an
antenna lead beside a wall outlet", "flow chart of ...", "photo of ...": ``PICTURE_WORDS``) wants the figure,
while the passage explaining it shares its words and often wins; the fused score of each figure that is a
picture (not a scanned page, which is a page of text) is multiplied by ``PICTURE_BOOST``. Measured on both
corpora, every channel combination gains or keeps R@1 and MRR and no query ranks worse (lexical,text: corpus
R@1/MRR 1.000/1.000 -> 1.000/1.000; corpus2 0.850/0.896 -> 0.867/0.905; lexical alone: corpus 0.957 ->
1.000, corpus2 0.817 -> 0.850). Factors 1.3 to 2.0 give the same R@1; 1.25 moves no first hit; boosting
scanned pages too cost corpus2 a query (a scanned text page outranked the right one).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

Key = tuple[str, str]  # ("passage" | "figure", id)
Scored = list[tuple[Key, float]]  # a channel's results, best first

METHODS = ("zscore", "rrf")
PAGE_SUPPORT = 0.1  # share of the page's other candidates' fused scores a thing gains
PAGE_SUPPORT_TOP = 2  # ... counting at most this many of them (the best)
Place = tuple[str, int]  # (document path, page)
# words by which a query asks for a picture ("sketch of an antenna lead beside a wall outlet"); not in
# their other senses: "current drawn", "figure out why", "disk/firmware/flash/boot image"
_NOT_A_PICTURE_IMAGE = "".join(f"(?<!{w} )" for w in ("disk", "firmware", "flash", "boot", "iso", "system"))
PICTURE_WORDS = re.compile(
    r"\b(?:photo(?:graph)?s?|pictures?|" + _NOT_A_PICTURE_IMAGE + r"images?|drawings?|sketch(?:es|ed)?|"
    r"diagrams?|schematics?|illustrations?|figures?(?!\s+out\b)|(?:flow ?)?charts?|graphs?|plots?|"
    r"screenshots?)\b",
    re.IGNORECASE,
)
PICTURE_BOOST = 1.5  # a picture's fused score is worth this much more when the query asks for one


@dataclass
class Fused:
    key: Key
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # channel -> 1-based rank in that channel


def _best_first(items: Iterable[Fused]) -> list[Fused]:
    """Best score first; ties: the thing with the better best rank first, then a stable key order."""
    return sorted(items, key=lambda f: (-f.score, min(f.ranks.values()), f.key))


def best_per_thing(results: Scored) -> Scored:
    """Keep the first (best) occurrence of each thing, in order."""
    seen: dict[Key, float] = {}
    for key, score in results:
        if key not in seen:
            seen[key] = score
    return list(seen.items())


def _zscores(results: Scored, pool: int | None = None) -> list[float]:
    """Each score standardised against the channel's first ``pool`` candidates (all when None): a query
    asking for more hits fetches more candidates, and they must not move the scale of the first ones."""
    scores = [s for _, s in results]
    base = scores[:pool] if pool else scores
    if len(base) < 3:
        return [1.0] * len(scores)
    sd = statistics.pstdev(base)
    if sd < 1e-9:
        return [1.0] * len(scores)
    med = statistics.median(base)
    return [max(0.0, (s - med) / sd) for s in scores]


def fuse(
    channels: dict[str, Scored],
    weights: dict[str, float] | None = None,
    method: str = "zscore",
    rrf_k: int = 60,
    pool: int | None = None,
) -> list[Fused]:
    """Fuse channel results (each best-first; duplicates allowed) into one list, best first. ``pool``: how
    many of each channel's first candidates set its z-score scale (``retrieve.candidates``)."""
    if method not in METHODS:
        raise ValueError(f"fusion method must be one of {METHODS}, not {method!r}")
    weights = weights or {}
    table: dict[Key, Fused] = {}
    for channel, results in channels.items():
        results = best_per_thing(results)
        w = weights.get(channel, 1.0)
        contrib = (
            _zscores(results, pool)
            if method == "zscore"
            else [1.0 / (rrf_k + r) for r in range(1, len(results) + 1)]
        )
        for rank, ((key, _), c) in enumerate(zip(results, contrib, strict=True), 1):
            item = table.setdefault(key, Fused(key, 0.0))
            item.score += w * c
            item.ranks[channel] = rank
    return _best_first(table.values())


def page_support(
    fused: list[Fused],
    place_of: dict[Key, Place],
    share: float = PAGE_SUPPORT,
    top: int = PAGE_SUPPORT_TOP,
) -> list[Fused]:
    """``fused`` re-scored with page support (see the module doc), best first. ``place_of``: the page each
    thing is on (a figure: its first page); a thing without a place neither gives nor gains support."""
    on_page: dict[Place, list[float]] = {}
    for f in fused:
        if f.key in place_of:
            on_page.setdefault(place_of[f.key], []).append(f.score)
    for scores in on_page.values():
        scores.sort(reverse=True)
    out = []
    for f in fused:
        extra = 0.0
        if f.key in place_of:
            others = list(on_page[place_of[f.key]])
            others.remove(f.score)
            extra = share * sum(others[:top])
        out.append(Fused(f.key, f.score + extra, dict(f.ranks)))
    return _best_first(out)


def asks_for_picture(query: str) -> bool:
    """True when the query names a kind of picture (photo, drawing, diagram, chart, ...)."""
    return bool(PICTURE_WORDS.search(query))


def prefer_pictures(fused: list[Fused], pictures: set[Key], factor: float = PICTURE_BOOST) -> list[Fused]:
    """``fused`` with the scores of ``pictures`` (figures that are pictures, not scanned pages) multiplied by
    ``factor``, best first: for a query that asks for a picture (see the module doc)."""
    out = [Fused(f.key, f.score * factor if f.key in pictures else f.score, dict(f.ranks)) for f in fused]
    return _best_first(out)
