"""Record ids: the one module that builds and parses them.

Every id is deterministic, so re-indexing a document overwrites its records instead of duplicating them::

    doc id          {16 hex of sha256(library-relative POSIX path)}
    passage         {doc_id}:p{page}:{n}        n counted per page from 0
    window          {passage_id}:{tag}{m}       tag "w" (CLIP window) or "s" (text-model window), m from 0
    figure          {doc_id}:f:{16 hex of the figure's content digest}
    figure label    {figure_id}:t               the CLIP text vector of the figure's labels + OCR
    figure text     {figure_id}:s               the text-model vector of the figure's texts
    figure caption  {figure_id}:c               the text-model vector of the figure's caption alone

Vector store records carry these ids; :func:`ref_of` maps one back to the passage or figure it belongs to.
Windows are content-addressed within a document (:func:`content_key`): a window whose text an earlier
window of the same document and channel already has gets no record of its own (see indexer/budget.py).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

DOC_ID_HEX = 16
FIGURE_DIGEST_HEX = 16
CLIP_TAG = "w"  # windows cut for the CLIP text tower
SEM_TAG = "s"  # windows cut for the semantic text model
WINDOW_TAGS = (CLIP_TAG, SEM_TAG)
LABEL_SUFFIX = ":t"
FIGURE_SEM_SUFFIX = ":s"
FIGURE_CAPTION_SUFFIX = ":c"
_FIGURE_SUFFIXES = {
    LABEL_SUFFIX: "figure_label",
    FIGURE_SEM_SUFFIX: "figure_sem",
    FIGURE_CAPTION_SUFFIX: "figure_caption",
}
# vector store record kinds (collections) and the window channel whose ids each holds
VECTOR_KINDS = ("text", "sem", "image", "image_text")
CHANNEL_KIND = {"clip": "text", "sem": "sem"}

_FIGURE = re.compile(r"(?P<doc>[^:]+):f:(?P<digest>[^:]+)")
_PASSAGE = re.compile(r"(?P<doc>[^:]+):p(?P<page>-?\d+):(?P<n>\d+)")
_WINDOW = re.compile(r"(?P<passage>.+):(?P<tag>[ws])(?P<m>\d+)")


def file_digest(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 hex of a file's bytes, read in chunks: a document's content digest (what says a library file
    is the one indexed, for the indexer and for the page viewer alike)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def printable_name(rel: str) -> str:
    """A library-relative path as valid UTF-8 text: bytes of a file name that are not UTF-8 (which Python
    carries as lone surrogates) become ``\\xNN`` escapes, so the name can be stored, hashed and printed.
    The one mapping from a name on disk (or on a command line) to a document's path in the index."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def doc_id(path: str) -> str:
    """Deterministic document id: the first 16 hex digits of sha256 of the library-relative POSIX path."""
    return hashlib.sha256(path.encode("utf-8")).hexdigest()[:DOC_ID_HEX]


def passage_id(doc: str, page: int, n: int) -> str:
    return f"{doc}:p{page}:{n}"


def window_id(passage: str, tag: str, m: int) -> str:
    if tag not in WINDOW_TAGS:
        raise ValueError(f"window tag must be one of {WINDOW_TAGS}, got {tag!r}")
    return f"{passage}:{tag}{m}"


def content_key(text: str) -> str:
    """The content address of a text (16 hex of sha256 of its whitespace-normalised form): identical windows
    of a document share it, and are embedded and stored once, under the id of the first of them."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()[:16]


def figure_id(doc: str, digest: str) -> str:
    return f"{doc}:f:{digest[:FIGURE_DIGEST_HEX]}"


def figure_label_id(figure: str) -> str:
    return figure + LABEL_SUFFIX


def figure_sem_id(figure: str) -> str:
    return figure + FIGURE_SEM_SUFFIX


def figure_caption_id(figure: str) -> str:
    return figure + FIGURE_CAPTION_SUFFIX


@dataclass(frozen=True)
class ParsedId:
    """What an id names. ``kind``: passage | window | figure | figure_label | figure_sem | figure_caption."""

    kind: str
    doc_id: str
    page: int | None = None  # passage, window
    n: int | None = None  # passage: its number on the page
    tag: str | None = None  # window
    m: int | None = None  # window: its number in the passage
    digest: str | None = None  # figure ids: the digest prefix

    @property
    def parent(self) -> str:
        """The passage or figure id this id belongs to (itself for a passage or a figure)."""
        if self.kind in ("passage", "window"):
            return passage_id(self.doc_id, self.page or 0, self.n or 0)
        return figure_id(self.doc_id, self.digest or "")


def parse(rid: str) -> ParsedId:
    """Take an id apart; raises ValueError for a string that is no id of ours."""
    base, kind = rid, "figure"
    if rid[-2:] in _FIGURE_SUFFIXES and _FIGURE.fullmatch(rid[:-2]):
        base, kind = rid[:-2], _FIGURE_SUFFIXES[rid[-2:]]
    m = _FIGURE.fullmatch(base)
    if m:
        return ParsedId(kind, m["doc"], digest=m["digest"])
    m = _PASSAGE.fullmatch(rid)
    if m:
        return ParsedId("passage", m["doc"], page=int(m["page"]), n=int(m["n"]))
    w = _WINDOW.fullmatch(rid)
    if w:
        p = _PASSAGE.fullmatch(w["passage"])
        if p:
            return ParsedId(
                "window", p["doc"], page=int(p["page"]), n=int(p["n"]), tag=w["tag"], m=int(w["m"])
            )
    raise ValueError(f"not a manualrag record id: {rid!r}")


def ref_of(kind: str, vid: str) -> tuple[str, str]:
    """The (ref type, ref id) a vector of store ``kind`` belongs to: ("passage", passage id) for text
    windows, ("figure", figure id) for figure pixels, label texts and figure texts."""
    if kind == "image":
        return ("figure", vid)
    if kind == "image_text":
        return ("figure", vid.removesuffix(LABEL_SUFFIX))
    # text / sem: windows "{passage_id}:w3" / "{passage_id}:s0", or figure texts "{figure_id}:s" / ":c"
    if vid[-2:] in (FIGURE_SEM_SUFFIX, FIGURE_CAPTION_SUFFIX) and _FIGURE.fullmatch(vid[:-2]):
        return ("figure", vid[:-2])
    return ("passage", vid.rsplit(":", 1)[0])


def vector_ids(windows: Iterable[tuple[str, str]], figures: Iterable[str]) -> dict[str, list[str]]:
    """The vector ids that rows (windows as (id, channel), figure ids) may have in the store, by kind."""
    out: dict[str, list[str]] = {k: [] for k in VECTOR_KINDS}
    for wid, channel in windows:
        out[CHANNEL_KIND[channel]].append(wid)
    for fid in figures:
        out["image"].append(fid)
        out["image_text"].append(figure_label_id(fid))
        out["sem"].append(figure_sem_id(fid))
        out["sem"].append(figure_caption_id(fid))
    return out
