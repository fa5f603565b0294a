"""Users' own images for gain.predict: folders expanded, every file decoded to 8-bit RGB (any mode or bit
depth PIL reads, EXIF orientation applied) at a capped working size, output names unique per input."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from gain.runtime.errors import InputError

# Modes Pillow converts to RGB itself; transparency (RGBA, LA, PA, palette with a transparent index) is
# composited over white first, 16/32-bit integer and float greys are rescaled to 8 bits by `_grey8`.
_DIRECT = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV"}
_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}
_WIDE_GREY = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_OBJECT_REPR = re.compile(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>|'[^']*'")


def image_extensions() -> set[str]:
    """The file suffixes PIL opens (lower case, with the dot)."""
    return {ext.lower() for ext in Image.registered_extensions()}


def expand_inputs(args: list[Path]) -> list[Path]:
    """Files as given; a folder contributes its image files (by suffix, sorted by name, not recursive).
    A missing path or a folder without images is an InputError naming it."""
    exts = image_extensions()
    paths = []
    for arg in args:
        if arg.is_dir():
            found = sorted(p for p in arg.iterdir() if p.is_file() and p.suffix.lower() in exts)
            if not found:
                raise InputError(f"{arg}: folder holds no image files ({', '.join(sorted(exts)[:6])}, ...)")
            paths.extend(found)
        elif arg.is_file():
            paths.append(arg)
        else:
            raise InputError(f"{arg}: no such image file or folder")
    return paths


def output_names(paths: list[Path]) -> list[str]:
    """A distinct file-name prefix per input: its stem; where one stem comes from several folders, preceded
    by as many parent folders as tell them apart (`a/same.jpg`, `b/same.jpg` -> `a_same`, `b_same`); where
    one folder holds it with several suffixes, followed by the suffix (`x.jpg`, `x.png` -> `x_jpg`,
    `x_png`); the same file given twice gets a counter (`x`, `x-2`)."""
    full = [p.resolve() for p in paths]
    names = []
    for p in full:
        folders = {q.parent for q in full if q.stem == p.stem}
        prefix = [part for part in p.parent.parts[-_depth(folders) :] if part != p.parent.anchor]
        name = "_".join([*prefix, p.stem]) if len(folders) > 1 else p.stem
        if len({q.suffix for q in full if q.stem == p.stem and q.parent == p.parent}) > 1:
            name = f"{name}_{p.suffix.lstrip('.')}"
        names.append(name)
    seen: Counter = Counter()
    for i, name in enumerate(list(names)):
        seen[name] += 1
        if seen[name] > 1:
            names[i] = f"{name}-{seen[name]}"
    return names


def _depth(folders: set[Path]) -> int:
    """The fewest trailing folder names that tell `folders` apart."""
    deepest = max(len(f.parts) for f in folders)
    for d in range(1, deepest + 1):
        if len({f.parts[-d:] for f in folders}) == len(folders):
            return d
    return deepest


def _reason(e: BaseException) -> str:
    """An exception's message without file-object reprs or the quoted path (the caller names the file)."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image format PIL reads"
    text = _OBJECT_REPR.sub("the file", str(e)).strip()
    return text or type(e).__name__


def working_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(w, h) scaled down, aspect kept, so that the longer side is at most `max_side`."""
    w, h = size
    f = min(1.0, max_side / max(w, h))
    return max(1, round(w * f)), max(1, round(h * f))


def _grey8(img: Image.Image, path: Path) -> Image.Image:
    """16-bit or 32-bit integer, or float, greyscale -> 8-bit L, scaled by the bit depth (not clipped)."""
    a = np.asarray(img)
    if img.mode == "F":
        if a.size and (np.nanmin(a) < 0 or np.nanmax(a) > 1 or not np.isfinite(a).all()):
            raise InputError(f"{path}: float image with values outside [0, 1]; save it as 8 or 16 bits")
        scaled = a * 255.0
    else:
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise InputError(f"{path}: 32-bit image with values outside 0..65535; save it as 8 or 16 bits")
        scaled = a.astype(np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb8(img: Image.Image, path: Path) -> Image.Image:
    """Any PIL image -> 8-bit RGB: EXIF orientation applied, transparency over white, palettes and CMYK
    converted, wide greyscale rescaled; a mode that cannot be converted is an InputError naming `path`."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in _WIDE_GREY:
        return _grey8(img, path).convert("RGB")
    if img.mode not in _DIRECT:
        raise InputError(f"{path}: image mode {img.mode} is not supported; save it as RGB")
    return img.convert("RGB")


def read_photo(path: Path, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any image PIL reads, its longer side at most `max_side` (a large JPEG is
    decoded at a reduced DCT scale, so a 6000x4000 photo never sits in memory at full size). Errors are
    one-line InputErrors naming the file."""
    try:
        with Image.open(path) as img:
            target = working_size(img.size, max_side)
            if img.format == "JPEG" and max(img.size) > max_side:
                img.draft(img.mode, target)  # DCT scaling only, same mode
            rgb = to_rgb8(img, path)
            out = working_size(rgb.size, max_side)
            if rgb.size != out:
                rgb = rgb.resize(out, Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except InputError:
        raise
    except Image.DecompressionBombError as e:
        raise InputError(f"{path}: refused, {_reason(e)}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise InputError(f"{path}: unreadable image ({_reason(e)})") from None
