"""Writing a streamed model to disk: a temporary file, hashed on the way, renamed once verified."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from trainery_client.errors import ChecksumMismatch
from trainery_client.models import ModelFile

_FILENAME = re.compile(r'filename="?([^";]+)"?')


REDIRECTS = frozenset({301, 302, 303, 307, 308})


def expected_sha256(response: httpx.Response) -> str | None:
    """The sha256 hex the API promised: X-Trainery-SHA256, else its ETag unquoted (`W/` too)."""
    header: str | None = response.headers.get("x-trainery-sha256") or response.headers.get("etag")
    if not header:
        return None
    return header.removeprefix("W/").strip('"').lower()


def _digits(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@dataclass(frozen=True)
class Expected:
    """What the API promised about the model: its sha256 and size, when it said them."""

    sha256: str | None
    size: int | None

    @classmethod
    def of_redirect(cls, response: httpx.Response) -> Expected:
        """From the API's redirect: the object store's own ETag (an MD5) never counts."""
        return cls(expected_sha256(response), _digits(response.headers.get("x-trainery-size")))

    @classmethod
    def of_body(cls, response: httpx.Response) -> Expected:
        """From the API's own streamed answer."""
        # With a Content-Encoding the length counts encoded bytes; the hash still checks all.
        encoded = "content-encoding" in response.headers
        length = None if encoded else _digits(response.headers.get("content-length"))
        return cls(expected_sha256(response), length)


def target_path(path: str | os.PathLike[str] | None, response: httpx.Response) -> Path:
    """Where the model goes: path itself, or the server's filename inside path if it is a folder."""
    match = _FILENAME.search(response.headers.get("content-disposition", ""))
    # Only the last component: a filename must never place the file outside the folder.
    filename = Path(match.group(1)).name if match else "model.bin"
    if path is None:
        return Path.cwd() / filename
    target = Path(path)
    return target / filename if target.is_dir() else target


class ModelWriter:
    """Collects the chunks of one download and checks them against the API's sha256 and size."""

    def __init__(self, path: str | os.PathLike[str] | None, response: httpx.Response,
                 expected: Expected) -> None:
        self.target = target_path(path, response)
        self.partial = self.target.with_name(self.target.name + ".part")
        self.expected = expected.sha256
        self.expected_size = expected.size
        self.media_type = response.headers.get("content-type", "")
        self._hash = hashlib.sha256()
        self._size = 0
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.partial.open("wb")

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)
        self._file.write(chunk)

    def finish(self) -> ModelFile:
        """Verify what arrived and move it into place; ChecksumMismatch if it differs."""
        self._file.close()
        digest = self._hash.hexdigest()
        problem = None
        if self.expected_size is not None and self._size != self.expected_size:
            problem = f"got {self._size} bytes of {self.expected_size}"
        elif self.expected is not None and digest != self.expected:
            problem = f"sha256 {digest} differs from the promised {self.expected}"
        if problem is not None:
            self.partial.unlink(missing_ok=True)
            raise ChecksumMismatch(f"download of {self.target.name} is corrupt: {problem}",
                                   error="checksum_mismatch",
                                   detail={"expected": self.expected, "actual": digest})
        os.replace(self.partial, self.target)
        return ModelFile(path=self.target, sha256=digest, size=self._size,
                         media_type=self.media_type)

    def abort(self) -> None:
        """Drop the partial file (the download failed or will be tried again)."""
        self._file.close()
        self.partial.unlink(missing_ok=True)
