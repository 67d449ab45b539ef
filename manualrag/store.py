"""Vector store: Chroma, embedded (``index_dir/chroma``) or a server, one collection per record kind.

Collections are named ``{prefix}-{kind}`` (``kind`` in :data:`KINDS`), use cosine space and carry
``model``, ``dim`` and ``schema`` in their metadata; a collection built with another encoder is refused
(:class:`EncoderMismatchError`), never mixed.

Chroma traps handled here (chromadb 1.5.9):

* its default embedding function downloads an ONNX model on first use, and ``embedding_function=None``
  does **not** prevent the fallback: every write and query here passes embeddings explicitly, and every
  collection handle is opened with ``embedding_function=None`` (``get_collection(name)`` without it
  attaches the default function);
* writes above ``client.get_max_batch_size()`` (5461) fail: writes are batched;
* a ``where`` filter costs 20-100x an unfiltered query at 100k records: each record kind has its own
  collection instead, and only a query restricted to some documents (a source filter) uses one, on the
  records' ``path`` metadata;
* metadata values must be scalars by our rule (Chroma would take lists): checked before sending.

``chromadb`` is imported lazily inside :meth:`VectorStore.open` (it is slow to import).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from manualrag.errors import ConfigError, EncoderMismatchError, StoreError
from manualrag.index import IndexLayout, require_same_store

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
KINDS = ("text", "image", "image_text", "sem")
MAX_BATCH = 4096  # upper bound on records per write, below Chroma's own limit (5461 in 1.5.9)
PAGE_SIZE = 4096  # ids per page when listing a collection
MAX_RESULTS = 10_000  # most neighbours one query asks for
# Chroma's HNSW settings for our collections. Chroma writes the graph to disk every ``sync_threshold`` records
# (default 1000); a process that opens the store replays the records written after the last save into the
# graph, on several threads, so each process searched a slightly different graph: the same query ranked its
# 45th-50th neighbours differently from one run to the next (in 3 of 4 runs of the corpus2 index), which moved
# the fused scores ~1% and flipped near-ties. Saving every batch of 100 gave the same neighbours in every
# process in every trial (batch and threshold both 1000 did not). Writing ~5% slower (20k vectors).
SAVE_EVERY = 100
HNSW: dict[str, Any] = {"space": "cosine", "batch_size": SAVE_EVERY, "sync_threshold": SAVE_EVERY}

_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,200}$")
_ENV_RE = re.compile(r"\$\{([^}]*)\}")
_VAR_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCALARS = (str, int, float, bool)


def expand_headers(headers: dict[str, str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """Replace ``${VAR}`` in header values by environment variables.

    A missing variable raises :class:`StoreError` naming the header and the variable. Values are never
    logged or put into a message.
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, value in headers.items():

        def sub(m: re.Match[str], name: str = name) -> str:
            var = m.group(1)
            if not _VAR_NAME_RE.match(var):
                raise StoreError(
                    f"store.headers['{name}']: '${{{var}}}' is not a valid environment variable name"
                )
            if var not in env:
                raise StoreError(
                    f"store.headers['{name}'] needs the environment variable {var}, which is not set"
                )
            return env[var]

        out[name] = _ENV_RE.sub(sub, value)
    return out


def parse_url(url: str) -> dict[str, Any]:
    """Split a store URL into HttpClient arguments: host, port, ssl (and a full-URL host for a path prefix)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"config key 'store.url' must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise ConfigError(f"config key 'store.url' has no host: {url!r}")
    if parts.username or parts.password:
        raise ConfigError(
            "config key 'store.url' must not hold credentials; put them in store.headers as ${VAR}"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"config key 'store.url' has a bad port: {url!r}") from None
    ssl = parts.scheme == "https"
    port = port or (443 if ssl else 80)
    prefix = parts.path.rstrip("/")
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if prefix:
        # chromadb takes a full URL as `host` and then appends /api/v2 to its path (port taken from the URL)
        return {"host": f"{parts.scheme}://{host}:{port}{prefix}", "port": port, "ssl": ssl}
    return {"host": parts.hostname, "port": port, "ssl": ssl}


def embedded_may_hold(folder: Path, names: list[str]) -> dict[str, bool] | None:
    """Whether each named collection of the embedded store in ``folder`` may hold records, read from its
    SQLite file without importing chromadb (~1 s): False only when the collection is absent, or has no
    record and no write waiting in Chroma's queue. None when the file is not there or not readable that
    way (another chromadb's schema): then ask the store itself."""
    import sqlite3

    db = folder / "chroma.sqlite3"
    if not db.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            ids = dict(con.execute("SELECT name, id FROM collections"))
            out: dict[str, bool] = {}
            for name in names:
                cid = ids.get(name)
                out[name] = cid is not None and bool(
                    con.execute(
                        "SELECT 1 FROM embeddings e JOIN segments s ON e.segment_id = s.id"
                        " WHERE s.collection = ? LIMIT 1",
                        (cid,),
                    ).fetchone()
                    or con.execute(
                        "SELECT 1 FROM embeddings_queue WHERE topic LIKE ? LIMIT 1", (f"%/{cid}",)
                    ).fetchone()
                )
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return out


def _batches(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _clean_metadata(meta: dict[str, Any], record_id: str) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, _SCALARS):
            raise ValueError(
                f"metadata '{key}' of record {record_id} must be a str, int, float or bool, "
                f"got {type(value).__name__} (store lists as JSON strings)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"metadata '{key}' of record {record_id} is not a finite number")
        out[key] = value
    return out or None  # Chroma refuses an empty dict


class LazyStore:
    """An index's vector store, opened on first use: ``chromadb`` takes ~1-1.6 s to import, which a
    lexical-only query or a run that writes no vectors never needs. Attribute access opens it (then it is a
    plain :class:`VectorStore`); :meth:`close` closes it only if it was opened. ``cold``: where the seconds
    of opening it are added up (``cold["open_store"]``, reported by the next search's timings)."""

    def __init__(
        self, root: Path, cfg: dict[str, Any], cold: dict[str, float] | None = None, create: bool = True
    ):
        self._args = (root, cfg)
        self._create = create
        self._store: VectorStore | None = None
        self._cold = cold

    def open(self) -> VectorStore:
        if self._store is None:
            t0 = time.perf_counter()
            self._store = VectorStore.open(*self._args, create=self._create)
            if self._cold is not None:
                self._cold["open_store"] = self._cold.get("open_store", 0.0) + time.perf_counter() - t0
        return self._store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.open(), name)

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            store.close()


class VectorStore:
    """Chroma collections ``{prefix}-{kind}`` of one index. Use :meth:`open`."""

    def __init__(self, client: Any, prefix: str, where: str):
        self._client = client
        self.prefix = prefix
        self.where = where  # "embedded folder PATH" or "server URL": for messages
        self._cols: dict[str, Any] = {}
        self._max_batch: int | None = None
        from chromadb.errors import ChromaError, NotFoundError

        self._ChromaError = ChromaError
        self._NotFoundError = NotFoundError

    # ------------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, index_dir: Path, cfg: dict[str, Any], create: bool = True) -> VectorStore:
        """Open the embedded store (``cfg['store']['url']`` null) or connect to a Chroma server.
        ``create=False`` (readers): an embedded store folder that is not there is not made; the store is then
        an empty one in memory (a copy of an index without its vectors: stats, query and check read it
        as having no vectors and write nothing into the folder)."""
        scfg = cfg["store"]
        prefix = scfg["collection"]
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix) or not prefix[-1].isalnum():
            raise ConfigError(
                f"config key 'store.collection' must be 2-200 characters from [A-Za-z0-9._-], starting and "
                f"ending with a letter or digit, got {prefix!r}"
            )
        import chromadb
        from chromadb.config import Settings

        url = scfg.get("url")
        if not url:
            require_same_store(index_dir, cfg)  # never an empty embedded store beside a server's vectors
            path = IndexLayout(Path(index_dir)).chroma
            settings = Settings(anonymized_telemetry=False, allow_reset=True)
            if not create and not path.is_dir():
                return cls(chromadb.EphemeralClient(settings=settings), prefix, f"embedded store {path}")
            try:
                path.mkdir(parents=True, exist_ok=True)
                client = chromadb.PersistentClient(
                    path=str(path),
                    settings=settings,
                    tenant=scfg.get("tenant", "default_tenant"),
                    database=scfg.get("database", "default_database"),
                )
            except Exception as exc:  # noqa: BLE001 - any failure here means the folder is unusable
                why = _one_line(exc)
                if "readonly database" in why or "read-only" in why:  # read-only media, an immutable copy
                    why += (
                        " (Chroma writes in its folder even to search: copy the index folder to a writable"
                        " place, or serve its vectors from a Chroma server and query with --store URL)"
                    )
                raise StoreError(f"cannot open the Chroma store in {path}: {why}") from exc
            return cls(client, prefix, f"embedded store {path}")

        args = parse_url(url)
        headers = expand_headers(dict(scfg.get("headers") or {}))
        # chromadb's client waits without a time limit and reports every failure as one ValueError: ask
        # the server plainly first, with a time limit, and say what went wrong
        problem = _probe(url, args, headers)
        if problem:
            raise StoreError(problem)
        try:
            client = chromadb.HttpClient(
                host=args["host"],
                port=args["port"],
                ssl=args["ssl"],
                headers=dict(headers) or None,  # a copy: chromadb adds its own headers to the dict
                tenant=scfg.get("tenant", "default_tenant"),
                database=scfg.get("database", "default_database"),
                settings=Settings(anonymized_telemetry=False),
            )
            client.heartbeat()
        except Exception as exc:  # noqa: BLE001 - connection, TLS, auth proxy, unknown tenant...
            import httpx

            reason = _one_line(exc)
            tls = _tls_failure(exc)
            if tls:
                raise StoreError(
                    f"the TLS certificate of the Chroma server at {url} is not trusted ({tls}); for a "
                    "self-signed or private-CA certificate set CHROMA_SERVER_SSL_VERIFY=/path/to/cert.pem"
                ) from exc
            if isinstance(exc, httpx.TransportError) or "Could not connect to a Chroma server" in reason:
                raise StoreError(
                    f"cannot reach the Chroma server at {url}: is the server running? ({reason})"
                ) from exc
            status = _auth_status(exc, args, headers)
            if status is not None:
                raise StoreError(_refused_message(f"the Chroma server at {url}", status, headers)) from exc
            raise StoreError(
                f"the Chroma server at {url} refused the connection: {reason} "
                "(check store.tenant, store.database and store.headers)"
            ) from exc
        log.debug("connected to Chroma server %s (%d header(s))", url, len(headers))
        return cls(client, prefix, f"server {url}")

    def close(self) -> None:
        self._cols.clear()
        client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing must not mask the caller's error
                log.debug("closing the Chroma client failed", exc_info=True)

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------- collections
    def name(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
        return f"{self.prefix}-{kind}"

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError("the vector store is closed")
        return self._client

    def max_batch(self) -> int:
        if self._max_batch is None:
            self._max_batch = max(1, min(MAX_BATCH, int(self._wrap(self.client.get_max_batch_size))))
        return self._max_batch

    def _wrap(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call Chroma; connection and server failures become a one-line StoreError."""
        import httpx

        try:
            return fn(*args, **kwargs)
        except self._NotFoundError:
            raise
        except (httpx.TransportError, self._ChromaError) as exc:
            if _is_auth_error(exc):  # e.g. the proxy's token was rotated while we ran
                raise StoreError(_refused_message(f"the Chroma {self.where}", None, None)) from exc
            raise StoreError(f"Chroma {self.where} failed: {_one_line(exc)}") from exc

    def get(self, kind: str) -> Any | None:
        """The collection of ``kind``, or None when it does not exist."""
        name = self.name(kind)
        col = self._cols.get(kind)
        if col is not None:
            return col
        try:
            col = self._wrap(self.client.get_collection, name, embedding_function=None)
        except self._NotFoundError:
            return None
        except ValueError as exc:  # older clients raise ValueError("Collection ... does not exist")
            if "does not exist" in str(exc):
                return None
            raise
        self._cols[kind] = col
        return col

    def model_of(self, kind: str) -> tuple[str, int] | None:
        """(model id, dimension) recorded on the collection, or None when it does not exist."""
        col = self.get(kind)
        if col is None:
            return None
        meta = col.metadata or {}
        if "model" not in meta or "dim" not in meta:
            return None
        return str(meta["model"]), int(meta["dim"])

    def ensure(self, kind: str, model_id: str, dim: int) -> Any:
        """Create the collection of ``kind`` or open it, refusing one built with another model or dimension."""
        dim = int(dim)
        col = self.get(kind)
        if col is None:
            name = self.name(kind)
            meta = {"model": model_id, "dim": dim, "schema": SCHEMA_VERSION}
            col = self._wrap(
                self.client.get_or_create_collection,
                name,
                configuration={"hnsw": dict(HNSW)},
                metadata=meta,
                embedding_function=None,
            )
            self._cols[kind] = col
        self._check(kind, col, model_id, dim)
        self._save_every_batch(col)
        return col

    def _save_every_batch(self, col: Any) -> None:
        """A collection made before HNSW's settings (1000 records between saves) gets them now: from the next
        write of a batch on, every process that opens it searches the same graph."""
        try:
            hnsw = (col.configuration_json or {}).get("hnsw") or {}
            threshold = int(hnsw.get("sync_threshold", SAVE_EVERY))
        except (AttributeError, TypeError, ValueError):  # the configuration layout is version dependent
            return
        if threshold > SAVE_EVERY:
            keys = ("batch_size", "sync_threshold")
            self._wrap(col.modify, configuration={"hnsw": {k: HNSW[k] for k in keys}})

    def _check(self, kind: str, col: Any, model_id: str, dim: int) -> None:
        meta = col.metadata or {}
        name = self.name(kind)
        if "model" not in meta or "dim" not in meta:
            raise StoreError(
                f"collection {name} in the {self.where} was not made by manualrag (no model/dim metadata); "
                "choose another store.collection prefix"
            )
        if int(meta.get("schema", 0)) != SCHEMA_VERSION:
            raise StoreError(
                f"collection {name} has schema {meta.get('schema')}, this manualrag writes schema "
                f"{SCHEMA_VERSION}: rebuild it (`manualrag reset`) or use a new --index-dir"
            )
        if meta["model"] != model_id or int(meta["dim"]) != dim:
            raise EncoderMismatchError(
                f"collection {name} was built with {meta['model']} (dim {meta['dim']}), not {model_id} "
                f"(dim {dim}); index into a new --index-dir (or another store.collection) or run "
                "`manualrag reset` to rebuild with the new model"
            )
        space = _space_of(col)
        if space is not None and space != "cosine":
            raise StoreError(
                f"collection {name} uses the {space} space, expected cosine; run `manualrag reset`"
            )

    def _require(self, kind: str) -> Any:
        col = self.get(kind)
        if col is None:
            raise StoreError(
                f"collection {self.name(kind)} does not exist in the {self.where} (call ensure first)"
            )
        return col

    def _dim(self, col: Any) -> int | None:
        meta = col.metadata or {}
        return int(meta["dim"]) if "dim" in meta else None

    def _retry_stale(self, kind: str, op: Any) -> Any:
        """Run ``op(collection)``; when the cached handle went stale (collection re-created), re-open once."""
        try:
            return op(self._require(kind))
        except self._NotFoundError:
            self._cols.pop(kind, None)
            try:
                return op(self._require(kind))
            except self._NotFoundError as exc:
                raise StoreError(f"collection {self.name(kind)} vanished from the {self.where}") from exc

    # ---------------------------------------------------------------------------------------------- write
    def upsert(
        self,
        kind: str,
        ids: Sequence[str],
        embeddings: np.ndarray,
        metadatas: Sequence[dict[str, Any]],
        documents: Sequence[str] | None = None,
    ) -> None:
        """Insert or replace records (batched under the client's max batch size)."""
        ids = list(ids)
        n = len(ids)
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != n:
            raise ValueError(f"embeddings must have shape ({n}, dim), got {emb.shape}")
        if len(metadatas) != n or (documents is not None and len(documents) != n):
            raise ValueError("ids, embeddings, metadatas and documents must have the same length")
        if len(set(ids)) != n:
            raise ValueError("duplicate ids in one upsert")
        if n == 0:
            return
        if not np.isfinite(emb).all():
            raise ValueError("embeddings contain NaN or infinite values")
        metas = [_clean_metadata(m, i) for m, i in zip(metadatas, ids, strict=True)]
        col0 = self._require(kind)
        dim = self._dim(col0)
        if dim is not None and emb.shape[1] != dim:
            raise ValueError(f"{self.name(kind)} holds {dim}-d vectors, got {emb.shape[1]}-d embeddings")
        docs = list(documents) if documents is not None else None
        for sl in _batches(n, self.max_batch()):

            def op(col: Any, sl: slice = sl) -> None:
                self._wrap(
                    col.upsert,
                    ids=ids[sl],
                    embeddings=emb[sl],
                    metadatas=metas[sl],
                    documents=docs[sl] if docs is not None else None,
                )

            self._retry_stale(kind, op)

    def delete(self, kind: str, ids: Sequence[str]) -> None:
        """Delete records by id (absent ids and an absent collection are fine)."""
        ids = list(dict.fromkeys(ids))
        if not ids or self.get(kind) is None:
            return
        for sl in _batches(len(ids), self.max_batch()):
            self._retry_stale(kind, lambda col, sl=sl: self._wrap(col.delete, ids=ids[sl]))

    def drop_all(self) -> list[str]:
        """Delete this index's collections (``{prefix}-{kind}``) and nothing else; returns the names dropped."""
        dropped = []
        for kind in KINDS:
            if self.get(kind) is None:
                continue
            name = self.name(kind)
            try:
                self._wrap(self.client.delete_collection, name)
            except self._NotFoundError:
                pass
            self._cols.pop(kind, None)
            dropped.append(name)
        return dropped

    # ----------------------------------------------------------------------------------------------- read
    def count(self, kind: str) -> int:
        col = self.get(kind)
        if col is None:
            return 0
        return int(self._retry_stale(kind, lambda c: self._wrap(c.count)))

    def all_ids(self, kind: str) -> list[str]:
        """Every record id of ``kind`` (paged)."""
        col = self.get(kind)
        if col is None:
            return []
        out: list[str] = []
        offset = 0
        while True:
            res = self._retry_stale(
                kind, lambda c, o=offset: self._wrap(c.get, include=[], limit=PAGE_SIZE, offset=o)
            )
            page = res["ids"]
            out.extend(page)
            if len(page) < PAGE_SIZE:
                return out
            offset += len(page)

    def vectors(self, kind: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these record ids (float32, as Chroma keeps them), by id: absent ids, and
        every id of an absent collection, are left out. Batched under the client's max batch size."""
        want = list(dict.fromkeys(ids))
        if not want or self.get(kind) is None:
            return {}
        out: dict[str, np.ndarray] = {}
        for sl in _batches(len(want), self.max_batch()):
            res = self._retry_stale(
                kind, lambda c, sl=sl: self._wrap(c.get, ids=want[sl], include=["embeddings"])
            )
            embs = res.get("embeddings")
            if embs is None or not len(res["ids"]):
                continue
            arr = np.asarray(embs, dtype=np.float32)
            for i, rid in enumerate(res["ids"]):
                out[rid] = arr[i]
        return out

    def query(
        self, kind: str, embedding: np.ndarray, n: int, paths: Sequence[str] | None = None
    ) -> list[list[tuple[str, float]]]:
        """Nearest records to each query vector: one list of (id, cosine similarity) per query row.

        ``embedding`` is one vector ``(dim,)`` or a batch ``(m, dim)``; ``n`` is clamped to the collection
        size; an absent or empty collection gives an empty list per query row. ``paths``: only records of
        these documents (their ``path`` metadata; a ``where`` filter costs 20-100x an unfiltered query, so
        None, the usual case, sends none); an empty list finds nothing.
        """
        q = np.asarray(embedding, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[0] == 0:
            raise ValueError(f"query embedding must have shape (dim,) or (m, dim), got {np.shape(embedding)}")
        if not np.isfinite(q).all():
            raise ValueError("query embedding contains NaN or infinite values")
        col = self.get(kind)
        if col is None or n <= 0 or (paths is not None and not paths):
            return [[] for _ in range(q.shape[0])]
        dim = self._dim(col)
        if dim is not None and q.shape[1] != dim:
            raise ValueError(f"{self.name(kind)} holds {dim}-d vectors, got a {q.shape[1]}-d query")
        # chromadb 1.5.x answers n_results above the collection size (or an empty collection) with what it
        # has, so the clamp costs no count() round trip (1-2 ms); only absurd n are capped here
        k = min(int(n), MAX_RESULTS)
        where = {"where": {"path": {"$in": list(paths)}}} if paths is not None else {}
        res = self._retry_stale(
            kind,
            lambda c: self._wrap(c.query, query_embeddings=q, n_results=k, include=["distances"], **where),
        )
        return [
            [(rid, 1.0 - float(d)) for rid, d in zip(ids, dists, strict=True)]
            for ids, dists in zip(res["ids"], res["distances"], strict=True)
        ]


def _space_of(col: Any) -> str | None:
    try:
        conf = col.configuration_json or {}
        space = (conf.get("hnsw") or {}).get("space")
        if space:
            return str(space)
    except Exception:  # noqa: BLE001 - the configuration layout is version dependent
        pass
    meta = col.metadata or {}
    return meta.get("hnsw:space")


CONNECT_TIMEOUT_S = 10.0


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def _probe(url: str, args: dict[str, Any], headers: dict[str, str]) -> str | None:
    """One heartbeat with a time limit; None when the server answers, else why it cannot be used, plainly:
    a time-out, a refused connection, an unknown host name, an untrusted certificate, refused credentials,
    or something that is not a Chroma server answering."""
    import socket

    import httpx
    from chromadb.api.fastapi import FastAPI
    from chromadb.config import Settings

    base = FastAPI.resolve_url(args["host"], args["ssl"], "/api/v2", args["port"])
    verify = Settings().chroma_server_ssl_verify
    where = f"the Chroma server at {url}"
    try:
        resp = httpx.get(
            f"{base}/heartbeat",
            headers=headers,
            timeout=CONNECT_TIMEOUT_S,
            verify=True if verify is None else verify,
        )
    except httpx.TimeoutException:
        return (
            f"timed out after {CONNECT_TIMEOUT_S:.0f} s waiting for {where} (an unroutable address, a "
            "firewall dropping the connection, or an overloaded server)"
        )
    except httpx.HTTPError as exc:
        tls = _tls_failure(exc)
        if tls:
            return (
                f"the TLS certificate of {where} is not trusted ({tls}); for a self-signed or private-CA "
                "certificate set CHROMA_SERVER_SSL_VERIFY=/path/to/cert.pem"
            )
        for cause in _chain(exc):
            if isinstance(cause, ConnectionRefusedError):
                return (
                    f"cannot reach {where}: it refused the connection (nothing listens on {args['host']}:"
                    f"{args['port']}; is the server running?)"
                )
            if isinstance(cause, socket.gaierror):
                return f"cannot reach {where}: the host name {args['host']!r} does not resolve ({cause.strerror})"
        return f"cannot reach {where}: is the server running? ({_one_line(exc)})"
    if resp.status_code in (401, 403):
        return _refused_message(where, resp.status_code, headers)
    if resp.status_code == 404:
        return (
            f"{url} answered HTTP 404 to a Chroma heartbeat: it is not a Chroma (1.x) server, or the URL's "
            "path is wrong, or a proxy in between answered (check store.url, HTTP_PROXY and NO_PROXY)"
        )
    if resp.status_code >= 400:
        return f"{where} answered HTTP {resp.status_code} to a heartbeat: {_one_line(Exception(resp.text))}"
    return None


def _tls_failure(exc: BaseException) -> str | None:
    """The certificate error behind ``exc`` (chromadb hides it behind "Could not connect"), or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return _one_line(cur)
        cur = cur.__cause__ or cur.__context__
    return None


def _is_auth_error(exc: BaseException) -> bool:
    """chromadb's own error for a refused request: ``AuthError`` (403/401) or ``AuthorizationError``.

    chromadb turns an error response into these only when its JSON body names them (our nginx proxy in
    deploy/ answers 401 with ``{"error": "AuthError", ...}``); any other body becomes a bare ``Exception``
    (or, while the client is being built, a ``ValueError``) holding the response text, without the status.
    """
    from chromadb.errors import AuthorizationError, ChromaAuthError

    return isinstance(exc, (ChromaAuthError, AuthorizationError))


def _auth_status(exc: BaseException, args: dict[str, Any], headers: dict[str, str]) -> int | None:
    """401/403 when the server (or the proxy in front of it) refuses our credentials (0: refused, status
    unknown), else None.

    The exception chromadb raises does not carry the HTTP status for a proxy's own error page, so ask once
    more, plainly: a heartbeat with the same headers.
    """
    try:
        import httpx
        from chromadb.api.fastapi import FastAPI
        from chromadb.config import Settings

        base = FastAPI.resolve_url(args["host"], args["ssl"], "/api/v2", args["port"])
        verify = Settings().chroma_server_ssl_verify
        resp = httpx.get(
            f"{base}/heartbeat", headers=headers, timeout=5.0, verify=True if verify is None else verify
        )
    except Exception:  # noqa: BLE001 - only a diagnosis: the caller reports the original error
        return 0 if _is_auth_error(exc) else None
    if resp.status_code in (401, 403):
        return resp.status_code
    return 0 if _is_auth_error(exc) else None


def _refused_message(what: str, status: int | None, headers: dict[str, str] | None) -> str:
    code = f" (HTTP {status})" if status else ""
    if headers is None:
        sent = ""
    elif headers:
        sent = f"; sent header(s) {', '.join(sorted(headers))}"
    else:
        sent = "; no store.headers were sent"
    return (
        f"{what} refused the credentials{code}{sent}: check store.headers (e.g. Authorization: "
        '"Bearer ${MANUALRAG_TOKEN}") and that the environment variable holds the token the server expects'
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:299] + "…"
