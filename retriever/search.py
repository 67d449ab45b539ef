"""Search an index: per-channel retrieval, fusion, one hit per thing, linked context ("small-to-big").

Channels (names used by ``--channels``):
  dense    the CLIP channels: query text -> text windows, -> figure pixels, -> figure label texts
           (with ``--image FILE``: query image -> figure pixels and -> text windows)
  text     the semantic text model: query -> passage windows and figure texts
  lexical  BM25 (SQLite FTS5) over passages, figure captions, OCR'd labels and nearby text
"""

from __future__ import annotations

import functools
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from manualrag import channel_weights, ids
from manualrag.config import means_no_model
from manualrag.errors import ManualragError, shell_arg
from manualrag.index import glob_match
from manualrag.manifest import Manifest
from manualrag.retriever.fusion import Fused, Key, asks_for_picture, fuse, page_support, prefer_pictures
from manualrag.retriever.lexical import (
    COMPOUND_PART_MIN,
    COMPOUND_WORD_MAX,
    MAX_QUERY_TERMS,
    STOPWORDS,
    lexical_search,
)

log = logging.getLogger(__name__)

CHANNELS = ("dense", "text", "lexical")
# threads for the vector searches of concurrent queries (a query makes up to 6; Chroma queries are short)
SEARCH_THREADS = 4
# sub-channels fused by rank; their weights (documented in the README, "How results are ranked"), each vector
# channel's scaled by its test on the library (manualrag/channel_weights.py, retrieve.weigh_channels)
WEIGHTS = {
    "lexical": 1.0,
    "text": 1.0,
    "dense_text": 0.5,
    "dense_image": 0.5,
    "dense_label": 0.5,
    "image_image": 1.0,
    "image_text": 0.5,
}

_VECTORS_OF = {"clip": "image", "text": "sem"}  # the store kind whose presence says a channel was indexed
_CHANNEL_NAME = {"clip": "dense channels", "text": "text channel"}
FIGURE_BATCH = 40  # fused things whose figure rows _hits reads at a time
CAPTION_PASSAGE_MAX_WORDS = 40  # longer passages hold more than a caption: they stay text hits
_FIG_REF = re.compile(
    r"\b(fig(?:ure)?\.?|illustration|table|abbildung|diagram)\s*([0-9]+(?:[.\-][0-9]+)*[a-z]?)", re.I
)


# the Figure fields an image hit carries as they are stored (Hit field -> Figure field); a figure field
# that query results should show goes here and on Hit (tests/test_schema.py checks the two agree)
HIT_FIGURE_FIELDS = {
    "figure_kind": "kind",
    "caption": "caption",
    "labels": "labels",
    "ocr_text": "ocr_text",
    "nearby_text": "nearby_text",
    "quality": "quality",
    "rotation": "rotation",
}


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
    rotation: int | None = None  # image hits: 0, or the clockwise turn that made the stored crop upright
    # text hits: figures on the same page or referenced from the passage
    figures: list[LinkedFigure] = field(default_factory=list)
    # other library files with the same bytes as ``path``: the same hit is in each (shown once)
    copies: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# said with hits that only the vector channels found: an LLM (and a user) must not take them for an answer
NO_QUERY_WORD = (
    "no indexed text contains a word of the query: these hits are only the nearest by meaning, and the "
    "manuals may not cover it"
)
# the same, with a source filter: other files of the library may hold the words
NO_QUERY_WORD_IN_SOURCE = (
    "no text of the files matching the source filter contains a word of the query: these hits are only the "
    "nearest by meaning"
)


@dataclass
class SearchResult:
    query: str
    hits: list[Hit]
    channels_used: list[str]
    timings_ms: dict[str, float]
    notes: list[str] = field(default_factory=list)  # what a front end shows as is (no CLI flags in them)
    # channels that could not search, and why: "no_vectors" (the index has none for it), "building" (none
    # committed yet), "unavailable" (its model cannot be loaded), "vectors_lost" (the manifest says they were
    # made, the store has none: its note names `manualrag check --repair`); each front end words its own advice
    channels_off: dict[str, str] = field(default_factory=dict)


def _terms(query: str) -> list[str]:
    return [t for t in re.findall(r"[\w][\w.\-/]*", query.lower()) if len(t) > 1]


# what a marked word may add to a query term (the lexical channel stems: "pump" finds "pumping"): up to 3
# letters after a term of 4 or more ("pumps", "pumping", not "Postscript" for "post"), "s"/"es" after a
# shorter one (not "Format" for "for")
_LONG_ENDING, _SHORT_ENDING = r"\w{0,3}\b", r"(?:e?s)?\b"


@functools.lru_cache(maxsize=256)
def _snippet_patterns(
    terms: tuple[str, ...], joined: tuple[str, ...] = ()
) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """For a query's terms and its pairs of words written as one (``joined``): a finder of their
    occurrences, and a marker of the words they start (with the endings above). Compiled once per query,
    not once per hit."""
    parts = [(_term_pattern(t), len(t)) for t in terms] + [(re.escape(j), len(j)) for j in joined]
    parts.sort(key=lambda p: -p[1])  # the longest first: "bootloader" before "boot"
    alt = "|".join(p for p, _ in parts)
    ends = "|".join(f"(?:{p}){_LONG_ENDING if n >= COMPOUND_PART_MIN else _SHORT_ENDING}" for p, n in parts)
    return re.compile(alt), re.compile(rf"(?i)(?<!\*)\b({ends})")


def _top_first(path: str) -> tuple[int, int, str]:
    """Sort key of library paths: fewer folders first, then shorter, then by name."""
    return (path.count("/"), len(path), path)


def _nearer_top(a: str, b: str) -> bool:
    return _top_first(a) < _top_first(b)


def _term_pattern(term: str) -> str:
    """A query term as a regex; a long word also written apart, as the lexical channel finds it
    (:func:`~manualrag.retriever.lexical.compound_phrases`): "filesystem" also marks "file system",
    "file-system" and a word hyphenated at a line end ("ther- mometer")."""
    n = COMPOUND_PART_MIN
    if not 2 * n <= len(term) <= COMPOUND_WORD_MAX or not term.isalpha():
        return re.escape(term)
    apart = [rf"{re.escape(term[:i])}(?:-\s?|\s){re.escape(term[i:])}" for i in range(n, len(term) - n + 1)]
    return "|".join([re.escape(term), *apart])


def make_snippet(text: str, query: str, width: int = 240) -> str:
    """A window of the passage around the densest query-term area, terms marked with ** (the query's first
    MAX_QUERY_TERMS distinct terms, as the lexical channel searches)."""
    words = [t for t in _terms(query) if len(t) > 2]
    # stopwords ("the", "how", "what") are marked only when the query has nothing else, as lexical searches
    distinct = list(dict.fromkeys([t for t in words if t not in STOPWORDS] or words))[:MAX_QUERY_TERMS]
    # two words the manual may write as one ("boot loader": "bootloader"), as the lexical channel finds them
    joined = tuple(
        a + b
        for a, b in zip(distinct, distinct[1:], strict=False)
        if a.isalpha() and b.isalpha() and len(a + b) <= COMPOUND_WORD_MAX
    )
    terms = tuple(sorted(distinct, key=lambda t: (-len(t), t)))
    # the passage's own markdown bold goes: inside it the marks would nest ("**a **wiring** diagram**")
    flat = " ".join(text.replace("**", "").split())
    if not terms:
        return flat[:width]
    find, mark = _snippet_patterns(terms, joined)
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
        self,
        index_dir: Path,
        cfg: dict[str, Any],
        manifest: Manifest,
        store: Any,
        models: dict[str, Any],
        clip_model: str | None = None,
        text_model: str | None = None,
    ):
        self.index_dir = index_dir
        self.cfg = cfg
        self.manifest = manifest
        self.store = store
        self.models = models  # what the index was built with: {"clip": id|None, "text": id|None}
        # encoders of the queries given instead of the index's (a local copy of the same model, say)
        self._query_override = {"clip": clip_model, "text": text_model}
        self._encoders: dict[str, Any] = {"clip": None, "text": None}  # loaded on first use
        self._failed: dict[str, str | None] = {"clip": None, "text": None}  # why one is not available
        self._off: dict[str, str] = {"clip": "", "text": ""}  # ... as a code of SearchResult.channels_off
        # cold-start costs not yet reported: seconds of open_store (chromadb import included), import
        # (torch + transformers) and load_models (weights, tokenizer); the next search's timings show them
        self._cold: dict[str, float] = {}
        # the vector searches' threads (see _beside; a thread starts on the first submit)
        self._threads = ThreadPoolExecutor(max_workers=SEARCH_THREADS, thread_name_prefix="manualrag-search")

    @classmethod
    def open(
        cls,
        index_dir: Path | str,
        cfg: dict[str, Any] | None = None,
        clip_model: str | None = None,
        text_model: str | None = None,
    ) -> Retriever:
        """Open an index read-only. ``clip_model`` / ``text_model``: encode queries with these models
        instead of the ones the index names (they must produce the same vectors)."""
        from manualrag.config import load_config
        from manualrag.index import Index, require_same_store
        from manualrag.store import LazyStore

        cfg = cfg or load_config()
        layout = Index.require(index_dir)
        require_same_store(layout.root, cfg)
        manifest = Manifest(layout.db, readonly=True)
        # the vector store opens on first use (see LazyStore): a lexical-only query never imports chromadb
        cold: dict[str, float] = {}
        store = LazyStore(layout.root, cfg, cold, create=False)
        models = manifest.get_meta("models") or {}
        r = cls(layout.root, cfg, manifest, store, models, clip_model, text_model)
        r._cold = cold
        return r

    def close(self) -> None:
        self._threads.shutdown(wait=True)
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
        return {role: enc.dtype_reason for role, enc in self._encoders.items() if enc is not None}

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def building(self) -> str | None:
        """ "the index is being built (N of M documents so far)" while an index run holds the lock, else None."""
        run = self.manifest.get_meta("run")
        if not isinstance(run, dict):
            return None
        from manualrag.lock import live_holder

        if live_holder(self.index_dir) is None:
            return None  # a run that died: what is committed is the index
        done = len(self.manifest.documents())
        return f"the index is being built ({done} of {run.get('total', '?')} documents so far)"

    # ------------------------------------------------------------------------------------------- models
    def query_model(self, kind: str) -> str | None:
        """The model that encodes queries for ``kind`` ("clip" or "text"): the one given to :meth:`open`,
        else the one the index was built with."""
        return self._query_override[kind] or self.models.get(kind)

    def reset_models(self, models: dict[str, Any]) -> None:
        """The index now names these models (re-indexed meanwhile): encoders of other models are loaded
        again on the next query, and a channel that was missing gets another chance."""
        if models != self.models:
            self.models = models
            self._encoders = {"clip": None, "text": None}
        self._failed = {"clip": None, "text": None}

    def _encoder(self, which: str, required: bool) -> Any:
        """The query encoder of ``which`` ("clip" or "text"), loaded on first use; None (with the reason kept
        for notes) when the index has no such vectors or the model cannot be loaded, unless ``required``."""
        enc, failed = self._encoders[which], self._failed[which]
        model = self.query_model(which)
        if enc is not None or failed:
            named = self._query_override[which] and not means_no_model(model or "")
            if enc is None and (required or (named and self._off[which] == "unavailable")):
                raise ManualragError(failed)
            return enc
        if model and means_no_model(model):  # --model none: asked to go without
            self._off[which] = "unavailable"
            self._failed[which] = (
                f"no {'CLIP' if which == 'clip' else 'text'} model for queries (model: {model})"
            )
            if required:
                raise ManualragError(self._failed[which])
            return None
        # the messages say what is off in words for every front end (web page, MCP, CLI); each adds its
        # own advice from the code in self._off
        lost = self._lost(which) if model and self.models.get(which) else None
        if lost:
            self._off[which], self._failed[which] = "vectors_lost", lost
            if required:
                raise ManualragError(lost)
            return None
        if not model or not self.models.get(which) or self.store.get(_VECTORS_OF[which]) is None:
            # an index run going on makes CLIP vectors unless it runs without a CLIP model
            run = self.manifest.get_meta("run")
            makes_clip = not isinstance(run, dict) or run.get("clip", True)
            building = self.building() if which == "clip" and makes_clip else None
            if building:
                self._off[which], failed = "building", f"no CLIP vectors yet: {building}"
            elif which == "clip":
                self._off[which] = "no_vectors"
                failed = "the index has no CLIP vectors (it was built " + (
                    "without a CLIP model)"
                    if self.models.get("text")
                    else "without vectors: keyword search only)"
                )
            else:
                self._off[which], failed = "no_vectors", "the index has no text-model vectors"
            self._failed[which] = failed
            if required:
                raise ManualragError(failed)
            return None
        from manualrag.encoder import ClipEncoder, TextEncoder
        from manualrag.errors import QUERY_LEXICAL_ONLY, ModelUnavailableError

        cls = ClipEncoder if which == "clip" else TextEncoder
        try:
            self._import_ml("AutoModel", "AutoProcessor" if which == "clip" else "AutoTokenizer")
            t0 = time.perf_counter()
            try:
                self._encoders[which] = cls.load(model, device=self.cfg["device"], dtype=self.query_dtype)
            finally:
                self._cold["load_models"] = self._cold.get("load_models", 0.0) + time.perf_counter() - t0
        except ModelUnavailableError as exc:
            exc = exc.worded_for(QUERY_LEXICAL_ONLY)  # the ways out of a query, not of `index`
            self._off[which], self._failed[which] = "unavailable", str(exc)
            if required or self._query_override[which]:  # a model named for the queries: no silent fallback
                raise exc from None
            log.info("%s off: %s", _CHANNEL_NAME[which], str(exc).splitlines()[0])  # also in the notes
        return self._encoders[which]

    def _lost(self, which: str) -> str | None:
        """Why the index's vectors of ``which`` ("clip" or "text") are gone from the store although the
        manifest says its documents were embedded (a deleted store folder, an emptied collection, a reset
        server), or None. The manifest decides what should be there; an index still being built is not
        judged."""
        kinds = ("text", "image") if which == "clip" else ("sem",)
        needed = [k for k in kinds if self.manifest.needs_vectors(k)]
        if not needed or self.building() is not None:
            return None
        empty = [self.store.name(k) for k in needed if self.store.count(k) == 0]
        if not empty:
            return None
        what = "CLIP" if which == "clip" else "text-model"
        return (
            f"the {what} vectors of the index in {self.index_dir} are missing from its {self.store.where} "
            f"(collection {', '.join(empty)} absent or empty): run `manualrag check --repair --index-dir "
            f"{shell_arg(self.index_dir)}` to embed them again"
        )

    def _clip_encoder(self, required: bool) -> Any:
        return self._encoder("clip", required)

    def _text_encoder(self, required: bool) -> Any:
        return self._encoder("text", required)

    @property
    def _clip_failed(self) -> str | None:
        return self._failed["clip"]

    @property
    def _text_failed(self) -> str | None:
        return self._failed["text"]

    def _import_ml(self, *names: str) -> None:
        """Import torch and the transformers classes an encoder's load imports, timed apart from the load
        (``--timings`` shows where a cold query goes). Import failures are left to the load to report."""
        t0 = time.perf_counter()
        try:
            import importlib

            importlib.import_module("torch")
            tf = importlib.import_module("transformers")
            for name in names:
                getattr(tf, name)
        except Exception:  # noqa: BLE001 - the encoder's load says what is missing
            pass
        self._cold["import"] = self._cold.get("import", 0.0) + time.perf_counter() - t0

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
        if text is not None and not text.strip():
            text = None  # only spaces: no text
        if not text and image is None:
            raise ManualragError("give a query text or an image (or both)")
        if text and not re.search(r"[^\W_]", text):
            raise ManualragError(f"the query {text[:60]!r} has no word to search for (letters or digits)")
        if image is not None:
            image = _read_image(image)  # before any model is loaded: a bad file fails fast
        if modality not in ("all", "text", "image"):
            raise ManualragError(f"--modality must be all, text or image, not {modality!r}")
        explicit = channels is not None
        if explicit and not channels:
            raise ManualragError(f"no channel given: choose from {', '.join(CHANNELS)}")
        given = list(CHANNELS) if channels is None else list(channels)
        channels = [c.strip().lower() if isinstance(c, str) else c for c in given]  # " Text " is text
        for c, name in zip(given, channels, strict=True):
            if name not in CHANNELS:
                raise ManualragError(f"unknown channel {c!r}: choose from {', '.join(CHANNELS)}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ManualragError(f"k must be a positive number of hits, not {k!r}")
        k = k or self.cfg["retrieve"]["k"]
        n = max(self.cfg["retrieve"]["candidates"], 3 * k)
        timings: dict[str, float] = {"encode": 0.0, "search": 0.0, "fusion": 0.0}
        rankings: dict[str, list[tuple[Key, float]]] = {}
        notes: list[str] = []
        building = self.building()
        if building:
            notes.append(building)
        used: list[str] = []
        off: dict[str, str] = {}
        # (channel, future): each vector search runs on a thread of its own while this one encodes the next
        # query vector and runs the lexical channel (Chroma and SQLite release the GIL); joined before fusion
        vector_searches: list[tuple[str, Any]] = []

        if image is not None and "dense" not in channels:
            raise ManualragError(
                "a query image is searched by the dense (CLIP) channels: add dense to the channels"
            )
        label = text or f"<image {image if isinstance(image, (str, Path)) else 'bytes'}>"
        # a source filter restricts every channel's own search (not the fused candidates): the best hits
        # within the matching files, whatever their rank in the whole library
        docs = self._source_docs(source) if source else None
        if docs == []:
            notes.append(f"no indexed file matches the source filter {source!r}")
            return SearchResult(query=label, hits=[], channels_used=[], timings_ms={}, notes=notes)
        if "dense" in channels:
            try:
                # a query image has only the CLIP channels: without them it would be silently left out
                clip = self._clip_encoder(required=explicit or image is not None)
            except ManualragError as exc:
                self._channel_error(exc, "clip", image is not None)
                raise
            if clip is None:
                notes.append("dense channels off: " + (self._clip_failed or "").splitlines()[0])
                off["dense"] = self._off["clip"]
            else:
                used.append("dense")
                if text:
                    t0 = time.perf_counter()
                    q = clip.embed_texts([clip.fit(text)])[0]
                    timings["encode"] += time.perf_counter() - t0
                    for channel, kind in (
                        ("dense_text", "text"),
                        ("dense_image", "image"),
                        ("dense_label", "image_text"),
                    ):
                        vector_searches.append((channel, self._beside(kind, q, n, docs)))
                if image is not None:
                    t0 = time.perf_counter()
                    qi = clip.embed_images([image])[0]
                    timings["encode"] += time.perf_counter() - t0
                    for channel, kind in (("image_image", "image"), ("image_text", "text")):
                        vector_searches.append((channel, self._beside(kind, qi, n, docs)))

        if "text" in channels and text:
            try:
                enc = self._text_encoder(required=explicit)
            except ManualragError as exc:
                self._channel_error(exc, "text", False)
                raise
            if enc is None:
                if self.query_model("text"):
                    notes.append("text channel off: " + (self._text_failed or "").splitlines()[0])
                    off["text"] = self._off["text"]
            else:
                used.append("text")
                t0 = time.perf_counter()
                q = enc.embed_texts([enc.fit(text)])[0]
                timings["encode"] += time.perf_counter() - t0
                vector_searches.append(("text", self._beside("sem", q, n, docs)))

        # the lexical channel and every row behind the hits come from one snapshot of the manifest, so an
        # index run that updates a document meanwhile shows it whole, before or after (vector hits whose
        # ids the snapshot does not name are dropped in _hits)
        with self.manifest.read_snapshot():
            t0 = time.perf_counter()
            if "lexical" in channels and text:
                lexical = [((t, i), sc) for t, i, sc in lexical_search(self.manifest, text, n, docs)]
                rankings["lexical"] = lexical
                used.insert(0, "lexical")
            for channel, search in vector_searches:  # the vector searches ran meanwhile
                rankings[channel] = search.result()
            timings["search"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            passages = self.manifest.passages(
                {key[1] for res in rankings.values() for key, _ in res if key[0] == "passage"}
            )
            rankings = self._captions_as_figures(rankings, passages)
            rc = self.cfg["retrieve"]
            # a query image alone has only its two CLIP channels, whose cosine spreads are too narrow to
            # standardise reliably; they are fused by rank, image->image first (query by example)
            method = rc["fusion"] if text else "rrf"
            weights = dict(WEIGHTS)
            if rc["weigh_channels"]:  # each vector channel as far as it can be trusted on this library
                for channel, f in channel_weights.factors(
                    self.manifest.get_meta(channel_weights.META_KEY)
                ).items():
                    weights[channel] *= f
            fused = fuse(rankings, weights, method=method, rrf_k=rc["rrf_k"], pool=rc["candidates"])
            if method == "zscore":
                place_of = {("passage", i): (p.doc_path, p.page) for i, p in passages.items()}
                figure_ids = [f.key[1] for f in fused if f.key[0] == "figure"]
                place_of.update(
                    {("figure", i): at for i, at in self.manifest.figure_places(figure_ids).items()}
                )
                fused = page_support(fused, place_of)
                if text and asks_for_picture(text):
                    kinds = self.manifest.figure_kinds(figure_ids)
                    fused = prefer_pictures(fused, {("figure", i) for i, k in kinds.items() if k != "scan"})
            hits = self._hits(fused, text or "", k, modality, source, passages)
            timings["fusion"] += time.perf_counter() - t0
        if hits and "lexical" in rankings and not rankings["lexical"]:
            notes.append(NO_QUERY_WORD if docs is None else NO_QUERY_WORD_IN_SOURCE)
        cold = {key: v for key, v in self._cold.items() if v > 0}
        self._cold.clear()
        return SearchResult(
            query=label,
            hits=hits,
            channels_used=used,
            timings_ms={key: round(v * 1000, 2) for key, v in {**cold, **timings}.items()},
            notes=notes,
            channels_off=off,
        )

    def _channel_error(self, exc: ManualragError, which: str, for_image: bool) -> None:
        """For a channel asked for by name (or needed by a query image) that the index has no vectors for:
        raise a one-line error saying so and naming the channels it does have (else return, and the
        caller re-raises ``exc``)."""
        if self._off[which] != "no_vectors":
            return
        if for_image:
            raise ManualragError(f"{exc}: a query image needs them") from None
        have = {
            "lexical",
            "dense" if self.models.get("clip") else "",
            "text" if self.models.get("text") else "",
        }
        have -= {"", "dense" if which == "clip" else "text"}
        raise ManualragError(f"{exc}; channels it has: {', '.join(sorted(have))}") from None

    def _source_docs(self, source: str) -> list[str] | None:
        """The committed documents whose path matches the glob ``source`` (:func:`glob_match`), or None
        when that is every document: then the channels search unfiltered, as fast as without ``source``."""
        paths = self.manifest.document_paths()
        docs = [p for p in paths if glob_match(p, source)]
        return None if paths and len(docs) == len(paths) else docs

    def _beside(self, kind: str, vec: Any, n: int, docs: list[str] | None = None) -> Any:
        """``_refs(kind, vec, n, docs)`` started on the search threads: a future of its result."""
        self.store.query  # noqa: B018  # opened here, by the caller: first use imports chromadb (not thread-safe)
        return self._threads.submit(self._refs, kind, vec, n, docs)

    def _refs(self, kind: str, vec: Any, n: int, docs: list[str] | None = None) -> list[tuple[Key, float]]:
        """Vector search in one collection (only the records of ``docs`` unless None), mapped to the things
        (passages/figures) the vectors belong to."""
        return [(ids.ref_of(kind, i), score) for i, score in self.store.query(kind, vec, n, docs)[0]]

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

    def _image_file_passages(self, passages: dict[str, Any]) -> dict[str, str]:
        """Passage id -> the figure of its page, for the passages of loose image files among ``passages``."""
        images = self.manifest.image_documents(p.doc_path for p in passages.values())
        if not images:
            return {}
        pages = {(p.doc_path, p.page) for p in passages.values() if p.doc_path in images}
        figure_of: dict[tuple[str, int], str] = {}
        for fid, path, page in self.manifest.figures_on_pages(pages):
            figure_of.setdefault((path, page), fid)
        return {
            pid: figure_of[(p.doc_path, p.page)]
            for pid, p in passages.items()
            if (p.doc_path, p.page) in figure_of
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
        """The hits, best first; ``passages``: every candidate passage by id, read in this query's snapshot.

        Figure rows are read as the walk down ``fused`` reaches them, a batch of the next things at a time:
        the k hits are usually among the first few dozen of the ~150 fused things."""
        figures: dict[str, Any] = {}
        fetched = 0  # fused[:fetched] have had their figure rows read
        hits: list[Hit] = []
        # a loose image file's text (its OCR) is its picture's hit: one hit, found through both, where a
        # trial user saw the same screenshot as a text hit and as an image hit (text-only searches keep it)
        as_image = self._image_file_passages(passages) if modality != "text" else {}
        if as_image:
            figures.update(self.manifest.figures(sorted(set(as_image.values()))))
        image_hit: dict[str, Hit] = {}  # figure id -> its hit shown
        digests: dict[str, str] = {}  # document path -> content digest
        shown: dict[tuple[str, str], Hit] = {}  # (digest, id within the document) -> its hit

        def copy_of(path: str, ref: str, hit: Hit | None = None) -> bool:
            """True (and ``path`` noted on the hit shown) when a file with the same bytes already gave the
            thing ``ref`` of ``path``: a library holding one manual twice shows its hits once, under the copy
            nearest the library's top (``notes.md`` before ``old/notes.md``), the others in ``copies``.
            Else ``hit`` (when given) is the one shown for it."""
            if path not in digests:
                row = self.manifest.document(path)
                digests[path] = row.digest if row is not None else path
            key = (digests[path], ref.split(":", 1)[-1])
            first = shown.get(key)
            if first is None:
                if hit is not None:
                    shown[key] = hit
                return False
            if _nearer_top(path, first.path):  # the hit shown takes this copy's path and id
                first.copies.append(first.path)
                first.path, first.id = path, ref
            else:
                first.copies.append(path)
            first.copies.sort(key=_top_first)
            return True

        for i, f in enumerate(fused):
            if i >= fetched:
                fetched = i + FIGURE_BATCH
                figures.update(
                    self.manifest.figures([g.key[1] for g in fused[i:fetched] if g.key[0] == "figure"])
                )
            kind, ref = f.key
            if kind == "passage" and ref in as_image:
                kind, ref = "figure", as_image[ref]
            if kind == "figure" and ref in image_hit:  # shown already: this route found it too
                seen = image_hit[ref].channels
                for ch, r in f.ranks.items():
                    seen[ch] = min(seen.get(ch, r), r)
                continue
            if kind == "passage":
                p = passages.get(ref)
                if p is None or modality == "image":
                    continue
                # the channels searched the matching files only; this also keeps out the old rows of a
                # file being re-indexed (not yet committed) when the search ran unfiltered
                if source and not glob_match(p.doc_path, source):
                    continue
                hit = Hit(
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
            else:
                g = figures.get(ref)
                if g is None or g.boilerplate or modality == "text":
                    continue
                if source and not glob_match(g.doc_path, source):
                    continue
                hit = Hit(
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
                    crop_path=_abs(self.index_dir, g.crop_path),
                    bbox=list(g.bbox),
                    **{h: _copy(getattr(g, name)) for h, name in HIT_FIGURE_FIELDS.items()},
                )
                image_hit[ref] = hit
            if not copy_of(hit.path, hit.id, hit):
                hits.append(hit)
            if len(hits) >= k:
                break
        # copies of the hits shown among the candidates after them (a copy scores the same, so it is often
        # the next candidate): named on the hit too
        suffixes = {key[1] for key in shown}
        rest = [f.key for f in fused[i + 1 :] if f.key[1].split(":", 1)[-1] in suffixes] if hits else []
        unread = [ref for kind, ref in rest if kind == "figure" and ref not in figures]
        if unread:
            figures.update(self.manifest.figures(unread))
        for kind, ref in rest:
            row = passages.get(ref) if kind == "passage" else figures.get(ref)
            if row is not None and (not source or glob_match(row.doc_path, source)):
                copy_of(row.doc_path, ref)
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


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def _read_image(image: str | Path | bytes | Any) -> Any:
    """The query image decoded (a PIL image), with the guards and one-line reasons of ``index``: a file
    that is not an image, a corrupt one or a decompression bomb is a usage error naming the file."""
    from PIL import Image

    from manualrag.images import decode_first_frame

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, bytes):
        data, name = image, "query image"
    else:
        p = Path(image)
        name = f"query image {p}"
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ManualragError(f"cannot read {name}: {exc.strerror or exc}") from None
    if not data:
        raise ManualragError(f"{name}: empty file (0 bytes)")
    try:
        return decode_first_frame(data)
    except ValueError as exc:
        raise ManualragError(f"{name}: {exc}") from None
