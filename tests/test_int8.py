"""dtype int8 (dynamic int8 quantisation of the Linear layers, CPU): vectors within tolerance of float32
where it is faithful, refused by the faithfulness check where it is not, and never offered by ``dtype: auto``
(its vectors depend on the batch) (issue 18, item 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from manualrag.config import load_config
from manualrag.encoder import (
    _PROBE_TEXTS,
    FAITHFUL_MIN_COSINE_INT8,
    ClipEncoder,
    TextEncoder,
    _probe_images,
    choose_auto_dtype,
    resolve_dtype,
)
from manualrag.errors import ConfigError


def _passages(corpus_dir, n: int = 24) -> list[str]:
    """Real text: passages of a corpus manual."""
    import pymupdf

    with pymupdf.open(corpus_dir / "xfig-howto.pdf") as doc:
        blocks = [" ".join(str(b[4]).split()) for page in doc for b in page.get_text("blocks")]
    return [b for b in blocks if len(b) > 80][:n]


def test_int8_clip_vectors_are_within_tolerance_of_float32(tiny_clip_dir, corpus_dir):
    f32 = ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="float32")
    i8 = ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="int8")
    assert (i8.dtype_name, i8.dtype_reason) == ("int8", "int8 (requested)")
    texts = [f32.fit(t) for t in _passages(corpus_dir) + list(_PROBE_TEXTS)]
    for a, b in (
        (f32.embed_texts(texts), i8.embed_texts(texts)),
        (f32.embed_images(_probe_images()), i8.embed_images(_probe_images())),
    ):
        assert np.isfinite(b).all()
        np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)
        cos = (a * b).sum(axis=1)
        assert cos.min() >= FAITHFUL_MIN_COSINE_INT8, cos.min()


def test_int8_minilm_is_refused_by_auto_where_it_is_not_faithful(minilm_dir, corpus_dir):
    """all-MiniLM-L6-v2 quantised this way drifts to ~0.85-0.97 cosine: requested, it still gives finite unit
    vectors close to float32; ``auto`` must keep float32 for it (whatever the speed)."""
    import torch

    f32 = TextEncoder.load(str(minilm_dir), device="cpu", dtype="float32")
    i8 = TextEncoder.load(str(minilm_dir), device="cpu", dtype="int8")
    assert i8.dtype_name == "int8"
    # asked for, it is kept, and the reason `index` and `eval` show says whether it is faithful here
    probe_worst = float(((f32._probe(f32.model)) * i8._probe(i8.model)).sum(axis=1).min())
    assert ("not faithful" in i8.dtype_reason) == (probe_worst < FAITHFUL_MIN_COSINE_INT8), i8.dtype_reason
    assert i8.dtype_reason.startswith("int8 (requested"), i8.dtype_reason
    texts = [f32.fit(t) for t in _passages(corpus_dir)]
    a, b = f32.embed_texts(texts), i8.embed_texts(texts)
    assert np.isfinite(b).all()
    cos = (a * b).sum(axis=1)
    assert cos.min() >= 0.8, (
        cos.min()
    )  # close, not faithful (measured: 0.85-0.97 here, 0.93 min on the probe)
    # the same passage is each query's nearest in both precisions for most passages: a sanity floor
    assert np.mean((a @ a.T).argsort(1)[:, -2] == (b @ b.T).argsort(1)[:, -2]) >= 0.75
    worst = float(cos.min())
    model, dtype, reason = choose_auto_dtype(f32.model, torch.qint8, f32._probe, f32.model_id)
    if worst < FAITHFUL_MIN_COSINE_INT8:
        assert (dtype, model) == (torch.float32, f32.model), reason
        assert "not faithful" in reason
    assert next(f32.model.parameters()).dtype == torch.float32  # the float32 model is left as it was


def test_int8_names_and_where_it_runs():
    import torch

    assert resolve_dtype("int8", "cpu") == torch.qint8
    with pytest.raises(ValueError, match="CPU only"):
        resolve_dtype("int8", "cuda")
    from manualrag.encoder import _load_weights, _Source

    with pytest.raises(ConfigError, match="dtype.*CPU only"):  # the loaders say it as a usage error
        _load_weights(_Source("unused/model", "--model"), None, "meta", "int8")
    assert load_config(None, overrides={"dtype": "int8"}, environ={})["dtype"] == "int8"
    with pytest.raises(ConfigError):
        load_config(None, overrides={"dtype": "int4"}, environ={})


def test_int8_vectors_depend_on_the_batch_so_auto_never_picks_it(minilm_dir, monkeypatch):
    """Dynamic quantisation scales activations per batch: the same text embedded alone and beside others
    gets different int8 vectors (float32: the same), so a document re-indexed alone would not get the
    vectors a fresh index gives it. ``auto`` therefore never offers int8, on any CPU."""
    import torch

    from manualrag import encoder

    text = "Replace fuse F2 (T315mA) before restarting the pump."
    others = ["WARNING: disconnect mains power before opening the enclosure. " * 5, "pin 1 VCC"]
    for dtype, same in (("int8", False), ("float32", True)):
        enc = TextEncoder.load(str(minilm_dir), device="cpu", dtype=dtype)
        alone, batched = enc.embed_texts([text])[0], enc.embed_texts([text, *others])[0]
        assert bool(np.allclose(alone, batched, atol=1e-5)) is same, (dtype, float(alone @ batched))
    for has_bf16 in (True, False):  # as on a CPU with / without native bf16
        monkeypatch.setattr(encoder, "cpu_has_fast_bf16", lambda cpuinfo=None, v=has_bf16: v)
        assert resolve_dtype("auto", "cpu") == (torch.bfloat16 if has_bf16 else torch.float32)


def test_an_index_keeps_int8_vectors_apart_and_names_mixed_float_precisions(tmp_path, minilm_dir):
    """A run whose precision differs from the vectors the index keeps: int8 beside float vectors is refused
    (exit 2, one line, nothing written); float32 beside bfloat16 is allowed and `stats` names both. Before,
    both mixed silently and `stats` named only the last run's dtype."""
    from click.testing import CliRunner

    from manualrag.cli import main

    lib = tmp_path / "lib"
    lib.mkdir()

    def index(idx: str, dtype: str) -> tuple[int, str]:
        res = CliRunner().invoke(
            main,
            [
                "index",
                str(lib),
                "--index-dir",
                str(tmp_path / idx),
                "--model",
                "none",
                "--text-model",
                str(minilm_dir),
                "--dtype",
                dtype,
                "-q",
            ],
        )
        return res.exit_code, res.output

    def precision(idx: str) -> dict:
        res = CliRunner().invoke(main, ["stats", "--index-dir", str(tmp_path / idx), "--json"])
        return json.loads(res.stdout)["precision"]

    (lib / "pump.md").write_text("# Pump\n\nBleed the pump before the first start.\n")
    assert index("i8", "int8")[0] == 0
    (lib / "valve.md").write_text("# Valve\n\nThe relief valve opens at 180 bar.\n")
    rc, out = index("i8", "float32")
    assert rc == 2 and "are int8 and this run would embed in float32: int8 vectors do not mix" in out, out
    assert precision("i8") == {"text": "int8"}
    assert index("i8", "int8")[0] == 0  # in the index's precision it goes on
    (lib / "hose.md").write_text("# Hose\n\nChange the hose every two years.\n")
    assert index("f", "float32")[0] == 0
    (lib / "seal.md").write_text("# Seal\n\nGrease the seal.\n")
    assert index("f", "bfloat16")[0] == 0
    assert precision("f") == {"text": "bfloat16 + float32"}
