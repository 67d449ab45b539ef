"""Search an index: per-channel retrieval, fusion, one hit per thing, linked context ("small-to-big").

Channels (names used by ``--channels``):
  dense    the CLIP channels: query text -> text windows, -> figure pixels, -> figure label texts
           (with ``--image FILE``: query image -> figure pixels and -> text windows)
  text     the semantic text model: query -> passage windows and figure texts
  lexical  BM25 (SQLite FTS5) over passages, figure captions, OCR'd labels and nearby text
"""

from __future__ import annotations

import fnmatch
import functools
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manualrag.errors import IndexNotFoundError, ManualragError
from manualrag.manifest import Manifest
from manualrag.retriever.fusion import Fused, Key, fuse
from manualrag.retriever.lexical import lexical_search

log = logging.getLogger(__name__)

CHANNELS = ("dense", "text", "lexical")
# sub-channels fused by rank; their weights (documented in the README, "How results are ranked")
WEIGHTS = {
    "lexical": 1.0,
    "text": 1.0,
    "dense_text": 0.5,
    "dense_image": 0.5,
    "dense_label": 0.5,
    "image_image": 1.0,
    "image_text": 0.5,
}

CAPTION_PASSAGE_MAX_WORDS = 40  # longer passages hold more than a caption: they stay text hits
_FIG_REF = re.compile(
    r"\b(fig(?:ure)?\.?|illustration|table|abbildung|diagram)\s*([0-9]+(?:[.\-][0-9]+)*[a-z]?)", re.I
)


@dataclass
class LinkedFigure:
    figure_id: str
    kind: str
    page: int
    caption: str
    crop_path: str | None


@dataclass
class Hit:
    rank: int
    kind: str  # "text" | "image"
    score: float
    path: str  # file, relative to the library
    page: int  # first page
    pages: list[int]
    channels: dict[str, int]  # channel -> rank at which it found this
    id: str  # passage id or figure id
    heading: str = ""
    text: str = ""  # text hit: the parent passage; image hit: caption + labels
    snippet: str = ""
    suspect: str | None = None
    # image hits
    figure_kind: str | None = None
    caption: str = ""
    labels: list[str] = field(default_factory=list)
    ocr_text: str = ""
    nearby_text: str = ""
    crop_path: str | None = None  # absolute path of the PNG crop
    bbox: list[float] | None = None
    quality: str | None = None
    # text hits: figures on the same page or referenced from the passage
    figures: list[LinkedFigure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    query: str
    hits: list[Hit]
    channels_used: list[str]
    timings_ms: dict[str, float]
    notes: list[str] = field(default_factory=list)


def _terms(query: str) -> list[str]:
    return [t for t in re.findall(r"[\w][\w.\-/]*", query.lower()) if len(t) > 1]


@functools.lru_cache(maxsize=256)
def _snippet_patterns(terms: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """For a query's terms (longest first): a finder of their occurrences, and a marker of the words they
    start. Compiled once per query, not once per hit."""
    alt = "|".join(re.escape(t) for t in terms)
    return re.compile(alt), re.compile(rf"(?i)(?<!\*)\b((?:{alt})\w*)")


def make_snippet(text: str, query: str, width: int = 240) -> str:
    """A window of the passage around the densest query-term area, terms marked with **."""
    terms = tuple(sorted({t for t in _terms(query) if len(t) > 2}, key=lambda t: (-len(t), t)))
    flat = " ".join(text.split())
    if not terms:
        return flat[:width]
    find, mark = _snippet_patterns(terms)
    positions = [m.start() for m in find.finditer(flat.lower())]
    start = 0
    if positions:
        best = max(positions, key=lambda p: sum(1 for q in positions if p <= q < p + width))
        start = max(0, best - width // 4)
    piece = mark.sub(r"**\1**", flat[start : start + width])
    return ("…" if start else "") + piece + ("…" if start + width < len(flat) else "")


class Retriever:
    """Loads the index and its encoders once; answers many queries."""

    def __init__(
        self, index_dir: Path, cfg: dict[str, Any], manifest: Manifest, store: Any, models: dict[str, Any]
    ):
        self.index_dir = index_dir
        self.cfg = cfg
        self.manifest = manifest
        self.store = store
        self.models = models  # what the index was built with: {"clip": id|None, "text": id|None}
        self._clip = None
        self._text = None
        self._clip_failed: str | None = None
        self._text_failed: str | None = None

    @classmethod
    def open(cls, index_dir: Path | str, cfg: dict[str, Any] | None = None) -> Retriever:
        from manualrag.config import load_config
        from manualrag.store import VectorStore

        cfg = cfg or load_config()
        index_dir = Path(index_dir)
        db = index_dir / "index.sqlite"
        if not db.exists():
            raise IndexNotFoundError(
                f"no index in {index_dir} (missing {db.name}); build one with `manualrag index LIBRARY --index-dir {index_dir}`"
            )
        manifest = Manifest(db, readonly=True)
        store = VectorStore.open(index_dir, cfg)
        models = manifest.get_meta("models") or {}
        return cls(index_dir, cfg, manifest, store, models)

    def close(self) -> None:
        self.store.close()
        self.manifest.close()

    @property
    def query_dtype(self) -> str:
        """The query encoders' precision: ``auto`` means float32 here. A query is one short text (or one
        image) per forward pass: reduced precision has nothing to win, and deciding it would cost the
        start-up a probe; an explicit ``--dtype`` is obeyed (to compare with the index's precision)."""
        dtype = str(self.cfg.get("dtype") or "auto").lower()
        return "float32" if dtype == "auto" else dtype

    def precision(self) -> dict[str, str]:
        """The dtype of each query encoder loaded so far, e.g. {"text": "float32 (requested)"}."""
        return {
            role: enc.dtype_reason
            for role, enc in (("clip", self._clip), ("text", self._text))
            if enc is not None
        }

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------- models
    def _clip_encoder(self, required: bool):
        if self._clip is not None or self._clip_failed:
            if self._clip is None and required:
                raise ManualragError(self._clip_failed)
            return self._clip
        model = self.cfg.get("query_model") or self.models.get("clip")
        if not model or self.store.get("image") is None:
            self._clip_failed = (
                "the index has no CLIP vectors (built with --no-dense); use --channels lexical"
            )
            if required:
                raise ManualragError(self._clip_failed)
            return None
        from manualrag.encoder import ClipEncoder
        from manualrag.errors import ModelUnavailableError

        try:
            self._clip = ClipEncoder.load(model, device=self.cfg["device"], dtype=self.query_dtype)
        except ModelUnavailableError as exc:
            self._clip_failed = str(exc)
            if required:
                raise
            log.warning("dense channels off: %s", str(exc).splitlines()[0])
        return self._clip

    def _text_encoder(self, required: bool):
        if self._text is not None or self._text_failed:
            if self._text is None and required:
                raise ManualragError(self._text_failed)
            return self._text
        model = self.models.get("text")
        if not model or self.store.get("sem") is None:
            self._text_failed = "the index has no text-model vectors; use --channels lexical or dense"
            if required:
                raise ManualragError(self._text_failed)
            return None
        from manualrag.encoder import TextEncoder
        from manualrag.errors import ModelUnavailableError

        try:
            self._text = TextEncoder.load(model, device=self.cfg["device"], dtype=self.query_dtype)
        except ModelUnavailableError as exc:
            self._text_failed = str(exc)
            if required:
                raise
            log.warning("text channel off: %s", str(exc).splitlines()[0])
        return self._text

    # ------------------------------------------------------------------------------------------- search
    def search(
        self,
        text: str | None = None,
        image: str | Path | bytes | None = None,
        k: int | None = None,
        modality: str = "all",
        channels: list[str] | None = None,
        source: str | None = None,
    ) -> SearchResult:
        if not text and image is None:
            raise ManualragError("give a query text, an --image, or both")
        if modality not in ("all", "text", "image"):
            raise ManualragError(f"--modality must be all, text or image, not {modality!r}")
        explicit = channels is not None
        channels = list(channels or CHANNELS)
        for c in channels:
            if c not in CHANNELS:
                raise ManualragError(f"unknown channel {c!r}: choose from {', '.join(CHANNELS)}")
        k = k or self.cfg["retrieve"]["k"]
        n = max(self.cfg["retrieve"]["candidates"], 3 * k)
        timings: dict[str, float] = {"encode": 0.0, "search": 0.0, "fusion": 0.0}
        rankings: dict[str, list[tuple[Key, float]]] = {}
        notes: list[str] = []
        used: list[str] = []

        if "dense" in channels:
            clip = self._clip_encoder(required=explicit)
            if clip is None:
                notes.append("dense channels off: " + (self._clip_failed or "").splitlines()[0])
            else:
                used.append("dense")
                if text:
                    t0 = time.perf_counter()
                    q = clip.embed_texts([clip.fit(text)])[0]
                    timings["encode"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    rankings["dense_text"] = self._refs("text", q, n)
                    rankings["dense_image"] = self._refs("image", q, n)
                    rankings["dense_label"] = self._refs("image_text", q, n)
                    timings["search"] += time.perf_counter() - t0
                if image is not None:
                    t0 = time.perf_counter()
                    qi = clip.embed_images([_read_image(image)])[0]
                    timings["encode"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    rankings["image_image"] = self._refs("image", qi, n)
                    rankings["image_text"] = self._refs("text", qi, n)
                    timings["search"] += time.perf_counter() - t0

        if "text" in channels and text:
            enc = self._text_encoder(required=explicit)
            if enc is None:
                if self.models.get("text"):
                    notes.append("text channel off: " + (self._text_failed or "").splitlines()[0])
            else:
                used.append("text")
                t0 = time.perf_counter()
                q = enc.embed_texts([enc.fit(text) if hasattr(enc, "fit") else text])[0]
                timings["encode"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                rankings["text"] = self._refs("sem", q, n)
                timings["search"] += time.perf_counter() - t0

        # the lexical channel and every row behind the hits come from one snapshot of the manifest, so an
        # index run that updates a document meanwhile shows it whole, before or after (vector hits whose
        # ids the snapshot does not name are dropped in _hits)
        with self.manifest.read_snapshot():
            if "lexical" in channels and text:
                t0 = time.perf_counter()
                lexical = [((t, i), sc) for t, i, sc in lexical_search(self.manifest, text, n)]
                rankings = {"lexical": lexical, **rankings}
                timings["search"] += time.perf_counter() - t0
                used.insert(0, "lexical")
            t0 = time.perf_counter()
            passages = self.manifest.passages(
                {key[1] for res in rankings.values() for key, _ in res if key[0] == "passage"}
            )
            rankings = self._captions_as_figures(rankings, passages)
            rc = self.cfg["retrieve"]
            # a query image alone has only its two CLIP channels, whose cosine spreads are too narrow to
            # standardise reliably; they are fused by rank, image->image first (query by example)
            method = rc["fusion"] if text else "rrf"
            fused = fuse(rankings, WEIGHTS, method=method, rrf_k=rc["rrf_k"])
            hits = self._hits(fused, text or "", k, modality, source, passages)
            timings["fusion"] += time.perf_counter() - t0
        return SearchResult(
            query=text or f"<image {image if isinstance(image, (str, Path)) else 'bytes'}>",
            hits=hits,
            channels_used=used,
            timings_ms={key: round(v * 1000, 2) for key, v in timings.items()},
            notes=notes,
        )

    def _refs(self, kind: str, vec: Any, n: int) -> list[tuple[Key, float]]:
        """Vector search in one collection, mapped to the things (passages/figures) the vectors belong to."""
        return [(self._ref_of(kind, i), score) for i, score in self.store.query(kind, vec, n)[0]]

    @staticmethod
    def _ref_of(kind: str, vid: str) -> Key:
        if kind in ("image",):
            return ("figure", vid)
        if kind == "image_text":
            return ("figure", vid.removesuffix(":t"))
        # text windows "{passage_id}:w3"; sem vectors: windows "{passage_id}:s0" or figures "{figure_id}:s"
        if vid.endswith(":s") and ":f:" in vid:
            return ("figure", vid[:-2])
        return ("passage", vid.rsplit(":", 1)[0])

    def _captions_as_figures(
        self, rankings: dict[str, list[tuple[Key, float]]], passages: dict[str, Any]
    ) -> dict[str, list[tuple[Key, float]]]:
        """A passage that is only a figure's caption (the caption line, extracted as text on the figure's
        page, perhaps with a page number) is that figure: its channel scores count for the figure, so a
        question about a diagram that matches the caption's words in one channel and the drawing's labels
        in another finds the figure with both, rather than two half-found things. ``passages``: the
        candidate passages by id (fetched once per query)."""
        short: dict[tuple[str, int], list[tuple[str, str]]] = {}
        for pid, p in passages.items():
            words = p.text.split()
            if len(words) <= CAPTION_PASSAGE_MAX_WORDS:
                short.setdefault((p.doc_path, p.page), []).append((pid, " ".join(words)))
        if not short:
            return rankings
        as_figure: dict[str, str] = {}
        for fid, path, page, caption in self.manifest.captions_on_pages(short):
            cap = " ".join(caption.split())
            for pid, text in short[(path, page)]:
                if pid not in as_figure and text.startswith(cap) and len(text[len(cap) :].split()) <= 2:
                    as_figure[pid] = fid
        if not as_figure:
            return rankings
        return {
            ch: [
                (("figure", as_figure[k[1]]) if k[0] == "passage" and k[1] in as_figure else k, sc)
                for k, sc in res
            ]
            for ch, res in rankings.items()
        }

    # ------------------------------------------------------------------------------------------- hits
    def _hits(
        self,
        fused: list[Fused],
        query: str,
        k: int,
        modality: str,
        source: str | None,
        passages: dict[str, Any],
    ) -> list[Hit]:
        """The hits, best first; ``passages``: every candidate passage by id, read in this query's snapshot."""
        figures = self.manifest.figures([f.key[1] for f in fused if f.key[0] == "figure"])
        hits: list[Hit] = []
        for f in fused:
            kind, ref = f.key
            if kind == "passage":
                p = passages.get(ref)
                if p is None or modality == "image":
                    continue
                if source and not _match(p.doc_path, source):
                    continue
                hits.append(
                    Hit(
                        rank=0,
                        kind="text",
                        score=f.score,
                        path=p.doc_path,
                        page=p.page,
                        pages=[p.page],
                        channels=dict(f.ranks),
                        id=ref,
                        heading=p.heading,
                        text=p.text,
                        snippet=make_snippet(p.text, query),
                        suspect=p.suspect,
                        bbox=list(p.bbox),
                    )
                )
            else:
                g = figures.get(ref)
                if g is None or g.boilerplate or modality == "text":
                    continue
                if source and not _match(g.doc_path, source):
                    continue
                hits.append(
                    Hit(
                        rank=0,
                        kind="image",
                        score=f.score,
                        path=g.doc_path,
                        page=g.pages[0],
                        pages=list(g.pages),
                        channels=dict(f.ranks),
                        id=ref,
                        heading=g.heading,
                        text="\n".join(x for x in [g.caption, " ".join(g.labels), g.ocr_text] if x),
                        snippet=make_snippet(" ".join([g.caption, " ".join(g.labels), g.ocr_text]), query),
                        figure_kind=g.kind,
                        caption=g.caption,
                        labels=list(g.labels),
                        ocr_text=g.ocr_text,
                        nearby_text=g.nearby_text,
                        crop_path=str((self.index_dir / g.crop_path).resolve()) if g.crop_path else None,
                        bbox=list(g.bbox),
                        quality=g.quality,
                    )
                )
            if len(hits) >= k:
                break
        for i, h in enumerate(hits, 1):
            h.rank = i
            if h.kind == "text":
                h.figures = self._linked_figures(h)
        return hits

    def _linked_figures(self, hit: Hit) -> list[LinkedFigure]:
        """Figures on the same page, plus those the passage refers to ("see Fig. 3")."""
        out: dict[str, LinkedFigure] = {}
        for g in self.manifest.figures_on_page(hit.path, hit.page):
            if not g.boilerplate:
                out[g.id] = LinkedFigure(g.id, g.kind, hit.page, g.caption, _abs(self.index_dir, g.crop_path))
        refs = {(m.group(1)[:3].lower(), m.group(2).lower()) for m in _FIG_REF.finditer(hit.text)}
        if refs:
            for g in self.manifest.figures_of_doc(hit.path):
                m = _FIG_REF.match(g.caption or "")
                if m and (m.group(1)[:3].lower(), m.group(2).lower()) in refs and not g.boilerplate:
                    out.setdefault(
                        g.id,
                        LinkedFigure(g.id, g.kind, g.pages[0], g.caption, _abs(self.index_dir, g.crop_path)),
                    )
        return list(out.values())


def _abs(index_dir: Path, rel: str | None) -> str | None:
    return str((index_dir / rel).resolve()) if rel else None


def _match(path: str, pattern: str) -> bool:
    return fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(Path(path).name, pattern)


def _read_image(image: str | Path | bytes) -> bytes:
    if isinstance(image, bytes):
        return image
    p = Path(image)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ManualragError(f"cannot read query image {p}: {exc.strerror or exc}") from None
