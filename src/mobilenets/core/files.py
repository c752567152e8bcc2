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
import secrets
import shutil
import stat
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


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is a write that failed for lack of space, as every writer here reports it."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # shutil.copytree (Core ML's package save) gathers its failed copies into one shutil.Error whose errno
    # is None and whose text holds each "[Errno 28]".
    if isinstance(error, shutil.Error) and os.strerror(errno.ENOSPC) in str(error):
        return True
    # torch.save reports a failed write as RuntimeError("[enforce fail at inline_container.cc:…] … failed
    # writing file …") without the errno; a full disk is what makes it fail in practice.
    return isinstance(error, RuntimeError) and "PytorchStreamWriter failed writing" in str(error)


def disk_full_message(folder: Path, needed_bytes: int | None) -> str:
    free = shutil.disk_usage(folder).free if folder.exists() else 0
    needed = f" (needed ~{needed_bytes / 2**20:.1f} MB, {free / 2**20:.1f} MB free)" if needed_bytes else ""
    return f"no space left on the disk holding {folder}{needed}; free some space and run the same command again"


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new empty file beside ``path``, created the way ``open(name, "w")`` creates one (mode 0o666 less
    the umask, applied by the kernel: no process-wide ``os.umask`` dance, so it is safe with threads).
    Returns the file and the mode it got."""
    for _ in range(100):
        temporary = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(descriptor).st_mode)
        finally:
            os.close(descriptor)
        return temporary, mode
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def _final_mode(path: Path, created_mode: int) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return created_mode


@contextlib.contextmanager
def atomic_path(path: Path | str, needed_bytes: int | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it replaces ``path`` only if the block succeeds.

    On any failure the temporary file is removed and ``path`` keeps its previous content; a full disk
    raises ``DiskFullError`` naming the folder (``needed_bytes``, when known, is said too).

    Permissions are those a plain ``open(path, "w")`` would leave: a new file gets 0o666 less the umask
    (0o644 under the usual umask 0o022, so other users and web servers can read reports and models), and
    replacing an existing file keeps that file's mode (a checkpoint someone made private stays private).
    """
    path = Path(path)
    try:
        temporary, created_mode = _create_temporary(path)
    except OSError as error:
        if is_disk_full(error):
            raise DiskFullError(disk_full_message(path.parent, needed_bytes)) from None
        raise
    try:
        yield temporary
        mode = _final_mode(path, created_mode)
        if os.name != "nt" and stat.S_IMODE(os.stat(temporary).st_mode) != mode:
            os.chmod(temporary, mode)  # the writer may have replaced the file rather than written into it
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if is_disk_full(error):
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


def remove_path(path: Path) -> None:
    """Remove a file, a link or a folder (a Core ML package is one); nothing when it is not there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_writable(folder: Path | str, what: str = "--out", create: bool = True) -> Path:
    """Prove ``folder`` is writable, before any long work starts, creating it if needed.

    With ``create=False`` nothing is left behind: a missing ``folder`` is checked through its nearest
    existing parent (a file in the way, or a parent that cannot be written, is refused the same way), so
    arguments can be checked before anything is created.
    """
    folder = Path(folder)
    probe = folder
    if not create:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            raise MobilenetsError(f"{what} {folder}: a file is in the way; pass a folder path")
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-test-"):
            pass
    except FileExistsError:
        raise MobilenetsError(f"{what} {folder}: a file is in the way; pass a folder path") from None
    except OSError as error:
        reason = error.strerror or str(error)
        raise MobilenetsError(f"{what} {folder}: cannot write there ({reason}); pass a writable {what}") from None
    return folder
