"""`manualrag index`: records match extraction, incremental re-runs, pruning, encoder guard, --no-dense.

Real components throughout: the sample manuals in data/manuals, real tesseract, real Chroma (embedded and a
real server), the tiny CLIP model loaded from disk like any checkpoint.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from manualrag.cli import main
from manualrag.ids import doc_id as doc_id_for
from manualrag.manifest import Manifest
from manualrag.retriever.lexical import lexical_search
from manualrag.store import KINDS, VectorStore

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "manuals"
LIB_FILES = ["pump-controller-manual.pdf", "release-notes.md", "quick-start-card.png"]


@pytest.fixture
def library(tmp_path: Path) -> Path:
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in LIB_FILES:
        shutil.copy(SAMPLE / name, lib / name)
    return lib


def write_cfg(tmp_path: Path, store: dict | None = None, **extra) -> Path:
    cfg = {"text_model": None, **extra}
    if store is not None:
        cfg["store"] = store
    path = tmp_path / f"cfg-{len(list(tmp_path.glob('cfg-*')))}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_index(cfg_path: Path, lib: Path, index_dir: Path, *args: str) -> tuple[int, dict, str]:
    res = CliRunner().invoke(
        main, ["--config", str(cfg_path), "index", str(lib), "--index-dir", str(index_dir), "--json", *args]
    )
    out = res.stdout
    try:
        summary = json.loads(out)
    except json.JSONDecodeError:
        summary = {}
    return res.exit_code, summary, res.stderr if hasattr(res, "stderr") else res.output


def store_ids(index_dir: Path, store_cfg: dict) -> dict[str, set[str]]:
    with VectorStore.open(index_dir, {"store": store_cfg}) as st:
        return {k: set(st.all_ids(k)) for k in KINDS if st.get(k) is not None}


def test_index_records_match_extraction_and_rerun_embeds_nothing(
    tmp_path, library, tiny_clip_dir, store_cfg_factory
):
    idx = tmp_path / "index"
    scfg = store_cfg_factory(idx)
    cfg = write_cfg(tmp_path, scfg, model=str(tiny_clip_dir))
    rc, s, err = run_index(cfg, library, idx)
    assert rc == 0, err
    assert s["documents"] == {"indexed": 3, "unchanged": 0, "removed": 0, "failed": 0}

    m = Manifest(idx / "index.sqlite", readonly=True)
    try:
        figs = {fid: f for path in LIB_FILES for f in m.figures_of_doc(path) for fid in [f.id]}
        real = {fid: f for fid, f in figs.items() if not f.boilerplate}
        labelled = [fid for fid, f in real.items() if (f.caption or f.labels or f.ocr_text.strip())]
        db = sqlite3.connect(idx / "index.sqlite")
        longest = db.execute("SELECT max(n_tokens) FROM windows WHERE channel='clip'").fetchone()[0]
        n_windows = db.execute("SELECT count(*) FROM windows WHERE channel='clip'").fetchone()[0]
        db.close()
        expected = {k: set(v) for k, v in _all_vector_ids(m).items()}
    finally:
        m.close()
    ids = store_ids(idx, scfg)
    assert ids["image"] == set(real), "every figure (and nothing else) has an image record"
    assert ids["image_text"] == {f"{fid}:t" for fid in labelled}
    assert len(ids["text"]) == n_windows > 0
    assert longest <= 77, "no text window over the CLIP limit"
    for kind, got in ids.items():
        assert got <= expected.get(kind, set()), f"the manifest names every {kind} vector in the store"
    assert (idx / "crops").is_dir() and all((idx / f.crop_path).is_file() for f in figs.values())

    # a second run on the unchanged library embeds nothing and writes nothing
    rc, s2, err = run_index(cfg, library, idx)
    assert rc == 0, err
    assert s2["documents"]["unchanged"] == 3 and s2["documents"]["indexed"] == 0
    assert s2["embedded"] == {} and s2["records"] == {}
    assert store_ids(idx, scfg) == ids


def _all_vector_ids(m: Manifest) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for path in m.documents():
        for kind, ids in m.vector_ids(path).items():
            out.setdefault(kind, []).extend(ids)
    return out


def test_changed_file_is_reindexed_alone_and_deleted_file_is_pruned(tmp_path, library, tiny_clip_dir):
    idx = tmp_path / "index"
    cfg = write_cfg(tmp_path, model=str(tiny_clip_dir))
    assert run_index(cfg, library, idx)[0] == 0
    scfg = {"url": None, "collection": "manualrag", "headers": {}}
    before = store_ids(idx, scfg)

    notes = library / "release-notes.md"
    notes.write_text(notes.read_text() + "\n## 3.3.0\n\n- New: torque warning E11 on the coupling.\n")
    rc, s, err = run_index(cfg, library, idx)
    assert rc == 0, err
    assert s["indexed"] == ["release-notes.md"] and s["documents"]["unchanged"] == 2

    card_id = doc_id_for("quick-start-card.png")
    with Manifest(idx / "index.sqlite", readonly=True) as m:
        card_crops = {f.crop_path for f in m.figures_of_doc("quick-start-card.png")}
    assert card_crops and all((idx / c).exists() for c in card_crops)
    (library / "quick-start-card.png").unlink()
    rc, s, err = run_index(cfg, library, idx)
    assert rc == 0, err
    assert s["removed"] == ["quick-start-card.png"]
    after = store_ids(idx, scfg)
    assert not any(i.startswith(card_id) for ids in after.values() for i in ids)
    assert not any((idx / c).exists() for c in card_crops), "crops of a removed document are pruned"
    pump = doc_id_for("pump-controller-manual.pdf")
    assert {i for i in after["image"] if i.startswith(pump)} == {
        i for i in before["image"] if i.startswith(pump)
    }


def test_an_index_of_an_older_extraction_is_redone_by_the_next_run(tmp_path, library):
    """An index written by a release whose extraction produced other records (its documents carry the
    fingerprint of that extraction) is brought up to date by the next `index` run, document by document:
    no reset, no stale figure texts."""
    import hashlib

    from manualrag.config import EXTRACTION_KEYS, load_config

    idx = tmp_path / "index"
    cfg_path = write_cfg(tmp_path, model=None)
    assert run_index(cfg_path, library, idx)[0] == 0
    cfg = load_config(cfg_path)
    older = {k: cfg[k] for k in EXTRACTION_KEYS}  # the fingerprint before extraction had a version
    old_fp = hashlib.sha256(json.dumps(older, sort_keys=True).encode()).hexdigest()[:16]
    with sqlite3.connect(idx / "index.sqlite") as db:
        db.execute("UPDATE documents SET config_fp = ? WHERE path = 'release-notes.md'", (old_fp,))
    rc, s, err = run_index(cfg_path, library, idx)
    assert rc == 0, err
    assert s["indexed"] == ["release-notes.md"] and s["documents"]["unchanged"] == 2
    assert run_index(cfg_path, library, idx)[1]["documents"]["unchanged"] == 3


def test_run_only_settings_redo_nothing_and_a_changed_setting_is_named(tmp_path, library):
    """OCR processes, its timeout and its cache file say how a run goes, not what it extracts: changing
    them redoes nothing (before: every document). A setting that changes extraction redoes every document,
    and the summary names it (before: "3 indexed", nothing more)."""
    idx = tmp_path / "index"
    assert run_index(write_cfg(tmp_path, model=None, ocr={"enabled": False}), library, idx)[0] == 0
    run_only = {"enabled": False, "workers": 1, "timeout_s": 30, "cache": str(tmp_path / "ocr.sqlite")}
    rc, s, err = run_index(write_cfg(tmp_path, model=None, ocr=run_only), library, idx)
    assert rc == 0 and s["documents"]["unchanged"] == 3, (s, err)
    assert not any("extracted again" in w for w in s["warnings"]), s["warnings"]
    changed = write_cfg(tmp_path, model=None, ocr={"enabled": False}, extract={"min_text_chars": 40})
    rc, s, err = run_index(changed, library, idx)
    assert rc == 0 and s["documents"]["indexed"] == 3, (s, err)
    assert any(
        w.startswith("3 document(s) extracted again") and "extract.min_text_chars 30 -> 40" in w
        for w in s["warnings"]
    ), s["warnings"]


def test_passwords_retry_the_encrypted_file_alone_and_keep_it(tmp_path, library):
    """Passwords open encrypted files and change nothing else: adding one indexes the file that needed it
    and redoes no other document; dropping it again keeps that file (before: both runs redid every
    document, and the second removed the file it had opened)."""
    from tests import helpers_pdf as h

    h.encrypted_pdf(library / "locked.pdf", "s3cret")
    idx = tmp_path / "index"
    rc, s, err = run_index(write_cfg(tmp_path, model=None, ocr={"enabled": False}), library, idx)
    assert rc == 1 and [f["path"] for f in s["failed"]] == ["locked.pdf"], (s, err)
    opened = write_cfg(tmp_path, model=None, ocr={"enabled": False}, passwords=["s3cret"])
    rc, s, err = run_index(opened, library, idx)
    assert rc == 0 and s["indexed"] == ["locked.pdf"] and s["documents"]["unchanged"] == 3, (s, err)
    rc, s, err = run_index(write_cfg(tmp_path, model=None, ocr={"enabled": False}), library, idx)
    assert rc == 0 and s["documents"] == {"indexed": 0, "unchanged": 4, "removed": 0, "failed": 0}, (s, err)


def test_check_repair_redoes_only_the_broken_document_with_the_index_settings(tmp_path, library):
    """`check --repair` without the --config the index was built with repairs with the settings the
    index recorded: the broken document alone (before: every document, extracted with other settings)."""
    idx = tmp_path / "index"
    cfg = write_cfg(tmp_path, model=None, ocr={"enabled": False}, extract={"min_text_chars": 40})
    assert run_index(cfg, library, idx)[0] == 0
    with Manifest(idx / "index.sqlite", readonly=True) as m:
        crop = next(f.crop_path for f in m.figures_of_doc("quick-start-card.png") if f.crop_path)
    (idx / crop).unlink()
    res = CliRunner().invoke(main, ["check", "--index-dir", str(idx), "--repair", "--json"])
    rep = json.loads(res.stdout)
    assert res.exit_code == 0 and rep["after_repair"]["ok"], res.output
    assert rep["repair"]["documents"]["indexed"] == 1 and rep["repair"]["documents"]["unchanged"] == 2, rep


def test_encoder_mismatch_is_refused(tmp_path, library, tiny_clip_dir, tiny_siglip_dir):
    idx = tmp_path / "index"
    assert run_index(write_cfg(tmp_path, model=str(tiny_clip_dir)), library, idx)[0] == 0
    res = CliRunner().invoke(
        main,
        [
            "--config",
            str(write_cfg(tmp_path, model=str(tiny_siglip_dir))),
            "index",
            str(library),
            "--index-dir",
            str(idx),
        ],
    )
    assert res.exit_code == 2
    assert "reset" in res.output and "--index-dir" in res.output


def test_unavailable_model_fails_fast_with_ways_out(tmp_path, library):
    t0 = time.perf_counter()
    res = CliRunner().invoke(
        main,
        [
            "--config",
            str(write_cfg(tmp_path)),
            "index",
            str(library),
            "--index-dir",
            str(tmp_path / "i"),
            "--model",
            "no-such-org/no-such-clip",
        ],
    )
    assert time.perf_counter() - t0 < 15
    assert res.exit_code == 2
    assert "no-such-org/no-such-clip" in res.output and "--no-dense" in res.output
    assert "Traceback" not in res.output


def test_no_dense_then_model_equals_one_run_with_model(tmp_path, library, tiny_clip_dir):
    cfg = write_cfg(tmp_path, model=str(tiny_clip_dir))
    a, b = tmp_path / "a", tmp_path / "b"
    rc, s, err = run_index(cfg, library, a, "--no-dense")
    assert rc == 0, err
    assert s["embedded"] == {} and not store_ids(a, {"url": None, "collection": "manualrag", "headers": {}})
    with Manifest(a / "index.sqlite", readonly=True) as m:
        assert lexical_search(m, "Hydraulic circuit", 5), "lexical index is built without vectors"
    assert run_index(cfg, library, a)[0] == 0
    assert run_index(cfg, library, b)[0] == 0
    scfg = {"url": None, "collection": "manualrag", "headers": {}}
    assert store_ids(a, scfg) == store_ids(b, scfg)
    with Manifest(a / "index.sqlite", readonly=True) as ma, Manifest(b / "index.sqlite", readonly=True) as mb:
        assert _all_vector_ids(ma) == _all_vector_ids(mb)
        assert ma.stats() == mb.stats()


def test_bad_file_fails_alone_with_exit_1(tmp_path, library, tiny_clip_dir):
    (library / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <</Type /Catalog" + b"\x00" * 50)
    (library / "empty.pdf").write_bytes(b"")
    (library / "notes.docx").write_bytes(b"PK\x03\x04 not ours")
    rc, s, err = run_index(write_cfg(tmp_path, model=str(tiny_clip_dir)), library, tmp_path / "i")
    assert rc == 1
    failed = {f["path"]: f["reason"] for f in s["failed"]}
    assert set(failed) == {"broken.pdf", "empty.pdf"}
    assert all(r and "\n" not in r for r in failed.values())
    assert s["documents"]["indexed"] == 3
    assert s["skipped"].get("unsupported") == 1


def test_stats_describes_the_index(tmp_path, library, tiny_clip_dir):
    idx = tmp_path / "index"
    assert run_index(write_cfg(tmp_path, model=str(tiny_clip_dir)), library, idx)[0] == 0
    res = CliRunner().invoke(main, ["stats", "--index-dir", str(idx), "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert st["documents"] == 3
    assert st["model"] == str(tiny_clip_dir) and st["dim"] == 32
    assert st["vectors"]["image"] > 0 and st["vectors"]["text"] > 0
    assert st["size_bytes"] > 0


def test_shards_partition_the_library(tmp_path, library, tiny_clip_dir):
    cfg = write_cfg(tmp_path, model=str(tiny_clip_dir))
    indexed = []
    for i in range(2):
        rc, s, err = run_index(cfg, library, tmp_path / f"shard{i}", "--no-dense", "--shard", f"{i}/2")
        assert rc == 0, err
        indexed.append(set(s["indexed"]))
    assert indexed[0] | indexed[1] == set(LIB_FILES) and not indexed[0] & indexed[1]
    res = CliRunner().invoke(
        main, ["index", str(library), "--shard", "2/2", "--index-dir", str(tmp_path / "x")]
    )
    assert res.exit_code == 2 and "--shard" in res.output


# ------------------------------------------------------------------------- reusing stored vectors (reuse.py)
def revision_pdf(path: Path, revision: int) -> Path:
    """A six-page manual; ``revision`` 2 rewrites page 3's text (nothing else changes): a photo on page 2,
    the wiring diagram with its caption on page 4, a logo on every page."""
    import pymupdf

    from tests.helpers_pdf import A4, body_text, draw_wiring_diagram, logo_png, photo_png

    doc = pymupdf.open()
    logo, photo = logo_png(), photo_png()
    topics = ["intake filter", "impeller", "seal kit", "motor leads", "pressure switch", "drain valve"]
    for n, topic in enumerate(topics, start=1):
        page = doc.new_page(width=A4[0], height=A4[1])
        page.insert_image(pymupdf.Rect(480, 30, 540, 50), stream=logo)
        page.insert_text((72, 110), f"{n} Servicing the {topic}", fontsize=18, fontname="hebo")
        text = (
            f"Inspect the {topic} every 500 operating hours. Switch the pump off, close both valves and "
            f"wait until the housing has cooled before touching the {topic}. Replace it when worn."
        )
        if n == 3 and revision == 2:
            text = (
                "Revision 2: the seal kit is now replaced as a cartridge. Unscrew the retaining ring with "
                "tool T-42, pull the cartridge straight out and push the new one in until it clicks."
            )
        y = body_text(page, 130, text)
        if n == 2:
            page.insert_image(pymupdf.Rect(150, y + 20, 390, y + 200), stream=photo)
        if n == 4:
            draw_wiring_diagram(page, (100, 400))
            page.insert_text((180, 540), "Figure 1: Wiring of the motor leads", fontsize=10)
    doc.set_metadata({"title": "Pump Service Manual"})
    doc.save(path)
    doc.close()
    return path


def stored_vectors(index_dir: Path, store_cfg: dict) -> dict[str, dict[str, np.ndarray]]:
    with VectorStore.open(index_dir, {"store": store_cfg}) as st:
        return {k: st.vectors(k, st.all_ids(k)) for k in KINDS if st.get(k) is not None}


def assert_same_vectors(got: dict, want: dict, rename: tuple[str, str] = ("", "")) -> None:
    """The same ids (``rename``: got's doc id prefix for want's) and cosine >= 0.9999 for each vector."""
    assert set(got) == set(want)
    for kind in want:
        g = {rid.replace(*rename, 1): v for rid, v in got[kind].items()}
        assert set(g) == set(want[kind]), kind
        worst = min(float(g[rid] @ v) for rid, v in want[kind].items())
        assert worst >= 0.9999, (kind, worst)


def _hits(idx: Path, cfg_path: Path, queries: list[str]) -> list[list[tuple[str, float]]]:
    from manualrag.config import load_config
    from manualrag.retriever.search import Retriever

    with Retriever.open(idx, load_config(cfg_path)) as r:
        return [[(h.id, round(h.score, 3)) for h in r.search(q, k=8).hits] for q in queries]


def test_an_edited_or_renamed_manual_reuses_its_stored_vectors(
    tmp_path, tiny_clip_dir, minilm_dir, store_cfg_factory
):
    lib = tmp_path / "lib"
    lib.mkdir()
    pdf = revision_pdf(lib / "pump.pdf", 1)
    idx = tmp_path / "index"
    scfg = store_cfg_factory(idx)
    cfg = write_cfg(tmp_path, scfg, model=str(tiny_clip_dir), text_model=str(minilm_dir), dtype="float32")
    rc, s1, err = run_index(cfg, lib, idx)
    assert rc == 0, err
    assert s1["reused"] == {} and s1["embedded"]["images"] >= 2  # the photo, the diagram
    first = sum(s1["embedded"].values())

    # a new revision: page 3's text changes, the rest of the manual is as it was
    revision_pdf(pdf, 2)
    rc, s2, err = run_index(cfg, lib, idx)
    assert rc == 0, err
    assert s2["indexed"] == ["pump.pdf"]
    reused, embedded = sum(s2["reused"].values()), sum(s2["embedded"].values())
    assert s2["reused"]["images"] == s1["embedded"]["images"] and "images" not in s2["embedded"]
    assert 0 < embedded <= 6 and reused >= first - 6, (s2["reused"], s2["embedded"])
    assert set(s2["embedded"]) == {"texts", "sem"}  # page 3's CLIP and text-model windows
    assert reused + embedded == sum(s2["records"][k] for k in KINDS if k in s2["records"])
    with Manifest(idx / "index.sqlite", readonly=True) as m:
        page3 = [w.text for w in m.windows_of_doc("pump.pdf") if ":p3:" in w.window_id]
    assert page3 and all("Revision 2" in t or "cartridge" in t or "T-42" in t for t in page3)

    # ...and the index is what a fresh index of the new revision is: the same vectors, the same hits
    fresh_lib = tmp_path / "fresh-lib"
    fresh_lib.mkdir()
    shutil.copy(pdf, fresh_lib / "pump.pdf")
    fresh = tmp_path / "fresh"
    fcfg = write_cfg(
        tmp_path,
        store_cfg_factory(fresh),
        model=str(tiny_clip_dir),
        text_model=str(minilm_dir),
        dtype="float32",
    )
    rc, s3, err = run_index(fcfg, fresh_lib, fresh)
    assert rc == 0, err
    assert s3["reused"] == {} and sum(s3["embedded"].values()) == reused + embedded
    want = stored_vectors(fresh, store_cfg_factory(fresh))
    assert_same_vectors(stored_vectors(idx, scfg), want)
    queries = ["replace the seal cartridge with tool T-42", "wiring of the motor leads", "drain valve"]
    assert _hits(idx, cfg, queries) == _hits(fresh, fcfg, queries)

    # renamed (moved into a folder): every vector is reused, none embedded
    (lib / "old").mkdir()
    pdf.rename(lib / "old" / "pump-rev2.pdf")
    rc, s4, err = run_index(cfg, lib, idx)
    assert rc == 0, err
    assert s4["indexed"] == ["old/pump-rev2.pdf"] and s4["removed"] == ["pump.pdf"]
    assert s4["embedded"] == {} and sum(s4["reused"].values()) == reused + embedded
    rename = (doc_id_for("old/pump-rev2.pdf"), doc_id_for("pump.pdf"))
    assert_same_vectors(stored_vectors(idx, scfg), want, rename)

    res = CliRunner().invoke(main, ["--config", str(cfg), "index", str(lib), "--index-dir", str(idx)])
    assert res.exit_code == 0 and "vectors:" not in res.output  # nothing to do: no reuse line
    pdf = lib / "old" / "pump-rev2.pdf"
    revision_pdf(pdf, 1)
    res = CliRunner().invoke(main, ["--config", str(cfg), "index", str(lib), "--index-dir", str(idx)])
    assert res.exit_code == 0, res.output
    line = [ln for ln in res.output.splitlines() if ln.startswith("  vectors:")]
    assert len(line) == 1 and line[0].endswith("embedded") and " reused from the index, " in line[0], line


def test_vectors_are_not_reused_across_precisions_int8_or_when_switched_off(tmp_path, tiny_clip_dir):
    lib = tmp_path / "lib"
    lib.mkdir()
    pdf = revision_pdf(lib / "pump.pdf", 1)

    def edit_and_index(idx: Path, cfg: Path, revision: int) -> dict:
        revision_pdf(pdf, revision)
        rc, s, err = run_index(cfg, lib, idx)
        assert rc == 0, err
        assert s["indexed"] == ["pump.pdf"]
        return s

    # float32 vectors, then a run in bfloat16: nothing reused (another precision)
    idx = tmp_path / "index"
    f32 = write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="float32")
    assert edit_and_index(idx, f32, 1)["reused"] == {}
    s = edit_and_index(idx, write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="bfloat16"), 2)
    assert s["reused"] == {} and s["embedded"]["images"] >= 2
    # the index now holds bfloat16 vectors alone (the document was redone whole): bfloat16 reuses them
    s = edit_and_index(idx, write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="bfloat16"), 1)
    assert s["reused"].get("images", 0) >= 2

    # int8 vectors are never reused, not even by an int8 run
    i8_idx = tmp_path / "int8"
    i8 = write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="int8")
    assert edit_and_index(i8_idx, i8, 2)["reused"] == {}
    s = edit_and_index(i8_idx, i8, 1)
    assert s["reused"] == {} and s["embedded"]["images"] >= 2

    # switched off: everything is embedded again
    off = write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="float32", index={"reuse_vectors": False})
    idx_off = tmp_path / "off"
    assert edit_and_index(idx_off, off, 2)["reused"] == {}
    s = edit_and_index(idx_off, off, 1)
    assert s["reused"] == {} and s["embedded"]["images"] >= 2
    s = edit_and_index(idx_off, f32, 2)  # back on: reused again
    assert s["reused"]["images"] >= 2


def test_one_run_in_another_dtype_leaves_each_documents_vectors_reusable(tmp_path, tiny_clip_dir):
    """Each document records what made its vectors: after one manual was redone in bfloat16, bfloat16 runs
    reuse its bfloat16 vectors and float32 runs the other manual's float32 ones (an index-wide record,
    mixed from that run on, reused nothing any more until a reset)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    a, b = revision_pdf(lib / "a.pdf", 1), revision_pdf(lib / "b.pdf", 2)
    idx = tmp_path / "index"
    f32 = write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="float32")
    bf16 = write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="bfloat16")

    def edit_and_index(pdf: Path, revision: int, cfg: Path) -> dict:
        revision_pdf(pdf, revision)
        rc, s, err = run_index(cfg, lib, idx)
        assert rc == 0, err
        assert s["indexed"] == [pdf.name]
        return s

    assert run_index(f32, lib, idx)[0] == 0
    assert edit_and_index(a, 2, bf16)["reused"] == {}  # its vectors were float32
    assert edit_and_index(a, 1, bf16)["reused"].get("images", 0) >= 2  # ... and are bfloat16 now
    assert edit_and_index(b, 1, f32)["reused"].get("images", 0) >= 2  # b's are still float32
    assert edit_and_index(b, 2, bf16)["reused"] == {}
    with Manifest(idx / "index.sqlite", readonly=True) as m:
        made = {p: json.loads(d.vector_identity["clip"][0])["dtype"] for p, d in m.documents().items()}
        precision = m.get_meta("precision")["clip"]["dtype"]
    assert made == {"a.pdf": "bfloat16", "b.pdf": "bfloat16"}
    assert precision == "bfloat16"  # what stats shows: the float32 vectors are gone (it said both before)


def test_a_document_indexed_before_documents_recorded_their_vectors_goes_by_the_index(
    tmp_path, tiny_clip_dir
):
    """An index of schema 4 has no documents.vector_identity: its documents reuse their vectors while the
    index-wide record holds one identity per model, as before."""
    lib = tmp_path / "lib"
    lib.mkdir()
    pdf = revision_pdf(lib / "pump.pdf", 1)
    idx = tmp_path / "index"
    f32 = write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="float32")
    assert run_index(f32, lib, idx)[0] == 0
    con = sqlite3.connect(idx / "index.sqlite")
    con.execute("UPDATE documents SET vector_identity = NULL")
    con.commit()
    con.close()
    revision_pdf(pdf, 2)
    rc, s, err = run_index(f32, lib, idx)
    assert rc == 0, err
    assert s["indexed"] == ["pump.pdf"] and s["reused"].get("images", 0) >= 2


def test_a_document_whose_write_was_cut_short_reuses_nothing(tmp_path, tiny_clip_dir):
    """A run killed in a document's store stage leaves its documents row out and may leave new vectors under
    its old rows' ids: the next run reuses none of that document's vectors."""
    lib = tmp_path / "lib"
    lib.mkdir()
    revision_pdf(lib / "pump.pdf", 1)
    idx = tmp_path / "index"
    cfg = write_cfg(tmp_path, model=str(tiny_clip_dir), dtype="float32")
    assert run_index(cfg, lib, idx)[0] == 0
    scfg = {"url": None, "collection": "manualrag", "headers": {}}
    with Manifest(idx / "index.sqlite") as m:
        wid = m.windows_of_doc("pump.pdf")[0].window_id
        m.begin_document("pump.pdf")  # what the store stage does first
    with VectorStore.open(idx, {"store": scfg}) as st:
        good = st.vectors("text", [wid])[wid]
        st.upsert("text", [wid], -good[None, :], [{"path": "pump.pdf", "page": 1, "kind": "text"}])
    rc, s, err = run_index(cfg, lib, idx)
    assert rc == 0, err
    assert s["indexed"] == ["pump.pdf"] and s["reused"] == {}
    with VectorStore.open(idx, {"store": scfg}) as st:
        assert float(st.vectors("text", [wid])[wid] @ good) >= 0.9999
