"""Run as ``python -m tests.faithfulness_check MODEL_DIR FAMILY CORPUS`` (a child of tests/test_numerics.py,
so that the environment, OMP_THREAD_LIMIT included, is the one torch starts with).

Embeds the corpus passages (each PDF page's text blocks, fitted to the encoder) and the corpus queries with
the model in float32 and in bfloat16 (forced, so the check runs on CPUs without native bf16 too) and prints
one JSON line: the per-vector cosines' minimum, whether every query's top-1 passage is the same, torch's
thread count, and what ``dtype: auto`` resolves to on this machine.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np


def corpus_passages(corpus: Path, limit: int = 240) -> list[str]:
    """Text blocks of the corpus PDFs' pages (every 2nd page, up to ``limit`` blocks of 8+ words)."""
    import pymupdf

    out: list[str] = []
    for pdf in sorted(corpus.glob("*.pdf")):
        with pymupdf.open(pdf) as doc:
            for page in list(doc)[::2]:
                for b in page.get_text("blocks"):
                    text = " ".join(str(b[4]).split())
                    if len(text.split()) >= 8:
                        out.append(text)
    step = max(1, len(out) // limit)
    return out[::step][:limit]


def main() -> None:
    model_dir, family, corpus = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    import torch

    from manualrag.encoder import ClipEncoder, TextEncoder

    cls = ClipEncoder if family == "clip" else TextEncoder
    queries = [
        json.loads(line)["query"] for line in (corpus / "queries.jsonl").read_text().splitlines() if line
    ]
    vecs, tops = {}, {}
    for dtype in ("float32", "bfloat16"):
        enc = cls.load(model_dir, device="cpu", dtype=dtype)
        passages = [enc.fit(t) for t in corpus_passages(corpus)]
        p = enc.embed_texts(passages)
        q = enc.embed_texts([enc.fit(t) for t in queries])
        vecs[dtype] = np.concatenate([p, q])
        tops[dtype] = (q @ p.T).argmax(axis=1).tolist()
    auto = cls.load(model_dir, device="cpu", dtype="auto")
    cos = (vecs["float32"] * vecs["bfloat16"]).sum(axis=1)
    print(
        json.dumps(
            {
                "omp_thread_limit": os.environ.get("OMP_THREAD_LIMIT"),
                "torch_threads": torch.get_num_threads(),
                "n_vectors": len(cos),
                "finite": bool(np.isfinite(vecs["bfloat16"]).all()),
                "min_cosine": float(np.nan_to_num(cos, nan=-1.0).min()),
                "top1_same": tops["float32"] == tops["bfloat16"],
                "top1_differs": sum(a != b for a, b in zip(tops["float32"], tops["bfloat16"], strict=True)),
                "auto_dtype": auto.dtype_name,
                "auto_reason": auto.dtype_reason,
            }
        )
    )


if __name__ == "__main__":
    main()
