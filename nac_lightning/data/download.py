"""Download the DomainBed image datasets into the layout :mod:`nac_lightning.data` reads.

Usage::

    nac-download {pacs,vlcs,office_home,terra_incognita,all} [...] --root DIR
    python -m nac_lightning.data.download pacs --root DIR

What it fetches (as DomainBed's ``domainbed/scripts/download.py``):

* PACS, VLCS, OfficeHome: one archive each from Google Drive (with ``gdown``), extracted and
  renamed to ``DIR/PACS`` (the archive's ``kfold/``), ``DIR/VLCS``, ``DIR/office_home`` (the
  archive's ``OfficeHomeDataset_10072016/``).
* TerraIncognita: ``eccv_18_all_images_sm.tar.gz`` and ``eccv_18_annotations.tar.gz`` from the
  LILA public bucket (Caltech Camera Traps) over HTTP; the images of locations 38, 43, 46 and
  100 are sorted into ``DIR/terra_incognita/location_<id>/<category>/`` for DomainBed's 10
  categories, following the merged annotation files.

Every archive is downloaded next to the data (``DIR/<archive>``; HTTP downloads go through
``<archive>.part`` and resume with an HTTP ``Range`` request; gdown resumes its own partial
file), verified (optional md5, full zip CRC / tar read), extracted into a staging folder,
checked against the expected environments and classes, and only then moved into place, so an
interrupted run never leaves a half-extracted dataset behind. A dataset whose folder is already
complete is skipped without any network access. Archives are deleted after success unless
``--keep-archives``.

Mirrors: ``--base-url URL`` (or the environment variable ``NAC_DATA_BASE_URL``) fetches every
archive over HTTP from ``URL/<archive file name>`` instead (used by the tests with a local
server, and useful on clusters without Google Drive access).
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nac_lightning.data.datasets import (
    _IMG_EXTENSIONS,
    DatasetLayoutError,
    get_dataset_class,
    validate_layout,
)

__all__ = [
    "DOWNLOADABLE",
    "SOURCES",
    "Archive",
    "DatasetSource",
    "DownloadError",
    "dataset_is_complete",
    "download_dataset",
    "http_download",
    "main",
    "verify_archive",
]

BASE_URL_ENV = "NAC_DATA_BASE_URL"
LILA_URL = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps"
#: what gdown fetches for a Google Drive id (gdown's own form of ``download(id=...)``)
GDRIVE_URL = "https://drive.google.com/uc?id={id}"
TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = (
    "bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel",
)  # fmt: skip


class DownloadError(RuntimeError):
    """A download, archive check or extraction failed; the message says what to do."""


@dataclass(frozen=True)
class Archive:
    """One file to fetch: from Google Drive (``gdrive_id``) or over HTTP (``url``)."""

    filename: str
    gdrive_id: str | None = None
    url: str | None = None
    md5: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from and how its archives become ``root/<folder>``.

    ``top`` is the folder inside the extracted archive(s) that holds the environment folders
    (renamed to ``folder``); ``arrange`` (TerraIncognita) builds ``staging/<folder>`` itself.
    """

    name: str
    folder: str
    archives: tuple[Archive, ...]
    top: str | None = None
    arrange: Callable[[Path, Path], None] | None = field(default=None, compare=False)


# ---------------------------------------------------------------------- TerraIncognita
def arrange_terra_incognita(staging: Path, target: Path) -> None:
    """Sort the extracted Caltech Camera Traps images into DomainBed's TerraIncognita layout.

    Reads every ``*.json`` under ``staging/eccv_18_annotation_files`` (merging their
    ``images``, ``annotations`` and ``categories`` lists, as DomainBed does), and copies each
    image of locations 38, 43, 46, 100 into ``target/location_<loc>/<category>/<file_name>`` for
    each of its annotated categories among DomainBed's 10.
    """
    images_dir = staging / "eccv_18_all_images_sm"
    annotation_dir = staging / "eccv_18_annotation_files"
    files = sorted(annotation_dir.glob("*.json")) if annotation_dir.is_dir() else []
    if not images_dir.is_dir() or not files:
        raise DownloadError(
            "TerraIncognita archives do not hold the expected folders "
            f"'eccv_18_all_images_sm/' and 'eccv_18_annotation_files/*.json' (found "
            f"{sorted(p.name for p in staging.iterdir())}); delete the archives and run again"
        )
    merged: dict[str, list] = defaultdict(list)
    for path in files:
        with open(path) as f:
            for key, value in json.load(f).items():
                if isinstance(value, list):
                    merged[key].extend(value)
    categories = {c["id"]: c["name"] for c in merged["categories"]}
    labels_of: dict[object, list[str]] = defaultdict(list)
    for ann in merged["annotations"]:
        name = categories.get(ann["category_id"])
        if name in TERRA_CATEGORIES and name not in labels_of[ann["image_id"]]:
            labels_of[ann["image_id"]].append(name)
    missing: list[str] = []
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for image in merged["images"]:
        location = str(image["location"])
        if location not in TERRA_LOCATIONS:
            continue
        relative = Path(image["file_name"])
        if relative.is_absolute() or ".." in relative.parts:
            raise DownloadError(f"unsafe file name in the TerraIncognita annotations: {relative}")
        source = images_dir / relative
        for category in labels_of.get(image["id"], []):
            if not source.is_file():
                missing.append(str(relative))
                break
            dest = target / f"location_{location}" / category / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, dest)
            except OSError:
                shutil.copyfile(source, dest)
            counts[(location, category)] += 1
    if missing:
        raise DownloadError(
            f"{len(missing)} annotated TerraIncognita images are missing from the image archive "
            f"(e.g. {missing[:3]}); delete the archives and run again"
        )
    for location in sorted(TERRA_LOCATIONS, key=int):
        line = ", ".join(f"{c} {counts[(location, c)]}" for c in TERRA_CATEGORIES)
        _log(f"  location_{location}: {line}")


SOURCES: dict[str, DatasetSource] = {
    "pacs": DatasetSource(
        "pacs",
        "PACS",
        (Archive("PACS.zip", gdrive_id="1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"),),
        "kfold",
    ),
    "vlcs": DatasetSource(
        "vlcs",
        "VLCS",
        (Archive("VLCS.tar.gz", gdrive_id="1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"),),
        "VLCS",
    ),
    "office_home": DatasetSource(
        "office_home",
        "office_home",
        (Archive("office_home.zip", gdrive_id="1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"),),
        "OfficeHomeDataset_10072016",
    ),
    "terra_incognita": DatasetSource(
        "terra_incognita",
        "terra_incognita",
        (
            Archive("eccv_18_all_images_sm.tar.gz", url=f"{LILA_URL}/eccv_18_all_images_sm.tar.gz"),
            Archive("eccv_18_annotations.tar.gz", url=f"{LILA_URL}/eccv_18_annotations.tar.gz"),
        ),
        arrange=arrange_terra_incognita,
    ),
}
DOWNLOADABLE = tuple(SOURCES)


# ----------------------------------------------------------------------------- helpers
def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress_bar(description: str, total: int | None, completed: int, enabled: bool):
    """A rich progress bar (or None when disabled); returns (progress, task_id)."""
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = progress.add_task(description, total=total, completed=completed)
    return progress, task


def _parse_content_range_start(value: str | None) -> int | None:
    # "bytes 100-999/1000" -> 100
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def http_download(
    url: str,
    dest: str | os.PathLike,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    chunk_size: int = 1 << 20,
) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial file.

    A partial ``<dest>.part`` (from an earlier, interrupted run) is continued with an HTTP
    ``Range`` request; a server that ignores ranges restarts it from the beginning. A
    connection lost mid-transfer is retried ``retries`` times, each time resuming.

    Raises:
        DownloadError: HTTP error, unreachable server, or still incomplete after the retries
            (the partial file is kept: run again to resume).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": "nac-lightning-download"}
        if have:
            headers["Range"] = f"bytes={have}-"
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # nothing left to fetch: the partial file is whole
                os.replace(part, dest)
                return dest
            raise DownloadError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DownloadError(
                f"cannot reach {url}: {reason}. Check the network, or fetch the archives from a "
                f"mirror with --base-url (or {BASE_URL_ENV})"
            ) from exc
        with response:
            length = response.headers.get("Content-Length")
            start = _parse_content_range_start(response.headers.get("Content-Range"))
            if response.status == 206 and start != have:  # a range we did not ask for
                part.unlink(missing_ok=True)
                continue
            if have and response.status == 206:
                mode, done = "ab", have
            else:  # no partial file, or the server ignored the range and sends everything
                mode, done = "wb", 0
            total = done + int(length) if length is not None else None
            bar, task = _progress_bar(dest.name, total, done, progress)
            error: Exception | None = None
            try:
                if bar is not None:
                    bar.start()
                with open(part, mode) as f:
                    while chunk := response.read(chunk_size):
                        f.write(chunk)
                        done += len(chunk)
                        if bar is not None:
                            bar.update(task, completed=done)
            except (OSError, http.client.HTTPException) as exc:
                error = exc
            finally:
                if bar is not None:
                    bar.stop()
        size = part.stat().st_size if part.exists() else 0
        if error is None and (total is None or size == total):
            os.replace(part, dest)
            return dest
        attempt += 1
        if attempt > retries:
            what = f"{type(error).__name__}: {error}" if error else "connection closed early"
            raise DownloadError(
                f"download of {url} incomplete after {attempt} attempt(s) ({what}); got "
                f"{size} of {total if total is not None else '?'} bytes, kept in {part}. "
                "Run the same command again to resume."
            ) from error
        _log(f"download of {dest.name} interrupted at {size} bytes; resuming ({attempt}/{retries})")
        time.sleep(0.0 if attempt == 1 else min(2.0 ** (attempt - 1), 10.0))


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_archive(path: str | os.PathLike, md5: str | None = None) -> None:
    """Check an archive: its md5 when given, then every member's data (zip CRC / full tar read).

    Raises:
        DownloadError: naming the archive, when it is corrupt, truncated or not an archive.
    """
    path = Path(path)
    if md5 is not None and (actual := _md5(path)) != md5.lower():
        raise DownloadError(f"checksum mismatch for {path}: md5 {actual}, expected {md5}")
    name = path.name.lower()
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise DownloadError(f"archive {path} is corrupt (bad CRC in member '{bad}')")
        elif name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isfile():
                        handle = archive.extractfile(member)
                        while handle is not None and handle.read(1 << 20):
                            pass
        else:
            raise DownloadError(f"unknown archive type: {path} (expected .zip, .tar or .tar.gz)")
    except DownloadError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise DownloadError(f"archive {path} is corrupt: {type(exc).__name__}: {exc}") from exc


def _extract(path: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                parts = Path(member).parts
                if Path(member).is_absolute() or ".." in parts:
                    raise DownloadError(f"unsafe path '{member}' in archive {path}")
            archive.extractall(into)
    else:
        with tarfile.open(path, "r:*") as archive:
            archive.extractall(into, filter="data")


def dataset_is_complete(name: str, root: str | os.PathLike) -> bool:
    """True when ``root`` holds the dataset's environments and classes, each with images."""
    cls = get_dataset_class(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_layout(cls, root)
    except DatasetLayoutError:
        return False
    base = Path(root) / str(cls.FOLDER)
    for env in cls.ENVIRONMENTS:
        has_image = any(
            f.lower().endswith(_IMG_EXTENSIONS)
            for _, _, files in os.walk(base / env)
            for f in files
        )
        if not has_image:
            return False
    return True


def _fetch(
    archive: Archive, dest: Path, base_url: str | None, progress: bool, retries: int
) -> None:
    if base_url:
        http_download(f"{base_url.rstrip('/')}/{archive.filename}", dest, progress, retries)
    elif archive.url is not None:
        http_download(archive.url, dest, progress, retries)
    elif archive.gdrive_id is not None:
        import gdown

        advice = (
            f"Google Drive may be rate-limiting: retry later (the partial file resumes), or save "
            f"the file by hand as {dest} and run again, or use --base-url with a mirror"
        )
        try:
            url = GDRIVE_URL.format(id=archive.gdrive_id)
            result = gdown.download(url=url, output=str(dest), quiet=not progress, resume=True)
        except Exception as exc:  # gdown raises several types (FileURLRetrievalError, ...)
            raise DownloadError(
                f"gdown could not fetch {archive.filename} (Google Drive id {archive.gdrive_id}): "
                f"{type(exc).__name__}: {exc}. {advice}"
            ) from exc
        if result is None or not dest.is_file():
            raise DownloadError(
                f"gdown could not fetch {archive.filename} (Google Drive id {archive.gdrive_id}). "
                + advice
            )
    else:  # pragma: no cover - a malformed source table
        raise DownloadError(f"no source for {archive.filename}")


def download_dataset(
    name: str,
    root: str | os.PathLike,
    base_url: str | None = None,
    keep_archives: bool = False,
    force: bool = False,
    progress: bool = True,
    retries: int = 3,
    sources: dict[str, DatasetSource] | None = None,
) -> Path:
    """Fetch, verify and extract dataset ``name`` into ``root/<folder>``; return that folder.

    Does nothing (and touches no network) when the dataset folder is already complete.

    Args:
        name: ``pacs``, ``vlcs``, ``office_home`` or ``terra_incognita``.
        root: the data root (created if needed).
        base_url: fetch every archive over HTTP from ``base_url/<archive file name>`` instead of
            Google Drive / LILA (default: the ``NAC_DATA_BASE_URL`` environment variable).
        keep_archives: keep the downloaded archives after extraction.
        force: re-extract even when the folder exists (an existing folder is replaced).
        progress: show progress bars.
        retries: automatic resumptions of an interrupted HTTP download.
        sources: override the source table (defaults to :data:`SOURCES`).

    Raises:
        DownloadError: on network, archive or layout problems, with what to do next.
    """
    table = SOURCES if sources is None else sources
    key = get_dataset_class(name).NAME
    if key not in table:
        raise DownloadError(
            f"'{name}' is not downloadable; choose from {sorted(table)} "
            "(rotated_digits is embedded and needs no download)"
        )
    source = table[key]
    base_url = base_url if base_url is not None else os.environ.get(BASE_URL_ENV) or None
    root = Path(root).expanduser()
    target = root / source.folder
    if dataset_is_complete(key, root) and not force:
        _log(f"{key}: already complete in {target}; nothing to do")
        return target
    if target.exists() and not force:
        reason = "unknown problem"
        try:
            validate_layout(get_dataset_class(key), root)
        except DatasetLayoutError as exc:
            reason = str(exc)
        raise DownloadError(
            f"{target} exists but is incomplete ({reason}). Remove it, or run again with "
            "--force to replace it."
        )
    root.mkdir(parents=True, exist_ok=True)

    archive_paths = []
    for archive in source.archives:
        dest = root / archive.filename
        if dest.is_file():
            _log(f"{key}: using the existing archive {dest}")
        else:
            _log(f"{key}: downloading {archive.filename}")
            _fetch(archive, dest, base_url, progress, retries)
        _log(f"{key}: verifying {archive.filename}")
        try:
            verify_archive(dest, archive.md5)
        except DownloadError as exc:
            dest.unlink(missing_ok=True)
            raise DownloadError(
                f"{exc}. The archive was deleted: run again to re-download."
            ) from exc
        archive_paths.append(dest)

    staging = root / f".nac-download-{key}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for path in archive_paths:
            _log(f"{key}: extracting {path.name}")
            _extract(path, staging)
        staged = staging / source.folder
        if source.arrange is not None:
            _log(f"{key}: sorting images into environment folders")
            source.arrange(staging, staged)
        else:
            top = staging / str(source.top)
            if not top.is_dir():
                found = sorted(p.name for p in staging.iterdir())
                raise DownloadError(
                    f"the {key} archive does not hold the expected folder '{source.top}/' "
                    f"(found {found}); delete {', '.join(map(str, archive_paths))} and run again"
                )
            if top != staged:
                top.rename(staged)
        try:
            validate_layout(get_dataset_class(key), staging)
        except DatasetLayoutError as exc:
            raise DownloadError(
                f"the extracted {key} data has an unexpected layout: {exc}"
            ) from exc
        if target.exists():  # only with force
            shutil.rmtree(target)
        os.replace(staged, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        for path in archive_paths:
            path.unlink(missing_ok=True)
    _log(f"{key}: ready in {target}")
    return target


# --------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The ``nac-download`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="nac-download",
        description="Download DomainBed datasets (PACS, VLCS, OfficeHome, TerraIncognita) into "
        "ROOT/<folder>/<environment>/<class>/<image>. Complete datasets are skipped; "
        "interrupted downloads resume.",
    )
    parser.add_argument(
        "datasets", nargs="+", choices=[*DOWNLOADABLE, "all"], help="datasets to fetch, or all"
    )
    parser.add_argument("--root", required=True, help="data root (e.g. ./data)")
    parser.add_argument(
        "--base-url",
        default=None,
        help=f"fetch archives over HTTP from BASE_URL/<archive name> (env {BASE_URL_ENV})",
    )
    parser.add_argument("--keep-archives", action="store_true", help="keep archives afterwards")
    parser.add_argument("--force", action="store_true", help="re-extract over an existing folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--retries", type=int, default=3, help="resumptions per download")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``nac-download``); returns the exit status."""
    args = build_parser().parse_args(argv)
    names = list(DOWNLOADABLE) if "all" in args.datasets else list(dict.fromkeys(args.datasets))
    for name in names:
        try:
            download_dataset(
                name,
                args.root,
                base_url=args.base_url,
                keep_archives=args.keep_archives,
                force=args.force,
                progress=not args.no_progress,
                retries=args.retries,
            )
        except DownloadError as exc:
            _log(f"error: {exc}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
