"""Chunking: text blocks → parent passages → short windows that fit the encoder ("embed small, return big").

``make_passages`` merges a document's consecutive text blocks (same page, heading, OCR-ness and suspect
reason) into paragraphs of up to ~1,200 characters; these are what a hit returns as context.

``make_windows`` cuts passages into windows that FIT the encoder's token limit as its own tokenizer counts
them (CLIP: 77, SigLIP: 64, special tokens included), cutting at sentence ends where it can, at word
boundaries inside an over-long sentence, and by characters inside an over-long "word" (a hash, a URL).
Consecutive windows of a passage overlap by about ``overlap_tokens`` worth of trailing sentence(s) or words.
Window texts are raw substrings of the passage text (no prefix).

It is built for whole manuals (~20k windows for 1,000 pages): every tokenizer call is batched over all
passages at once, token counts of sentences/words are added up (exact for CLIP/BERT-style tokenizers,
which split on whitespace first) and every window is checked with one final batched count; the rare
window a sum under-estimates is re-cut exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from manualrag import ids
from manualrag.models import BBox, Document, Passage, TextBlock, Window

CountTokens = Callable[[list[str]], list[int]]

MAX_PASSAGE_CHARS = 1200
# passages up to this many characters per token of budget are first counted whole (most then fit);
# only a speed-up: the windows are the same either way for tokenizers that split on whitespace
_LIKELY_FIT_CHARS_PER_TOKEN = 5

# sentence end: terminal punctuation (+ closing quotes/brackets) followed by whitespace; matched from the
# start of a run without backtracking into it (a run of 60,000 dots took 25 s: quadratic in its length)
_SENT_END = re.compile(r"(?<![.!?…])[.!?…]++[\"'”’)\]]*+(?=\s)|[。！？]+[」』）”’]*")
_CJK_END = frozenset("。！？")
_NEXT_STARTS_SENTENCE = re.compile(r"\s+[\"'“‘(\[•·\-–*]?[A-Z0-9À-Þ]")
_PREV_WORD = re.compile(r"(\S+)$")
_NEXT_WORD = re.compile(r"\s+[\"'“‘(\[•·\-–*]?\w")
_WORD = re.compile(r"\S+")
# "Fig. 3", "e.g. the", "No. 4", "approx. 5 mm" do not end a sentence
_ABBREVIATIONS = frozenset(
    "fig figs e.g eg i.e ie no nos approx ca vs cf ref refs eq eqs sec ch chap pp p pg vol art para "
    "incl dept mr mrs ms dr prof st nr tab".split()
)


# ----------------------------------------------------------------------------------------------------
# sentences
# ----------------------------------------------------------------------------------------------------


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """(start, end) spans of the sentences in ``text[start:end]``, whitespace trimmed, covering every
    non-whitespace character. Line breaks always end a sentence (they join blocks and list items)."""
    end = len(text) if end is None else end
    cuts: list[int] = []
    for m in _SENT_END.finditer(text, start, end):
        if text[m.start()] in _CJK_END:  # CJK sentences end without a space after them
            pass
        elif text[m.start()] == "." and m.end() - m.start() == 1:  # a single full stop: not after "Fig" / "a"
            prev = _PREV_WORD.search(text, max(start, m.start() - 24), m.start())
            word = prev.group(1).lower().lstrip("([\"'") if prev else ""
            if len(word) < 2 or word in _ABBREVIATIONS:
                continue
            if not _NEXT_WORD.match(text, m.end(), end):
                continue
        elif not _NEXT_STARTS_SENTENCE.match(text, m.end(), end):
            continue
        cuts.append(m.end())
    pos = text.find("\n", start, end)
    while pos != -1:
        cuts.append(pos)
        pos = text.find("\n", pos + 1, end)
    cuts.sort()
    spans: list[tuple[int, int]] = []
    prev_cut = start
    for cut in [*cuts, end]:
        s, e = _trim(text, prev_cut, cut)
        if s < e:
            spans.append((s, e))
        prev_cut = cut
    return spans


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e


# ----------------------------------------------------------------------------------------------------
# passages
# ----------------------------------------------------------------------------------------------------


def _split_chars(text: str, max_chars: int) -> list[str]:
    """``text`` in pieces of at most ~max_chars, cut at sentence ends, else spaces, else anywhere."""
    pieces: list[str] = []
    cur_s = cur_e = -1
    for s, e in sentence_spans(text):
        parts = [(s, e)]
        if e - s > max_chars:  # a very long sentence: cut at word boundaries (or inside a huge word)
            parts = []
            for m in _WORD.finditer(text, s, e):
                ws, we = m.span()
                while we - ws > max_chars:
                    parts.append((ws, ws + max_chars))
                    ws += max_chars
                parts.append((ws, we))
        for ps, pe in parts:
            if cur_s < 0:
                cur_s, cur_e = ps, pe
            elif pe - cur_s <= max_chars:
                cur_e = pe
            else:
                pieces.append(text[cur_s:cur_e])
                cur_s, cur_e = ps, pe
    if cur_s >= 0:
        pieces.append(text[cur_s:cur_e])
    return pieces


def _union(boxes: Sequence[BBox]) -> BBox:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


# ----------------------------------------------------------------------------------------------------
# words cut at a line end
# ----------------------------------------------------------------------------------------------------

# a word cut by a hyphen (or Unicode hyphen, soft hyphen) at a line end and the line that goes on with it:
# "Compu-\ntational", "read-\nonly"; matched from a word's start without backtracking into it (linear in
# the text; was quadratic in a word's length)
_CUT = re.compile(r"(?<![^\W\d_])([^\W\d_]++)([-\u2010\u00ad])\n([^\W\d_]++)")
_LETTERS = re.compile(r"[^\W\d_]+")
_COMPOUND = re.compile(r"(?<![^\W\d_])[^\W\d_]++(?:-[^\W\d_]++)+")


class Vocabulary(NamedTuple):
    """The words a document writes whole, and its hyphenated compounds (lower case), its cut words aside."""

    words: frozenset[str]
    compounds: frozenset[str]

    @classmethod
    def of(cls, texts: Sequence[str]) -> Vocabulary:
        # one lower-cased text (blocks apart by a blank line, which no cut spans): 3x faster than per block
        whole = _CUT.sub(" ", "\n\n".join(texts).lower())
        return cls(frozenset(_LETTERS.findall(whole)), frozenset(_COMPOUND.findall(whole)))


def _has_cut(text: str) -> bool:
    """Whether ``text`` may hold a word cut at a line end (a cheap test before the regex of :data:`_CUT`)."""
    return "-\n" in text or "\u2010\n" in text or "\u00ad\n" in text


def join_cut_words(text: str, vocab: Vocabulary) -> str:
    """``text`` with the words hyphenated at a line end written whole, as the document writes them: without
    the hyphen when it has the whole word elsewhere ("Compu-/tational" -> "Computational"), with it when it
    has the compound ("read-/only" -> "read-only") or both halves as words of their own ("data-/driven");
    else without (a cut word: "trian-/gulated"). A next line that starts with a capital is left alone (a
    name: "IIT-/KANPUR"). Both halves were words of their own to the lexical index and the text model."""

    def whole(m: re.Match[str]) -> str:
        a, hyphen, b = m.groups()
        if hyphen == "\u00ad":  # a soft hyphen marks where a word was cut
            return a + b
        if not b[0].islower():
            return m.group(0)
        if (a + b).lower() in vocab.words:
            return a + b
        if f"{a}-{b}".lower() in vocab.compounds or (a.lower() in vocab.words and b.lower() in vocab.words):
            return f"{a}-{b}"
        return a + b

    return _CUT.sub(whole, text) if _has_cut(text) else text


def make_passages(doc: Document, max_chars: int = MAX_PASSAGE_CHARS) -> list[Passage]:
    """Parent passages of a document, in reading order.

    Consecutive blocks on the same page under the same heading are merged (joined by a line break) up to
    ~``max_chars``; never across pages, headings, OCR/non-OCR or different suspect reasons. A block longer
    than ``max_chars`` is cut at sentence ends. Words hyphenated at a line end are written whole
    (:func:`join_cut_words`). Ids: :func:`manualrag.ids.passage_id`.
    """
    vocab = Vocabulary.of([b.text for b in doc.blocks])
    doc_id = ids.doc_id(doc.path)
    out: list[Passage] = []
    group: list[tuple[str, BBox]] = []
    group_block: TextBlock | None = None
    group_len = 0

    def flush() -> None:
        nonlocal group, group_len
        if group and group_block is not None:
            b = group_block
            out.append(
                Passage(
                    passage_id="",  # numbered per page by _without_stubs
                    doc_path=doc.path,
                    page=b.page,
                    bbox=_union([bb for _, bb in group]),
                    heading=b.heading,
                    text="\n".join(t for t, _ in group),
                    suspect=b.suspect,
                    ocr=b.ocr,
                )
            )
        group, group_len = [], 0

    for block in doc.blocks:
        text = join_cut_words(block.text.strip(), vocab)
        if not text:
            continue
        same = group_block is not None and (
            (block.page, block.heading, block.ocr, block.suspect)
            == (group_block.page, group_block.heading, group_block.ocr, group_block.suspect)
        )
        if not same:
            flush()
            group_block = block
        bbox = tuple(block.bbox)  # type: ignore[assignment]
        for piece in _split_chars(text, max_chars) if len(text) > max_chars else [text]:
            if group and group_len + 1 + len(piece) > max_chars:
                flush()
            group.append((piece, bbox))  # type: ignore[arg-type]
            group_len += len(piece) + (1 if group_len else 0)
    flush()
    return _without_stubs(out, doc_id)


# a passage that is nothing but a page number ("2", "iv", "Page 3 of 40")
_PAGE_NUMBER = re.compile(r"(?:page\s+)?(?:\d{1,4}|[ivxlcdm]{1,7})(?:\s*(?:/|of)\s*\d{1,4})?", re.IGNORECASE)
STUB_CHARS = 24  # a passage of at most this many characters and two words is a label, not content


def _without_stubs(passages: list[Passage], doc_id: str) -> list[Passage]:
    """Passages that say nothing on their own leave the list: a lone page number is dropped, and a label
    of one or two words ("Chapter 6", "Table 3", a section number set apart from its title) joins the
    passage that follows it on its page (same OCR and suspect status), under that passage's heading. Alone
    they matched every query near them in meaning: a query on a subject the manuals lack got eight "Chapter
    N" hits in its top ten. Then each passage gets its id, numbered per page."""
    out: list[Passage] = []
    label: Passage | None = None
    for p in passages:
        text = p.text.strip()
        if _PAGE_NUMBER.fullmatch(text):
            continue
        if label is not None:
            if (label.page, label.ocr, label.suspect) == (p.page, p.ocr, p.suspect):
                p.text, p.bbox = label.text + "\n" + p.text, _union([label.bbox, p.bbox])
            else:
                out.append(label)
            label = None
        if len(text) <= STUB_CHARS and len(text.split()) <= 2:
            label = p
            continue
        out.append(p)
    if label is not None:
        out.append(label)
    per_page: dict[int, int] = {}
    for p in out:
        n = per_page.get(p.page, 0)
        per_page[p.page] = n + 1
        p.passage_id = ids.passage_id(doc_id, p.page, n)
    return out


# ----------------------------------------------------------------------------------------------------
# windows
# ----------------------------------------------------------------------------------------------------


class _Counter:
    """count_tokens without the special tokens, batched, with a call/text tally (for benchmarks)."""

    def __init__(self, count_tokens: CountTokens):
        self._count = count_tokens
        self.special = count_tokens([""])[0]
        self.calls = 1
        self.texts = 1

    def __call__(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        self.calls += 1
        self.texts += len(texts)
        counts = self._count(texts)
        if len(counts) != len(texts):
            raise ValueError(f"count_tokens returned {len(counts)} counts for {len(texts)} texts")
        return [c - self.special for c in counts]


class _Span(NamedTuple):
    """A piece of a passage's text, with its token count (special tokens excluded)."""

    start: int
    end: int
    tokens: int


class _Plan(NamedTuple):
    """A window being planned: text[start:end], where text[start:core] repeats the previous window."""

    start: int
    end: int
    core: int


class _Core(NamedTuple):
    """Consecutive units of a passage that make one window's new content."""

    first: int  # unit index
    last: int
    tokens: int
    start: int  # character offset


class _WordOverlap(NamedTuple):
    """A window whose overlap repeats the last ``k`` words of the previous core (exact count pending)."""

    passage: int
    window: int
    prev_start: int  # character offset of the previous core
    k: int
    target: int  # tokens the overlap may take


_PIECE_FRACTIONS = (0.5, 0.7, 0.8, 0.88, 0.94, 1.0, 1.06, 1.12, 1.25, 1.4)


def _char_pieces(text: str, s: int, e: int, limit: int, count: _Counter) -> list[_Span]:
    """Cut text[s:e] (one over-long 'word': a hash, a URL, CJK text) into pieces of at most ``limit``
    tokens: per piece, one batched count of a few candidate lengths around the word's chars-per-token."""
    n_all = count([text[s:e]])[0]
    if n_all <= limit:
        return [_Span(s, e, n_all)]
    est = limit * (e - s) / n_all  # characters per piece at the word's average rate
    pieces: list[_Span] = []
    pos = s
    while pos < e:
        cands = sorted({min(e, pos + max(1, int(est * f))) for f in _PIECE_FRACTIONS})
        fit = [(c, n) for c, n in zip(cands, count([text[pos:c] for c in cands]), strict=True) if n <= limit]
        end, n = fit[-1] if fit else _longest_prefix(text, pos, cands[0], limit, count)
        pieces.append(_Span(pos, end, n))
        pos = end
    return pieces


def _longest_prefix(text: str, pos: int, hi: int, limit: int, count: _Counter) -> tuple[int, int]:
    """The longest text[pos:end] with end <= hi that fits ``limit`` (binary search; at least one char)."""
    best = (pos + 1, count([text[pos : pos + 1]])[0])
    lo = pos + 2
    while lo <= hi:
        mid = (lo + hi) // 2
        n = count([text[pos:mid]])[0]
        if n <= limit:
            best, lo = (mid, n), mid + 1
        else:
            hi = mid - 1
    return best


def _exact_split(text: str, s: int, e: int, limit: int, count: _Counter) -> list[tuple[int, int]]:
    """Cut text[s:e] into spans of at most ``limit`` tokens, each count checked (slow, exact path)."""
    words = [m.span() for m in _WORD.finditer(text, s, e)]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        ws = words[i][0]
        if count([text[ws : words[i][1]]])[0] > limit:  # one word alone does not fit
            spans.extend((a, b) for a, b, _ in _char_pieces(text, ws, words[i][1], limit, count))
            i += 1
            continue
        lo, hi = i, len(words) - 1  # the longest run of words from i that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count([text[ws : words[mid][1]]])[0] <= limit:
                lo = mid
            else:
                hi = mid - 1
        spans.append((ws, words[lo][1]))
        i = lo + 1
    return spans


def make_windows(
    passages: Sequence[Passage],
    count_tokens: CountTokens,
    max_tokens: int,
    overlap_tokens: int = 12,
    tag: str = ids.CLIP_TAG,
) -> list[Window]:
    """Windows of every passage that fit ``max_tokens`` as ``count_tokens`` measures them.

    ``count_tokens(texts)`` must count special tokens too (``ClipEncoder.count_tokens`` does). A passage
    that fits is one window; longer ones are cut at sentence ends (words inside an over-long sentence,
    characters inside an over-long word) and consecutive windows share about ``overlap_tokens`` tokens of
    trailing sentences/words. Ids: :func:`manualrag.ids.window_id` (``tag``: ``CLIP_TAG`` or ``SEM_TAG``).
    """
    passages = list(passages)
    if not passages:
        return []
    count = _Counter(count_tokens)
    budget = max_tokens - count.special  # content tokens per window
    if budget < 2:
        raise ValueError(f"max_tokens={max_tokens} leaves no room next to {count.special} special tokens")
    overlap = max(0, min(int(overlap_tokens), budget // 3))
    core_budget = budget - overlap  # new content per window, leaving room for the overlap

    texts = [p.text for p in passages]
    bounds = [_trim(t, 0, len(t)) for t in texts]
    # windows per passage as (start, end, core start) spans into the passage text; start < core start
    # when the window repeats the end of the previous one
    plans: list[list[_Plan]] = [[] for _ in passages]
    # 1. a passage that likely fits (by its length) is counted whole: if it fits, it is one window
    likely = [i for i, (s, e) in enumerate(bounds) if 0 < e - s <= _LIKELY_FIT_CHARS_PER_TOKEN * budget]
    for i, n in zip(likely, count([texts[i][slice(*bounds[i])] for i in likely]), strict=True):
        if n <= budget:
            plans[i] = [_Plan(*bounds[i], bounds[i][0])]
    # 2. sentences of the others, counted in one batch; if they add up to the budget: one window (like every
    #    window, it is checked with an exact count at the end)
    rest = [i for i, (s, e) in enumerate(bounds) if s < e and not plans[i]]
    sents = [(i, s, e) for i in rest for s, e in sentence_spans(texts[i], *bounds[i])]
    sent_n = count([texts[i][s:e] for i, s, e in sents])
    total = dict.fromkeys(rest, 0)
    for (i, _, _), n in zip(sents, sent_n, strict=True):
        total[i] += n
    long_ids = []
    for i in rest:
        if total[i] <= budget:
            plans[i] = [_Plan(*bounds[i], bounds[i][0])]
        else:
            long_ids.append(i)

    # 3. units of the long passages: sentences; an over-long sentence → words; an over-long word →
    #    character pieces
    units: dict[int, list[_Span]] = {i: [] for i in long_ids}
    big = [(k, i, s, e) for k, ((i, s, e), n) in enumerate(zip(sents, sent_n, strict=True)) if n > budget]
    words = [(k, *m.span()) for k, i, s, e in big for m in _WORD.finditer(texts[i], s, e)]
    word_n = count([texts[sents[k][0]][ws:we] for k, ws, we in words])
    pieces: dict[int, list[_Span]] = {}
    for (k, ws, we), n in zip(words, word_n, strict=True):
        if n > core_budget:
            pieces.setdefault(k, []).extend(_char_pieces(texts[sents[k][0]], ws, we, core_budget, count))
        else:
            pieces.setdefault(k, []).append(_Span(ws, we, n))
    for k, ((i, s, e), n) in enumerate(zip(sents, sent_n, strict=True)):
        if i not in units:
            continue
        if n > budget:  # pack its words into pieces of at most core_budget tokens
            cur: list[int] | None = None
            for ws, we, wn in pieces.get(k, []):
                if cur is not None and cur[2] + wn <= core_budget:
                    cur[1], cur[2] = we, cur[2] + wn
                else:
                    if cur is not None:
                        units[i].append(_Span(cur[0], cur[1], cur[2]))
                    cur = [ws, we, wn]
            if cur is not None:
                units[i].append(_Span(cur[0], cur[1], cur[2]))
        else:
            units[i].append(_Span(s, e, n))

    # 4. cores: consecutive units up to core_budget (a unit above it, up to budget, stands alone)
    # 5. overlaps: trailing units of the previous core, else trailing words, up to the room left
    word_ov: list[_WordOverlap] = []
    for i in long_ids:
        cores: list[_Core] = []
        us = units[i]
        for u, (s, _e, n) in enumerate(us):
            if cores and cores[-1].tokens + n <= core_budget:
                cores[-1] = cores[-1]._replace(last=u, tokens=cores[-1].tokens + n)
            else:
                cores.append(_Core(u, u, n, s))
        plan: list[_Plan] = []
        for j, (_first, last, cn, cs) in enumerate(cores):
            start = cs
            target = min(overlap, budget - cn)
            if j > 0 and target > 0:
                pf, pl = cores[j - 1].first, cores[j - 1].last
                taken, u = 0, pl
                while u >= pf and taken + us[u][2] <= target:  # whole trailing sentences
                    taken += us[u][2]
                    u -= 1
                if u < pl:
                    start = us[u + 1][0]
                else:  # the last sentence is too long to repeat: repeat its last few words instead
                    ls, le, ln = us[pl]
                    n_words = max(1, len(_WORD.findall(texts[i], ls, le)))
                    k = max(1, int(0.85 * target * n_words / max(ln, 1)))  # a bit under: fewer retries
                    if k < n_words or pl > pf:
                        word_ov.append(_WordOverlap(i, j, cores[j - 1].start, k, target))
            plan.append(_Plan(start, us[last].end, cs))
        plans[i] = plan

    # exact counts for the word overlaps, shrinking those a per-sentence ratio over-estimated
    pending = word_ov
    for _ in range(4):
        if not pending:
            break
        starts = []
        for i, j, prev_start, k, _target in pending:
            prev_end = plans[i][j - 1][1]
            tail = [m.start() for m in _WORD.finditer(texts[i], prev_start, prev_end)]
            starts.append(tail[-k] if k < len(tail) else None)
        ns = count(
            [
                texts[i][st : plans[i][j - 1][1]] if st is not None else ""
                for (i, j, *_), st in zip(pending, starts, strict=True)
            ]
        )
        retry = []
        for (i, j, prev_start, k, target), st, n in zip(pending, starts, ns, strict=True):
            if st is None:
                continue
            if n <= target:
                plans[i][j] = plans[i][j]._replace(start=st)
            elif k > 1:
                retry.append(
                    _WordOverlap(i, j, prev_start, max(1, min(k - 1, int(k * target / max(n, 1)))), target)
                )
        pending = retry

    # 6. check every window with one batched count; re-cut the rare one a sum under-estimated
    flat = [(i, *span) for i, plan in enumerate(plans) for span in plan]
    flat_n = count([texts[i][s:e] for i, s, e, _ in flat])
    out_spans: list[list[_Span]] = [[] for _ in passages]
    for (i, s, e, core), n in zip(flat, flat_n, strict=True):
        if n <= budget:
            out_spans[i].append(_Span(s, e, n))
            continue
        if core > s:  # drop the repeated part first
            n = count([texts[i][core:e]])[0]
            if n <= budget:
                out_spans[i].append(_Span(core, e, n))
                continue
        for cs, ce in _exact_split(texts[i], core, e, budget, count):
            out_spans[i].append(_Span(cs, ce, count([texts[i][cs:ce]])[0]))

    windows: list[Window] = []
    for p, text, spans in zip(passages, texts, out_spans, strict=True):
        for m, (s, e, n) in enumerate(spans):
            windows.append(
                Window(
                    window_id=ids.window_id(p.passage_id, tag, m),
                    passage_id=p.passage_id,
                    text=text[s:e],
                    n_tokens=n + count.special,
                )
            )
    return windows
