"""Stored vectors a re-extracted document can reuse instead of embedding its inputs again.

A document indexed again (the file edited: same path; or renamed/moved: a document that vanished in the same
run had the same content digest) mostly holds the same texts and figures as its old version. Its old records'
vectors are read from the store and keyed by what the model was given, so the pipeline embeds only the inputs
it has not seen:

* a text record: (the vector identity, the store kind, the text), the kind standing for the channel (CLIP
  windows ``text``, CLIP figure labels ``image_text``, the text model ``sem``). A figure's texts are keyed
  before ``fit()`` cuts them to the model's length: the cut is a function of the text and the tokenizer, which
  the identity fixes, so equal texts are equal inputs;
* a figure's pixels: (the vector identity, ``image``, figure digest, rotation, crop width, crop height): the
  digest names the image (or the render's bytes), the rotation and crop size the render the model reads.

The vector identity (:func:`identity`) is what else decides a vector: the model id, its checkpoint's
fingerprint (weights and config files, or the hub snapshot), its text length, and the dtype it ran in (with
the device when not float32). Each document records the identities of its vectors, by model role
(``documents.vector_identity``); a document's old vectors are offered for reuse only when its record for the
role is exactly this run's identity: another checkpoint, dtype or precision never matches, and one run in
another dtype leaves every other document reusable. A document indexed before documents recorded this goes
by the index-wide record (manifest meta :data:`META_KEY`: every identity the index's vectors have had), and
only when that holds one identity. int8 vectors are never reused, either way (an int8 vector depends on the
texts batched with it).

Only a document committed when the run began is read: a write cut short (the documents row out) may have
left new vectors under ids its old rows still name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from manualrag import ids
from manualrag.models import Figure

if TYPE_CHECKING:
    from manualrag.manifest import FigureRow, Manifest, WindowRow
    from manualrag.store import VectorStore

META_KEY = "vector_identity"  # manifest meta: {role: [identity, ...]} of the vectors the index holds
# most vectors read ahead for renamed documents (their old versions are removed before the new ones are
# embedded): 200k vectors of 512 floats are ~400 MB
MAX_VECTORS = 200_000
ROLE_KINDS = {"clip": ("text", "image", "image_text"), "text": ("sem",)}
UNKNOWN = "unknown"  # vectors whose identity was not recorded: never reused
KIND_ROLE = {kind: role for role, kinds in ROLE_KINDS.items() for kind in kinds}

Key = tuple[Any, ...]


def identity(enc: Any) -> str:
    """What decides an encoder's vectors besides its input, as one string: model id, checkpoint
    fingerprint, text length, dtype (and device unless float32)."""
    from manualrag.encoder import _model_fingerprint

    dtype = enc.dtype_name
    return json.dumps(
        {
            "model": enc.model_id,
            "checkpoint": _model_fingerprint(enc.model_id),
            "max_tokens": int(enc.max_tokens),
            "dtype": dtype,
            "device": None if dtype == "float32" else str(enc.device).split(":")[0],
        },
        sort_keys=True,
    )


def reusable(ident: str | None) -> bool:
    """Whether vectors of this identity may be reused: known, and not int8."""
    if not ident:
        return False
    try:
        return json.loads(ident).get("dtype") != "int8"
    except (ValueError, AttributeError):
        return False


def merged_identities(
    current: dict[str, str], before: dict[str, list[str]] | None, keeps_others: bool
) -> dict[str, list[str]]:
    """The identities of the index's vectors once this run's are in: this run's, plus those recorded before
    when the index keeps vectors this run does not redo (``keeps_others``; vectors of a role recorded by no
    one, an index made before identities were, count as :data:`UNKNOWN`); a role this run does not embed
    keeps its record."""
    out = {role: list(v) for role, v in (before or {}).items() if keeps_others}
    for role, ident in current.items():
        had = set(out.get(role) or ([UNKNOWN] if keeps_others else []))
        out[role] = sorted(had | {ident})
    return out


def doc_identities(before: dict[str, str], after: dict[str, str]) -> dict[str, list[str]]:
    """What a document records of the vectors it was given (DocRow.vector_identity): each model's identity
    before and after embedding it (two when a float32 fallback after NaN happened meanwhile)."""
    return {role: sorted({ident, after.get(role, ident)}) for role, ident in before.items()}


def reusable_identities(
    run: dict[str, str], recorded: dict[str, list[str]] | None, index: dict[str, str | None]
) -> dict[str, str]:
    """role -> identity, for the models whose stored vectors of one document this run may reuse: where the
    document's vectors have exactly this run's identity (``run``: this run's reusable identities). A document
    that recorded none (indexed before documents did) goes by the index's record, ``index``: role -> the one
    identity of all the index's vectors before this run, or None (mixed or unknown)."""
    out = {}
    for role, ident in run.items():
        had = recorded.get(role) if recorded is not None else [index.get(role) or UNKNOWN]
        if had == [ident]:
            out[role] = ident
    return out


def stored_identity(meta: dict[str, list[str]] | None, role: str) -> str | None:
    """The one identity of ``role``'s stored vectors, or None when unknown, mixed or not reusable."""
    idents = (meta or {}).get(role) or []
    if len(idents) != 1 or not reusable(idents[0]):
        return None
    return idents[0]


# ---------------------------------------------------------------------------------------------- the keys
def window_key(ident: str, kind: str, text: str) -> Key:
    return (ident, kind, text)


def image_key(ident: str, fig: Figure) -> Key:
    return (ident, "image", fig.digest, int(fig.rotation), int(fig.width), int(fig.height))


def label_key(ident: str, fig: Figure) -> Key:
    """The CLIP label vector's key: the figure's label text before ``fit()``."""
    return (ident, "image_text", fig.label_text)


def sem_key(ident: str, text: str) -> Key:
    """A text-model vector's key (a window's text, or a figure text before ``fit()``)."""
    return (ident, "sem", text)


def figure_sem_text(fig: Figure) -> str:
    """What the text model reads for a figure (its ``:s`` record): caption, labels, OCR, then heading and
    nearby text (its ``:c`` record reads the caption alone)."""
    parts = [fig.caption, " ".join(fig.labels), fig.ocr_text, fig.heading, fig.nearby_text]
    return "\n".join(p.strip() for p in parts if p and p.strip())


# ------------------------------------------------------------------------------------------ old records
def _keys_of(
    windows: Iterable[WindowRow], figures: Iterable[FigureRow], idents: dict[str, str]
) -> dict[str, dict[str, Key]]:
    """Store kind -> {vector id: reuse key} of old rows, for the roles with a reusable identity."""
    out: dict[str, dict[str, Key]] = {kind: {} for kind in KIND_ROLE}
    clip, text = idents.get("clip"), idents.get("text")
    for w in windows:
        kind = ids.CHANNEL_KIND[w.channel]
        ident = idents.get(KIND_ROLE[kind])
        if ident:
            out[kind][w.window_id] = window_key(ident, kind, w.text)
    for f in figures:
        if f.boilerplate:
            continue  # no vectors
        fid = f.figure_id
        if clip:
            out["image"][fid] = image_key(clip, f)
            if f.label_text.strip():
                out["image_text"][ids.figure_label_id(fid)] = label_key(clip, f)
        if text:
            full, caption = figure_sem_text(f), f.caption.strip()
            if full:
                out["sem"][ids.figure_sem_id(fid)] = sem_key(text, full)
            if caption:
                out["sem"][ids.figure_caption_id(fid)] = sem_key(text, caption)
    return out


def count_vectors(manifest: Manifest, path: str) -> int:
    """At most how many vectors ``path``'s rows have in the store."""
    return sum(len(v) for v in manifest.vector_ids(path).values())


def old_vectors(
    manifest: Manifest, store: VectorStore, path: str, idents: dict[str, str]
) -> dict[Key, np.ndarray]:
    """Reuse key -> stored vector, for the records the manifest holds for ``path`` (its old version).

    ``idents``: role -> the identity of the document's stored vectors of that role, where this run may
    reuse them (see :func:`reusable_identities`); a role without one contributes nothing. Vectors that are not finite unit
    vectors (a damaged store) are left out: their inputs are embedded again."""
    if not idents:
        return {}
    windows = list(manifest.windows_of_doc(path))
    figures = manifest.figures_of_doc(path)
    out: dict[Key, np.ndarray] = {}
    for kind, keys in _keys_of(windows, figures, idents).items():
        if not keys:
            continue
        for vid, vec in store.vectors(kind, list(keys)).items():
            if vec.ndim == 1 and np.isfinite(vec).all() and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-3:
                out[keys[vid]] = vec
    return out
