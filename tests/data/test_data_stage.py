"""The data stage on real VOC files: an existing devkit, and the download path from a loopback server."""

from __future__ import annotations

import http.server
import json
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from gain.data.download import file_md5
from tests.pipeline_utils import REPO, make_repo, python

pytestmark = pytest.mark.e2e
SAMPLE = REPO / "tests/data/VOCdevkit"


def test_voc_from_existing_root_labels_match_official(tmp_path):
    repo = make_repo(tmp_path / "repo", {"data": {"source": "voc", "voc_root": str(SAMPLE / "VOC2012")}})
    python(repo, "-m", "stages.data")
    index = json.loads((repo / "data/dataset/index.json").read_text())
    assert index["source"] == "voc" and len(index["classes"]) == 21
    assert index["splits"]["val"] == ["2007_000129"]
    # train_aug ids that exist in the sample devkit; the 10,582-id list ships in data/voc_train_aug.txt
    assert sorted(index["splits"]["weak_train"]) == [
        "2011_000003",
        "2011_000006",
        "2011_000025",
        "2011_003066",
    ]
    official = json.loads((REPO / "tests/data/cls_labels_sample.json").read_text())
    for image_id, labels in index["labels"].items():
        expected = [i + 1 for i, v in enumerate(official[image_id]) if v]
        assert labels == expected, image_id


def test_voc_download_from_loopback_mirror(tmp_path):
    """data.source=voc with no voc_root: downloads from the first working URL, checks md5, extracts."""
    tar = tmp_path / "srv" / "VOCtrainval_11-May-2012.tar"
    tar.parent.mkdir()
    with tarfile.open(tar, "w") as tf:
        tf.add(SAMPLE, arcname="VOCdevkit")
        for name in ("Annotations",):  # the reader requires the full official layout
            info = tarfile.TarInfo(f"VOCdevkit/VOC2012/{name}")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tar.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        urls = [f"http://127.0.0.1:{port}/missing.tar", f"http://127.0.0.1:{port}/{tar.name}"]
        repo = make_repo(
            tmp_path / "repo",
            {"data": {"source": "voc", "voc_urls": urls, "voc_md5": file_md5(tar), "voc_cache": "data/voc"}},
        )
        python(repo, "-m", "stages.data")
    finally:
        server.shutdown()
    index = json.loads((repo / "data/dataset/index.json").read_text())
    root = Path(index["root"])
    root = root if root.is_absolute() else repo / root
    assert (root / "JPEGImages" / "2007_000129.jpg").is_file()
    assert index["splits"]["val"] == ["2007_000129"]


def test_bad_params_stop_the_stage_naming_the_key(tmp_path):
    repo = make_repo(tmp_path / "repo")
    text = (repo / "params.yaml").read_text().replace("  source: synthetic", "  sourse: synthetic")
    (repo / "params.yaml").write_text(text)
    res = python(repo, "-m", "stages.data", check=False)
    assert res.returncode == 2
    assert "error: params.yaml: data.sourse: unknown key; did you mean data.source?" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (repo / "data/dataset").exists()
