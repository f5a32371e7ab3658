"""On-disk content cache for fetched images, keyed by source, safe against ``kill -9``.

One file per source: a magic line, a JSON line of metadata, then the stored image bytes. Each
entry is written to a temporary file and renamed into place, so a killed run leaves either
the whole entry or none (a stray temporary file at worst, swept on the next start). Entries are
checked against their SHA-256 when read: a damaged one is a miss, fetched again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError

_MAGIC = b"productvlm-fetch-cache v1\n"
_STALE_TMP_S = 3600  # older temp files belong to dead runs; younger ones may be a live peer's


class FetchCache:
    """Cache of fetch outcomes: ``get(source)`` / ``put(source, meta, data)``.

    >>> cache = FetchCache(Path("~/.cache/productvlm/images").expanduser())  # doctest: +SKIP
    >>> cache.put("https://x/a.jpg", {"ok": True, "width": 8, "height": 8}, b"...")
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for leftover in self.tmp.iterdir():
            try:
                if now - leftover.stat().st_mtime > _STALE_TMP_S:
                    leftover.unlink()
            except OSError:
                pass  # a peer renamed or removed it meanwhile

    def path(self, source: str) -> Path:
        key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        return self.root / key[:2] / f"{key}.bin"

    def has(self, source: str) -> bool:
        """Whether an entry file exists (cheap; ``get`` still checks it is intact)."""
        return self.path(source).is_file()

    def get(self, source: str) -> tuple[dict[str, Any], bytes | None] | None:
        """``(meta, data)`` for a complete, intact entry of ``source``; else None."""
        try:
            blob = self.path(source).read_bytes()
        except OSError:
            return None
        if not blob.startswith(_MAGIC):
            return None
        header_end = blob.find(b"\n", len(_MAGIC))
        if header_end < 0:
            return None
        try:
            meta = json.loads(blob[len(_MAGIC) : header_end])
        except ValueError:
            return None
        if not isinstance(meta, dict) or meta.get("source") != source:
            return None  # a hash collision is absurdly unlikely; a hand-copied file is not
        data = blob[header_end + 1 :]
        if meta.get("ok"):
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                return None
            return meta, data
        return (meta, None) if not data else None

    def put(self, source: str, meta: dict[str, Any], data: bytes | None) -> None:
        """Store an outcome atomically (temp file in the cache, then rename over the entry)."""
        final = self.path(source)
        header = json.dumps({**meta, "source": source}, separators=(",", ":")).encode()
        tmp_name = ""
        try:
            final.parent.mkdir(exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + header + b"\n")
                if data:
                    f.write(data)
            os.replace(tmp_name, final)
        except BaseException as e:
            if tmp_name:
                with contextlib.suppress(OSError):
                    os.unlink(tmp_name)
            if isinstance(e, OSError):
                raise ProductVLMError(
                    f"{self.root}: cannot write the image cache ({e.strerror or e}); "
                    "free some space or pick another cache_dir"
                ) from None
            raise
