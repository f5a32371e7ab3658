"""The one image loader: decompression-bomb guard, EXIF orientation, RGB.

``open_image`` is what predict, serve and training use to turn stored bytes (or a file) into
an upright RGB picture. ``normalize_image_bytes`` is its twin for ``prepare``: it checks that
downloaded bytes are a whole, decodable image of sane size and returns bytes ready to store,
re-encoding only when the stored pixels would otherwise be sideways or not RGB.

Both run in worker threads during a fetch: Pillow releases the GIL while decoding, so
validation scales with the cores instead of capping throughput at one.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO

from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from productvlm.errors import ProductVLMError

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own default bomb threshold (~0.25 GiB RGBA)
# Formats every consumer (datasets' Image feature, browsers, Pillow) reads, so bytes in them
# are stored as downloaded; anything else is re-encoded.
_STORED_AS_IS = {"JPEG", "PNG", "WEBP"}
# Text that servers hand out where an image was asked for, by its first bytes -> what it is
_MARKUP = ((b"<svg", "an SVG drawing"), (b"<!doctype svg", "an SVG drawing"),
           (b"<!doctype html", "text/html"), (b"<html", "text/html"), (b"<head", "text/html"),
           (b"<body", "text/html"), (b"<?xml", "XML"))

# Our own guard below fires first (and at the configured limit); Pillow's warning between its
# default and twice that would only be noise. Its hard error above twice is still mapped.
warnings.simplefilter("ignore", Image.DecompressionBombWarning)


class ImageRejected(Exception):
    """Bytes that are not a usable image; ``reason`` is short, e.g. ``truncated image``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def markup_kind(data: bytes) -> str | None:
    """What text a file is instead of an image (error pages served with status 200, SVG), by
    its first bytes; None when it does not start like markup.

    >>> markup_kind(b"<!DOCTYPE html><html>"), markup_kind(b'<?xml version="1.0"?><svg>')
    ('text/html', 'an SVG drawing')
    """
    head = data[:1024].lstrip().lower()
    if head.startswith(b"<?xml"):  # an XML declaration: an SVG drawing or some other XML
        return "an SVG drawing" if b"<svg" in head else "XML"
    return next((kind for start, kind in _MARKUP if head.startswith(start)), None)


def _not_markup(data: bytes) -> None:
    kind = markup_kind(data)
    if kind == "an SVG drawing":
        raise ImageRejected("not an image (an SVG drawing; convert it to PNG or JPEG)")
    if kind is not None:
        raise ImageRejected(f"not an image ({kind})")


def _open_checked(fp: BinaryIO, max_pixels: int) -> Image.Image:
    """Read the header only and refuse images whose pixel count exceeds ``max_pixels``."""
    try:
        img = Image.open(fp)
    except Image.DecompressionBombError:
        raise ImageRejected(f"decompression bomb (> {2 * Image.MAX_IMAGE_PIXELS} pixels)") from None
    except UnidentifiedImageError:  # its message names a buffer object, useless to a user
        raise ImageRejected("not an image (unknown format)") from None
    except Exception as e:  # Pillow raises many types on garbage: map them all to a reason
        raise ImageRejected(f"not an image ({_short(e)})") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageRejected(f"decompression bomb ({w}x{h} pixels > {max_pixels})")
    if w == 0 or h == 0:
        raise ImageRejected(f"empty image ({w}x{h})")
    return img


def _load(img: Image.Image) -> None:
    """Decode every pixel, so truncated or corrupt data fails here and not in training."""
    try:
        img.load()
    except OSError as e:
        msg = str(e)
        reason = "truncated image" if "truncated" in msg else f"corrupt image ({msg})"
        raise ImageRejected(reason) from None
    except Exception as e:
        raise ImageRejected(f"corrupt image ({_short(e)})") from None


def _short(e: Exception) -> str:
    text = str(e).split("\n")[0] or type(e).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1) or 1)
    except Exception:  # unreadable EXIF: treat as upright rather than reject the photo
        return 1


def upright(img: Image.Image, orientation: int) -> Image.Image:
    """Apply the EXIF rotation/mirror so the pixels are as the camera meant them."""
    return img if orientation == 1 else ImageOps.exif_transpose(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (product shots on clear backgrounds)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    try:
        return img.convert("RGB")
    except Exception as e:
        raise ImageRejected(f"cannot convert {img.mode} to RGB ({_short(e)})") from None


def normalize_image_bytes(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[bytes, int, int]:
    """Validate downloaded bytes; return ``(bytes_to_store, width, height)`` upright and RGB.

    The original bytes come back untouched when they already are RGB JPEG/PNG/WebP without
    an EXIF rotation; otherwise the image is re-encoded (JPEG q95 for JPEG sources, PNG
    for the rest). Raises :class:`ImageRejected` with a short reason.

    >>> out, w, h = normalize_image_bytes(open("photo.jpg", "rb").read())  # doctest: +SKIP
    """
    try:
        return _normalize(data, max_pixels)
    except ImageRejected:
        raise
    except Exception as e:  # odd files fail in odd places (EXIF, frames, modes): one reason
        raise ImageRejected(f"corrupt image ({_short(e)})") from None


def _normalize(data: bytes, max_pixels: int) -> tuple[bytes, int, int]:
    _not_markup(data)
    img = _open_checked(io.BytesIO(data), max_pixels)
    w, h = img.size
    fmt = img.format or ""
    orientation = _orientation(img)
    animated = getattr(img, "is_animated", False)
    if fmt in _STORED_AS_IS and img.mode == "RGB" and orientation == 1 and not animated:
        if fmt == "JPEG":
            # Validation only: DCT scaling still walks the whole entropy-coded stream (so a
            # truncated file fails) but skips most of the inverse DCT and colour work.
            img.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        _load(img)
        return data, w, h
    _load(img)
    img = to_rgb(upright(img, orientation))
    out = io.BytesIO()
    if fmt in ("JPEG", "MPO"):  # lossy already: keep it JPEG rather than bloat it as PNG
        img.save(out, "JPEG", quality=95)
    else:
        img.save(out, "PNG", compress_level=3)
    return out.getvalue(), img.width, img.height


def decode_image(fp: BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a binary file to an upright RGB image, or raise :class:`ImageRejected`.

    The one decode every consumer shares: bomb guard on the header, every pixel decoded (a
    truncated file fails here), EXIF orientation applied, transparency on white, RGB.
    """
    try:
        head = fp.read(1024)
        fp.seek(0)
        _not_markup(head)
        img = _open_checked(fp, max_pixels)
        _load(img)
        return to_rgb(upright(img, _orientation(img)))
    except ImageRejected:
        raise
    except Exception as e:  # odd files fail in odd places (EXIF, frames, modes)
        raise ImageRejected(f"corrupt image ({_short(e)})") from None


def open_image(
    data_or_path: bytes | bytearray | str | os.PathLike | BinaryIO,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open bytes, a path or a binary file as an upright RGB image, fully decoded.

    Raises ProductVLMError naming the file (or "image bytes") and the reason.

    >>> open_image("shots/lola-bag.jpg").size  # doctest: +SKIP
    (800, 1000)
    """
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        label, fp = "image bytes", io.BytesIO(bytes(data_or_path))
    elif isinstance(data_or_path, (str, os.PathLike)):
        path = Path(data_or_path)
        label = str(path)
        try:
            fp = io.BytesIO(path.read_bytes())
        except OSError as e:
            raise ProductVLMError(f"{path}: cannot read image ({e.strerror or e})") from None
    else:
        label, fp = getattr(data_or_path, "name", "image file"), data_or_path
    try:
        return decode_image(fp, max_pixels)
    except ImageRejected as e:
        raise ProductVLMError(f"{label}: {e.reason}") from None
