"""ClipEncoder / TextEncoder on real (tiny, random-weight) CLIP and SigLIP models and the real MiniLM.

The tiny models are built offline by conftest.py and loaded through ClipEncoder.load like any checkpoint.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from manualrag import encoder as enc_mod
from manualrag.encoder import ClipEncoder, TextEncoder, cpu_has_fast_bf16, resolve_dtype
from manualrag.errors import ManualragError, ModelUnavailableError

TEXTS = [
    "Remove the four M6 screws holding the pump cover.",
    "Figure 3-2: hydraulic circuit",
    "Torque to 25 N·m.",
    "WARNING: disconnect the mains supply before servicing.",
    "a",
]


@pytest.fixture(scope="module")
def clip(tiny_clip_dir: Path) -> ClipEncoder:
    return ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="float32", batch_size=2)


@pytest.fixture(scope="module")
def siglip(tiny_siglip_dir: Path) -> ClipEncoder:
    return ClipEncoder.load(str(tiny_siglip_dir), device="cpu", dtype="float32", batch_size=2)


@pytest.fixture(scope="module")
def minilm(minilm_dir: Path) -> TextEncoder:
    return TextEncoder.load(str(minilm_dir), device="cpu", dtype="float32")


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _diagram(size: tuple[int, int] = (400, 300), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    for _ in range(20):  # random dark boxes and lines on white
        x0, y0 = rng.integers(0, size[0] - 20), rng.integers(0, size[1] - 20)
        arr[y0 : y0 + rng.integers(2, 20), x0 : x0 + rng.integers(2, 60)] = rng.integers(0, 120, 3)
    return Image.fromarray(arr)


# ---- loading -----------------------------------------------------------------------------------------


def test_tiny_clip_loads_with_its_attributes(clip: ClipEncoder, tiny_clip_dir: Path):
    assert clip.family == "clip"
    assert clip.dim == 32
    assert clip.max_tokens == 77
    assert clip.model_id == str(tiny_clip_dir.resolve())
    assert clip.device == "cpu" and clip.dtype_name == "float32"
    assert clip.load_seconds < 20
    assert "ClipEncoder(" in repr(clip)


def test_tiny_siglip_loads_with_its_attributes(siglip: ClipEncoder):
    assert siglip.family == "siglip"
    assert siglip.dim == 64
    assert siglip.max_tokens == 64


def test_relative_folder_path_resolves(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tiny_clip_dir.parent)
    enc = ClipEncoder.load(f"./{tiny_clip_dir.name}", device="cpu", dtype="float32")
    assert enc.model_id == str(tiny_clip_dir.resolve())


# ---- text --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_text_vectors_are_normalised_float32(name: str, request: pytest.FixtureRequest):
    enc: ClipEncoder = request.getfixturevalue(name)
    v = enc.embed_texts(TEXTS)
    assert v.shape == (len(TEXTS), enc.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert enc.embed_texts([]).shape == (0, enc.dim)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_same_text_same_vector_and_batch_matches_single(name: str, request: pytest.FixtureRequest):
    enc: ClipEncoder = request.getfixturevalue(name)
    batch = enc.embed_texts([*TEXTS, TEXTS[0]])  # batch_size=2: several sorted, padded batches
    np.testing.assert_allclose(batch[0], batch[-1], atol=1e-6)
    for i, text in enumerate(TEXTS):  # rows come back in input order, independent of batch companions
        np.testing.assert_allclose(batch[i], enc.embed_texts([text])[0], atol=2e-5)
    np.testing.assert_allclose(enc.embed_query(TEXTS[1]), batch[1], atol=2e-5)
    assert not np.allclose(batch[0], batch[1], atol=1e-3)  # different texts, different vectors


def test_siglip_pads_to_max_length(siglip: ClipEncoder, clip: ClipEncoder):
    assert siglip.tokenize(["a"])["input_ids"].shape == (1, 64)
    assert siglip.tokenize(["a", TEXTS[0]])["input_ids"].shape == (2, 64)
    assert clip.tokenize(["a"])["input_ids"].shape == (1, 3)  # CLIP: dynamic padding
    # SigLIP pools the last position, so the padding length would change the vector: it must not vary
    alone = siglip.embed_texts(["a"])[0]
    with_long = siglip.embed_texts(["a", " ".join(["word"] * 60)])[0]
    np.testing.assert_allclose(alone, with_long, atol=1e-5)


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_too_long_text_is_an_error_not_truncated(name: str, request: pytest.FixtureRequest):
    enc: ClipEncoder = request.getfixturevalue(name)
    long_text = "pump " * 100
    n = enc.count_tokens([long_text])[0]
    assert n == 102  # 100 words + start/end tokens
    with pytest.raises(ValueError, match=f"{n} tokens.*limit of {enc.max_tokens}"):
        enc.embed_texts(["short", long_text])
    # a query is cut to fit instead (logged)
    assert enc.embed_query(long_text).shape == (enc.dim,)


def test_count_tokens_includes_special_tokens(clip: ClipEncoder):
    assert clip.count_tokens(["a photo of a cat", ""]) == [7, 2]
    assert clip.count_tokens([]) == []


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_fit_cuts_at_a_word_boundary(name: str, request: pytest.FixtureRequest):
    enc: ClipEncoder = request.getfixturevalue(name)
    text = " ".join(f"label-{i} K{i}" for i in range(80))
    fitted = enc.fit(text)
    assert text.startswith(fitted) and len(fitted) < len(text)
    assert text[len(fitted)].isspace()  # whole words only
    assert enc.count_tokens([fitted])[0] <= enc.max_tokens
    # adding the next word would not fit: it is the longest such prefix
    nxt = text[: text.index(" ", len(fitted) + 1)]
    assert enc.count_tokens([nxt])[0] > enc.max_tokens
    assert enc.fit("short caption") == "short caption"
    huge_word = "x9" * 400
    cut = enc.fit(huge_word)
    assert huge_word.startswith(cut) and 0 < enc.count_tokens([cut])[0] <= enc.max_tokens


# ---- images ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["clip", "siglip"])
def test_image_vectors(name: str, request: pytest.FixtureRequest):
    enc: ClipEncoder = request.getfixturevalue(name)
    rgb = _diagram()
    images = [rgb, _png(rgb), rgb.convert("L"), rgb.convert("RGBA"), _diagram(seed=1)]
    v = enc.embed_images(images)
    assert v.shape == (5, enc.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[0], v[1], atol=1e-5)  # PIL image and its PNG bytes
    np.testing.assert_allclose(v[0], v[3], atol=1e-5)  # opaque RGBA == RGB
    np.testing.assert_allclose(v[0], enc.embed_images([rgb])[0], atol=2e-5)  # batch vs single
    assert enc.embed_images([]).shape == (0, enc.dim)
    # text and image vectors live in the same space (same dimension)
    assert enc.embed_texts(["a diagram"]).shape[1] == v.shape[1]


def test_large_images_are_downscaled_and_transparency_flattened(clip: ClipEncoder):
    big = Image.new("RGB", (2480, 3508), "white")  # A4 at 300 dpi
    prepared = ClipEncoder.prepare_image(big)
    assert max(prepared.size) <= 1024 and big.size == (2480, 3508)  # the caller's image is untouched
    strip = Image.new("RGB", (6000, 500), "white")  # very elongated: keep the short side usable
    assert min(ClipEncoder.prepare_image(strip).size) >= 448
    transparent = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # black but fully transparent
    flat = ClipEncoder.prepare_image(transparent)
    assert flat.mode == "RGB" and flat.getpixel((10, 10)) == (255, 255, 255)
    t0 = time.perf_counter()
    assert clip.embed_images([big]).shape == (1, 32)
    assert time.perf_counter() - t0 < 5
    with pytest.raises(TypeError):
        clip.embed_images([123])  # type: ignore[list-item]


# ---- dtype / device --------------------------------------------------------------------------------


def test_bf16_matches_fp32(tiny_clip_dir: Path, clip: ClipEncoder):
    bf16 = ClipEncoder.load(str(tiny_clip_dir), device="cpu", dtype="bf16")
    assert bf16.dtype_name == "bfloat16"
    t32, t16 = clip.embed_texts(TEXTS), bf16.embed_texts(TEXTS)
    assert t16.dtype == np.float32
    for a, b in zip(t32, t16, strict=True):
        assert _cos(a, b) >= 0.99
    imgs = [_diagram(seed=s) for s in range(3)]
    for a, b in zip(clip.embed_images(imgs), bf16.embed_images(imgs), strict=True):
        assert _cos(a, b) >= 0.99


def test_dtype_rules():
    assert cpu_has_fast_bf16("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n")
    assert cpu_has_fast_bf16("flags : fpu amx_bf16 amx_tile\n")
    assert not cpu_has_fast_bf16("flags : fpu sse avx2 avx512f avx512_vnni\n")
    assert not cpu_has_fast_bf16("")
    import torch

    expected = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32  # a candidate, checked at load
    assert resolve_dtype("auto", "cpu") is expected
    assert resolve_dtype("int8", "cpu") is torch.qint8
    assert resolve_dtype("fp32", "cpu") is torch.float32
    assert resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int4", "cpu")


# ---- failures ----------------------------------------------------------------------------------------


def test_missing_model_offline_fails_fast_with_ways_out():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    name = "no-such-org/no-such-clip-model"
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError) as err:
        ClipEncoder.load(name)
    assert time.perf_counter() - t0 < 5
    msg = str(err.value)
    assert name in msg and "--no-dense" in msg and f"hf download {name}" in msg and "--model" in msg
    from huggingface_hub import constants

    assert str(constants.HF_HUB_CACHE) in msg
    assert isinstance(err.value, ManualragError)


def test_missing_relative_model_folder_says_no_such_folder(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """``--model models/clip-vit`` (a folder that is not there, under a folder that is) reads as a hub name
    org/name: the error named only the Hugging Face cache, never the folder the user meant."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelUnavailableError) as err:
        ClipEncoder.load("models/clip-vit")
    assert f"there is no folder {tmp_path / 'models' / 'clip-vit'}" in str(err.value), err.value
    # a hub name whose first part is no folder here says nothing of folders
    with pytest.raises(ModelUnavailableError) as err:
        ClipEncoder.load("no-such-org/no-such-clip-model")
    assert "no folder" not in str(err.value), err.value


def test_unreachable_hub_is_detected_fast(monkeypatch: pytest.MonkeyPatch):
    """Not offline by env, but the hub does not answer: probe once, go local-only, fail at once."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(enc_mod, "_hub_reachable_cache", {})
    t0 = time.perf_counter()
    with pytest.raises(ModelUnavailableError, match="127.0.0.1:9 is unreachable"):
        TextEncoder.load("no-such-org/no-such-text-model")
    assert time.perf_counter() - t0 < 5
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # no hub retries for the rest of the process


def test_missing_folder_and_folder_without_config(tmp_path: Path):
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        ClipEncoder.load(str(tmp_path / "nope" / "model"))
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ModelUnavailableError, match="no config.json") as err:
        ClipEncoder.load(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "--no-dense" in str(err.value)
    assert "hf download " + str(tmp_path) not in str(err.value)  # a folder is no hub name to download
    assert "holds a Hugging Face model (config.json and its weights" in str(err.value)


def test_wrong_architecture(minilm_dir: Path, tiny_clip_dir: Path):
    with pytest.raises(ModelUnavailableError, match="'bert' model, not CLIP or SigLIP"):
        ClipEncoder.load(str(minilm_dir))
    with pytest.raises(ModelUnavailableError, match="not a sentence-embedding model"):
        TextEncoder.load(str(tiny_clip_dir))


def test_folder_without_processor_files(tiny_clip_dir: Path, tmp_path: Path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_clip_dir / name).read_bytes())
    with pytest.raises(ModelUnavailableError, match="processor"):
        ClipEncoder.load(str(tmp_path), device="cpu")


# ---- sentence-embedding text model -------------------------------------------------------------------


def test_minilm_semantics(minilm: TextEncoder):
    assert minilm.dim == 384 and minilm.family == "text"
    assert minilm.pooling == ["mean"]
    assert minilm.max_tokens == 256  # sentence_bert_config.json max_seq_length
    q, good, bad = minilm.embed_texts(
        [
            "How do I replace the hydraulic filter?",
            "Filter replacement procedure for the hydraulic system",
            "The weather is sunny today",
        ]
    )
    np.testing.assert_allclose(np.linalg.norm([q, good, bad], axis=1), 1.0, atol=1e-5)
    assert float(q @ good) > 0.7
    assert float(q @ good) > float(q @ bad) + 0.5


def test_minilm_batching_and_limits(minilm: TextEncoder):
    texts = [*TEXTS, "Replace the filter element every 500 operating hours."]
    batch = minilm.embed_texts(texts)
    for i, t in enumerate(texts):
        np.testing.assert_allclose(batch[i], minilm.embed_texts([t])[0], atol=1e-5)
    assert minilm.count_tokens(["hydraulic filter"]) == [4]  # [CLS] hydraulic filter [SEP]
    with pytest.raises(ValueError, match="limit of 256"):
        minilm.embed_texts(["filter " * 300])
    fitted = minilm.fit("filter " * 300)
    assert minilm.count_tokens([fitted])[0] <= 256


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of a model folder made of symlinks (the HF cache is laid out the same way)."""
    for f in src.rglob("*"):
        if f.is_file():
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)


def test_load_by_name_from_the_hf_cache(
    tiny_clip_dir: Path, minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A hub name resolves offline from the cache (models--org--name/snapshots/<rev>/...)."""
    from huggingface_hub import constants

    rev = "0" * 40
    for name, folder in (("test-org/tiny-clip", tiny_clip_dir), ("test-org/minilm", minilm_dir)):
        repo = tmp_path / f"models--{name.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(rev)
        _link_tree(folder, repo / "snapshots" / rev)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    clip = ClipEncoder.load("test-org/tiny-clip", device="cpu", dtype="float32")
    assert clip.model_id == "test-org/tiny-clip" and clip.family == "clip" and clip.dim == 32
    text = TextEncoder.load("test-org/minilm", device="cpu", dtype="float32")
    assert text.model_id == "test-org/minilm" and text.dim == 384 and text.max_tokens == 256
    assert text.pooling == ["mean"]  # read from 1_Pooling/config.json through the cache


def test_text_encoder_follows_the_pooling_config(minilm_dir: Path, minilm: TextEncoder, tmp_path: Path):
    import json

    cls_dir = tmp_path / "cls"
    _link_tree(minilm_dir, cls_dir)
    pool = cls_dir / "1_Pooling" / "config.json"
    pool.unlink()
    pool.write_text(json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True}))
    (cls_dir / "sentence_bert_config.json").unlink()
    enc = TextEncoder.load(str(cls_dir), device="cpu", dtype="float32")
    assert enc.pooling == ["cls"]
    assert enc.max_tokens == 512  # no sentence_bert_config.json: tokenizer limit, capped at 512
    a = enc.embed_texts(["hydraulic filter"])[0]
    b = minilm.embed_texts(["hydraulic filter"])[0]
    assert abs(float(np.linalg.norm(a)) - 1) < 1e-5 and not np.allclose(a, b, atol=1e-3)

    dense_dir = tmp_path / "dense"
    _link_tree(minilm_dir, dense_dir)
    modules = json.loads((minilm_dir / "modules.json").read_text())
    modules.insert(
        2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (dense_dir / "modules.json").unlink()
    (dense_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelUnavailableError, match="Dense module"):
        TextEncoder.load(str(dense_dir), device="cpu")


def test_siglip2_variable_resolution_images(clip_tokenizer_dir: Path, tmp_path: Path):
    """SigLIP2's processor adds pixel_attention_mask/spatial_shapes: they reach the model on the right device."""
    import torch
    from transformers import (
        AutoTokenizer,
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        Siglip2Processor,
    )
    from transformers.utils import logging as transformers_logging

    tok = AutoTokenizer.from_pretrained(clip_tokenizer_dir)
    tok.model_max_length = 64
    torch.manual_seed(0)
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    cfg = Siglip2Config(
        text_config=dict(
            vocab_size=49408,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **small,
        ),
        vision_config=dict(patch_size=16, num_patches=64, **small),
    )
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        Siglip2Model(cfg).save_pretrained(tmp_path)
    finally:
        transformers_logging.set_verbosity(verbosity)
    Siglip2Processor(
        image_processor=Siglip2ImageProcessor(max_num_patches=64), tokenizer=tok
    ).save_pretrained(tmp_path)
    enc = ClipEncoder.load(str(tmp_path), device="cpu", dtype="float32")
    assert enc.family == "siglip" and enc.dim == 64 and enc.max_tokens == 64
    v = enc.embed_images([_diagram(), Image.new("RGB", (2000, 100), "red")])
    assert v.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert enc.embed_texts(["a pump", "b"]).shape == (2, 64)


def test_split_batches_covers_each_item_once_in_whole_rounds_of_workers():
    from manualrag.encoder import split_batches

    for n, size, workers in ((834, 32, 2), (254, 32, 2), (40, 32, 2), (16, 32, 2), (5, 32, 2), (7, 2, 3)):
        parts = split_batches(list(range(n)), size, workers)
        assert [i for p in parts for i in p] == list(range(n))  # order kept, nothing lost or repeated
        assert max(len(p) for p in parts) <= size
        if n // 8 >= workers:  # enough texts for every worker: no core idles on a last, lone batch
            assert len(parts) % workers == 0, (n, [len(p) for p in parts])
    assert [len(p) for p in split_batches(list(range(5)), 32, 2)] == [5]  # too few to split
    assert split_batches([], 32, 2) == []


def test_batches_side_by_side_give_the_vectors_of_batches_one_after_another(
    clip: ClipEncoder, minilm: TextEncoder, monkeypatch: pytest.MonkeyPatch
):
    """run_batches: batches on their own threads (one torch thread each) give the same vectors, in input
    order, as batches run one after another on all threads; the caller's torch thread count is kept."""
    import torch

    from manualrag.encoder import _probe_images

    texts = [f"{t} ({i} {'x' * (i % 7)})" for i, t in enumerate(TEXTS * 8)]  # 40 texts, mixed lengths
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # side by side even on a 1-core runner
    try:
        runs = [
            (minilm, minilm.embed_texts, texts),
            (clip, clip.embed_texts, texts),
            (clip, clip.embed_images, _probe_images()),
        ]
        for enc, embed, items in runs:
            assert enc_mod.batch_workers(enc.device, len(items)) == 2
            side = embed(items)
            assert torch.get_num_threads() == 2
            with monkeypatch.context() as m:
                m.setattr(enc_mod, "batch_workers", lambda device, n_items: 1)
                one = embed(items)
            np.testing.assert_allclose(side, one, atol=1e-6)
            np.testing.assert_allclose(side[3], embed(items[3:4])[0], atol=2e-5)  # alone: the same vector
    finally:
        torch.set_num_threads(saved)


def test_a_batch_beside_busy_extraction_workers_runs_on_fewer_threads_same_vectors(minilm: TextEncoder):
    """With other processes at work (the indexer sets ``busy`` to its extraction pool's count), a single
    batch runs on the threads that leave them their cores (at least one) and gives the same vectors; the
    caller's thread count is back after, also when the forward fails."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    seen: list[int] = []
    try:
        texts = TEXTS[:3]  # one batch
        alone = minilm.embed_texts(texts)
        for busy, threads in ((0, 2), (1, 1), (5, 1)):
            seen.clear()
            got = enc_mod.run_batches(lambda t: (seen.append(torch.get_num_threads()), t)[1], [1], 2, busy)
            assert got == [1] and seen == [threads] and torch.get_num_threads() == 2
        minilm.busy = lambda: 2
        np.testing.assert_allclose(minilm.embed_texts(texts), alone, atol=1e-6)
        assert torch.get_num_threads() == 2

        def boom(_: object) -> None:
            raise RuntimeError("forward failed")

        with pytest.raises(RuntimeError):
            enc_mod.run_batches(boom, [1], 2, busy=1)
        assert torch.get_num_threads() == 2
    finally:
        minilm.busy = None
        torch.set_num_threads(saved)
