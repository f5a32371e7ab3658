"""On-disk content cache for fetched images, keyed by source, safe against ``kill -9``.

Entries are appended to pack files (``packs/*.pack``), one pack per writing process, never to
one file per image: creating, renaming and journaling thousands of small files cost ~1 ms of
kernel time each and, while a fetch keeps both cores busy, added ~4 s to a 3,040-image
`prepare` (bench/bench_fetch.py); one append per entry costs almost nothing.

A record is a header line ``PVC1 {json}\\n`` (the source, the outcome, the data's length and
SHA-256) followed by the stored image bytes. Appends reach the page cache at once, so a run
killed with ``kill -9`` leaves every finished entry readable; at worst the last record of its
pack is torn, and the scan that indexes the packs on open stops there. Entries are checked
against their SHA-256 when read: a damaged one is a miss, fetched again. Several processes may
share a cache: each appends to its own pack and sees the others' entries when it next opens.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError

_TAG = b"PVC1 "
_MAX_HEADER = 64 * 1024  # a longer "line" is not a header of ours: the pack is damaged there


class FetchCache:
    """Cache of fetch outcomes: ``get(source)`` / ``put(source, meta, data)``.

    >>> cache = FetchCache(Path("~/.cache/productvlm/images").expanduser())  # doctest: +SKIP
    >>> cache.put("https://x/a.jpg", {"ok": True, "width": 8, "height": 8}, b"...")
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.packs = self.root / "packs"
        self.packs.mkdir(parents=True, exist_ok=True)
        # source -> (pack, offset of the header, offset of the data, length); later ones win
        self.index: dict[str, tuple[Path, int, int, int]] = {}
        for pack in sorted(self.packs.glob("*.pack")):
            self._scan(pack)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pack: Path | None = None
        self._end = 0

    def _scan(self, pack: Path) -> None:
        try:
            f = pack.open("rb")
        except OSError:
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            while True:
                at = f.tell()
                line = f.readline(_MAX_HEADER)
                if not line.startswith(_TAG) or not line.endswith(b"\n"):
                    return  # the end, or a torn tail left by a killed writer
                try:
                    head = json.loads(line[len(_TAG) :])
                    source, length = head["source"], int(head["len"])
                except (ValueError, KeyError, TypeError):
                    return
                start = f.tell()
                if start + length > size:
                    return
                self.index[source] = (pack, at, start, length)
                f.seek(length, os.SEEK_CUR)

    def has(self, source: str) -> bool:
        """Whether an entry is indexed (cheap; ``get`` still checks it is intact)."""
        return source in self.index

    def get(self, source: str) -> tuple[dict[str, Any], bytes | None] | None:
        """``(meta, data)`` for a complete, intact entry of ``source``; else None."""
        where = self.index.get(source)
        if where is None:
            return None
        pack, at, start, length = where
        try:
            with pack.open("rb") as f:
                f.seek(at)
                blob = f.read(start - at + length)
        except OSError:
            return None
        try:
            meta = json.loads(blob[len(_TAG) : start - at])
        except ValueError:
            return None
        data = blob[start - at :]
        meta.pop("len", None)
        if meta.pop("source", None) != source or len(data) != length:
            return None
        if meta.get("ok"):
            if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
                return None
            return meta, data
        return (meta, None) if not data else None

    def put(self, source: str, meta: dict[str, Any], data: bytes | None) -> None:
        """Append an outcome to this process's pack (one write; thread-safe)."""
        data = data or b""
        head = json.dumps({**meta, "source": source, "len": len(data)}, separators=(",", ":"))
        record = _TAG + head.encode() + b"\n" + data
        try:
            with self._lock:
                if self._fd is None:
                    name = f"{time.time_ns()}-{os.getpid()}-{os.urandom(3).hex()}.pack"
                    self._pack = self.packs / name
                    self._fd = os.open(self._pack, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                view = memoryview(record)
                try:
                    while view:  # a regular file takes it all at once unless the disk is full
                        view = view[os.write(self._fd, view) :]
                except OSError:
                    # a torn record ends this pack's scan: later records go to a new pack
                    os.close(self._fd)
                    self._fd = None
                    self._end = 0
                    raise
                at, self._end = self._end, self._end + len(record)
                assert self._pack is not None
                self.index[source] = (self._pack, at, self._end - len(data), len(data))
        except OSError as e:
            raise ProductVLMError(
                f"{self.root}: cannot write the image cache ({e.strerror or e}); "
                "free some space or pick another cache_dir"
            ) from None

    def close(self) -> None:
        """Close this process's pack (entries stay readable; a later put opens a new pack)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
