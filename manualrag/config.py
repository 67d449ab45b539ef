"""Configuration: documented defaults (mirrored in config.yaml), a YAML file, MANUALRAG_* env vars, flags.

Precedence, lowest first: built-in defaults (identical to the repo's config.yaml) < the file given by
``--config`` / ``MANUALRAG_CONFIG`` < ``MANUALRAG_<KEY>`` environment variables (nested keys joined by
``__``, e.g. ``MANUALRAG_OCR__PSM=6``) < command-line flags. Unknown keys and bad values raise
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from manualrag.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "index_dir": "data/index",
    "model": "openai/clip-vit-base-patch32",
    "text_model": "sentence-transformers/all-MiniLM-L6-v2",
    "device": "auto",
    "dtype": "auto",
    "batch_size": 32,
    "follow_symlinks": False,
    "exclude": [],
    "passwords": [],
    "extract": {
        "figure_dpi": 150,
        "scan_dpi": 200,
        "min_figure_area": 0.0008,
        "small_figure_area": 0.01,
        "boilerplate_min_pages": 3,
        "caption_max_distance": 72.0,
        "min_text_chars": 30,
        "max_render_pixels": 12_000_000,
        "low_res_dpi": 72.0,
        "layout_model": True,
    },
    "ocr": {
        "enabled": True,
        "languages": "eng",
        "psm": 11,
        "min_confidence": 50,
        "workers": 0,
        "max_side": 2500,
        "min_side": 1000,
        "binarize": "auto",
        "timeout_s": 120,
        "cache": None,
        "orientation": True,
    },
    "isolation": {
        "workers": 0,
        "timeout_s": 300,
        "memory_mb": 3072,
        "split_pages": 100,
    },
    "limits": {
        "max_passages": 20_000,
        "max_windows": 20_000,
        "max_figures": 5_000,
    },
    "index": {
        "reuse_vectors": True,
    },
    "store": {
        "url": None,
        "collection": "manualrag",
        "headers": {},
        "tenant": "default_tenant",
        "database": "default_database",
    },
    "retrieve": {
        "k": 10,
        "fusion": "zscore",
        "rrf_k": 60,
        "candidates": 50,
        "weigh_channels": True,
    },
}

_CHOICES = {
    "device": {"auto", "cpu", "cuda", "mps"},
    "dtype": {"auto", "float32", "bfloat16", "float16", "int8"},
    "retrieve.fusion": {"zscore", "rrf"},
    "ocr.binarize": {"auto", "otsu", "sauvola"},
    # tesseract's page segmentation modes that read text (0 only detects orientation; 2 is not implemented)
    "ocr.psm": {1, *range(3, 14)},
}
# string keys with a form to keep (a wrong one failed later, silently or as a broken install hint)
_FORMS = {
    "ocr.languages": (
        re.compile(r"[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?(\+[A-Za-z0-9_]+(/[A-Za-z0-9_]+)?)*"),
        "tesseract language codes joined by '+', e.g. eng or eng+deu",
    ),
}
_POSITIVE = {
    "batch_size",
    "extract.figure_dpi",
    "extract.scan_dpi",
    "extract.boilerplate_min_pages",
    "extract.max_render_pixels",
    "ocr.max_side",
    "ocr.timeout_s",
    "retrieve.k",
    "retrieve.rrf_k",
    "retrieve.candidates",
    "isolation.timeout_s",
    "isolation.memory_mb",
    "limits.max_passages",
    "limits.max_windows",
    "limits.max_figures",
}
# lower bounds a value must meet to work at all, with why (the message names the key and the minimum)
MIN_WORKER_MB = 512
_MINIMUM = {
    # an extraction worker needs ~300 MiB of heap to import PyMuPDF, Pillow and the OCR set-up and start;
    # below this every file would fail with "worker did not start"
    "isolation.memory_mb": (MIN_WORKER_MB, "MiB: an extraction worker needs about 300 MiB just to start"),
}
_NULLABLE = {"model", "text_model", "store.url", "ocr.cache"}
# model keys where the word "none" (a flag or environment value: --model none, MANUALRAG_MODEL=none) means
# null: no CLIP/SigLIP vectors (model) or no semantic text vectors (text_model)
_NONE_WORDS = {"model", "text_model"}
# sections whose change alters what extraction/chunking produces (re-index the document when they change)...
EXTRACTION_KEYS = ("extract", "ocr")
# ...except these keys, which say how a run goes, not what it produces: changing them redoes nothing.
# (passwords only open encrypted files: a change retries the files that failed, see indexer.pipeline)
RUN_ONLY_KEYS = {"ocr": ("workers", "cache", "timeout_s")}


def means_no_model(value: Any) -> bool:
    """True for the words that name no model ("none", "null", empty) in a flag, variable or config value."""
    return isinstance(value, str) and value.strip().lower() in ("none", "null", "")


def _check(key: str, value: Any, default: Any) -> Any:
    if key in _NONE_WORDS and means_no_model(value):
        value = None
    if value is None:
        if key in _NULLABLE:
            return None
        if isinstance(default, list):  # "exclude:" with nothing after it: no items
            return []
        raise ConfigError(f"config key '{key}' must not be empty")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    elif isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) or default is None:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key '{key}' must be a list of strings, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"config key '{key}' must be one of {sorted(_CHOICES[key])}, got {value!r}")
    if key in _FORMS and not _FORMS[key][0].fullmatch(value):
        raise ConfigError(f"config key '{key}' must be {_FORMS[key][1]}, got {value!r}")
    if key in _MINIMUM and value < _MINIMUM[key][0]:
        low, why = _MINIMUM[key]
        raise ConfigError(f"config key '{key}' must be at least {low} ({why}), got {value!r}")
    if key in _POSITIVE and value <= 0:
        raise ConfigError(f"config key '{key}' must be > 0, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"config key '{key}' must not be negative, got {value!r}")
    return value


def _merge(base: dict[str, Any], over: dict[str, Any], defaults: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(over, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    for key, value in over.items():
        full = f"{prefix}{key}"
        if key not in defaults:
            # a letter or two off a key of this section (modle:, retrieve.candidats:): name the one meant,
            # as an environment variable's typo is named
            near = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1, cutoff=0.75)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            raise ConfigError(f"unknown config key '{full}'{hint}")
        default = defaults[key]
        if isinstance(default, dict) and full != "store.headers":
            _merge(base[key], value, default, full + ".")
        elif full == "store.headers":
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError("config key 'store.headers' must map header names to strings")
            base[key] = dict(value)
        else:
            base[key] = _check(full, value, default)


def _env_overrides(environ: dict[str, str]) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(variable name, its config key path, its nested override) for each ``MANUALRAG_<KEY>`` variable."""
    out: list[tuple[str, list[str], dict[str, Any]]] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith("MANUALRAG_") or name in ("MANUALRAG_CONFIG",):
            continue
        path = name[len("MANUALRAG_") :].lower().split("__")
        if path[0] not in DEFAULTS:
            # not a config variable (e.g. MANUALRAG_TOKEN for a proxy); sections are checked strictly. A name
            # a letter or two from a top-level key (MANUALRAG_INDEXDIR) is a typo that would go unnoticed
            near = difflib.get_close_matches(path[0], list(DEFAULTS), n=1, cutoff=0.75)
            if near:
                raise ConfigError(
                    f"environment variable {name}: unknown config key '{path[0]}'"
                    f" (did you mean MANUALRAG_{near[0].upper()}?)"
                )
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            default = DEFAULTS.get(path[0]) if len(path) == 1 else None
            hint = f"; a list is written {name}='[\"{raw}\"]'" if isinstance(default, list) else ""
            raise ConfigError(
                f"environment variable {name}: not a valid value ({_yaml_reason(exc)}){hint}"
            ) from None
        override: dict[str, Any] = {}
        node = override
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
        out.append((name, path, override))
    return out


def _merge_env(cfg: dict[str, Any], environ: dict[str, str]) -> None:
    """Apply the environment variables; a bad one is named, with the form a list value takes there."""
    for name, path, override in _env_overrides(environ):
        try:
            _merge(cfg, override, DEFAULTS)
        except ConfigError as exc:
            default: Any = DEFAULTS
            for part in path:
                default = default.get(part) if isinstance(default, dict) else None
            hint = (
                f' (write a YAML list, e.g. {name}=\'["one", "two"]\')' if isinstance(default, list) else ""
            )
            # a near-miss key is named as the variable to set, not as the file's dotted key
            message = re.sub(
                r"\(did you mean '([^']+)'\?\)",
                lambda m: f"(did you mean MANUALRAG_{m.group(1).upper().replace('.', '__')}?)",
                str(exc),
            )
            raise ConfigError(f"environment variable {name}: {message}{hint}") from None


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: what is wrong and where (PyYAML's own text spans several lines,
    with a copy of the offending line)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    if "'\\t'" in problem:
        problem = "a tab character (YAML indents with spaces, not tabs)"
    return where + " ".join(problem.split())


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Resolve the configuration. ``overrides`` are CLI flags (nested dict, None values ignored)."""
    environ = dict(os.environ) if environ is None else environ
    cfg = copy.deepcopy(DEFAULTS)
    path = path or environ.get("MANUALRAG_CONFIG")
    if path:
        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {_yaml_reason(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(
                f"config file {p} must be a mapping of settings (key: value lines, as in config.yaml), "
                f"not a {type(data).__name__}"
            )
        try:
            _merge(cfg, data, DEFAULTS)
            _paths_from(cfg, data, p.absolute().parent)
            if isinstance(data.get("store"), dict) and data["store"].get("url"):
                from manualrag.store import parse_url

                parse_url(cfg["store"]["url"])  # a bad URL is the file's error, as any other key's
        except ConfigError as exc:  # the file may come from MANUALRAG_CONFIG: say which one
            raise ConfigError(f"config file {p}: {exc}") from None
    _merge_env(cfg, environ)
    if overrides:
        _merge(cfg, _drop_none(overrides), DEFAULTS)
    return cfg


def _paths_from(cfg: dict[str, Any], data: dict[str, Any], base: Path) -> None:
    """Relative paths written in a config file are relative to that file's folder (as in config.yaml next to
    its data/ folder), not to wherever the command runs: ``index_dir`` and ``ocr.cache`` always; ``model``
    and ``text_model`` when such a folder exists there (otherwise they are model names, as
    ``openai/clip-vit-base-patch32``). Paths from MANUALRAG_* variables and flags stay relative to the
    working directory."""

    def rebased(value: Any) -> Any:
        if not isinstance(value, str) or not value:
            return value
        path = Path(value).expanduser()
        # normalised: stats and messages show data/index, not ../proj/data/index seen from a sibling
        return os.path.normpath(path if path.is_absolute() else base / path)

    if "index_dir" in data:
        cfg["index_dir"] = rebased(cfg["index_dir"])
    if isinstance(data.get("ocr"), dict) and "cache" in data["ocr"]:
        cfg["ocr"]["cache"] = rebased(cfg["ocr"]["cache"])
    for key in ("model", "text_model"):
        value = cfg.get(key)
        if key in data and isinstance(value, str) and (base / value).is_dir():
            cfg[key] = rebased(value)


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


# bumped when a code change alters what extraction produces from the same file and settings (the records,
# their texts or vectors): every document's fingerprint changes, so the next `index` run redoes each one
# and an index built by an older release gets the new records without a reset. 2: figures' OCR at the
# finest image resolution, loose images' names as headings, photo OCR noise dropped, caption vectors.
# 3: numbered section headings read by OCR on scanned pages split and title their passages.
# 4: running headers and footers of scanned pages (OCR) leave their passages, as a text layer's do.
# 5: ligature glyphs of a PDF's text layer read as their letters ("ﬂight" -> "flight").
# 6: words hyphenated at a line end written whole in passages ("Compu-/tational" -> "Computational").
# 7: outline titles that wrap onto a second line are found on their page; one not found keeps its place in
#    the outline's order (it no longer names every block of its page).
# 8: numbered section headings read by OCR run on over consecutive scanned pages (and title their scans).
# 9: a numbered figure takes the heading of the sentence that refers to it, which leads its nearby text.
# 10: a paragraph that begins with a figure's label ("Figure 4.1 shows ...") is a mention, not its caption.
# 11: a long image strip (a terminal row 10000 x 110 px) is not scaled below ocr.min_side across for OCR.
# 12: a text layer's running headers and footers leave the passages (they were marked, and kept).
# 13: a passage that is only a page number is dropped; a one- or two-word label ("Chapter 6") joins the
#     passage after it on its page.
EXTRACTION_VERSION = 13


def extraction_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape what extraction/chunking produces (see EXTRACTION_KEYS). ``cfg`` may be a
    config saved by an older release: a missing section counts as its defaults."""
    out: dict[str, Any] = {}
    for section in EXTRACTION_KEYS:
        values = cfg.get(section) or DEFAULTS[section]
        out[section] = {k: v for k, v in values.items() if k not in RUN_ONLY_KEYS.get(section, ())}
    if cfg.get("limits", DEFAULTS["limits"]) != DEFAULTS["limits"]:  # (absent at the defaults: indexes made
        out["limits"] = cfg["limits"]  # before the budgets existed stay up to date)
    return out


def extraction_fingerprint(cfg: dict[str, Any]) -> str:
    """A short hash of the settings that shape extraction/chunking of a document, and of the extraction
    code's version."""
    relevant = {**extraction_settings(cfg), "extraction_version": EXTRACTION_VERSION}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def settings_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Each extraction setting that differs from ``before`` to ``after``: "ocr.max_side 20000 -> 2500"."""
    old, new = extraction_settings(before), extraction_settings(after)
    out = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section) or {}, new.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out.append(f"{section}.{key} {json.dumps(a.get(key))} -> {json.dumps(b.get(key))}")
    return out


def with_extraction_settings(cfg: dict[str, Any], recorded: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with the extraction settings of ``recorded`` (a config an index saved): what a repair uses,
    so that it redoes only what is broken. Run-only keys and the passwords stay ``cfg``'s."""
    out = copy.deepcopy(cfg)
    for section, values in extraction_settings(recorded).items():
        out[section] = {**out.get(section, {}), **copy.deepcopy(values)}
    out["limits"] = copy.deepcopy(recorded.get("limits") or DEFAULTS["limits"])
    return out


def public_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The config as saved inside an index: secrets (passwords, header values) removed."""
    out = copy.deepcopy(cfg)
    out["passwords"] = ["***"] * len(cfg.get("passwords", []))
    out["store"]["headers"] = {k: "***" for k in cfg["store"].get("headers", {})}
    return out
