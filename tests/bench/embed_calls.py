"""Where the index run's embed stage goes, call by call: ``python -m tests.bench.embed_calls [--dtypes ...]``.

Indexes ../shared/corpus once per dtype in this one process (fresh index each, same order as given) with
every ``embed_texts`` / ``embed_images`` call of both encoders logged: its size, when it started (seconds
after the run began), its wall time, and how much of that time zero, one or two batch forwards were
running (text forwards; image forwards count as zero). Prints one line per call and a summary per dtype:
the embed stage split into the first document's calls (which run while the other documents are still being
extracted) and the rest. A diagnostic for issue 18 item 2 (embed >= 1.8x float32): it writes nothing to
RESULTS.md. The first run in the process also pays the models' cold load; later runs start embedding
sooner, so compare runs after the first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import bench_config, bench_model, index_run, make_library, minilm_path  # noqa: E402


def coverage(spans: list[tuple[float, float]], t0: float, t1: float) -> list[float]:
    """Seconds of [t0, t1] during which 0, 1 and 2+ of ``spans`` were running."""
    points = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    out, running, last = [0.0, 0.0, 0.0], 0, t0
    for t, step in points:
        out[min(running, 2)] += t - last
        last, running = t, running + step
    out[0] += t1 - last
    return out


def instrument(calls: list[dict[str, Any]]) -> None:
    """Wrap the encoders' forwards and embed calls (class level: the indexer's own encoders are logged)."""
    import manualrag.encoder as enc

    spans: list[tuple[float, float]] = []
    lock = threading.Lock()
    for cls in (enc.ClipEncoder, enc.TextEncoder):
        forward = cls._forward_text

        def timed_forward(self: Any, batch: Any, _f: Any = forward) -> Any:
            t = time.perf_counter()
            out = _f(self, batch)
            with lock:
                spans.append((t, time.perf_counter()))
            return out

        cls._forward_text = timed_forward  # type: ignore[method-assign]
    for cls, name in (
        (enc.ClipEncoder, "embed_texts"),
        (enc.ClipEncoder, "embed_images"),
        (enc.TextEncoder, "embed_texts"),
    ):
        orig = getattr(cls, name)

        def logged(self: Any, items: Any, _o: Any = orig, _n: str = name) -> Any:
            items = list(items)
            spans.clear()
            t0 = time.perf_counter()
            out = _o(self, items)
            t1 = time.perf_counter()
            calls.append(
                {
                    "model": self.family,
                    "call": _n,
                    "n": len(items),
                    "t0": t0,
                    "wall": t1 - t0,
                    "cov": coverage(list(spans), t0, t1),
                }
            )
            return out

        setattr(cls, name, logged)


def main() -> None:
    ap = argparse.ArgumentParser(description="the index run's embed calls, one by one, per dtype")
    ap.add_argument("--dtypes", default="float32,bfloat16,float32,bfloat16")
    ap.add_argument("--quiet", action="store_true", help="summaries only")
    args = ap.parse_args()
    calls: list[dict[str, Any]] = []
    instrument(calls)
    work = Path(tempfile.mkdtemp(prefix="manualrag-embed-calls-"))
    lib = make_library(work / "corpus", 1)
    model, text_model = str(bench_model("full")), minilm_path()
    for i, dtype in enumerate(args.dtypes.split(",")):
        calls.clear()
        load = os.getloadavg()[0]
        start = time.perf_counter()
        d = index_run(bench_config(model, text_model, dtype=dtype), lib, work / f"idx-{i}")
        t = d.get("timings_s") or d.get("timings") or {}
        stage = sum(t.get(k, 0.0) for k in ("embed_text", "embed_image", "embed_sem"))
        # the first document's calls: those before the first call with two batches side by side
        first = next((j for j, c in enumerate(calls) if c["cov"][2] > 0), len(calls))
        head = sum(c["wall"] for c in calls[:first])
        rest_cov = " / ".join(f"{sum(c['cov'][k] for c in calls[first:]):.1f}" for k in range(3))
        print(
            f"{dtype}: embed stage {stage:.1f} s (text / images / sem {t.get('embed_text', 0):.1f} / "
            f"{t.get('embed_image', 0):.1f} / {t.get('embed_sem', 0):.1f}); {len(calls)} calls; the calls before "
            f"the first two-batch call {head:.1f} s; the rest {sum(c['wall'] for c in calls[first:]):.1f} s "
            f"(no forward / one / two: {rest_cov} s); "
            f"first call at {calls[0]['t0'] - start:.1f} s; load {t.get('load_models', 0):.1f} s; "
            f"load average at start {load:.2f}",
            flush=True,
        )
        if not args.quiet:
            for c in calls:
                print(
                    f"    {c['model']:4s} {c['call']:12s} {c['n']:4d} at {c['t0'] - start:6.1f} s  wall "
                    f"{c['wall']:6.2f} s  no forward / one / two {' / '.join(f'{x:.2f}' for x in c['cov'])}"
                )


if __name__ == "__main__":
    main()
