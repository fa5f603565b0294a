"""gain/data/download.py against a real HTTP server on 127.0.0.1 serving a mini VOC-layout tarball."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gain.data.download import VOC_TAR_NAME, DownloadError, download_first, fetch, prepare_voc, safe_extract

SAMPLE_VOC = Path(__file__).parent / "VOCdevkit" / "VOC2012"
IDS = sorted(p.stem for p in (SAMPLE_VOC / "JPEGImages").glob("*.jpg"))
FAST = dict(chunk_size=4096, timeout=5.0, progress=False)


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- a loopback server with Range support and fault switches ------------------------------------------


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[dict] = field(default_factory=list)  # {"path", "range"} per GET, in arrival order
    cuts: list[int] = field(default_factory=list)  # request i sends only cuts[i] body bytes, then hangs up
    ignore_range: bool = False  # answer 200 with the whole body even when a Range is asked for
    lock: threading.Lock = field(default_factory=threading.Lock)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: ServerState = self.server.state
        with state.lock:
            state.requests.append({"path": self.path, "range": self.headers.get("Range")})
            cut = state.cuts.pop(0) if state.cuts else None
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not state.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        # Content-Length promises the full payload; sending less and closing is a cut connection.
        self.wfile.write(payload if cut is None else payload[:cut])
        self.close_connection = True

    def log_message(self, format: str, *args) -> None:
        pass  # keep pytest output clean


@dataclass
class Server:
    state: ServerState
    base: str

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(state=httpd.state, base=f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --- mini VOC tarball -----------------------------------------------------------------------------------


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build_voc_tar(path: Path, skip: str | None = None) -> bytes:
    """A VOCdevkit/VOC2012/... tar of the sample images, masks, split lists and tiny annotations."""
    with tarfile.open(path, mode="w") as tar:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            if sub != skip:
                tar.add(SAMPLE_VOC / sub, arcname=f"VOCdevkit/VOC2012/{sub}")
        if skip != "Annotations":
            for i in IDS:
                xml = (
                    f"<annotation><filename>{i}.jpg</filename><object><name>cat</name></object></annotation>"
                )
                add_bytes(tar, f"VOCdevkit/VOC2012/Annotations/{i}.xml", xml.encode())
        add_bytes(tar, "VOCdevkit/VOC2012/ImageSets/Main/train.txt", ("\n".join(IDS) + "\n").encode())
    return path.read_bytes()


@pytest.fixture(scope="session")
def voc_tar(tmp_path_factory) -> bytes:
    return build_voc_tar(tmp_path_factory.mktemp("tar") / VOC_TAR_NAME)


@pytest.fixture
def blob() -> bytes:
    # Not a multiple of the 4 KiB chunk, so partial last chunks are exercised too.
    return bytes(range(256)) * 200 + b"tail"


# --- fetch ----------------------------------------------------------------------------------------------


def test_fetch_downloads_verifies_and_extracts(server, voc_tar, tmp_path):
    server.state.files["/" + VOC_TAR_NAME] = voc_tar
    dest = fetch(server.url(VOC_TAR_NAME), tmp_path / "dl" / VOC_TAR_NAME, md5_of(voc_tar), **FAST)
    assert dest == tmp_path / "dl" / VOC_TAR_NAME
    assert dest.read_bytes() == voc_tar
    assert not dest.with_name(dest.name + ".part").exists()

    safe_extract(dest, tmp_path / "out")
    voc = tmp_path / "out" / "VOCdevkit" / "VOC2012"
    assert sorted(p.stem for p in (voc / "JPEGImages").iterdir()) == IDS
    assert sorted(p.stem for p in (voc / "Annotations").iterdir()) == IDS
    assert (voc / "SegmentationClass" / f"{IDS[0]}.png").read_bytes() == (
        SAMPLE_VOC / "SegmentationClass" / f"{IDS[0]}.png"
    ).read_bytes()
    assert (voc / "ImageSets" / "Segmentation" / "train.txt").is_file()


def test_fetch_skips_network_when_dest_has_right_md5(server, blob, tmp_path):
    dest = tmp_path / "blob.bin"
    dest.write_bytes(blob)
    assert fetch(server.url("blob.bin"), dest, md5_of(blob), **FAST) == dest
    assert server.state.requests == []


def test_fetch_resumes_after_cut_connection(server, blob, tmp_path):
    server.state.files["/blob.bin"] = blob
    server.state.cuts = [5000]
    dest = fetch(server.url("blob.bin"), tmp_path / "blob.bin", md5_of(blob), **FAST)
    assert [r["range"] for r in server.state.requests] == [None, "bytes=5000-"]
    assert md5_of(dest.read_bytes()) == md5_of(blob)


def test_fetch_resumes_existing_part_file(server, blob, tmp_path):
    server.state.files["/blob.bin"] = blob
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(blob[:1234])
    fetch(server.url("blob.bin"), dest, md5_of(blob), **FAST)
    assert [r["range"] for r in server.state.requests] == ["bytes=1234-"]
    assert dest.read_bytes() == blob


def test_fetch_restarts_when_server_ignores_range(server, blob, tmp_path):
    server.state.files["/blob.bin"] = blob
    server.state.ignore_range = True
    server.state.cuts = [5000]
    dest = tmp_path / "blob.bin"
    # Stale bytes that would corrupt the result if appended to instead of overwritten.
    dest.with_name("blob.bin.part").write_bytes(b"\xff" * 777)
    fetch(server.url("blob.bin"), dest, md5_of(blob), **FAST)
    assert [r["range"] for r in server.state.requests] == ["bytes=777-", "bytes=5000-"]
    assert dest.read_bytes() == blob


def test_fetch_gives_up_after_retries(server, blob, tmp_path):
    server.state.files["/blob.bin"] = blob
    server.state.cuts = [100] * 10
    url = server.url("blob.bin")
    with pytest.raises(DownloadError, match=re.escape(url)):
        fetch(url, tmp_path / "blob.bin", md5_of(blob), retries=2, **FAST)
    assert len(server.state.requests) == 3  # first try + 2 retries
    assert not (tmp_path / "blob.bin").exists()


def test_fetch_md5_mismatch_keeps_the_download_aside_and_a_corrected_md5_reuses_it(server, blob, tmp_path):
    server.state.files["/blob.bin"] = blob
    url = server.url("blob.bin")
    wrong, right = "0" * 32, md5_of(blob)
    kept = tmp_path / f"blob.bin.md5-{right}"
    with pytest.raises(DownloadError) as err:
        fetch(url, tmp_path / "blob.bin", wrong, **FAST)
    message = str(err.value)
    assert message.startswith(f"{url}: md5 mismatch for blob.bin: expected {wrong}, got {right}")
    assert f"kept as {kept}" in message and "\n" not in message
    assert [p.name for p in tmp_path.iterdir()] == [kept.name] and kept.read_bytes() == blob
    n = len(server.state.requests)
    assert fetch(url, tmp_path / "blob.bin", right, **FAST).read_bytes() == blob  # the typo fixed
    assert len(server.state.requests) == n and not kept.exists()


def test_an_html_page_served_with_200_is_named_as_such(server, tmp_path):
    server.state.files["/blob.bin"] = b"\n  <!DOCTYPE html><html><body>Please log in</body></html>"
    url = server.url("blob.bin")
    with pytest.raises(DownloadError) as err:
        download_first([url], tmp_path / "blob.bin", "0" * 32, **FAST)
    assert f"{url}: the server sent an HTML page, not the tar" in str(err.value)
    assert f"{url}: {url}" not in str(err.value) and "md5" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_fetch_complete_part_file_is_verified_not_redownloaded(server, blob, tmp_path):
    server.state.files["/blob.bin"] = blob
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(blob)  # crash happened between download and rename
    fetch(server.url("blob.bin"), dest, md5_of(blob), **FAST)
    assert [r["range"] for r in server.state.requests] == [f"bytes={len(blob)}-"]
    assert dest.read_bytes() == blob


# --- download_first -------------------------------------------------------------------------------------


def test_download_first_falls_back_to_mirror(server, blob, tmp_path):
    server.state.files["/mirror/blob.bin"] = blob
    urls = [server.url("official/blob.bin"), server.url("mirror/blob.bin")]
    dest = download_first(urls, tmp_path / "blob.bin", md5_of(blob), **FAST)
    assert dest.read_bytes() == blob
    assert [r["path"] for r in server.state.requests] == ["/official/blob.bin", "/mirror/blob.bin"]


def test_download_first_lists_every_failure(server, tmp_path):
    urls = [server.url("a/blob.bin"), server.url("b/blob.bin")]
    with pytest.raises(DownloadError) as err:
        download_first(urls, tmp_path / "blob.bin", "0" * 32, **FAST)
    for url in urls:
        assert re.search(re.escape(url) + r".*404", str(err.value))
        assert f"{url}: {url}" not in str(err.value)  # each URL named once
    assert not (tmp_path / "blob.bin").exists()


# --- safe_extract ---------------------------------------------------------------------------------------


def bad_member(kind: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo({"traversal": "../evil.txt", "absolute": "/tmp/evil_abs.txt"}.get(kind, "pkg/bad"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "../../evil.txt"
    elif kind == "abs_symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "../evil.txt"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    return info


@pytest.mark.parametrize(
    "kind", ["traversal", "absolute", "symlink", "abs_symlink", "hardlink", "device", "fifo"]
)
def test_safe_extract_refuses_unsafe_member_before_writing(kind, tmp_path, monkeypatch):
    archive = tmp_path / "evil.tar"
    member = bad_member(kind)
    with tarfile.open(archive, mode="w") as tar:
        add_bytes(tar, "pkg/good.txt", b"fine")  # comes first: must not be written either
        if member.isreg():
            add_bytes(tar, member.name, b"pwned")
        else:
            tar.addfile(member)
    extract_calls = []
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda *a, **k: extract_calls.append(a))

    target = tmp_path / "work" / "out"
    target.parent.mkdir()
    with pytest.raises(DownloadError) as err:
        safe_extract(archive, target)
    assert member.name in str(err.value) and str(archive) in str(err.value)
    assert extract_calls == []  # every member is checked before anything is extracted
    assert list(target.parent.iterdir()) == []  # no target, no staging folder
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_existing_target(tmp_path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, mode="w") as tar:
        add_bytes(tar, "pkg/good.txt", b"fine")
    target = tmp_path / "out"
    (target / "keep").mkdir(parents=True)
    with pytest.raises(DownloadError, match=re.escape(str(target))):
        safe_extract(archive, target)
    assert [p.name for p in target.iterdir()] == ["keep"]


def test_safe_extract_handles_compression_and_inner_symlink(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    with tarfile.open(archive, mode="w:gz") as tar:
        add_bytes(tar, "pkg/data/good.txt", b"fine")
        link = tarfile.TarInfo("pkg/link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "data/good.txt"
        tar.addfile(link)
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out" / "pkg" / "link.txt").read_bytes() == b"fine"
    assert not (tmp_path / ".out.extracting").exists()


# --- prepare_voc ----------------------------------------------------------------------------------------


def test_prepare_voc_skips_download_when_devkit_exists(server, tmp_path):
    (tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages").mkdir(parents=True)
    voc = prepare_voc(tmp_path, [server.url(VOC_TAR_NAME)], "0" * 32, progress=False)
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    assert server.state.requests == []


def test_prepare_voc_end_to_end(server, voc_tar, tmp_path):
    server.state.files["/mirror/" + VOC_TAR_NAME] = voc_tar
    urls = [server.url("official/" + VOC_TAR_NAME), server.url("mirror/" + VOC_TAR_NAME)]
    voc = prepare_voc(tmp_path, urls, md5_of(voc_tar))
    assert voc == tmp_path / "VOCdevkit" / "VOC2012"
    assert sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg")) == IDS
    assert sorted((voc / "ImageSets" / "Segmentation" / "trainval.txt").read_text().split()) == IDS
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitignore", "VOCdevkit", "downloads"]
    assert (tmp_path / "VOCdevkit" / "source.md5").read_text().strip() == md5_of(voc_tar)
    assert (tmp_path / "downloads" / VOC_TAR_NAME).read_bytes() == voc_tar

    # A second call reuses the devkit without touching the network.
    n = len(server.state.requests)
    assert prepare_voc(tmp_path, urls, md5_of(voc_tar), progress=False) == voc
    assert len(server.state.requests) == n


def test_prepare_voc_names_missing_folder(server, tmp_path):
    data = build_voc_tar(tmp_path / "broken.tar", skip="Annotations")
    server.state.files["/" + VOC_TAR_NAME] = data
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="Annotations"):
        prepare_voc(root, [server.url(VOC_TAR_NAME)], md5_of(data), progress=False)
    assert not (root / "VOCdevkit").exists()
    assert not (root / "extracted").exists()


def test_a_devkit_is_extracted_again_when_the_md5_of_its_tar_changes(server, voc_tar, tmp_path):
    """A devkit once extracted from a corrupt tar is not reused after the URL and md5 are corrected."""
    bad = voc_tar + bytes(512)  # another tar (md5); its damage is simulated on the extracted image below
    server.state.files["/bad/" + VOC_TAR_NAME] = bad
    server.state.files["/good/" + VOC_TAR_NAME] = voc_tar
    root = tmp_path / "cache"
    voc = prepare_voc(root, [server.url("bad/" + VOC_TAR_NAME)], md5_of(bad), progress=False)
    (voc / "JPEGImages" / f"{IDS[0]}.jpg").write_bytes(b"damaged")  # what the bad tar left behind
    assert (root / "VOCdevkit" / "source.md5").read_text().strip() == md5_of(bad)
    voc = prepare_voc(root, [server.url("good/" + VOC_TAR_NAME)], md5_of(voc_tar), progress=False)
    assert (voc / "JPEGImages" / f"{IDS[0]}.jpg").read_bytes() == (
        SAMPLE_VOC / "JPEGImages" / f"{IDS[0]}.jpg"
    ).read_bytes()
    assert (root / "VOCdevkit" / "source.md5").read_text().strip() == md5_of(voc_tar)
    assert not (root / "extracted").exists()


def test_the_cache_folder_is_git_ignored(server, voc_tar, tmp_path):
    import subprocess

    repo = tmp_path / "repo"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    server.state.files["/" + VOC_TAR_NAME] = voc_tar
    prepare_voc(repo / "my_voc_cache", [server.url(VOC_TAR_NAME)], md5_of(voc_tar), progress=False)
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == ""
