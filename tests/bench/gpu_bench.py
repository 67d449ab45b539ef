"""GPU benchmark (for a lent device machine): ``python -m tests.bench.gpu_bench [--device cuda] [--quick]``.

1. Model throughput of the full-size random-init ViT-B/32 (identical compute to openai/clip-vit-base-patch32):
   images/s (``get_image_features``, 224x224, preprocessed tensors already on the device) and text windows/s
   (``get_text_features``, 60 tokens) for fp32, fp16 and bf16 weights, at a few batch sizes, under
   ``torch.inference_mode()``, synchronised timings, after warm-up.
2. Indexing the corpus with ``device=<device>``: pages/s with dtype auto (bf16 on CUDA with bf16 support),
   float16 and float32 (fresh index each; OCR stays on the CPU; when tesseract is absent the runs go without
   OCR and say so), with the per-stage timings.

Prints tables and appends them to tests/bench/RESULTS.md (with the GPU's name). ``--device cpu`` runs the same
code on the CPU (a smoke test; small batch sizes). Not part of the CI test run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import (  # noqa: E402
    append_results,
    bench_cache,
    bench_model,
    log,
    machine_info,
    make_library,
    run_child,
    table,
    tesseract_version,
)

MODULE = "tests.bench.gpu_bench"
INDEX_MODULE = "tests.bench.index_bench"


def model_throughput(
    model_dir: str, device: str, dtypes: list[str], batches: list[int], seconds: float
) -> list[dict[str, Any]]:
    import torch
    from transformers import CLIPModel

    rows = []
    base = CLIPModel.from_pretrained(model_dir).eval()
    for name in dtypes:
        dt = getattr(torch, name)
        try:
            m = base.to(device=device, dtype=dt)
        except Exception as exc:  # noqa: BLE001
            rows.append({"dtype": name, "error": str(exc).splitlines()[0]})
            continue

        def sync() -> None:
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        for bs in batches:
            px = torch.randn(bs, 3, 224, 224, device=device, dtype=dt)
            ids = torch.randint(0, 49000, (bs, 60), device=device)
            am = torch.ones_like(ids)
            res: dict[str, Any] = {"dtype": name, "batch": bs}
            for what, fn in (
                ("images", lambda m=m, px=px: m.get_image_features(pixel_values=px)),
                ("texts", lambda m=m, ids=ids, am=am: m.get_text_features(input_ids=ids, attention_mask=am)),
            ):
                with torch.inference_mode():
                    for _ in range(3):  # warm-up: kernels, cuBLAS handles, allocator
                        fn()
                    sync()
                    n, t0 = 0, time.perf_counter()
                    while True:
                        fn()
                        n += 1
                        sync()
                        if time.perf_counter() - t0 >= seconds and n >= 3:
                            break
                    dt_s = time.perf_counter() - t0
                res[f"{what}_per_s"] = n * bs / dt_s
            if device.startswith("cuda"):
                res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            rows.append(res)
            log(json.dumps(res))
        base = m.float()
    return rows


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"
    return "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(
        description="manualrag GPU benchmark",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--quick", action="store_true", help="fewer batch sizes, shorter timings, no fp32 index run"
    )
    ap.add_argument("--skip-index", action="store_true", help="model throughput only")
    ap.add_argument(
        "--copies", type=int, default=1, help="index the corpus repeated N times (changed digests)"
    )
    ap.add_argument("--seconds", type=float, default=None, help="timing window per measurement")
    ap.add_argument("--no-results", action="store_true", help="do not append to tests/bench/RESULTS.md")
    args = ap.parse_args()

    info = machine_info()
    cpu = args.device == "cpu"
    model = str(bench_model("full"))
    dev = device_name(args.device)
    info["cpu"] = f"{info['cpu']} + {dev}"
    log(f"device: {dev}")
    batches = [8] if cpu else ([64, 256] if args.quick else [32, 128, 512])
    seconds = args.seconds or (1.0 if cpu or args.quick else 3.0)
    dtypes = ["float32", "bfloat16"] if cpu else ["float32", "float16", "bfloat16"]
    rows = model_throughput(model, args.device, dtypes, batches, seconds)
    out = [
        "### Model throughput (full-size ViT-B/32)\n\n"
        + table(
            ["dtype", "batch", "images/s", "texts/s (60 tokens)", "peak GPU memory MB"],
            [
                [
                    r["dtype"],
                    r.get("batch", "–"),
                    round(r.get("images_per_s", float("nan")), 1),
                    round(r.get("texts_per_s", float("nan")), 1),
                    round(r["peak_mem_mb"]) if "peak_mem_mb" in r else "–",
                ]
                if "error" not in r
                else [r["dtype"], "–", r["error"], "", ""]
                for r in rows
            ],
        )
    ]

    if not args.skip_index:
        work = Path(tempfile.mkdtemp(prefix="manualrag-gpubench-"))
        lib = make_library(
            work / "corpus", args.copies, ("xfig-howto.pdf", "netgen-manual.pdf") if cpu else None
        )
        ocr_ok = tesseract_version() != "not installed"
        idx_rows = []
        for dtype in (
            ["auto"] if cpu else (["auto", "float16"] if args.quick else ["auto", "float16", "float32"])
        ):
            log(f"indexing the corpus on {args.device}, dtype {dtype}")
            # the first run uses the documented default config (device auto, dtype auto): the code path
            # must find the GPU with no change; the others name the device
            cfg = {"device": "auto" if dtype == "auto" else args.device}
            if not ocr_ok:
                cfg["ocr"] = {"enabled": False}
            d = run_child(
                INDEX_MODULE,
                {
                    "task": "index",
                    "model": model,
                    "library": str(lib),
                    "dtype": dtype,
                    "index_dir": str(work / f"idx-{dtype}"),
                    "cfg": cfg,
                },
            )["runs"][0]
            t = d["timings_s"]
            emb = t.get("embed_text", 0) + t.get("embed_image", 0)
            n_items = d["embedded"].get("texts", 0) + d["embedded"].get("images", 0)
            idx_rows.append(
                [
                    f"{dtype} (config device {cfg['device']}) -> {d.get('device', '?')} {d.get('dtype', '?')}",
                    d["pages"],
                    d["figures"],
                    round(d["wall_s"], 1),
                    round(t.get("load_models", 0), 1),
                    round(d["pages"] / d["wall_s"], 2),
                    round(d["pages"] / max(d["wall_s"] - t.get("load_models", 0), 1e-9), 2),
                    round(t.get("extract", 0), 1),
                    round(emb, 2),
                    round(n_items / emb, 1) if emb else "–",
                    round(t.get("store", 0), 1),
                ]
            )
        shutil.rmtree(work, ignore_errors=True)
        out.append(
            f"### Indexing the corpus{f' x {args.copies}' if args.copies > 1 else ''} on the device"
            + ("" if ocr_ok else " (tesseract absent: OCR off)")
            + "\n\n"
            + table(
                [
                    "config dtype -> resolved device, dtype",
                    "pages",
                    "figures",
                    "wall s",
                    "model load s",
                    "pages/s",
                    "pages/s excl. load",
                    "extract s (worker sum, CPU)",
                    "embed s",
                    "embedded items/s",
                    "store s",
                ],
                idx_rows,
            )
            + "\n\nExtraction and OCR run on the host CPU cores; only the model runs on the device."
        )
    body = "\n\n".join(out)
    print(body)
    (bench_cache() / f"gpu_bench-{time.strftime('%Y%m%d-%H%M%S')}.md").write_text(body)
    if not args.no_results:
        append_results(f"gpu_bench --device {args.device}", info, body)


if __name__ == "__main__":
    main()
