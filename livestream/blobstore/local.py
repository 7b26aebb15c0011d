"""The blob store as a directory on the local disk (the default backend).

A key is a path below ``root``. Writes are atomic (a temporary file in the same directory, then
``os.replace``), so a reader (the API serving a segment) sees the old or the new file, never a
half-written one; there is no fsync: after a power loss a recording may miss its last writes,
which ingest's resume logic tolerates.

Content types: the suffix's (``content_type_for``). A ``put`` with another type stores it in a
sidecar file under ``<root>/.content-types/`` (a hidden directory no key can name, since key
segments may not start with '.'), so a round trip keeps what was put, as with S3.

Containment: every path is resolved (symlinks followed) and refused unless it stays under the
resolved root, so neither a crafted key nor a symlink planted in the directory reaches a file
outside it. Listing does not follow symlinks at all.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from livestream.blobstore import (
    Blob,
    BlobInfo,
    ByteRange,
    content_type_for,
    resolve_range,
    validate_key,
    validate_prefix,
)
from livestream.blobstore.errors import BlobKeyError, BlobNotFound, BlobStoreUnavailable

BACKEND = "local"
CONTENT_TYPE_DIR = ".content-types"


class LocalBlobStore:
    """Blobs as files under ``root`` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    # ------------------------------------------------------------------ BlobStore

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, data)
            sidecar = self._sidecar(key)
            if content_type and content_type != content_type_for(key):
                sidecar.parent.mkdir(parents=True, exist_ok=True)
                _write_atomically(sidecar, content_type.encode())
            else:
                sidecar.unlink(missing_ok=True)
        except OSError as exc:
            raise self._unavailable("write", key, exc) from exc

    def get(self, key: str, byte_range: ByteRange | None = None) -> Blob:
        path = self._path(key)
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                start, end = resolve_range(byte_range, size, key=key, backend=BACKEND)
                file.seek(start)
                data = file.read(end - start + 1) if end >= start else b""
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BlobNotFound("no such blob", key=key, backend=BACKEND) from None
        except OSError as exc:
            raise self._unavailable("read", key, exc) from exc
        return Blob(data=data, total_size=size, content_type=self._content_type(key), start=start)

    def stat(self, key: str) -> BlobInfo | None:
        path = self._path(key)
        try:
            result = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise self._unavailable("stat", key, exc) from exc
        if not path.is_file():
            return None  # a "directory" of keys is not a blob
        return BlobInfo(
            size=result.st_size,
            content_type=self._content_type(key),
            modified=datetime.fromtimestamp(result.st_mtime, tz=UTC),
        )

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            if path.is_dir():
                return  # not a blob; delete_prefix removes "directories"
            path.unlink(missing_ok=True)
            self._sidecar(key).unlink(missing_ok=True)
        except NotADirectoryError:
            return
        except OSError as exc:
            raise self._unavailable("delete", key, exc) from exc

    def delete_prefix(self, prefix: str) -> int:
        keys = list(self.list(prefix))
        for key in keys:
            self.delete(key)
        self._remove_empty_directories(prefix)
        return len(keys)

    def list(self, prefix: str) -> Iterator[str]:
        validate_prefix(prefix, backend=BACKEND)
        # Walk the deepest directory the prefix names, then filter by the whole prefix.
        directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(directory) if directory else self._root()
        if not start.is_dir():
            return
        for current, directories, files in os.walk(start, onerror=self._walk_error):
            # Hidden entries (temporary files, the content-type sidecars) are no blobs.
            directories[:] = sorted(d for d in directories if not d.startswith("."))
            relative = Path(current).relative_to(start).as_posix()
            base = directory if relative == "." else (f"{directory}/{relative}" if directory else relative)
            for name in sorted(files):
                if name.startswith(".") or os.path.islink(os.path.join(current, name)):
                    continue
                key = f"{base}/{name}" if base else name
                if key.startswith(prefix):
                    yield key

    # ------------------------------------------------------------------ paths

    def _root(self) -> Path:
        return self.root.resolve()

    def _path(self, key: str) -> Path:
        """The file of ``key``, refused (``BlobKeyError``) if it resolves outside the root."""
        validate_key(key, backend=BACKEND)
        root = self._root()
        path = (root / key).resolve()
        if not path.is_relative_to(root) or path == root:
            raise BlobKeyError("blob key resolves outside the store", key=key, backend=BACKEND)
        return path

    def _sidecar(self, key: str) -> Path:
        return self._root() / CONTENT_TYPE_DIR / key

    def _content_type(self, key: str) -> str:
        try:
            return self._sidecar(key).read_text().strip() or content_type_for(key)
        except (FileNotFoundError, NotADirectoryError):
            return content_type_for(key)
        except OSError as exc:
            raise self._unavailable("read the content type of", key, exc) from exc

    def _remove_empty_directories(self, prefix: str) -> None:
        """After ``delete_prefix("session/")``, the session's empty directories go too."""
        directory = prefix.rstrip("/") if prefix.endswith("/") else ""
        if not directory:
            return
        for top in (self._path(directory), self._sidecar(directory)):
            if not top.is_dir() or top.is_symlink():
                continue
            for current, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
                with contextlib.suppress(OSError):  # not empty (a file ingest is writing): keep it
                    os.rmdir(current)

    @staticmethod
    def _walk_error(exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            # Removed between being seen and being walked (a purge or a janitor deleting while
            # this lists): it holds no blobs any more, so there is nothing to list in it.
            return
        raise BlobStoreUnavailable(f"cannot list: {exc}", backend=BACKEND) from exc

    @staticmethod
    def _unavailable(action: str, key: str, exc: OSError) -> BlobStoreUnavailable:
        return BlobStoreUnavailable(f"cannot {action} blob: {exc}", key=key, backend=BACKEND)


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a hidden temporary file beside ``path``, then rename it over ``path``."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
