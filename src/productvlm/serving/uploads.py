"""What the server accepts as a photo: checked by content, size and pixel count; safe URL fetches.

Every refusal is an :class:`ApiError` carrying the HTTP status and the name of the limit it
hit (the setting a user would change), so the API can answer e.g.
``{"error": "shoe.jpg: 11.2 MB is over the 10 MB upload limit", "limit": "max_upload_mb",
"status": 413}``. Decoding itself is :func:`productvlm.images.open_image`'s job
(bomb guard, EXIF orientation, RGB); this module only decides what reaches it.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import socket
from urllib.parse import urlsplit, urlunsplit

from PIL import Image, UnidentifiedImageError

from productvlm.errors import ProductVLMError
from productvlm.images import open_image

# What browsers and phones send. Judged by the bytes (Pillow's format sniffing restricted to
# these plugins), never by the file name or the client's Content-Type.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
ACCEPTED_TEXT = "JPEG, PNG, WebP, GIF or BMP"
MAX_REDIRECTS = 3


class ApiError(Exception):
    """A request or image the server refuses: HTTP status, the limit's name, a plain message."""

    def __init__(self, status: int, message: str, limit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.limit = status, message, limit

    def to_dict(self) -> dict[str, object]:
        return {"error": self.message, "limit": self.limit, "status": self.status}


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e8 else f"{n / 1e6:.0f} MB"


def decode_upload(data: bytes, name: str, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Check one uploaded file and decode it to an upright RGB image, or raise ApiError.

    Empty -> 422, over ``max_bytes`` -> 413, not an accepted image type -> 415, over
    ``max_pixels`` (decompression bombs) -> 413, truncated or corrupt -> 422.

    >>> decode_upload(open("bag.jpg", "rb").read(), "bag.jpg", max_bytes=10**7,
    ...               max_pixels=4 * 10**7).size  # doctest: +SKIP
    (800, 1000)
    """
    if not data:
        raise ApiError(422, f"{name}: the file is empty", "empty_file")
    if len(data) > max_bytes:
        raise ApiError(
            413, f"{name}: {_mb(len(data))} is over the {_mb(max_bytes)} upload limit",
            "max_upload_mb",
        )
    try:
        # Header only: Pillow reads the size without decoding a single pixel.
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"{name}: far too many pixels (decompression bomb)",
                       "max_pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(
            415, f"{name}: not a {ACCEPTED_TEXT} image (judged by the file's content)",
            "image_type",
        ) from None
    if width * height > max_pixels:
        raise ApiError(
            413, f"{name}: {width}x{height} = {width * height:,} pixels is over the "
            f"{max_pixels:,} pixel limit", "max_pixels",
        )
    fp = io.BytesIO(data)
    fp.name = name  # open_image names the file in its message
    try:
        return open_image(fp, max_pixels=max_pixels)
    except ProductVLMError as e:
        raise ApiError(422, f"cannot read the image: {e}", "image_decode") from None


def _blocked(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    return not ip.is_global or ip.is_multicast


async def resolve_public(host: str, port: int) -> str:
    """Resolve ``host`` and return one of its addresses, refusing any non-public one.

    Every address the name resolves to must be global: a name that also points at
    127.0.0.1, 10.x, 169.254.x (cloud metadata) or fd00::/8 is refused, so an attacker cannot
    win by racing two answers.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )
    except OSError as e:
        raise ApiError(422, f"{host}: cannot resolve the host name ({e})", "url") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    bad = [str(a) for a in addresses if _blocked(a)]
    if bad or not addresses:
        raise ApiError(
            422, f"{host}: refusing to fetch from a loopback, private or link-local address "
            f"({', '.join(bad) or 'none'})", "url_address",
        )
    return str(addresses[0])


async def fetch_url(url: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """Download an image URL with the address checked and pinned, size-capped, or ApiError.

    The connection goes to the address that was checked (the host name travels in the Host
    header and TLS SNI), so a DNS answer that changes between check and connect (DNS
    rebinding) cannot redirect the request inward. Redirects are followed by hand, each
    target checked the same way.
    """
    import httpx

    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ApiError(422, f"{url[:200]}: only http and https URLs can be fetched",
                               "url")
            host = parts.hostname
            ip = await resolve_public(host, parts.port or (443 if parts.scheme == "https" else 80))
            netloc = (f"[{ip}]" if ":" in ip else ip) + (f":{parts.port}" if parts.port else "")
            pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
            try:
                async with client.stream(
                    "GET", pinned, headers={"Host": parts.netloc.rsplit("@", 1)[-1]},
                    extensions={"sni_hostname": host},
                ) as resp:
                    if resp.is_redirect and "location" in resp.headers:
                        url = str(httpx.URL(url).join(resp.headers["location"]))
                        continue
                    if resp.status_code != 200:
                        raise ApiError(422, f"{url[:200]}: the server answered "
                                       f"{resp.status_code}", "url")
                    return await _read_capped(resp, url, max_bytes)
            except httpx.HTTPError as e:
                raise ApiError(422, f"{url[:200]}: download failed ({type(e).__name__})",
                               "url") from None
    raise ApiError(422, f"{url[:200]}: more than {MAX_REDIRECTS} redirects", "url")


async def _read_capped(resp: object, url: str, max_bytes: int) -> bytes:
    body = bytearray()
    async for chunk in resp.aiter_bytes():  # type: ignore[attr-defined]
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"{url[:200]}: over the {_mb(max_bytes)} upload limit",
                           "max_upload_mb")
    return bytes(body)
