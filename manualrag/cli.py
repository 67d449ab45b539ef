"""The `manualrag` command. Heavy imports (torch, chromadb, fitz) happen inside commands, never at start-up,
so `manualrag --help` stays fast."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from manualrag import __version__

log = logging.getLogger("manualrag")
_T_START = time.perf_counter()  # `query --timings` reports its total from here (the CLI's own import)

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a program killed by a closed pipe

# set by the commands that only read an index (query, context, eval, stats): run() may then skip the
# interpreter's teardown, which takes about 1.2 s once torch and chromadb are loaded and writes nothing
_READ_ONLY = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: the same clean-up as Ctrl-C (the index lock released, workers
    stopped, the run's temporary files removed), then exit 143."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


_AS_PROGRAM = False  # run() is the entry point: the signal handlers are this process's own to change


def run() -> None:
    """The console entry point: main(), then a fast exit after a read-only command (output flushed first)."""
    import signal

    global _AS_PROGRAM
    _AS_PROGRAM = True
    signal.signal(signal.SIGTERM, _on_sigterm)
    code: int | str | None = 0
    try:
        main.main(prog_name="manualrag")
    except SystemExit as exc:
        code = exc.code
    if not _READ_ONLY or not isinstance(code, (int, type(None))):
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe (| head): nothing left to say
        pass
    logging.shutdown()
    os._exit(code or 0)


def _non_empty_glob(value: str | None) -> str | None:
    """--source as given; an empty one (a shell variable that was not set) is a usage error, not "every file"."""
    if value is not None and not value.strip():
        raise click.BadParameter("an empty glob; leave the option out to search every file")
    return value


def _library_path(value: str, library: str | Path | None, flag: str) -> str:
    """A ``--source``/``--exclude`` value as the library-relative glob the matching uses. A path that
    exists (relative to the current folder, or absolute) inside the library is taken as that file or folder
    and made library-relative, as ``remove`` takes its paths (one conversion: ``index.library_relative``);
    the library itself is every file. A path outside the library is an error, unless the value also names
    something inside it; anything else (``*.pdf``, ``vendor/``) is a glob inside the library, as given."""
    from manualrag.errors import ManualragError
    from manualrag.index import library_relative

    if not library:
        return value
    lib = Path(os.path.realpath(library))
    p = Path(value).expanduser()
    if not (p.is_absolute() or p.exists()):
        return value
    real = Path(os.path.realpath(p))
    if real == lib:
        return "*"
    if lib in real.parents:
        return library_relative(str(real), str(lib)) or value
    if not p.is_absolute() and (lib / value).exists():  # a library-relative path that happens to exist here
        return value
    raise ManualragError(
        f"{flag} {value}: {real} is outside the library {lib} (give a path inside it, or a glob relative "
        "to it such as '*.pdf')"
    )


def _work_done() -> None:
    """The command's work is done and committed: a Ctrl-C or SIGTERM from now on (while it prints its
    summary and exits) is ignored, rather than turning a printed success into exit 130/143."""
    if _AS_PROGRAM:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _read_only() -> None:
    global _READ_ONLY
    _READ_ONLY = True


class Ctx:
    def __init__(self, config_path: str | None, debug: bool):
        self.config_path = config_path
        self.debug = debug

    def config(self, **overrides: Any) -> dict[str, Any]:
        from manualrag.config import load_config

        return load_config(self.config_path, overrides=overrides)


def _setup_logging(debug: bool, quiet: bool = False) -> None:
    level = logging.DEBUG if debug else (logging.ERROR if quiet else logging.WARNING)
    from manualrag.terminal import OneLineFormatter

    handler = logging.StreamHandler(sys.stderr)
    # "warning: ..." as the CLI's own warnings read; with --debug, the level and logger of every record
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s", plain=not debug))
    logging.basicConfig(level=level, handlers=[handler])


def _late_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.find_object(Ctx).config_path = value  # type: ignore[union-attr]


def _late_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_object(Ctx).debug = True  # type: ignore[union-attr]
        logging.getLogger().setLevel(logging.DEBUG)


class ManualragCommand(click.Command):
    """A subcommand that also takes the global ``--config`` and ``--debug`` after its name
    (``manualrag stats --config my.yaml``, as MCP clients' argument lists often put it)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.params += [
            click.Option(
                ["--config", "late_config"],
                type=click.Path(dir_okay=False),
                expose_value=False,
                callback=_late_config,
                help="YAML config file (also accepted before the command).",
            ),
            click.Option(
                ["--debug", "late_debug"],
                is_flag=True,
                expose_value=False,
                callback=_late_debug,
                help="Verbose logging and full tracebacks (also accepted before the command).",
            ),
        ]


class ManualragGroup(click.Group):
    """Maps ManualragError to a one-line message and its exit code (traceback only with --debug)."""

    command_class = ManualragCommand

    def invoke(self, ctx: click.Context) -> Any:
        from manualrag.errors import ManualragError

        try:
            return super().invoke(ctx)
        except ManualragError as exc:
            obj = ctx.obj
            if obj is not None and getattr(obj, "debug", False):
                import traceback

                traceback.print_exc()  # the traceback --debug asks for, and the same exit code as without
            _echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except (
            BrokenPipeError
        ):  # `| head`: the reader left; click said 1 ("some files failed") for some commands
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the exit's flush has nowhere to fail
            ctx.exit(EXIT_BROKEN_PIPE)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            kept = getattr(exc, "indexed", None)  # an index run: each document is committed whole
            _echo(
                ("terminated" if terminated else "interrupted")
                + (
                    f": {kept} document(s) indexed by this run are kept; the same command goes on from there"
                    if kept is not None
                    else ""
                ),
                err=True,
            )
            ctx.exit(143 if terminated else 130)


@click.group(cls=ManualragGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="manualrag")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="YAML config file (overrides config.yaml defaults).",
)
@click.option("--debug", is_flag=True, help="Verbose logging and full tracebacks.")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """manualrag: index technical manuals (text, figures, diagrams, OCR'd labels) and query them."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _setup_logging(debug)
    ctx.obj = Ctx(config_path, debug)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))  # JSON escapes control characters


def _clean(text: Any) -> Any:
    from manualrag.terminal import one_line

    return one_line(text)


def _echo(message: Any = None, err: bool = False, multiline: bool = False, **kw: Any) -> None:
    """click.echo for human-readable output: one line, whatever the file names and document text in it hold
    (line breaks escaped, control characters neutralised: see manualrag/terminal.py); ``multiline`` for
    output that is several lines by design."""
    from manualrag.terminal import block, one_line

    click.echo(block(message) if multiline else one_line(message), err=err, **kw)


# ----------------------------------------------------------------------------------------------- inspect
@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the extraction result as JSON.")
@click.option("--out", type=click.Path(file_okay=False), help="Write the figure crops (PNG) to this folder.")
@click.option("--no-ocr", is_flag=True, help="Skip OCR (faster; no labels from pixels).")
@click.pass_obj
def inspect(obj: Ctx, file: str, as_json: bool, out: str | None, no_ocr: bool) -> None:
    """Show what extraction finds in one manual: pages, text blocks, figures (kind, bbox, caption, labels, OCR)."""
    from manualrag.errors import ManualragError
    from manualrag.indexer.discover import file_type_for
    from manualrag.indexer.extract import extract_file
    from manualrag.indexer.ocr import OcrEngine

    cfg = obj.config(ocr={"enabled": False} if no_ocr else None)
    path = Path(file)
    if file_type_for(path) is None:  # a usage error (exit 2), as for a file `index` would skip
        raise ManualragError(
            f"{file}: unsupported file type '{path.suffix or path.name}' (PDFs, images, .txt and .md)"
        )
    ocr = OcrEngine(cfg) if cfg["ocr"]["enabled"] else None
    try:
        doc = extract_file(path, file, cfg, ocr=ocr)  # errors name the path as given
    finally:
        if ocr is not None:
            ocr.close()
    written: dict[str, str] = {}
    if out:
        outdir = Path(out)
        outdir.mkdir(parents=True, exist_ok=True)
        for i, fig in enumerate(doc.figures + doc.boilerplate, 1):
            if fig.png:
                name = f"fig{i:03d}-p{fig.pages[0]}-{fig.kind}-{fig.digest[:12]}.png"
                (outdir / name).write_bytes(fig.png)
                written[fig.digest] = str(outdir / name)
    if as_json:
        d = doc.to_dict(with_png=False)
        for f in d["figures"] + d["boilerplate"]:
            f["crop_file"] = written.get(f["digest"])
        _echo_json(d)
        return
    _print_inspect(doc, written)


def _print_inspect(doc: Any, written: dict[str, str]) -> None:
    n_blocks = len(doc.blocks)
    n_suspect = sum(1 for b in doc.blocks if b.suspect)
    _echo(
        f"{doc.path}: {doc.file_type}, {len(doc.pages)} page(s), {n_blocks} text block(s)"
        f" ({n_suspect} suspect), {len(doc.figures)} figure(s), {len(doc.boilerplate)} boilerplate image(s)"
    )
    for w in doc.warnings:
        _echo(f"  warning: {w}")
    ocr_pages = [p.number for p in doc.pages if p.ocr]
    if ocr_pages:
        # "p.8", not "8": a lone number read as a count of pages
        _echo(f"  OCR'd pages (no text layer): {', '.join(f'p.{n}' for n in ocr_pages)}")
    for i, fig in enumerate(doc.figures, 1):
        pages = ",".join(map(str, fig.pages))
        bbox = ", ".join(f"{v:.0f}" for v in fig.bbox)
        _echo()
        _echo(
            f"  [{i}] {fig.kind} p{pages} bbox=({bbox}) {fig.width}x{fig.height}px"
            + (f" {fig.dpi:.0f}dpi" if fig.dpi else "")  # a loose image has no physical size
            + ("" if fig.quality == "ok" else f" [{fig.quality}]")
            + (f" (rotated {fig.rotation}\u00b0 to read upright)" if fig.rotation else "")
        )
        if fig.caption:
            _echo(f"      caption: {fig.caption}")
        if fig.labels:
            _echo(f"      labels : {_short(' '.join(fig.labels))}")
        if fig.ocr_text:
            _echo(f"      ocr    : {_short(fig.ocr_text)}")
        if fig.heading:
            _echo(f"      heading: {fig.heading}")
        if fig.digest in written:
            _echo(f"      crop   : {written[fig.digest]}")
    for fig in doc.boilerplate:
        _echo()
        _echo(
            f"  boilerplate image on {len(fig.pages)} page(s), {fig.width}x{fig.height}px"
            + (f" -> {written[fig.digest]}" if fig.digest in written else "")
        )


# ------------------------------------------------------------------------------------------ shared options
def _index_dir_option(f):
    return click.option(
        "--index-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Index folder (default: config index_dir, data/index; env MANUALRAG_INDEX_DIR).",
    )(f)


def _store_option(f):
    return click.option(
        "--store",
        "store_url",
        default=None,
        metavar="URL",
        help="Chroma server URL, e.g. http://127.0.0.1:8000 (default: embedded store in the index folder).",
    )(f)


def _channels(value: str | None) -> list[str] | None:
    """--channels as a list (None: not given, all available); empty or unknown names are usage errors."""
    from manualrag.retriever.search import CHANNELS

    if value is None:
        return None
    names = [c.strip() for c in value.split(",") if c.strip()]
    if not names:
        raise click.BadParameter(
            f"no channel named; give a comma list of {', '.join(CHANNELS)} (or leave the option out)",
            param_hint="--channels",
        )
    unknown = [c for c in names if c.lower() not in CHANNELS]
    if unknown:
        raise click.BadParameter(
            f"unknown channel {', '.join(map(repr, unknown))}; choose from {', '.join(CHANNELS)}",
            param_hint="--channels",
        )
    return [c.lower() for c in names]


def _stderr_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# -------------------------------------------------------------------------------------------------- index
_dtype_option = click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16", "float16", "int8"]),
    default=None,
    help="Model precision (int8: dynamic quantisation, CPU; auto: reduced only where faithful and faster on this machine; queries: float32).",
)


def _library_folder(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if Path(value).is_file():  # click's own words: "Directory 'x.pdf' is a file."
        from manualrag.errors import shell_arg

        raise click.BadParameter(
            f"{value} is a file: give the folder of manuals it is in (an index holds a library), or see what "
            f"extraction finds in this one file with: manualrag inspect {shell_arg(value)}"
        )
    return value


@main.command()
@click.argument("library", type=click.Path(exists=True), callback=_library_folder)
@_index_dir_option
@click.option(
    "--model",
    default=None,
    help="CLIP/SigLIP checkpoint name or local folder ('none': no CLIP vectors; the text model still embeds).",
)
@click.option(
    "--text-model", default=None, help="Sentence-embedding model name or folder ('none' turns it off)."
)
@click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default=None, help="Where models run."
)
@_dtype_option
@click.option("--batch-size", type=int, default=None, help="Items per model forward pass.")
@click.option(
    "--no-dense", is_flag=True, help="Index everything except vectors (lexical only); a later run adds them."
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="Try again the files that failed last time although neither they nor the settings changed.",
)
@click.option(
    "--replace-library",
    is_flag=True,
    help="Let LIBRARY replace the other folder this index was built from (its documents that LIBRARY lacks are removed).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave out library files matching GLOB (path inside the library or file name; repeatable; adds to config key exclude).",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Index only shard I of N (0-based; documents split by a hash of their path) - see docs/scaling.md.",
)
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary (errors still go to stderr).")
@click.pass_obj
def index(
    obj: Ctx,
    library: str,
    index_dir: str | None,
    model: str | None,
    text_model: str | None,
    device: str | None,
    dtype: str | None,
    batch_size: int | None,
    no_dense: bool,
    retry_failed: bool,
    replace_library: bool,
    exclude: tuple[str, ...],
    shard: str | None,
    store_url: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Index a manual library (PDFs, scans, images, .txt/.md) incrementally into the index folder.

    Exit code 0: all files indexed; 1: some files failed (the rest is indexed); 2: usage, config or model error.
    """
    from manualrag.config import means_no_model
    from manualrag.indexer.pipeline import Indexer

    if quiet:
        logging.getLogger().setLevel(logging.ERROR)
    cfg = obj.config(
        index_dir=index_dir,
        model=model,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        store={"url": store_url},
    )
    if text_model is not None:
        cfg["text_model"] = None if means_no_model(text_model) else text_model
    cfg["exclude"] = [*cfg["exclude"], *(_library_path(e, library, "--exclude") for e in exclude)]
    _keep_the_index_models(cfg, model_given=model is not None, text_model_given=text_model is not None)
    idx = Indexer(
        cfg,
        cfg["index_dir"],
        dense=not no_dense,
        progress=_stderr_tty() and not quiet and not as_json,
        shard=_parse_shard(shard),
        retry_failed=retry_failed,
        replace_library=replace_library,
    )
    try:
        summary = idx.run(Path(library))
    except KeyboardInterrupt as exc:  # --json still prints its summary; the group says what is kept
        done = getattr(exc, "summary", None)
        if as_json and done is not None:
            done.interrupted = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            _echo_json(done.to_dict())
        raise
    _work_done()
    if as_json:
        _echo_json(summary.to_dict())
    elif not quiet:
        _print_summary(summary)
    else:
        for f in summary.failed:
            _echo(f"failed: {f.path}: {f.reason}", err=True)
    sys.exit(summary.exit_code)


def _keep_the_index_models(cfg: dict[str, Any], model_given: bool, text_model_given: bool) -> None:
    """An index is updated with the models it was built with, as ``query`` searches with them, unless this
    run names others (a flag, a MANUALRAG_* variable or the config file changing a built-in default): an
    index built with ``--model FOLDER`` or ``--model none`` is updated by a plain ``manualrag index LIBRARY``
    instead of failing to load the default model (or re-embedding everything with it)."""
    from manualrag.config import DEFAULTS
    from manualrag.index import recorded_models

    built = recorded_models(cfg["index_dir"])
    if built is None:
        return
    for role, key, given in (("clip", "model", model_given), ("text", "text_model", text_model_given)):
        if not given and cfg[key] == DEFAULTS[key] and built.get(role) != cfg[key]:
            log.info("%s: this index's %s", key, built.get(role) or "none")
            cfg[key] = built.get(role)


def _parse_shard(value: str | None) -> tuple[int, int]:
    if not value:
        return (0, 1)
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter("expected I/N, e.g. 0/4", param_hint="--shard") from None
    if n < 1 or not 0 <= i < n:
        raise click.BadParameter(f"shard {i} of {n}: need 0 <= I < N", param_hint="--shard")
    return (i, n)


def _print_summary(s: Any) -> None:
    from manualrag.index import recorded_models

    d = s.to_dict()
    docs = d["documents"]
    kept = [m for m in (recorded_models(d["index_dir"]) or {}).values() if m] if not s.dense else []
    if kept:  # --no-dense, or both models none, on an index that has vectors: they stay as they are
        mode = "  (no vectors made this run)"
    elif not s.dense:
        mode = "  (lexical only: no vectors)"
    elif not d["model"]:
        mode = "  (text channel only: no CLIP model)"
    else:
        mode = ""
    _echo(f"Indexed {d['library']} into {d['index_dir']} in {d['wall_s']:.1f} s{mode}")
    if kept:
        _echo(
            f"  vectors: the index keeps those it has; a run with its models ({', '.join(kept)}) adds the "
            "missing ones"
        )
    _echo(
        f"  documents: {docs['indexed']} indexed, {docs['unchanged']} unchanged, "
        f"{docs['removed']} removed, {docs['failed']} failed"
    )
    if d["removed"]:  # which ones: gone from the library, or excluded
        gone = d["removed"]
        _echo("  removed: " + ", ".join(map(_clean, gone[:5])) + (", ..." if len(gone) > 5 else ""))
    skipped = dict(d["skipped"])
    own = (d.get("skipped_examples", {}).get("own_index") or [None])[0]
    if skipped.pop("own_index", 0) and own:  # the index folder inside the library: not a skipped file
        _echo(f"  skipped: {_clean(own)} (the index folder)")
    if skipped:
        shown = []
        for reason, n in sorted(skipped.items()):
            named = [p for p in d.get("skipped_examples", {}).get(reason) or [] if p != own]
            more = ", ..." if n > len(named) else ""
            shown.append(f"{n} {reason}" + (f" ({', '.join(map(_clean, named))}{more})" if named else ""))
        _echo("  skipped files: " + ", ".join(shown))
    # counts of this run's documents: a run with nothing to do is not an empty index
    whole = " (unchanged documents are not read again; `manualrag stats` describes the whole index)"
    _echo(
        f"  read this run: {d['pages']} page{'' if d['pages'] == 1 else 's'}, "
        f"{d['figures']} figure{'' if d['figures'] == 1 else 's'}"
        + (whole if docs["unchanged"] and not docs["indexed"] else "")
    )
    if d["records"]:
        _echo("  records written: " + ", ".join(f"{k} {v}" for k, v in sorted(d["records"].items())))
    if d["embedded"]:
        _echo("  model inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(d["embedded"].items())))
    if d["reused"]:  # a document's old version held them (indexer/reuse.py)
        reused, embedded = sum(d["reused"].values()), sum(d["embedded"].values())
        _echo(f"  vectors: {reused} reused from the index, {embedded} embedded")
    # the models of this run's or the index's documents; a run over an empty library loads none
    if (d["model"] or d["text_model"]) and (docs["indexed"] or docs["unchanged"] or d["embedded"]):
        _echo(f"  models: {d['model'] or 'no CLIP model'} + {d['text_model'] or 'no text model'}")
    for role, p in d.get("precision", {}).items():
        _echo(f"  precision ({role}): {p['reason']}")
    if d.get("channel_weights"):
        from manualrag import channel_weights

        _echo(
            "  channel weight factors (tested on the library): "
            + channel_weights.describe(d["channel_weights"])
        )
    t = {k: v for k, v in d["timings_s"].items() if v >= 0.05}
    if t:
        _echo("  time per stage: " + ", ".join(f"{k} {v:.1f}s" for k, v in t.items()))
    for w in d["warnings"]:
        _echo(f"  warning: {w}")
    for f in d["failed"]:
        _echo(f"  FAILED {f['path']}: {f['reason']}", err=True)


# -------------------------------------------------------------------------------------------------- stats
STATS_FAILED_SHOWN = 20  # failed files listed by `stats` (--json lists all)


@main.command()
@_index_dir_option
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def stats(obj: Ctx, index_dir: str | None, store_url: str | None, as_json: bool) -> None:
    """Describe an index: documents, pages, records by kind, figures, models, size on disk."""
    _read_only()
    cfg = obj.config(index_dir=index_dir, store={"url": store_url})
    cfg["index_dir"] = os.path.normpath(cfg["index_dir"])  # `../proj/myidx` joined to a folder: no `..`
    from manualrag.index import Index

    with Index.open(cfg["index_dir"], cfg) as index:
        out = index.stats()
    # a config file's relative index_dir is joined to its folder (`../proj/myidx`): shown normalised
    out["index_dir"] = os.path.abspath(out["index_dir"])
    if as_json:
        _echo_json(out)
        return
    failed = out.pop("failed")
    width = max(len(key) for key in out)
    for key, value in out.items():
        if key == "channel_weights":
            from manualrag import channel_weights

            value = channel_weights.describe(value) or "not measured"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "none"
        if key == "size_bytes":
            key, value = "size on disk", f"{value / 1e6:.1f} MB"
        elif key in ("model", "text_model") and value is None:
            value = "none (no CLIP vectors)" if key == "model" else "none (no text-model vectors)"
        elif value is None:
            value = "none"
        _echo(f"{key:>{width}}: {value}")
    if failed:
        _echo(
            "files not indexed (the next `manualrag index` retries one when it changes, or with --retry-failed):"
        )
        for f in failed[:STATS_FAILED_SHOWN]:
            _echo(f"  {f['path']}: {f['reason']}")
        if len(failed) > STATS_FAILED_SHOWN:
            _echo(
                f"  ... and {len(failed) - STATS_FAILED_SHOWN} more (`manualrag stats --json` lists them all)"
            )


# ------------------------------------------------------------------------------------------ remove / reset
@main.command()
@click.argument("paths", nargs=-1, required=True)
@_index_dir_option
@_store_option
@click.pass_obj
def remove(obj: Ctx, paths: tuple[str, ...], index_dir: str | None, store_url: str | None) -> None:
    """Remove documents (paths relative to the library, or folders) from the index."""
    cfg = obj.config(index_dir=index_dir, store={"url": store_url})
    from manualrag.index import Index, IndexLayout
    from manualrag.lock import IndexLock

    idir = Path(cfg["index_dir"])
    if not IndexLayout(idir).db.is_file():
        with IndexLock(idir):  # a first index run still going on is reported as the lock holder
            pass
        Index.require(idir)
    unmatched: list[str] = []
    with Index.open(idir, cfg, write=True) as index:
        removed = index.remove(list(paths), unmatched)
        library = index.manifest.get_meta("library")
    for r in removed:
        _echo(f"removed {r}")
    where = f"the library {library}" if library else "the library"
    for p in unmatched:  # each one named: a typo beside a good path must not pass unnoticed
        _echo(f"nothing matched: {p} (no indexed document or folder of {where} has that path)", err=True)
    if unmatched:
        sys.exit(EXIT_PARTIAL)


def _confirm(question: str) -> bool:
    """Ask a yes/no question; no answer (end of input: a script, a pipe, Ctrl-D; or Ctrl-C) means no."""
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        click.echo()  # the prompt (on stdout) left the cursor at the end of its line
        return False


@main.command()
@_index_dir_option
@_store_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def reset(obj: Ctx, index_dir: str | None, store_url: str | None, yes: bool) -> None:
    """Delete the whole index (vectors, manifest, lexical index, crops)."""
    cfg = obj.config(index_dir=index_dir, store={"url": store_url})
    from manualrag.index import Index, IndexLayout

    idir = Path(cfg["index_dir"])
    if not IndexLayout.holds_index(idir):  # no folder, or one that is not an index: nothing of it is ours
        _echo(f"no index in {idir}")
        return
    if not yes and not _confirm(f"Delete the index in {idir}?"):
        _echo(f"not deleted: the index in {idir} is kept (--yes skips the question)", err=True)
        sys.exit(EXIT_USAGE)
    if not Index.reset(idir, cfg):
        _echo(f"no index in {idir}")
        return
    _echo(f"index in {idir} deleted")


# -------------------------------------------------------------------------------------------------- check
@main.command()
@_index_dir_option
@_store_option
@click.option("--repair", is_flag=True, help="Fix what was found and index the library again where needed.")
@click.option(
    "--library",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Library to rebuild from (default: the one the index records).",
)
@click.option("--no-dense", is_flag=True, help="Rebuild lexical only (default: as the index was built).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def check(
    obj: Ctx,
    index_dir: str | None,
    store_url: str | None,
    repair: bool,
    library: str | None,
    no_dense: bool,
    as_json: bool,
) -> None:
    """Verify an index: SQLite integrity, manifest <-> vector ids <-> crop files; --repair rebuilds.

    Exit code 0: the index is sound (or was repaired); 1: problems found (or files failed in the repair);
    2: usage or index error."""
    from manualrag.check import check_index, repair_index
    from manualrag.errors import shell_arg

    cfg = obj.config(index_dir=index_dir, store={"url": store_url})
    idir = Path(cfg["index_dir"])
    report = check_index(idir, cfg)
    out: dict[str, Any] = report.to_dict()
    code = EXIT_OK if report.ok else EXIT_PARTIAL
    known: set[str] = set()  # the documents the index holds before a repair (to tell what it adds back)
    if repair and not report.ok and not report.sqlite_problem:
        import contextlib

        from manualrag.errors import ManualragError
        from manualrag.index import IndexLayout
        from manualrag.manifest import Manifest

        with contextlib.suppress(ManualragError), Manifest(IndexLayout(idir).db, readonly=True) as m:
            known = set(m.documents())
    if repair and not report.ok:
        summary = repair_index(
            idir,
            cfg,
            report,
            Path(library) if library else None,
            dense=False if no_dense else None,
            progress=_stderr_tty() and not as_json,
        )
        out["repair"] = summary.to_dict()
        after = check_index(idir, cfg)
        out["after_repair"] = after.to_dict()
        code = summary.exit_code if after.ok else EXIT_PARTIAL
    if as_json:
        _echo_json(out)
        sys.exit(code)
    if report.ok:
        _echo(f"{idir}: ok (SQLite integrity, vectors and crops all match the manifest)")
    else:
        _echo(f"{idir}: {len(report.problems())} problem(s)")
        for p in report.problems():
            _echo(f"  {p}")
        if "repair" in out:
            r = out["repair"]
            # the repair is an index run: files of the library that were not in the index come in too
            added = [p for p in r["indexed"] if known and p not in known]
            from manualrag.check import repair_outcome

            _echo(repair_outcome(r, out["after_repair"], added))
            for f in r["failed"]:
                _echo(f"  FAILED {f['path']}: {f['reason']}", err=True)
        else:
            _echo(f"run `manualrag check --repair --index-dir {shell_arg(idir)}` to fix it")
    sys.exit(code)


# -------------------------------------------------------------------------------------------------- query
def _open_retriever(
    obj: Ctx,
    index_dir: str | None,
    store_url: str | None,
    model: str | None = None,
    text_model: str | None = None,
    dtype: str | None = None,
):
    from manualrag.retriever.search import Retriever

    cfg = obj.config(index_dir=index_dir, store={"url": store_url}, dtype=dtype)
    return Retriever.open(cfg["index_dir"], cfg, clip_model=model, text_model=text_model)


@main.command()
@click.argument("text", required=False)
@click.option(
    "--image", type=click.Path(exists=True, dir_okay=False), help="Search by an image (alone or with text)."
)
@click.option("-k", "--k", "k", type=click.IntRange(min=1), default=None, help="Number of hits (default 10).")
@click.option(
    "--modality", type=click.Choice(["all", "text", "image"]), default="all", help="Which hits to return."
)
@click.option(
    "--source",
    default=None,
    callback=lambda _ctx, _param, v: _non_empty_glob(v),
    help="Only files matching this glob or folder inside the library (e.g. '*.pdf', 'vendor/*', 'vendor').",
)
@click.option("--channels", default=None, help="Comma list of dense,text,lexical (default: all available).")
@click.option("--model", default=None, help="CLIP/SigLIP to encode the query (default: the index's).")
@click.option("--text-model", default=None, help="Text model to encode the query (default: the index's).")
@_dtype_option
@_index_dir_option
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print hits as a JSON list.")
@click.option("--timings", is_flag=True, help="Print encode / search / fusion times.")
@click.pass_obj
def query(
    obj: Ctx,
    text: str | None,
    image: str | None,
    k: int | None,
    modality: str,
    source: str | None,
    channels: str | None,
    model: str | None,
    text_model: str | None,
    dtype: str | None,
    index_dir: str | None,
    store_url: str | None,
    as_json: bool,
    timings: bool,
) -> None:
    """Search the index: ranked text AND image hits with file, page, caption, labels and context."""
    _read_only()
    from manualrag.errors import ManualragError

    if not (text and text.strip()) and not image:  # '' and '   ' alike: no query text
        raise ManualragError("give a query text, --image FILE, or both")
    with _open_retriever(obj, index_dir, store_url, model, text_model, dtype) as r:
        if source:
            source = _library_path(source, r.manifest.get_meta("library"), "--source")
        chosen = _channels(channels)
        res = r.search(text, image=image, k=k, modality=modality, channels=chosen, source=source)
        empty = not res.hits and not r.manifest.documents() and r.building() is None
        index_models = dict(r.models)
    if as_json:
        _echo_json([h.to_dict() for h in res.hits])
    else:
        _print_hits(res)
    if empty:  # the channels are "off" only because there is nothing in it: advice about models misleads
        _echo(
            f"note: the index in {r.index_dir} holds no documents: index a folder of manuals first "
            "(`manualrag index LIBRARY`: PDFs, images, .txt, .md)",
            err=True,
        )
        return
    off = dict(res.channels_off)
    notes = [*_unused_model_notes(index_models, model, text_model), *res.notes]
    if (
        text
        and not index_models.get("text")
        and "text" in (chosen or ["text"])
        and "text" not in res.channels_used
        and "text" not in off
    ):  # the retriever says nothing of a text channel the index was built without (--no-dense, none)
        notes.append("text channel off: the index has no text-model vectors")
        off["text"] = "no_vectors"
    for note in notes:
        _echo(f"note: {note}", err=True)
    for hint in _channel_hints(off, index_models):
        _echo(f"hint: {hint}", err=True)
    if timings:
        # open_store (chromadb import included), import (torch + transformers), load_models (weights): the
        # cold-start costs, shown on the query that paid them; total: since the CLI module was imported
        shown = {**res.timings_ms, "total": (time.perf_counter() - _T_START) * 1000}
        _echo("timings (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in shown.items()), err=True)


def _unused_model_notes(index_models: dict[str, Any], model: str | None, text_model: str | None) -> list[str]:
    """A query model named for a channel the index has no vectors of is not loaded at all: said, not
    silently ignored (an index with those vectors would load it, and fail if it cannot)."""
    from manualrag.config import means_no_model

    out = []
    for flag, given, role, what in (
        ("--model", model, "clip", "CLIP"),
        ("--text-model", text_model, "text", "text-model"),
    ):
        if given and not means_no_model(given) and not index_models.get(role):
            out.append(f"{flag} {given} is not used: this index has no {what} vectors")
    return out


def _channel_hints(off: dict[str, str], index_models: dict[str, Any] | None = None) -> list[str]:
    """The CLI's wording of what to do about a channel the index lacks (the retriever's notes say only
    what is off, in words that fit every front end). A later `index` run keeps the models an index
    recorded (cli._keep_the_index_models), so the text model is named where a plain run would not add it;
    an index built --no-dense recorded none, and `--model none` adds the text model's vectors alone."""
    from manualrag.config import DEFAULTS

    out = []
    text_off = off.get("text") == "no_vectors"
    if text_off:
        adds = f"--text-model {DEFAULTS['text_model']}" if index_models else "--model none"
        out.append(
            f"`manualrag index LIBRARY {adds}` adds text-model vectors (semantic search; "
            f"{DEFAULTS['text_model'].split('/')[-1]} comes installed: no download)"
        )
    if off.get("dense") == "no_vectors":
        out.append(
            "`manualrag index LIBRARY --model NAME_OR_FOLDER` adds CLIP vectors (figure pictures)"
            + (" and text-model vectors" if text_off and not index_models else "")
        )
    return out


def _print_hits(res: Any) -> None:
    if not res.hits:
        _echo("no hits")
        return
    bold = (lambda s: click.style(s, bold=True)) if sys.stdout.isatty() else (lambda s: s)
    _echo(f"{'#':>3}  {'kind':<5}  {'score':>6}  {'file:page':<40}  found by")
    for h in res.hits:
        pages = ",".join(map(str, h.pages))
        where = f"{h.path}:{pages}"
        _echo(f"{h.rank:>3}  {h.kind:<5}  {h.score:>6.4f}  {_pad(where, 40)}  {','.join(h.channels)}")
        snippet = _clean(h.snippet)
        if sys.stdout.isatty():
            snippet = snippet.replace("**", "\x00")
            parts = snippet.split("\x00")
            snippet = "".join(bold(p) if i % 2 else p for i, p in enumerate(parts))
        if h.kind == "image":
            _echo(f"       [{h.figure_kind}] {h.caption or '(no caption)'}")
            labels = " ".join(h.labels + h.ocr_text.split())
            if labels:
                _echo(f"       labels: {_short(labels, 150)}")
            if h.crop_path:
                _echo(f"       crop: {h.crop_path}")
        else:
            if h.heading:
                _echo(f"       § {h.heading}")
            click.echo(f"       {snippet}")  # cleaned before styling
            if h.suspect:
                _echo(f"       (suspect text: {h.suspect}; not visible on the page)")
            if h.figures:
                _echo(
                    "       figures: "
                    + "; ".join(f"{f.caption or f.kind + ' figure'} p{f.page}" for f in h.figures[:3])
                )
        if h.copies:
            _echo(f"       also in (same file): {_short(', '.join(h.copies), 150)}")


# ------------------------------------------------------------------------------------------------ context
@main.command()
@click.argument("text")
@click.option(
    "--max-chars",
    type=click.IntRange(min=1),
    default=6000,
    show_default=True,
    help="Character budget of the block.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["markdown", "json"]), default="markdown", show_default=True
)
@click.option(
    "-k", "--k", "k", type=click.IntRange(min=1), default=8, show_default=True, help="Hits considered."
)
@click.option("--with-images", is_flag=True, help="JSON only: include each figure crop as base64.")
@click.option("--include-suspect", is_flag=True, help="Include text that is invisible on the page (marked).")
@click.option("--channels", default=None, help="Comma list of dense,text,lexical.")
@click.option("--model", default=None, help="CLIP/SigLIP to encode the query (default: the index's).")
@click.option("--text-model", default=None, help="Text model to encode the query (default: the index's).")
@_dtype_option
@_index_dir_option
@_store_option
@click.pass_obj
def context(
    obj: Ctx,
    text: str,
    max_chars: int,
    fmt: str,
    k: int,
    with_images: bool,
    include_suspect: bool,
    channels: str | None,
    model: str | None,
    text_model: str | None,
    dtype: str | None,
    index_dir: str | None,
    store_url: str | None,
) -> None:
    """A prompt-ready context block for an LLM: numbered, fenced sources with pages and figures."""
    _read_only()
    from manualrag.errors import ManualragError
    from manualrag.retriever.context import build_context

    if with_images and fmt != "json":
        raise click.UsageError("--with-images needs --format json (a markdown block carries no image data)")
    if not text.strip():
        raise ManualragError("give a question to gather sources for (the query text is empty)")

    with _open_retriever(obj, index_dir, store_url, model, text_model, dtype) as r:
        res = r.search(text, k=k, channels=_channels(channels))
        index_models = dict(r.models)
    for note in _unused_model_notes(index_models, model, text_model):
        _echo(f"note: {note}", err=True)
    out = build_context(
        res, max_chars=max_chars, fmt=fmt, with_images=with_images, include_suspect=include_suspect
    )
    if fmt == "json":
        _echo_json(out)
    else:
        _echo(out, multiline=True)


# --------------------------------------------------------------------------------------------------- eval
@main.command(name="eval")
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "-k", "--k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Cut-off rank."
)
@click.option("--channels", default=None, help="Comma list of dense,text,lexical (an ablation).")
@click.option("--text-model", default=None, help="Text model to encode queries (default: the index's).")
@_dtype_option
@_index_dir_option
@_store_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_obj
def eval_cmd(
    obj: Ctx,
    queries: str,
    k: int,
    channels: str | None,
    text_model: str | None,
    dtype: str | None,
    index_dir: str | None,
    store_url: str | None,
    as_json: bool,
) -> None:
    """Measure retrieval on labelled queries (JSONL: query, file, pages, kind): recall@k, MRR, nDCG, image recall."""
    _read_only()
    from manualrag.retriever.evaluate import evaluate, format_table, load_queries

    qs = load_queries(queries)
    with _open_retriever(obj, index_dir, store_url, text_model=text_model, dtype=dtype) as r:
        report = evaluate(r, qs, k=k, channels=_channels(channels))
        report["precision"] = r.precision()
    if as_json:
        _echo_json(report)
    else:
        _echo(format_table(report), multiline=True)


# -------------------------------------------------------------------------------------------------- serve
@main.command()
@_index_dir_option
@_store_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind (beyond loopback needs --token-env).",
)
@click.option("--port", type=int, default=8080, show_default=True, help="TCP port.")
@click.option(
    "--token-env", default=None, metavar="NAME", help="Environment variable holding the API token (Bearer)."
)
@click.pass_obj
def serve(
    obj: Ctx, index_dir: str | None, store_url: str | None, host: str, port: int, token_env: str | None
) -> None:
    """Serve the web page and the JSON API over an index (models loaded once; see /docs)."""
    from manualrag.serve.server import serve as run_server

    run_server(
        obj.config(index_dir=index_dir, store={"url": store_url}), host, port, token_env, access_log=obj.debug
    )


# ---------------------------------------------------------------------------------------------------- mcp
@main.command(name="mcp")
@_index_dir_option
@_store_option
@click.pass_obj
def mcp_cmd(obj: Ctx, index_dir: str | None, store_url: str | None) -> None:
    """Serve the index to LLM apps over MCP on stdin/stdout: search, context, figure and page images."""
    _read_only()
    from manualrag.errors import ManualragError

    if store_url:  # as for every command; the server reads its settings as a library user's code would
        os.environ["MANUALRAG_STORE__URL"] = store_url

    try:
        from manualrag.integrations.mcp_server import run_stdio
    except ImportError as exc:
        raise ManualragError(str(exc)) from None
    run_stdio(index_dir, obj.config_path)


def _pad(text: str, width: int) -> str:
    """``text`` padded to ``width`` terminal columns: wide characters (CJK) take two."""
    import unicodedata

    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, width - cols)


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


if __name__ == "__main__":
    run()
