"""Resumable, md5-checked downloads and safe tar extraction for the PASCAL VOC 2012 devkit."""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from gain.runtime.errors import StageError

VOC_TAR_NAME = "VOCtrainval_11-May-2012.tar"
VOC_MD5 = "6cd6e144f989b92b3379bac3b3de84fd"
VOC_REQUIRED = ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation")


class DownloadError(StageError):
    """A download, checksum or extraction failure; the message names the URL or file at fault."""


class _ShortRead(Exception):
    """The server closed the stream before sending Content-Length bytes."""


# Errors after which resuming from the bytes already on disk can still succeed. http.client only raises
# IncompleteRead for unsized reads; a sized read that hits EOF early returns b"", caught as _ShortRead.
_TRANSIENT = (http.client.IncompleteRead, ConnectionResetError, TimeoutError, _ShortRead)


def file_md5(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks so multi-GB archives never sit in memory."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _stream_once(url: str, part: Path, *, chunk_size: int, timeout: float, progress: bool) -> None:
    """One HTTP request appending to (206) or rewriting (200) `part`; raises _TRANSIENT on a cut stream."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "gain-download/1.0"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        if offset and resp.status == 206:
            # A server may ignore the requested start; appending a body from elsewhere would corrupt the file.
            match = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != offset:
                part.unlink()
                raise DownloadError(
                    f"{url}: asked for bytes from {offset}, got Content-Range "
                    f"{resp.headers.get('Content-Range')!r}; partial file discarded"
                )
            mode = "ab"
        elif resp.status == 200:
            # No range support: the body is the whole file, so the partial bytes on disk are useless.
            mode, offset = "wb", 0
        else:
            raise DownloadError(f"{url}: unexpected HTTP status {resp.status}")

        length = resp.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        with (
            open(part, mode) as f,
            tqdm(
                total=None if expected is None else offset + expected,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            while chunk := resp.read(chunk_size):
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if expected is not None and received < expected:
            raise _ShortRead(f"got {received} of {expected} bytes")


def fetch(
    url: str,
    dest: Path,
    md5: str | None,
    *,
    chunk_size: int = 1 << 20,
    timeout: float = 60.0,
    progress: bool = True,
    retries: int = 3,
) -> Path:
    """Download `url` to `dest` via `dest.part`, resuming cut transfers and checking `md5` when given.

    `dest` only ever appears complete and verified (renamed from `.part` on success). An existing `dest`
    is returned without network if its md5 matches (or if `md5` is None, since only verified downloads
    are ever renamed onto `dest`). A complete download with another md5 is kept as `mismatched(dest, its
    md5)` and named in the error, so correcting a mistyped md5 reuses it; an HTML body is refused.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or file_md5(dest) == md5):
        return dest
    kept = mismatched(dest, md5) if md5 is not None else None
    if kept is not None and kept.is_file() and file_md5(kept, chunk_size) == md5:
        os.replace(kept, dest)  # kept aside under a wrong md5 that has since been corrected
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    failures = 0
    while True:
        try:
            _stream_once(url, part, chunk_size=chunk_size, timeout=timeout, progress=progress)
            break
        except _TRANSIENT as e:
            failures += 1
            if failures > retries:
                raise DownloadError(f"{url}: transfer interrupted {failures} times, giving up: {e!r}") from e
        except urllib.error.HTTPError as e:
            if e.code == 416 and part.exists():
                # Range past the end: either the .part is already whole (crash before the rename) or it
                # is longer than the file. Keep it only if the checksum proves the former.
                if md5 is not None and file_md5(part, chunk_size) == md5:
                    break
                part.unlink()
                failures += 1
                if failures <= retries:
                    continue
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            if isinstance(e.reason, _TRANSIENT):
                failures += 1
                if failures <= retries:
                    continue
            raise DownloadError(f"{url}: {e.reason}") from e
        except (http.client.HTTPException, OSError, ValueError) as e:
            raise DownloadError(f"{url}: {e!r}") from e

    if _looks_like_html(part):
        part.unlink()
        raise DownloadError(
            f"{url}: the server sent an HTML page, not the tar (an error or login page?); check the URL"
        )
    if md5 is not None:
        actual = file_md5(part, chunk_size)
        if actual != md5:
            kept = mismatched(dest, actual)
            os.replace(part, kept)
            raise DownloadError(
                f"{url}: md5 mismatch for {dest.name}: expected {md5}, got {actual}; the download is kept as "
                f"{kept}: if {actual} is the right md5, set it (data.voc_md5) and rerun, nothing is fetched again"
            )
    os.replace(part, dest)
    return dest


def mismatched(dest: Path, md5: str) -> Path:
    """Where a download whose md5 is `md5` but not the expected one is kept: `<dest>.md5-<md5>`."""
    return dest.with_name(f"{dest.name}.md5-{md5}")


def _looks_like_html(path: Path) -> bool:
    """True when a download starts like an HTML document (a server's error or login page sent with 200)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def download_first(urls: list[str], dest: Path, md5: str, **kw) -> Path:
    """Fetch `dest` from the first URL that works (official host first, then mirrors); kw go to fetch."""
    errors = []
    for url in urls:
        try:
            return fetch(url, dest, md5, **kw)
        except DownloadError as e:
            errors.append(f"  {e}")  # each message names its URL
    listing = "\n".join(errors) if errors else "  (no URLs given)"
    raise DownloadError(f"could not download {Path(dest).name} from any URL:\n{listing}")


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _check_member(member: tarfile.TarInfo, root: Path, archive: Path) -> None:
    """Raise DownloadError if extracting `member` under `root` could write or point outside it."""

    def refuse(why: str) -> DownloadError:
        return DownloadError(f"{archive}: refusing member {member.name!r}: {why}")

    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise refuse("device, fifo or other special file")
    if os.path.isabs(member.name) or member.name.startswith(("/", "\\")):
        raise refuse("absolute path")
    dest = (root / member.name).resolve()
    if not _within(dest, root):
        raise refuse("path escapes the extraction folder")
    if member.issym():
        if os.path.isabs(member.linkname):
            raise refuse(f"absolute symlink target {member.linkname!r}")
        if not _within((dest.parent / member.linkname).resolve(), root):
            raise refuse(f"symlink target {member.linkname!r} escapes the extraction folder")
    if member.islnk():
        # Hard link names are relative to the archive root, not to the member's folder.
        if os.path.isabs(member.linkname) or not _within((root / member.linkname).resolve(), root):
            raise refuse(f"hard link target {member.linkname!r} escapes the extraction folder")


def safe_extract(archive: Path, target: Path) -> None:
    """Extract a tar (any compression) to `target`, refusing members that escape it; all-or-nothing.

    Every member is checked before anything is written; extraction goes to a hidden sibling folder that
    is renamed onto `target` only once complete. `target` must not exist.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise DownloadError(f"{target}: already exists; refusing to extract {archive} over it")
    staging = target.parent / f".{target.name}.extracting"
    if staging.exists():
        shutil.rmtree(staging)  # left behind by an interrupted earlier extraction
    root = staging.resolve()
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root, archive)
            staging.mkdir(parents=True)
            if hasattr(tarfile, "data_filter"):
                # Second line of defence: also strips setuid bits and rejects anything our checks missed.
                tar.extractall(staging, members=members, filter="data")
            else:
                tar.extractall(staging, members=members)
        os.replace(staging, target)
    except tarfile.TarError as e:
        raise DownloadError(f"{archive}: cannot extract: {e}") from e
    finally:
        if staging.exists():
            shutil.rmtree(staging)


SOURCE_RECORD = "source.md5"  # in VOCdevkit/: the md5 of the tar the devkit was extracted from


def prepare_voc(root: Path, urls: list[str], md5: str, *, progress: bool = True) -> Path:
    """Ensure `root/VOCdevkit/VOC2012` holds the VOC 2012 trainval devkit extracted from the tar whose md5
    is `md5`; return that path.

    Downloads `VOC_TAR_NAME` into `root/downloads` (kept, so a rerun skips the network). The extracted devkit
    records its tar's md5 (`VOCdevkit/source.md5`) and is extracted again when `md5` differs from it; a
    devkit without a record is used as it is unless a downloaded tar lies beside it (then it came from an
    earlier extraction and is redone from the verified tar). `root` gets a `.gitignore` ignoring it all.
    """
    root = Path(root)
    devkit = root / "VOCdevkit"
    voc = devkit / "VOC2012"
    root.mkdir(parents=True, exist_ok=True)
    ignore_folder(root)
    record = devkit / SOURCE_RECORD
    tar_path = root / "downloads" / VOC_TAR_NAME
    recorded = record.read_text().strip() if record.is_file() else None
    if (voc / "JPEGImages").is_dir() and (recorded == md5 or (recorded is None and not tar_path.exists())):
        return voc
    # os.replace cannot move a folder onto a non-empty one; fail before a 2 GB download, not after.
    if devkit.exists() and recorded is None and not tar_path.exists() and any(devkit.iterdir()):
        raise DownloadError(f"{devkit}: exists but has no VOC2012/JPEGImages; move it aside and rerun")

    tar = download_first(urls, tar_path, md5, progress=progress)
    extracted = root / "extracted"
    if extracted.exists():
        shutil.rmtree(extracted)  # an earlier run died between extraction and the move below
    safe_extract(tar, extracted)
    try:
        # Check before the move so a broken archive never leaves a half-usable devkit at `root`.
        for sub in VOC_REQUIRED:
            if not (extracted / "VOCdevkit" / "VOC2012" / sub).is_dir():
                raise DownloadError(f"{tar}: missing folder VOCdevkit/VOC2012/{sub}")
        (extracted / "VOCdevkit" / SOURCE_RECORD).write_text(md5 + "\n")
        if devkit.exists():
            print(
                f"{devkit}: extracted from a tar with md5 {recorded or 'unknown'}; extracting {tar} ({md5})"
            )
            shutil.rmtree(devkit)
        os.replace(extracted / "VOCdevkit", devkit)
    finally:
        shutil.rmtree(extracted, ignore_errors=True)
    return voc


def ignore_folder(folder: Path) -> None:
    """Write `folder/.gitignore` ignoring everything in it (a download cache never shows in `git status`)."""
    ignore = folder / ".gitignore"
    if not ignore.is_file():
        ignore.write_text("# a download cache (gain.data.download): nothing here is tracked\n*\n")
