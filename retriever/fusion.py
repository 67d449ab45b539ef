"""Fusion of per-channel results into one ranked list.

Raw scores of different channels are never compared directly: CLIP text->text cosines (~0.6-0.9), CLIP
text->image cosines (~0.2-0.35), BM25 scores and sentence-embedding cosines live on different scales.

Default rule, ``zscore`` (per-query calibration, as txtai's hybrid search calibrates dense scores): each
channel's candidate scores are standardised against that channel's own candidate list for this query,

    z_c(x) = (s_c(x) - median_c) / std_c          (0 when x is at or below the median, or not found)
    score(x) = sum over channels c of  w_c * z_c(x)

so a channel contributes in proportion to how far a thing stands out *within that channel*. A channel
that is sure (one hit far above the rest) dominates; a channel whose scores are flat barely moves the
ranking. This is why adding a channel does not drag a confident top hit down, which plain reciprocal rank
fusion does (it rewards being found by many channels, whatever their confidence). A channel with fewer
than 3 candidates, or with equal scores, gives each candidate 1.0.

``rrf`` (reciprocal rank fusion, Cormack et al. 2009) is available as ``retrieve.fusion: rrf``:
score(x) = sum_c w_c / (k + rank_c(x)).

Things are passages and figures: a passage found through several of its windows, or a figure found through
its pixels, its labels and the lexical index, is one thing; its best score per channel counts.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

Key = tuple[str, str]  # ("passage" | "figure", id)
Scored = list[tuple[Key, float]]  # a channel's results, best first

METHODS = ("zscore", "rrf")


@dataclass
class Fused:
    key: Key
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # channel -> 1-based rank in that channel


def best_per_thing(results: Scored) -> Scored:
    """Keep the first (best) occurrence of each thing, in order."""
    seen: dict[Key, float] = {}
    for key, score in results:
        if key not in seen:
            seen[key] = score
    return list(seen.items())


def _zscores(results: Scored) -> list[float]:
    scores = [s for _, s in results]
    if len(scores) < 3:
        return [1.0] * len(scores)
    sd = statistics.pstdev(scores)
    if sd < 1e-9:
        return [1.0] * len(scores)
    med = statistics.median(scores)
    return [max(0.0, (s - med) / sd) for s in scores]


def fuse(
    channels: dict[str, Scored],
    weights: dict[str, float] | None = None,
    method: str = "zscore",
    rrf_k: int = 60,
) -> list[Fused]:
    """Fuse channel results (each best-first; duplicates allowed) into one list, best first."""
    if method not in METHODS:
        raise ValueError(f"fusion method must be one of {METHODS}, not {method!r}")
    weights = weights or {}
    table: dict[Key, Fused] = {}
    for channel, results in channels.items():
        results = best_per_thing(results)
        w = weights.get(channel, 1.0)
        contrib = (
            _zscores(results)
            if method == "zscore"
            else [1.0 / (rrf_k + r) for r in range(1, len(results) + 1)]
        )
        for rank, ((key, _), c) in enumerate(zip(results, contrib, strict=True), 1):
            item = table.setdefault(key, Fused(key, 0.0))
            item.score += w * c
            item.ranks[channel] = rank
    # ties: the thing with the better best rank first, then a stable key order
    return sorted(table.values(), key=lambda f: (-f.score, min(f.ranks.values()), f.key))
