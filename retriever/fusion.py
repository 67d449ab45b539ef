"""Fusion of per-channel rankings into one list.

Raw scores of different channels are never compared: CLIP text->text cosines (~0.6-0.9), CLIP text->image
cosines (~0.2-0.35), BM25 scores and sentence-embedding cosines live on different scales. Each channel only
contributes the *rank* at which it found a thing (weighted reciprocal rank fusion, Cormack et al. 2009):

    score(thing) = sum over channels c that found it of  w_c / (k + rank_c(thing))

with k = ``retrieve.rrf_k`` (60). Things are passages and figures: a passage found through several of its
windows, or a figure found through its pixels, its labels and the lexical index, is one thing (its best rank
per channel counts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[str, str]  # ("passage" | "figure", id)


@dataclass
class Fused:
    key: Key
    score: float
    ranks: dict[str, int] = field(default_factory=dict)  # channel -> 1-based rank in that channel


def dedupe(ranking: list[Key]) -> list[Key]:
    """Keep the first (best) occurrence of each thing."""
    seen: set[Key] = set()
    out: list[Key] = []
    for key in ranking:
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def rrf(rankings: dict[str, list[Key]], weights: dict[str, float] | None = None, k: int = 60) -> list[Fused]:
    """Weighted reciprocal rank fusion of channel rankings (each best-first, duplicates allowed)."""
    weights = weights or {}
    table: dict[Key, Fused] = {}
    for channel, ranking in rankings.items():
        w = weights.get(channel, 1.0)
        for rank, key in enumerate(dedupe(ranking), 1):
            item = table.setdefault(key, Fused(key, 0.0))
            item.score += w / (k + rank)
            item.ranks[channel] = rank
    # ties: the thing with the better best rank first, then a stable key order
    return sorted(table.values(), key=lambda f: (-f.score, min(f.ranks.values()), f.key))
