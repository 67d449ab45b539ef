"""Find the manuals in a library folder: supported files, in a stable order, with what was skipped and why."""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manualrag.errors import ManualragError
from manualrag.ids import printable_name
from manualrag.index import IndexLayout, glob_match

log = logging.getLogger(__name__)

PDF_SUFFIXES = frozenset({".pdf"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp", ".gif"})
TEXT_SUFFIXES = frozenset({".txt", ".md"})
SKIP_EXAMPLES = 3  # skipped paths named per reason (the rest are counted)


class LibraryNotFoundError(ManualragError, FileNotFoundError):
    """The library folder does not exist or cannot be read."""


@dataclass(frozen=True)
class SourceFile:
    path: Path  # as found under the library (not resolved through symlinks)
    rel: str  # relative POSIX path inside the library: the document's identity
    size: int
    mtime: float
    file_type: str  # pdf | image | text


def file_type_for(path: Path | str) -> str | None:
    """pdf | image | text for a supported file name (case-insensitive suffix), else None."""
    suffix = Path(path).suffix.lower()
    if suffix in PDF_SUFFIXES:
        return "pdf"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in TEXT_SUFFIXES:
        return "text"
    return None


def _link_loop(path: Path) -> bool:
    """True when following the link ``path`` never ends (ELOOP), rather than ending at nothing."""
    try:
        path.stat()
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _printable(rel: str) -> str:
    name = printable_name(rel)
    if name != rel:
        log.warning("file name is not valid UTF-8: indexed as %s", name)
    return name


def discover(
    library: Path,
    cfg: dict[str, Any],
    exclude: list[Path] | None = None,
    indexes: list[str] | None = None,
    examples: dict[str, list[str]] | None = None,
    excluded_by: dict[str, int] | None = None,
) -> tuple[list[SourceFile], dict[str, int]]:
    """Walk ``library`` recursively; return the supported files sorted by relative path, and skip counts.

    Skipped (counted by reason): hidden names (``.x``), unsupported suffixes, the ``exclude`` folders
    (the run's own index when it lies inside the library: ``own_index``), the files the config's ``exclude``
    globs match (``excluded``), any other manualrag index folder in the library (counted
    as ``index_folder``; their relative paths are appended to ``indexes`` when given), symlinks leading
    outside the library (unless ``follow_symlinks``), broken links, directory loops, a file reached twice
    through links, and anything that is not a regular file or cannot be read. ``examples``, when given,
    gets the relative paths of the first few skipped under each reason (what the summary names);
    ``excluded_by``, when given, counts the files each exclude glob left out (the first that matched).
    """
    root = Path(library)
    root_real = Path(os.path.realpath(root))
    follow_outside = bool(cfg.get("follow_symlinks", False))
    excluded = {Path(os.path.realpath(p)) for p in (exclude or [])}
    patterns: list[str] = list(cfg.get("exclude") or [])  # the user's globs (config key exclude, --exclude)
    skipped: Counter[str] = Counter()
    candidates: list[tuple[bool, str, Path, os.stat_result, str]] = []  # via_link, rel, path, stat, type
    seen_dirs: set[tuple[int, int]] = set()
    linked_dirs: list[tuple[Path, tuple[str, ...]]] = []  # followed after the real tree

    def skip(reason: str, rel: str) -> None:
        skipped[reason] += 1
        if examples is not None and len(examples.setdefault(reason, [])) < SKIP_EXAMPLES:
            examples[reason].append(printable_name(rel) or ".")

    try:
        st_root = root.stat()
    except OSError as exc:
        raise LibraryNotFoundError(f"library folder {root} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st_root.st_mode):
        raise LibraryNotFoundError(f"library {root} is not a folder")
    seen_dirs.add((st_root.st_dev, st_root.st_ino))

    def inside_library(real: Path) -> bool:
        return real == root_real or root_real in real.parents

    def walk(folder: Path, rel_parts: tuple[str, ...], via_link: bool) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", folder, exc.strerror or exc)
            skip("unreadable", "/".join(rel_parts))
            return
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                skip("hidden", "/".join((*rel_parts, name)))
                continue
            path = Path(entry.path)
            rel = "/".join((*rel_parts, name))
            is_link = entry.is_symlink()
            if is_link:
                real = Path(os.path.realpath(path))
                if not real.exists():  # a link to nothing, or a loop of links (a -> b -> a)
                    skip("loop" if _link_loop(path) else "broken_link", rel)
                    continue
                if not inside_library(real) and not follow_outside:
                    skip("symlink", rel)
                    continue
            try:
                st = path.stat()  # follows links
            except OSError:
                skip("unreadable", rel)
                continue
            if stat.S_ISDIR(st.st_mode):
                if Path(os.path.realpath(path)) in excluded:
                    skip("own_index", rel)
                elif IndexLayout.holds_index(path):  # another index (say lib/data/index): crops, no manuals
                    skip("index_folder", rel)
                    if indexes is not None:
                        indexes.append(_printable("/".join((*rel_parts, name))))
                elif is_link and not via_link:
                    linked_dirs.append((path, (*rel_parts, name)))  # after the real folders
                else:
                    visit_dir(path, (*rel_parts, name), st, via_link or is_link)
                continue
            if not stat.S_ISREG(st.st_mode):
                skip("not_regular", rel)
                continue
            hit = next((p for p in patterns if glob_match(rel, p)), None)
            if hit is not None:
                skip("excluded", rel)
                if excluded_by is not None:
                    excluded_by[hit] = excluded_by.get(hit, 0) + 1
                continue
            ftype = file_type_for(name)
            if ftype is None:
                skip("unsupported", rel)
                continue
            candidates.append(
                (via_link or is_link, _printable("/".join((*rel_parts, name))), path, st, ftype)
            )

    def visit_dir(path: Path, rel_parts: tuple[str, ...], st: os.stat_result, via_link: bool) -> None:
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            skip(
                "loop", "/".join(rel_parts)
            )  # a folder reached a second time (link loop or second link to it)
            return
        seen_dirs.add(key)
        walk(path, rel_parts, via_link)

    walk(root, (), False)
    while linked_dirs:
        batch, linked_dirs[:] = sorted(linked_dirs, key=lambda t: t[1]), []
        for path, rel_parts in batch:
            try:
                visit_dir(path, rel_parts, path.stat(), True)
            except OSError:
                skip("unreadable", "/".join(rel_parts))

    # one entry per file: prefer the path that does not go through a link, then the first by name
    found: list[SourceFile] = []
    seen_files: set[tuple[int, int]] = set()
    seen_rels: set[str] = set()
    for _via_link, rel, path, st, ftype in sorted(candidates, key=lambda c: (c[0], c[1])):
        key = (st.st_dev, st.st_ino)
        if key in seen_files or rel in seen_rels:  # same file twice, or an escaped name equal to a real one
            skip("duplicate", rel)
            continue
        seen_files.add(key)
        seen_rels.add(rel)
        found.append(SourceFile(path=path, rel=rel, size=st.st_size, mtime=st.st_mtime, file_type=ftype))
    found.sort(key=lambda f: f.rel)
    return found, dict(skipped)
