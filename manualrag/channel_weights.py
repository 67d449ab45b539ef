"""How far each vector channel can be trusted on this library, measured on the library itself.

A model that does not understand a library still answers every query: its nearest neighbours are noise, and
z-score fusion turns that noise into scores like any other channel's (a channel's best candidate stands ~2
standard deviations above its median whether it means anything or not). Added to the lexical channel, such a
channel pushes right answers down (a random CLIP lowered corpus2 recall@10 0.967 -> 0.950).

So at the end of an index run the vector channels take a small test built from the library's own structure,
with answers known without any labelling:

- **text windows** (``text``: the text model; ``dense_text``: CLIP's text tower over passage windows): a section
  heading as the query; a success when one of the top 10 things lies on a page of that section;
- **figures** (``dense_image``: CLIP text -> pixels; ``dense_label``: CLIP text -> the figure's label text): a
  figure's caption as the query; a success when that figure is in the top 10.

Up to ``SAMPLE`` queries each (a fixed, content-ordered sample), none below ``MIN_QUERIES``. The success rate
is corrected for chance (what a random top 10 would hit), ``factor = max(0, (rate - chance) / (1 - chance))``,
and the channel's fusion weight is multiplied by that factor (``retrieve.weigh_channels``). A model that reads
the library well keeps most of its weight; one whose text and image towers do not agree on the library's
captions (a random or mismatched checkpoint) gets none. Measured with the test models (tiny random CLIP, real
all-MiniLM-L6-v2) on corpus2: text 0.98, dense_text 0.20, dense_label 0.28, dense_image 0.00.

The factors are stored in the manifest (meta ``channel_weights``, with the ``content_key`` of what was tested),
shown by ``stats`` and ``index``, and read by every search; a channel without a factor (not measured: too few
headings or captions) keeps its weight.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from manualrag import ids

if TYPE_CHECKING:
    from manualrag.encoder import ClipEncoder, TextEncoder
    from manualrag.manifest import Manifest
    from manualrag.store import VectorStore

    Encoder = ClipEncoder | TextEncoder

META_KEY = "channel_weights"
SAMPLE = 200  # queries per task at most
MIN_QUERIES = 20  # fewer: the channel is not measured (its weight stays)
TOP = 10
HEADING_MIN_WORDS = 2
CAPTION_MIN_WORDS = 3
# channel -> (store kind it searches, encoder role, task)
CHANNELS = {
    "text": ("sem", "text", "heading"),
    "dense_text": ("text", "clip", "heading"),
    "dense_label": ("image_text", "clip", "caption"),
    "dense_image": ("image", "clip", "caption"),
}


def _sample(items: dict[str, Any]) -> list[str]:
    """A fixed sample of the keys: the first ``SAMPLE`` in the order of their sha1 (content, not position)."""
    return sorted(items, key=lambda s: hashlib.sha1(s.encode()).hexdigest())[:SAMPLE]


def _headings(manifest: Manifest) -> tuple[dict[str, set[tuple[str, int]]], int]:
    """Section headings (of ``HEADING_MIN_WORDS`` words or more) -> the pages of their passages; and the
    number of pages with passages."""
    pages: dict[str, set[tuple[str, int]]] = {}
    all_pages: set[tuple[str, int]] = set()
    for r in manifest.conn.execute("SELECT heading, doc_path, page FROM passages"):
        all_pages.add((r[1], r[2]))
        h = " ".join(str(r[0]).split())
        if len(h.split()) >= HEADING_MIN_WORDS:
            pages.setdefault(h, set()).add((r[1], r[2]))
    return pages, len(all_pages)


def _captions(manifest: Manifest) -> dict[str, str]:
    """Figure captions (``CAPTION_MIN_WORDS`` words or more, one figure each: a caption shared by several
    figures has no single answer) -> the figure's id."""
    seen: dict[str, list[str]] = {}
    for r in manifest.conn.execute("SELECT caption, id FROM figures WHERE boilerplate = 0"):
        c = " ".join(str(r[0]).split())
        if len(c.split()) >= CAPTION_MIN_WORDS:
            seen.setdefault(c, []).append(r[1])
    return {c: fids[0] for c, fids in seen.items() if len(fids) == 1}


def content_key(manifest: Manifest) -> str:
    """What the test was taken on: the committed documents, their versions and models. A run that leaves
    the index with another key (documents indexed or removed, a run killed after its last commit) tests
    again, so an index updated step by step holds the factors of a fresh index of the same library."""
    h = hashlib.sha1()
    for r in manifest.documents().values():
        h.update(repr((r.path, r.digest, r.config_fp, r.clip_model, r.text_model)).encode())
    return h.hexdigest()


def measure(
    manifest: Manifest, store: VectorStore, encoder: Callable[[str], Encoder | None]
) -> dict[str, dict[str, Any]]:
    """Each vector channel's test (see the module doc): {channel: {n, rate, chance, factor}}; a channel with
    fewer than ``MIN_QUERIES`` queries has only ``n``. ``encoder(role)``: the "clip" or "text" encoder,
    loaded on first use (a library too small to test loads none); None when the index has no such model."""
    headings, n_pages = _headings(manifest)
    captions = _captions(manifest)
    out: dict[str, dict[str, Any]] = {}
    for channel, (kind, role, task) in CHANNELS.items():
        size = store.count(kind)
        if size == 0:
            continue
        queries = _sample(headings if task == "heading" else captions)
        if len(queries) < MIN_QUERIES:
            out[channel] = {"n": len(queries)}
            continue
        enc = encoder(role)
        if enc is None:
            continue
        vecs = enc.embed_texts([enc.fit(q) for q in queries])
        found = store.query(kind, vecs, TOP)
        refs = [[ids.ref_of(kind, rid) for rid, _ in res] for res in found]
        if task == "heading":
            places = _places(manifest, refs)
            hits = [bool(set(p) & headings[q]) for q, p in zip(queries, places, strict=True)]
            chance = sum(min(1.0, TOP * len(headings[q]) / max(n_pages, 1)) for q in queries) / len(queries)
        else:
            hits = [("figure", captions[q]) in r for q, r in zip(queries, refs, strict=True)]
            chance = min(1.0, TOP / size)
        rate = sum(hits) / len(hits)
        factor = max(0.0, (rate - chance) / (1.0 - chance)) if chance < 1.0 else 1.0
        out[channel] = {
            "n": len(queries),
            "rate": round(rate, 3),
            "chance": round(chance, 3),
            "factor": round(factor, 2),
        }
    return out


def _places(manifest: Manifest, refs: list[list[tuple[str, str]]]) -> list[list[tuple[str, int]]]:
    """The page of each found thing (a figure: its first page), per query."""
    pids = {i for r in refs for t, i in r if t == "passage"}
    fids = {i for r in refs for t, i in r if t == "figure"}
    at = {("passage", i): (p.doc_path, p.page) for i, p in manifest.passages(pids).items()}
    at.update({("figure", i): place for i, place in manifest.figure_places(fids).items()})
    return [[at[k] for k in r if k in at] for r in refs]


def factors(meta: dict[str, Any] | None) -> dict[str, float]:
    """The weight factor of each measured channel, from the stored meta ({"of": key, "channels": ...})."""
    return {c: float(m["factor"]) for c, m in channels_of(meta).items() if "factor" in m}


def channels_of(meta: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """The channels' results in the stored meta."""
    return dict((meta or {}).get("channels") or {})


def describe(channels: dict[str, dict[str, Any]] | None) -> str:
    """One line for ``index`` and ``stats``: "text 0.96, dense_text 0.17, ..." (channels not measured: why)."""
    parts = []
    for channel, m in (channels or {}).items():
        if "factor" in m:
            parts.append(f"{channel} {m['factor']:.2f}")
        else:
            what = "headings" if CHANNELS.get(channel, ("", "", "heading"))[2] == "heading" else "captions"
            parts.append(f"{channel} not measured ({m['n']} {what}, {MIN_QUERIES} needed)")
    return ", ".join(parts)
