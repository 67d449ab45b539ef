"""Numerics you can trust on every machine (issue 13, and row 3 of issue 14).

- bfloat16 vectors are faithful to float32 on the corpus (cosine >= 0.995 each, same top-1 passage per
  query), in a child process with and without an inherited OMP_THREAD_LIMIT=1; where they are not, ``auto``
  resolves to float32.
- OCR never writes OMP_THREAD_LIMIT into our own environment (torch's OpenMP would read it).
- Pooling ignores masked positions even when they hold NaN.
- A batch of non-finite vectors is re-embedded in float32 once; a document whose vectors stay non-finite
  fails alone (exit 1), every other document is indexed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from manualrag.config import load_config
from manualrag.encoder import TextEncoder, align_threads_with_omp_limit

REPO = Path(__file__).resolve().parents[1]


# ---- faithfulness --------------------------------------------------------------------------------------
def _check(model_dir: Path, family: str, corpus: Path, omp_limit: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}
    if omp_limit:
        env["OMP_THREAD_LIMIT"] = omp_limit
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "tests.faithfulness_check", str(model_dir), family, str(corpus)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("omp_limit", [None, "1"], ids=["plain-env", "OMP_THREAD_LIMIT=1"])
@pytest.mark.parametrize("family", ["text", "clip"])
def test_bfloat16_is_faithful_or_auto_stays_float32(family, omp_limit, minilm_dir, tiny_clip_dir, corpus_dir):
    model = minilm_dir if family == "text" else tiny_clip_dir
    r = _check(model, family, corpus_dir, omp_limit)
    assert r["n_vectors"] >= 200
    if omp_limit:
        assert r["torch_threads"] == 1, "torch's threads follow an inherited OMP_THREAD_LIMIT"
    faithful = r["finite"] and r["min_cosine"] >= 0.995 and r["top1_same"]
    if family == "text":  # the real model: bf16 must be faithful, thread limit or not (it was 0.03 before)
        assert faithful, r
    if not faithful:
        assert r["auto_dtype"] == "float32", r


def test_torch_threads_follow_an_inherited_omp_limit():
    import torch

    n = torch.get_num_threads()
    try:
        assert align_threads_with_omp_limit({"OMP_THREAD_LIMIT": "junk"}) == n
        assert align_threads_with_omp_limit({}) == n
        assert align_threads_with_omp_limit({"OMP_THREAD_LIMIT": "1"}) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(n)


def test_auto_dtype_is_resolved_per_model_with_a_reason(minilm_dir):
    enc = TextEncoder.load(str(minilm_dir), device="cpu", dtype="auto")
    assert enc.dtype_name in ("float32", "bfloat16", "int8")
    assert enc.dtype_reason.startswith(enc.dtype_name)
    assert (
        TextEncoder.load(str(minilm_dir), device="cpu", dtype="bf16").dtype_reason == "bfloat16 (requested)"
    )


def test_auto_dtype_is_decided_once_per_machine_and_kept(tiny_clip_dir, tmp_path, monkeypatch):
    """The timed decision is kept in the user cache: a later process obeys it instead of timing again (an
    index built in bfloat16 is not updated in float32 because the machine was busier). The reduced path is
    forced where the CPU lacks native bf16."""
    import torch

    from manualrag import encoder
    from manualrag.encoder import ClipEncoder

    monkeypatch.setattr(encoder, "cpu_has_fast_bf16", lambda cpuinfo=None: True)
    monkeypatch.setenv("MANUALRAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(encoder, "_auto_dtype_cache", {})
    first = ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="auto")
    path = tmp_path / "cache" / encoder.DTYPE_DECISIONS_FILE
    saved = json.loads(path.read_text())
    assert len(saved) == 1
    ((key, decision),) = saved.items()
    assert str(tiny_clip_dir.resolve()) in key and "bfloat16" in key
    assert (
        decision["reduced"] == (first.dtype_name == "bfloat16") and decision["reason"] == first.dtype_reason
    )

    # the kept decision wins over a new timing: flip it, forget the process cache, load again
    flipped = {"reduced": not decision["reduced"], "reason": "kept decision"}
    path.write_text(json.dumps({key: flipped}))
    monkeypatch.setattr(encoder, "_auto_dtype_cache", {})
    again = ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="auto")
    assert again.dtype_reason == "kept decision"
    assert again.dtype == (torch.bfloat16 if flipped["reduced"] else torch.float32)
    assert next(again.model.parameters()).dtype == again.dtype
    assert json.loads(path.read_text()) == {key: flipped}

    # a cache that cannot be written costs a probe, never the load
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MANUALRAG_CACHE_DIR", str(blocker))
    monkeypatch.setattr(encoder, "_auto_dtype_cache", {})
    third = ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="auto")
    assert third.dtype_name in ("float32", "bfloat16") and third.dtype_reason != "kept decision"
    assert third.embed_texts(["wiring diagram"]).shape == (1, third.dim)


# ---- tesseract's thread limit stays in tesseract's environment -------------------------------------------
def test_ocr_leaves_our_environment_alone(monkeypatch):
    from PIL import Image, ImageDraw

    from manualrag.indexer.ocr import OcrEngine, tesseract_env

    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    cfg = load_config(None, environ={})
    img = Image.new("RGB", (900, 200), "white")
    ImageDraw.Draw(img).text((20, 80), "CONNECTOR J12 PIN 4", fill="black")
    with OcrEngine(cfg) as ocr:
        res = ocr.ocr([("probe", _png(img.resize((2700, 600))))])["probe"]
    assert "OMP_THREAD_LIMIT" not in os.environ
    assert tesseract_env()["OMP_THREAD_LIMIT"] == "1"
    assert "J12" in res.text


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---- NaN-proof pooling ------------------------------------------------------------------------------------
def test_mean_pooling_ignores_masked_positions_holding_nan(minilm_dir):
    import torch

    enc = TextEncoder.load(str(minilm_dir), device="cpu", dtype="float32")
    batch = enc.tokenize(["short", "a somewhat longer sentence than the first"])
    clean = enc._forward_text(dict(batch))

    class Poisoned(torch.nn.Module):  # the model's output with NaN at every padded position
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **kw):
            out = self.inner(**kw)
            h = out.last_hidden_state.clone()
            h[kw["attention_mask"] == 0] = float("nan")
            return (h,)

    enc.model = Poisoned(enc.model)
    poisoned = enc._forward_text(dict(batch))
    assert torch.isfinite(poisoned).all()
    assert torch.allclose(clean, poisoned, atol=1e-6)


# ---- a non-finite vector never kills the run (issue 14, row 3) ---------------------------------------------
class MarkedNaNEncoder(TextEncoder):
    """A test double for a *model* that misbehaves: the real all-MiniLM-L6-v2, except that a text holding
    ``flakymarker`` embeds as NaN in reduced precision only, and one holding ``poisonmarker`` as NaN always."""

    def tokenize(self, texts):
        self._texts = list(texts)
        return super().tokenize(texts)

    def _forward_text(self, batch):
        import torch

        out = super()._forward_text(batch).clone()
        for i, t in enumerate(self._texts):
            if "poisonmarker" in t or ("flakymarker" in t and self.dtype != torch.float32):
                out[i] = float("nan")
        return out


def test_non_finite_batch_is_reembedded_in_float32_and_a_poisoned_document_fails_alone(
    tmp_path, tiny_clip_dir, minilm_dir
):
    from manualrag.indexer.pipeline import Indexer
    from manualrag.manifest import Manifest

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "ok.md").write_text("# Pump\n\nPrime the pump before the first start by filling the housing.\n")
    (lib / "flaky.md").write_text("# Valve\n\nThe relief valve flakymarker opens at 6 bar.\n")
    (lib / "poison.md").write_text("# Fan\n\nThe fan poisonmarker runs at 1200 rpm.\n")
    cfg = load_config(
        None,
        overrides={"model": str(tiny_clip_dir), "ocr": {"enabled": False}},
        environ={},
    )
    cfg["text_model"] = str(minilm_dir)
    idx = Indexer(cfg, tmp_path / "index")
    idx._text = MarkedNaNEncoder.load(str(minilm_dir), device="cpu", dtype="bfloat16")
    summary = idx.run(lib)

    assert summary.exit_code == 1
    assert [(f.path, f.stage) for f in summary.failed] == [("poison.md", "embed")]
    assert "non-finite" in summary.failed[0].reason and "float32" in summary.failed[0].reason
    assert sorted(summary.indexed) == ["flaky.md", "ok.md"]
    text = summary.precision["text"]
    assert text["dtype"] == "float32" and "non-finite" in text["reason"]
    m = Manifest(tmp_path / "index" / "index.sqlite", readonly=True)
    try:
        assert set(m.documents()) == {"flaky.md", "ok.md"}
        assert "poison.md" in m.errors()
    finally:
        m.close()
