"""Files: atomic writes that never leave a half-written file behind, checksums, the cache folder.

Every file a run writes goes through ``atomic_write``: the content goes to a temporary file beside the
target and replaces it only once complete, so a crash, Ctrl-C or a full disk leaves the previous version
(a good checkpoint, say) in place. A full disk becomes one line naming the folder and the size needed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from mobilenets.core.errors import MobilenetsError


class DiskFullError(MobilenetsError):
    """No space left where a file was being written."""


def cache_dir() -> Path:
    root = (
        os.environ.get("MOBILENETS_HOME")
        or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mobilenets"
    )
    return Path(root) / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as RuntimeError("[enforce fail at inline_container.cc:…] … failed
    # writing file …") without the errno; a full disk is what makes it fail in practice.
    return isinstance(error, RuntimeError) and "PytorchStreamWriter failed writing" in str(error)


def disk_full_message(folder: Path, needed_bytes: int | None) -> str:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    needed = f" (needed ~{needed_bytes / 2**20:.1f} MB, {free / 2**20:.1f} MB free)" if needed_bytes else ""
    return f"no space left on the disk holding {folder}{needed}; free some space and run the same command again"


@contextlib.contextmanager
def atomic_path(path: Path | str, needed_bytes: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` only if the block succeeds.

    On any failure the temporary file is removed and ``path`` keeps its previous content; a full disk
    raises ``DiskFullError`` naming the folder (``needed_bytes``, when known, is said too).
    """
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if _is_disk_full(error):
            raise DiskFullError(disk_full_message(path.parent, needed_bytes)) from None
        raise


def atomic_write(path: Path | str, write: Callable[[Path], object], needed_bytes: int | None = None) -> Path:
    """``write(temporary_path)``, then rename onto ``path`` (see ``atomic_path``)."""
    with atomic_path(path, needed_bytes) as temporary:
        write(temporary)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text), needed_bytes=len(text.encode()))


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_bytes(data), needed_bytes=len(data))


def check_writable(folder: Path | str, what: str = "--out") -> Path:
    """Create ``folder`` if needed and prove it is writable, before any long work starts."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except FileExistsError:
        raise MobilenetsError(f"{what} {folder}: a file is in the way; pass a folder path") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise MobilenetsError(f"{what} {folder}: cannot write there ({reason}); pass a writable {what}") from None
    return folder
