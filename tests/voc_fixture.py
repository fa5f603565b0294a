"""A VOC 2012 trainval tarball in the official layout, built from the five real VOC images of the sample
(tests/data/VOCdevkit, an exact copy of ../shared/voc12/sample), and an HTTP server on 127.0.0.1 serving it."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
from scipy import ndimage

from gain.data.voc import VOC_CLASSES, write_annotation_xml
from gain.runtime.io import read_label_png

SAMPLE = Path(__file__).resolve().parent / "data" / "VOCdevkit" / "VOC2012"
TAR_NAME = "VOCtrainval_11-May-2012.tar"


def objects_from_mask(mask: np.ndarray) -> list[tuple[str, tuple[int, int, int, int]]]:
    """One (name, 1-based bbox) per connected region of each class in a VOC mask, as the XML lists objects."""
    objects = []
    for cls in sorted(set(np.unique(mask).tolist()) - {0, 255}):
        labelled, n = ndimage.label(mask == cls)
        for sl in ndimage.find_objects(labelled):
            ys, xs = sl
            objects.append((VOC_CLASSES[cls], (xs.start + 1, ys.start + 1, xs.stop, ys.stop)))
    return objects


def build_devkit(dest: Path) -> Path:
    """`dest/VOCdevkit/VOC2012`: the sample's JPEGs, masks and split lists plus an Annotations XML per image."""
    voc = dest / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        shutil.copytree(SAMPLE / sub, voc / sub)
    for png in (SAMPLE / "SegmentationClass").glob("*.png"):
        mask = read_label_png(png)
        write_annotation_xml(
            voc / "Annotations" / f"{png.stem}.xml", png.stem, mask.shape, objects_from_mask(mask)
        )
    return voc


def build_tar(path: Path) -> str:
    """Write the tarball (members under VOCdevkit/VOC2012/, as in the official one); -> its md5."""
    staging = path.parent / "devkit-staging"
    build_devkit(staging)
    with tarfile.open(path, "w") as tar:
        tar.add(staging / "VOCdevkit", arcname="VOCdevkit")
    shutil.rmtree(staging)
    return hashlib.md5(path.read_bytes()).hexdigest()


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (Range requests unsupported: plain SimpleHTTPRequestHandler);
    -> the base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
