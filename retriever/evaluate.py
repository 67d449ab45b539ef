"""`manualrag eval`: retrieval quality on a labelled query file (the format of shared/corpus/queries.jsonl).

A hit is relevant when its file matches the query's ``file`` and any of its pages is listed in ``pages``.
Metrics per query (averaged overall and per ``kind``): recall@1/5/10 (a relevant hit within the top k),
MRR (1 / rank of the first relevant hit, 0 if none in the list), nDCG@10 (binary gains; the ideal list puts
all relevant hits of the top-10 candidates first). Image recall@k: for ``image`` and ``ocr`` queries, whether
an *image* hit from a relevant page is within the top k.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manualrag.errors import ManualragError
from manualrag.retriever.search import Hit, Retriever

KS = (1, 5, 10)


@dataclass
class Query:
    id: str
    query: str
    file: str
    pages: list[int]
    kind: str


def load_queries(path: Path | str) -> list[Query]:
    """The labelled queries of a JSONL file; a line that is not one is a one-line error naming the file,
    the line and what is wrong (a file without any query is one too: its report would be all zeros)."""
    out: list[Query] = []
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ManualragError(f"cannot read {p}: {reason}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(_query_from_line(line, n))
        except ValueError as exc:
            raise ManualragError(f"{p}:{n}: not a valid query line ({exc})") from None
    if not out:
        raise ManualragError(
            f"{p}: no queries (one JSON object a line: query, file, pages, optional kind and id)"
        )
    return out


def _query_from_line(line: str, n: int) -> Query:
    d = json.loads(line)  # json.JSONDecodeError is a ValueError
    if not isinstance(d, dict):
        raise ValueError(f"a JSON object is needed, not {type(d).__name__}")
    missing = [key for key in ("query", "file", "pages") if key not in d]
    if missing:
        raise ValueError("missing " + ", ".join(repr(key) for key in missing))
    query, file, pages = d["query"], d["file"], d["pages"]
    if not isinstance(query, str) or not query.strip():
        raise ValueError("'query' must be a non-empty string")
    if not isinstance(file, str) or not file:
        raise ValueError("'file' must be a path relative to the library")
    if isinstance(pages, int) and not isinstance(pages, bool):
        pages = [pages]
    if (
        not isinstance(pages, list)
        or not pages
        or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in pages)
    ):
        raise ValueError(f"'pages' must be a list of page numbers from 1, not {json.dumps(pages)}")
    kind = d.get("kind", "text")
    if not isinstance(kind, str):
        raise ValueError("'kind' must be a string such as text, image or ocr")
    return Query(str(d.get("id", n)), query, file, pages, kind)


def is_relevant(hit: Hit, q: Query) -> bool:
    same_file = hit.path == q.file or Path(hit.path).name == Path(q.file).name
    return same_file and any(p in q.pages for p in hit.pages)


def _metrics(hits: list[Hit], q: Query) -> dict[str, float]:
    rel = [is_relevant(h, q) for h in hits]
    first = next((i for i, r in enumerate(rel, 1) if r), None)
    m = {f"recall@{k}": float(first is not None and first <= k) for k in KS}
    m["mrr"] = 1.0 / first if first else 0.0
    dcg = sum(1.0 / math.log2(i + 1) for i, r in enumerate(rel[:10], 1) if r)
    n_rel = sum(rel[:10])
    idcg = sum(1.0 / math.log2(i + 1) for i in range(1, n_rel + 1))
    m["ndcg@10"] = dcg / idcg if idcg else 0.0
    return m


def _image_metrics(hits: list[Hit], q: Query) -> dict[str, float]:
    first = next((i for i, h in enumerate(hits, 1) if h.kind == "image" and is_relevant(h, q)), None)
    return {f"recall@{k}": float(first is not None and first <= k) for k in KS}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    if not rows:
        return {}
    return {key: round(sum(r[key] for r in rows) / len(rows), 4) for key in rows[0]}


def evaluate(
    retriever: Retriever, queries: list[Query], k: int = 10, channels: list[str] | None = None
) -> dict[str, Any]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ManualragError(f"k must be a positive cut-off rank, not {k!r}")
    per: list[dict[str, Any]] = []
    by_kind: dict[str, list[dict[str, float]]] = {}
    image_rows: list[dict[str, float]] = []
    used: set[str] = set()
    notes: list[str] = []
    for q in queries:
        res = retriever.search(q.query, k=max(k, 10), channels=channels)
        used.update(res.channels_used)
        notes.extend(n for n in res.notes if n not in notes)
        m = _metrics(res.hits[:k], q)
        by_kind.setdefault(q.kind, []).append(m)
        row: dict[str, Any] = {"id": q.id, "kind": q.kind, **m}
        first = next((i for i, h in enumerate(res.hits, 1) if is_relevant(h, q)), None)
        row["first_relevant_rank"] = first
        row["top"] = f"{res.hits[0].path}:{res.hits[0].page} ({res.hits[0].kind})" if res.hits else None
        if q.kind in ("image", "ocr"):
            im = _image_metrics(res.hits[:k], q)
            image_rows.append(im)
            row["image_recall@10"] = im["recall@10"]
        per.append(row)
    all_rows = [m for rows in by_kind.values() for m in rows]
    with retriever.manifest.read_snapshot():
        indexed = set(retriever.manifest.documents())
    names = {Path(d).name for d in indexed}
    absent = [q.file for q in queries if q.file not in indexed and Path(q.file).name not in names]
    if absent:  # the wrong index, or a library indexed without these files: their queries score 0
        notes.append(
            f"{len(absent)} of {len(queries)} queries name a file the index does not hold "
            f"(e.g. {absent[0]}): is this the index of their library?"
        )
    return {
        "overall": _mean(all_rows),
        "by_kind": {kind: _mean(rows) for kind, rows in sorted(by_kind.items())},
        "image_recall": _mean(image_rows),
        "n": len(queries),
        # the channels that searched, not the ones asked for: on an index without CLIP vectors the
        # figures are not the dense channel's, and the notes say why
        "channels": [c for c in (channels or ["dense", "text", "lexical"]) if c in used],
        "notes": notes,
        "queries": per,
    }


def format_table(report: dict[str, Any]) -> str:
    cols = ["recall@1", "recall@5", "recall@10", "mrr", "ndcg@10"]
    lines = [f"channels: {','.join(report['channels'])}   queries: {report['n']}", ""]
    lines.append(f"{'':<14}" + "".join(f"{c:>11}" for c in cols) + f"{'n':>5}")
    counts: dict[str, int] = {}
    for q in report["queries"]:
        counts[q["kind"]] = counts.get(q["kind"], 0) + 1
    rows = [("overall", report["overall"], report["n"])] + [
        (kind, m, counts.get(kind, 0)) for kind, m in report["by_kind"].items()
    ]
    for name, m, n in rows:
        lines.append(f"{name:<14}" + "".join(f"{m.get(c, 0):>11.3f}" for c in cols) + f"{n:>5}")
    im = report["image_recall"]
    if im:
        lines.append(
            f"{'image hits':<14}"
            + "".join(f"{im.get(c, 0):>11.3f}" for c in cols[:3])
            + f"{'':>22}"
            + f"{sum(1 for q in report['queries'] if q['kind'] in ('image', 'ocr')):>5}"
        )
    lines += [f"note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines)
