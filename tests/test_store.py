"""VectorStore against real Chroma: an embedded folder and a real `chroma run` server, the latter normally
behind the authenticating nginx proxy of deploy/ (fixtures ``store_mode`` / ``store_server`` in conftest.py)."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest

from manualrag.config import DEFAULTS
from manualrag.errors import ConfigError, EncoderMismatchError, StoreError
from manualrag.store import HNSW, KINDS, SCHEMA_VERSION, VectorStore, expand_headers, parse_url
from tests.chroma_server import free_port, unique_prefix


def make_cfg(mode: str, request: pytest.FixtureRequest, prefix: str | None = None, **store) -> dict:
    """A config for ``mode``; in server mode with the test server's url and token header (``headers`` given
    here add to that header)."""
    cfg = copy.deepcopy(DEFAULTS)
    cfg["store"]["collection"] = prefix or unique_prefix()
    if mode == "server":
        cfg["store"].update(request.getfixturevalue("store_server").store_cfg())
    if "headers" in store:
        cfg["store"]["headers"] = {**cfg["store"]["headers"], **store.pop("headers")}
    cfg["store"].update(store)
    return cfg


@pytest.fixture
def mode(store_mode):
    return store_mode


@pytest.fixture
def open_store(mode, request, tmp_path):
    """Factory: open a store of this test's mode; every store opened is dropped (server) and closed at the end."""
    opened: list[VectorStore] = []
    default_prefix = unique_prefix()

    def factory(prefix: str | None = None, index_dir: Path | None = None, **store) -> VectorStore:
        cfg = make_cfg(mode, request, prefix or default_prefix, **store)
        st = VectorStore.open(index_dir or tmp_path / "index", cfg)
        opened.append(st)
        return st

    yield factory
    for st in opened:
        if mode == "server" and st._client is not None:
            st.drop_all()
        st.close()


def unit(rng: np.random.Generator, n: int, dim: int = 8) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- collections
def test_ensure_records_model_and_refuses_another(open_store):
    st = open_store()
    assert st.get("text") is None and st.model_of("text") is None
    st.ensure("text", "clip-a", 8)
    assert st.model_of("text") == ("clip-a", 8)
    meta = st.get("text").metadata
    assert meta["schema"] == 1
    st.ensure("text", "clip-a", 8)  # idempotent

    st2 = open_store()  # a fresh handle sees the recorded model
    assert st2.model_of("text") == ("clip-a", 8)
    with pytest.raises(EncoderMismatchError) as ei:
        st2.ensure("text", "clip-b", 8)
    msg = str(ei.value)
    assert "clip-a" in msg and "clip-b" in msg and "--index-dir" in msg and "manualrag reset" in msg
    assert ei.value.exit_code == 2
    with pytest.raises(EncoderMismatchError):
        st2.ensure("text", "clip-a", 16)
    assert st2.get("image") is None


def test_collections_use_cosine_space(open_store):
    st = open_store()
    col = st.ensure("image", "m", 8)
    assert col.configuration_json["hnsw"]["space"] == "cosine"
    assert col.configuration_json["hnsw"]["sync_threshold"] == HNSW["sync_threshold"]
    assert col.name == f"{st.prefix}-image"


_QUERY_IN_A_NEW_PROCESS = """
import hashlib, json, sys
import numpy as np
from manualrag.config import DEFAULTS
from manualrag.store import VectorStore
cfg = json.loads(sys.argv[2])
st = VectorStore.open(__import__("pathlib").Path(sys.argv[1]), cfg)
q = np.random.default_rng(1).standard_normal((30, 384)).astype(np.float32)
print(hashlib.sha256(json.dumps(st.query("sem", q, 50)).encode()).hexdigest())
"""


def test_every_process_searches_the_same_graph(tmp_path, request):
    """Chroma replays the records written after its last save of the HNSW graph into the graph, on several
    threads, whenever a process opens the store: with its default (a save every 1000 records) the same query
    got other 45th-50th neighbours from one process to the next, which moved fused scores and flipped
    near-ties between runs of the same query. With a save every batch, every process gets the same answer."""
    import json
    import subprocess
    import sys

    cfg = make_cfg("embedded", request)
    st = VectorStore.open(tmp_path / "idx", cfg)
    st.ensure("sem", "m", 384)
    vecs = np.random.default_rng(0).standard_normal((2750, 384)).astype(np.float32)
    for i in range(0, len(vecs), 250):
        ids = [f"p{j}" for j in range(i, min(i + 250, len(vecs)))]
        st.upsert("sem", ids, vecs[i : i + 250], [{"ref": x} for x in ids])
    st.close()
    answers = {
        subprocess.run(
            [sys.executable, "-c", _QUERY_IN_A_NEW_PROCESS, str(tmp_path / "idx"), json.dumps(cfg)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for _ in range(3)
    }
    assert len(answers) == 1, answers


def test_a_collection_made_before_gets_a_save_every_batch(tmp_path, request):
    import subprocess
    import sys

    cfg = make_cfg("embedded", request)
    name = f"{cfg['store']['collection']}-image"
    made_before = (  # by an older manualrag: Chroma's HNSW defaults, in a process of its own
        "import chromadb, sys; c = chromadb.PersistentClient(sys.argv[1]); "
        "c.create_collection(sys.argv[2], configuration={'hnsw': {'space': 'cosine'}}, "
        f"metadata={{'model': 'm', 'dim': 8, 'schema': {SCHEMA_VERSION}}}, embedding_function=None); "
        "print(c.get_collection(sys.argv[2]).configuration_json['hnsw']['sync_threshold'])"
    )
    r = subprocess.run(
        [sys.executable, "-c", made_before, str(tmp_path / "idx" / "chroma"), name],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip() == "1000"  # Chroma's default
    st = VectorStore.open(tmp_path / "idx", cfg)
    col = st.ensure("image", "m", 8)
    assert col.configuration_json["hnsw"]["sync_threshold"] == HNSW["sync_threshold"]
    st.close()


def test_bad_prefix_is_a_config_error(tmp_path):
    cfg = copy.deepcopy(DEFAULTS)
    cfg["store"]["collection"] = "a b"
    with pytest.raises(ConfigError, match="store.collection"):
        VectorStore.open(tmp_path, cfg)


# ------------------------------------------------------------------------------------------------ records
def test_query_restricted_to_documents_finds_their_nearest_records(open_store):
    """``paths`` (a source filter) searches only those documents' records: their nearest ones come back
    even when every record of another document is nearer, with the scores of the unfiltered query."""
    st = open_store()
    rng = np.random.default_rng(1)
    st.ensure("text", "m", 8)
    vecs = unit(rng, 60)
    q = vecs[0]
    order = np.argsort(-(vecs @ q))  # nearest first: the first 40 are near.pdf, the rest far.pdf or other.pdf
    path = {
        int(i): ("near.pdf" if r < 40 else ("far.pdf" if r % 2 else "other.pdf")) for r, i in enumerate(order)
    }
    ids = [f"r{i}" for i in range(60)]
    st.upsert("text", ids, vecs, [{"path": path[i], "page": 1} for i in range(60)])
    everything = st.query("text", q, 60)[0]
    assert all(path[int(rid[1:])] == "near.pdf" for rid, _ in everything[:5])  # far.pdf is not in a top 5

    far = st.query("text", q, 5, paths=["far.pdf"])[0]
    want = [(rid, s) for rid, s in everything if path[int(rid[1:])] == "far.pdf"][:5]
    assert [rid for rid, _ in far] == [rid for rid, _ in want]
    assert [s for _, s in far] == pytest.approx([s for _, s in want], abs=1e-5)
    both = st.query("text", q, 100, paths=["far.pdf", "other.pdf"])[0]
    assert {rid for rid, _ in both} == {f"r{i}" for i in range(60) if path[i] != "near.pdf"}
    assert st.query("text", q, 5, paths=["absent.pdf"]) == [[]]
    assert st.query("text", q, 5, paths=[]) == [[]]


def test_upsert_query_delete(open_store):
    st = open_store()
    rng = np.random.default_rng(0)
    st.ensure("text", "m", 8)
    vecs = unit(rng, 20)
    ids = [f"d:p1:{i}:w0" for i in range(20)]
    metas = [
        {"path": "a.pdf", "page": i, "kind": "text", "ref": f"d:p1:{i}", "heading": None} for i in range(20)
    ]
    st.upsert("text", ids, vecs * 3.0, metas, documents=[f"window {i}" for i in range(20)])  # unnormalised
    assert st.count("text") == 20

    res = st.query("text", vecs[3], 5)
    assert len(res) == 1 and len(res[0]) == 5
    assert res[0][0][0] == ids[3]
    assert res[0][0][1] == pytest.approx(1.0, abs=1e-5)
    # scores are cosine similarities
    expected = {ids[i]: float(vecs[i] @ vecs[3]) for i in range(20)}
    for rid, score in res[0]:
        assert score == pytest.approx(expected[rid], abs=1e-4)
    assert [s for _, s in res[0]] == sorted((s for _, s in res[0]), reverse=True)

    rows = _query_meta(st, "text", vecs[3], 3)
    assert [(r[0], r[1]) for r in rows] == res[0][:3]
    assert rows[0][2] == {"path": "a.pdf", "page": 3, "kind": "text", "ref": "d:p1:3"}  # None values dropped

    # batch of queries, n clamped to the collection size
    res = st.query("text", vecs[:2], 100)
    assert len(res) == 2 and all(len(r) == 20 for r in res)
    assert res[1][0][0] == ids[1]

    # upsert replaces
    st.upsert("text", [ids[0]], -vecs[:1], [{"path": "b.pdf", "page": 9}])
    got = st.get("text").get(ids=[ids[0]], include=["metadatas", "documents"])
    assert got["metadatas"][0]["path"] == "b.pdf"
    assert st.query("text", vecs[0], 1)[0][0][1] < 0.9 or st.query("text", vecs[0], 1)[0][0][0] != ids[0]

    st.delete("text", ids[:5] + ["absent:1", "absent:2"])
    assert st.count("text") == 15
    res = st.query("text", vecs[:3], 50)  # n above the size after deletes: what is left, deleted ids gone
    assert [len(r) for r in res] == [15, 15, 15]
    assert not {rid for r in res for rid, _ in r} & set(ids[:5])
    assert set(st.all_ids("text")) == set(ids[5:])
    st.delete("image", ["x"])  # absent collection: fine


def test_vectors_returns_the_stored_vectors_by_id(open_store):
    """What indexer/reuse.py reads back: the vector upserted under each id (float32), across batches;
    absent ids and absent collections give nothing."""
    st = open_store()
    assert st.vectors("text", ["a:w0"]) == {}  # no collection yet
    st.ensure("text", "m", 8)
    st.ensure("sem", "t", 8)
    rng = np.random.default_rng(7)
    n = st.max_batch() + 3  # two batches
    vecs = unit(rng, n)
    ids = [f"d:p{i}:0:w0" for i in range(n)]
    st.upsert("text", ids, vecs, [{"path": "a.pdf", "page": i} for i in range(n)])
    st.upsert("sem", ["d:p0:0:s0"], -vecs[:1], [{"path": "a.pdf", "page": 0}])
    assert st.vectors("text", []) == {}

    got = st.vectors("text", ids + ["absent:w0", ids[5]])  # repeated ids asked once
    assert set(got) == set(ids)
    for i, rid in enumerate(ids):
        assert got[rid].dtype == np.float32 and got[rid].shape == (8,)
        np.testing.assert_allclose(got[rid], vecs[i], rtol=0, atol=1e-6)
    # each collection keeps its own: the same id in another kind is another vector
    np.testing.assert_allclose(st.vectors("sem", ["d:p0:0:s0"])["d:p0:0:s0"], -vecs[0], atol=1e-6)
    assert st.vectors("sem", [ids[1]]) == {}
    assert st.vectors("image", ids[:3]) == {}  # absent collection
    st.delete("text", ids[:2])
    assert set(st.vectors("text", ids[:4])) == set(ids[2:4])


def _query_meta(st: VectorStore, kind: str, vec: np.ndarray, n: int) -> list[tuple[str, float, dict]]:
    """The nearest records of ``kind`` with the metadata the store keeps for each."""
    hits = st.query(kind, vec, n)[0]
    if not hits:
        return []
    got = st.get(kind).get(ids=[rid for rid, _ in hits], include=["metadatas"])
    meta = dict(zip(got["ids"], got["metadatas"], strict=True))
    return [(rid, score, dict(meta[rid] or {})) for rid, score in hits]


def test_empty_and_absent_collections(open_store):
    st = open_store()
    q = np.ones(8, dtype=np.float32)
    assert st.query("sem", q, 5) == [[]]
    assert _query_meta(st, "sem", q, 5) == []
    assert st.count("sem") == 0 and st.all_ids("sem") == []
    st.ensure("sem", "mini", 8)
    assert st.query("sem", np.ones((3, 8), dtype=np.float32), 5) == [[], [], []]
    with pytest.raises(StoreError, match="ensure"):
        st.upsert("image", ["a"], np.ones((1, 8)), [{"path": "x"}])


def test_validation(open_store):
    st = open_store()
    st.ensure("image", "m", 8)
    one = np.ones((1, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="labels"):
        st.upsert("image", ["a"], one, [{"labels": ["X1", "X2"]}])
    with pytest.raises(ValueError, match="bbox"):
        st.upsert("image", ["a"], one, [{"bbox": {"x0": 1}}])
    with pytest.raises(ValueError, match="shape"):
        st.upsert("image", ["a", "b"], one, [{}, {}])
    with pytest.raises(ValueError, match="8-d"):
        st.upsert("image", ["a"], np.ones((1, 4)), [{}])
    with pytest.raises(ValueError, match="NaN"):
        st.upsert("image", ["a"], np.full((1, 8), np.nan), [{}])
    with pytest.raises(ValueError, match="8-d"):
        st.query("image", np.ones(4), 3)
    # numpy scalars and empty metadata are fine
    st.upsert("image", ["a", "b"], np.ones((2, 8)), [{"page": np.int64(3), "dpi": np.float32(96.5)}, {}])
    got = st.get("image").get(ids=["a"], include=["metadatas"])
    assert got["metadatas"][0] == {"page": 3, "dpi": pytest.approx(96.5)}


def test_batches_over_the_max_batch_size(open_store):
    st = open_store()
    assert st.client.get_max_batch_size() < 6000
    rng = np.random.default_rng(1)
    n = 6000
    ids = [f"r{i}" for i in range(n)]
    st.ensure("text", "m", 8)
    t0 = time.perf_counter()
    st.upsert("text", ids, unit(rng, n), [{"page": i} for i in range(n)])
    rate = n / (time.perf_counter() - t0)
    print(f"upsert {n} x 8-d: {rate:.0f} records/s ({st.where})")
    assert st.count("text") == n
    assert sorted(st.all_ids("text")) == sorted(ids)
    st.delete("text", ids)
    assert st.count("text") == 0


def test_drop_all_drops_only_this_prefix(open_store):
    a = open_store(prefix=unique_prefix("a"))
    b = open_store(prefix=unique_prefix("b"))
    for kind in KINDS:
        a.ensure(kind, "m", 8)
    b.ensure("text", "m", 8)
    b.upsert("text", ["x"], np.ones((1, 8)), [{"page": 1}])
    dropped = a.drop_all()
    assert sorted(dropped) == sorted(f"{a.prefix}-{k}" for k in KINDS)
    assert all(a.get(k) is None for k in KINDS)
    assert b.count("text") == 1
    a.ensure("text", "other-model", 16)  # a fresh start after the drop


def test_embedded_store_persists(tmp_path, request):
    cfg = make_cfg("embedded", request)
    st = VectorStore.open(tmp_path / "idx", cfg)
    st.ensure("image_text", "m", 8)
    st.upsert("image_text", ["f:t"], np.ones((1, 8)), [{"ref": "f"}])
    st.close()
    assert (tmp_path / "idx" / "chroma").is_dir()
    st = VectorStore.open(tmp_path / "idx", cfg)
    assert st.count("image_text") == 1 and st.model_of("image_text") == ("m", 8)
    st.close()


def test_never_uses_the_default_embedding_function(open_store, monkeypatch, tmp_path):
    """No path of ours may fall back to Chroma's ONNX model (it downloads to ~/.cache/chroma/onnx_models)."""
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2 as onnx

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    # the class computes its download folder from the home at import time: point it at the temp home too
    monkeypatch.setattr(
        onnx.ONNXMiniLM_L6_V2, "DOWNLOAD_PATH", home / ".cache/chroma/onnx_models/all-MiniLM-L6-v2"
    )
    calls = []

    def trap(self, *a, **k):
        calls.append(a)
        raise AssertionError("the default embedding function was used")

    monkeypatch.setattr(onnx.ONNXMiniLM_L6_V2, "__call__", trap)
    monkeypatch.setattr(onnx.ONNXMiniLM_L6_V2, "_download_model_if_not_exists", trap)

    st = open_store()
    rng = np.random.default_rng(2)
    for kind in KINDS:
        st.ensure(kind, "m", 8)
        st.upsert(kind, ["a", "b"], unit(rng, 2), [{"page": 1}, {"page": 2}], documents=["doc a", "doc b"])
        assert st.query(kind, unit(rng, 1), 2)[0]
        st.all_ids(kind)
        st.delete(kind, ["a"])
    st2 = open_store()
    assert st2.query("text", unit(rng, 1), 2)[0]
    assert calls == []
    assert not (home / ".cache" / "chroma").exists()


# ----------------------------------------------------------------------------------------------- server
def test_header_expansion():
    env = {"MR_TOKEN": "s3cret", "MR_USER": "bob"}
    out = expand_headers(
        {"Authorization": "Bearer ${MR_TOKEN}", "X-User": "${MR_USER}-${MR_USER}", "X": "$plain"}, env
    )
    assert out == {"Authorization": "Bearer s3cret", "X-User": "bob-bob", "X": "$plain"}
    with pytest.raises(StoreError) as ei:
        expand_headers({"Authorization": "Bearer ${MR_MISSING}", "Other": "${MR_TOKEN}"}, env)
    assert "Authorization" in str(ei.value) and "MR_MISSING" in str(ei.value)
    assert "s3cret" not in str(ei.value)


def test_missing_header_variable_fails_before_connecting(request, tmp_path, monkeypatch):
    monkeypatch.delenv("MR_NOT_SET_ANYWHERE", raising=False)
    cfg = make_cfg(
        "embedded",
        request,
        url=f"http://127.0.0.1:{free_port()}",
        headers={"X-Api-Key": "${MR_NOT_SET_ANYWHERE}"},
    )
    with pytest.raises(StoreError, match=r"X-Api-Key.*MR_NOT_SET_ANYWHERE"):
        VectorStore.open(tmp_path, cfg)


def test_server_with_expanded_headers(request, tmp_path, monkeypatch):
    monkeypatch.setenv("MR_TEST_TOKEN", "tok-123")
    cfg = make_cfg("server", request, headers={"X-Proxy-Token": "${MR_TEST_TOKEN}"})
    st = VectorStore.open(tmp_path, cfg)
    try:
        assert st.client._server._session.headers["X-Proxy-Token"] == "tok-123"
        st.ensure("text", "m", 8)
        assert st.count("text") == 0
    finally:
        st.drop_all()
        st.close()
    assert not (tmp_path / "chroma").exists()  # server mode writes no local store


def test_unreachable_server_is_one_actionable_line(request, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    cfg = make_cfg("embedded", request, url=url)
    t0 = time.perf_counter()
    with pytest.raises(StoreError) as ei:
        VectorStore.open(tmp_path, cfg)
    assert time.perf_counter() - t0 < 10
    msg = str(ei.value)
    assert url in msg and "is the server running?" in msg and "\n" not in msg


def test_parse_url():
    from chromadb.api.fastapi import FastAPI

    assert parse_url("http://127.0.0.1:8000") == {"host": "127.0.0.1", "port": 8000, "ssl": False}
    assert parse_url("https://chroma.example.com") == {"host": "chroma.example.com", "port": 443, "ssl": True}
    args = parse_url("https://proxy.example.com:8443/chroma/")
    assert args["ssl"] and args["port"] == 8443
    resolved = FastAPI.resolve_url(args["host"], args["ssl"], "/api/v2", args["port"])
    assert resolved == "https://proxy.example.com:8443/chroma/api/v2"
    for bad in ("ftp://x", "127.0.0.1:8000", "http://user:pw@host:1", "http://host:99999"):
        with pytest.raises(ConfigError, match="store.url"):
            parse_url(bad)


def test_unknown_database_on_the_server_is_reported(request, tmp_path):
    cfg = make_cfg("server", request, database="no_such_database")
    with pytest.raises(StoreError) as ei:
        VectorStore.open(tmp_path, cfg)
    msg = str(ei.value)
    assert cfg["store"]["url"] in msg and "store.database" in msg and "\n" not in msg


def test_store_cfg_factory_gives_each_index_folder_its_collections(store_mode, store_cfg_factory, tmp_path):
    """The shared fixture other suites (index, query, eval) use to run in both modes."""
    a1, a2, b = (
        store_cfg_factory(tmp_path / "a"),
        store_cfg_factory(tmp_path / "a"),
        store_cfg_factory(tmp_path / "b"),
    )
    assert a1["collection"] == a2["collection"] != b["collection"]
    if store_mode == "embedded":
        assert a1["url"] is None
    else:
        assert a1["url"].startswith("http")
    cfg = copy.deepcopy(DEFAULTS)
    cfg["store"] = a1
    with VectorStore.open(tmp_path / "a", cfg) as st:
        st.ensure("text", "m", 8)
        st.upsert("text", ["x"], np.ones((1, 8)), [{"page": 1}])
    cfg["store"] = b
    with VectorStore.open(tmp_path / "b", cfg) as st:
        assert st.count("text") == 0  # another folder, other collections (also on the shared server)
    cfg["store"] = a2
    with VectorStore.open(tmp_path / "a", cfg) as st:
        assert st.count("text") == 1
