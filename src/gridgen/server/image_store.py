"""Images kept for a while under unguessable names: what ``response_format="url"`` hands out.

The store lives in the server's memory (one replica's: behind several Ray replicas a URL
is served only by the replica that made it, so prefer ``b64_json`` there). It is bounded
twice, by count and by bytes: adding past either bound drops the oldest images first.
Each image expires ``ttl`` seconds after it was added (OpenAI keeps its URLs 60 minutes).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..images import FORMATS, EncodedImage

__all__ = ["ImageStore"]


@dataclass(frozen=True)
class _Entry:
    image: EncodedImage
    expires: float


class ImageStore:
    """At most ``max_images`` images and ``max_bytes`` bytes, each kept ``ttl`` seconds."""

    def __init__(
        self,
        max_images: int = 256,
        max_bytes: int = 512 * 1024 * 1024,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_images < 1 or max_bytes < 1 or ttl <= 0:
            raise ValueError("ImageStore: max_images, max_bytes and ttl must be positive")
        self.max_images, self.max_bytes, self.ttl = max_images, max_bytes, ttl
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    @property
    def bytes(self) -> int:
        self._expire()
        return self._bytes

    def add(self, image: EncodedImage) -> str:
        """Keep ``image``; its name (random, with the format's file suffix).

        Raises:
            ValueError: the image alone is larger than ``max_bytes``.
        """
        size = len(image.data)
        if size > self.max_bytes:
            raise ValueError(f"an image of {size} bytes does not fit a store of {self.max_bytes}")
        self._expire()
        while self._entries and (len(self._entries) >= self.max_images or self._bytes + size > self.max_bytes):
            self._drop_oldest()
        name = f"{secrets.token_urlsafe(24)}.{FORMATS[image.format].extension}"
        self._entries[name] = _Entry(image, self._clock() + self.ttl)
        self._bytes += size
        return name

    def get(self, name: str) -> EncodedImage | None:
        """The image named ``name``, or None when unknown or expired."""
        self._expire()
        entry = self._entries.get(name)
        return None if entry is None else entry.image

    def _expire(self) -> None:
        now = self._clock()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires > now:
                break
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self._bytes -= len(entry.image.data)
