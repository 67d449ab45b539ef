"""Real models built offline for tests and benchmarks (random weights, real architectures, real tokenizer).

``build_clip(out, size="tiny")`` writes a CLIPModel + CLIPProcessor folder with ``save_pretrained``; code under
test loads it through the normal path (``ClipEncoder.load(folder)``). ``size="full"`` is ViT-B/32 with the
real model's shapes (``CLIPConfig()`` defaults): identical compute to openai/clip-vit-base-patch32, for
benchmarks. The tokenizer is the real CLIP BPE tokenizer built from OpenAI's vocabulary (tests/assets, MIT).
"""

from __future__ import annotations

import gzip
from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
BPE_VOCAB = ASSETS / "bpe_simple_vocab_16e6.txt.gz"

_TINY_TOWER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI CLIP / GPT-2 byte -> unicode table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def build_clip_tokenizer(model_max_length: int = 77):
    """The real CLIP tokenizer (49,408 tokens) from the BPE merges file; ids match OpenAI's SimpleTokenizer."""
    from transformers import CLIPTokenizer

    lines = gzip.open(BPE_VOCAB).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # 48,894 merges (OpenAI's slice)
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [v + "</w>" for v in base] + ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    tok.model_max_length = model_max_length
    return tok


def build_clip(out: Path, size: str = "tiny", tokenizer=None, seed: int = 0) -> Path:
    """A random-initialised CLIPModel saved with its processor: "tiny" (dim 32) or "full" (ViT-B/32, dim 512)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    if size == "tiny":
        cfg = CLIPConfig(
            text_config=dict(vocab_size=49408, max_position_embeddings=77, **_TINY_TOWER),
            vision_config=dict(image_size=224, patch_size=32, **_TINY_TOWER),
            projection_dim=32,
        )
    elif size == "full":
        cfg = CLIPConfig()  # ViT-B/32 shapes: identical compute to the real model
    else:
        raise ValueError(f"size must be tiny or full, not {size!r}")
    out.mkdir(parents=True, exist_ok=True)
    CLIPModel(cfg).eval().save_pretrained(out)
    tok = tokenizer or build_clip_tokenizer()
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok).save_pretrained(out)
    return out


def build_siglip(out: Path, tokenizer=None, seed: int = 0) -> Path:
    """A tiny random SiglipModel (64 text positions) whose processor carries the CLIP tokenizer.

    (SigLIP's own sentencepiece tokenizer cannot be had offline; v5's SiglipProcessor takes any tokenizer.)
    """
    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor
    from transformers.utils import logging as transformers_logging

    tok = tokenizer or build_clip_tokenizer(64)
    tok.model_max_length = 64
    torch.manual_seed(seed)
    cfg = SiglipConfig(
        text_config=dict(
            vocab_size=49408,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            **_TINY_TOWER,
        ),
        vision_config=dict(image_size=224, patch_size=32, **_TINY_TOWER),
    )
    out.mkdir(parents=True, exist_ok=True)
    # save_pretrained diffs against a default SiglipTextConfig (vocab 32000, bos 49406), which warns about
    # token ids outside *that* vocabulary; ours are inside 49408
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        SiglipModel(cfg).eval().save_pretrained(out)
    finally:
        transformers_logging.set_verbosity(verbosity)
    SiglipProcessor(image_processor=SiglipImageProcessor(), tokenizer=tok).save_pretrained(out)
    return out


if __name__ == "__main__":  # python -m tests.models OUT [tiny|full|siglip]
    import sys

    dest, kind = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "tiny")
    print(build_siglip(dest) if kind == "siglip" else build_clip(dest, kind))
