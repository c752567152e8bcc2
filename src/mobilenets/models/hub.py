"""Downloads of published checkpoints: once, into the cache, verified, atomic, never hanging offline.

- The file is streamed into a temporary file beside its final name and renamed only after its sha256
  matched: a wrong hash never enters the cache, and a dropped connection or Ctrl-C leaves no partial
  file under the final name (the temporary one is removed).
- The connection timeout is short (``MOBILENETS_DOWNLOAD_TIMEOUT``, 5 s) so that an offline machine,
  or a firewall that drops packets, fails within seconds instead of hanging; once the server has
  answered, reads get a longer timeout (30 s without a byte).
- ``MOBILENETS_WEIGHTS_MIRROR=https://mirror.example.com/prefix`` replaces the scheme and host of every
  published URL (the path is kept and appended), as ``HF_ENDPOINT`` does for the Hugging Face hub; the
  usual ``HTTPS_PROXY``/``HTTP_PROXY`` variables are honoured by urllib as well.
- ``MOBILENETS_OFFLINE=1`` never touches the network (like ``HF_HUB_OFFLINE``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mobilenets.core.errors import MobilenetsError

MIRROR_ENV = "MOBILENETS_WEIGHTS_MIRROR"
OFFLINE_ENV = "MOBILENETS_OFFLINE"
TIMEOUT_ENV = "MOBILENETS_DOWNLOAD_TIMEOUT"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
CHUNK = 1 << 16


class DownloadError(MobilenetsError):
    """A download that did not produce a verified file; ``reason`` is a few words for a one-line log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Download:
    """One file to fetch: where from, where to, and what its sha256 must be (full, or a published prefix)."""

    url: str
    target: Path
    sha256: str | None = None
    sha256_prefix: str | None = None
    name: str | None = None  # for messages; the file name when absent

    @property
    def label(self) -> str:
        return self.name or self.target.name

    @property
    def expected_hash(self) -> str | None:
        return self.sha256 or self.sha256_prefix


def mirrored_url(url: str, mirror: str | None = None) -> str:
    """``url`` with its scheme and host replaced by ``mirror`` (default: ``$MOBILENETS_WEIGHTS_MIRROR``).

    ``https://download.pytorch.org/models/x.pth`` with the mirror ``http://10.0.0.5:8080/weights``
    becomes ``http://10.0.0.5:8080/weights/models/x.pth``: a mirror keeps the original paths under a
    prefix of its own, so one mirror serves several hosts as long as their paths do not collide.
    """
    mirror = mirror if mirror is not None else os.environ.get(MIRROR_ENV, "")
    mirror = mirror.strip()
    if not mirror:
        return url
    base = urllib.parse.urlsplit(mirror)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise MobilenetsError(
            f"{MIRROR_ENV}={mirror!r} is not a base URL; set it like http://host:port or https://host/prefix"
        )
    original = urllib.parse.urlsplit(url)
    path = base.path.rstrip("/") + original.path
    return urllib.parse.urlunsplit((base.scheme, base.netloc, path, original.query, ""))


def connect_timeout() -> float:
    value = os.environ.get(TIMEOUT_ENV)
    if not value:
        return CONNECT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        raise MobilenetsError(f"{TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise MobilenetsError(f"{TIMEOUT_ENV}={value!r} must be positive")
    return seconds


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_matches(actual: str, download: Download) -> bool:
    expected = download.expected_hash
    return expected is None or actual.startswith(expected.lower())


def download_file(
    download: Download,
    *,
    timeout: float | None = None,
    read_timeout: float = READ_TIMEOUT,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fetch ``download.url`` (through the mirror, if set) to ``download.target``; return the target.

    Raises ``DownloadError`` (a ``MobilenetsError``) naming the URL, the reason, and where to place the
    file by hand. ``progress`` None shows a bar when stderr is a terminal.
    """
    if offline():
        raise DownloadError(_advice(download, f"{OFFLINE_ENV} is set"), reason=f"{OFFLINE_ENV} is set")
    url = mirrored_url(download.url)
    timeout = connect_timeout() if timeout is None else timeout
    target = download.target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(
            f"cannot create the cache folder {target.parent} ({error.strerror}); set MOBILENETS_HOME to a writable folder",
            reason="cache not writable",
        ) from None
    show = sys.stderr.isatty() if progress is None else progress
    # The temporary name starts with a dot and ends in .part: nothing looks for it under the final name,
    # and a crash that skips the cleanup below leaves an obviously disposable file.
    handle, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as file:
            received, expected_size, digest = _stream(
                url=url, file=file, timeout=timeout, read_timeout=read_timeout, label=download.label, show=show, log=log
            )
        if expected_size is not None and received != expected_size:
            raise DownloadError(
                _advice(download, f"the connection closed after {received:,} of {expected_size:,} bytes"),
                reason="connection dropped",
            )
        actual = digest.hexdigest()
        if not hash_matches(actual, download):
            raise DownloadError(
                _advice(
                    download,
                    f"the downloaded file's sha256 {actual[:16]}… is not the published {download.expected_hash[:16]}…"
                    " (a proxy's error page, a truncated or a different file); nothing was cached",
                ),
                reason="sha256 mismatch",
            )
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _stream(
    *, url: str, file, timeout: float, read_timeout: float, label: str, show: bool, log: Callable[[str], None] | None
) -> tuple[int, int | None, hashlib._Hash]:
    """Copy the body of ``url`` into ``file``; (bytes received, Content-Length or None, running sha256)."""
    request = urllib.request.Request(url, headers={"User-Agent": "mobilenets"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}", reason=f"HTTP {error.code}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise DownloadError(
                f"{url}: no answer within {timeout:g}s (offline, or a firewall; {TIMEOUT_ENV} sets the limit)",
                reason="timed out",
            ) from None
        raise DownloadError(f"{url}: cannot connect ({reason})", reason="offline or unreachable") from None
    except TimeoutError:
        raise DownloadError(f"{url}: no answer within {timeout:g}s", reason="timed out") from None
    except OSError as error:
        raise DownloadError(f"{url}: cannot connect ({error})", reason="offline or unreachable") from None
    with response:
        _widen_read_timeout(response, read_timeout)
        length = response.headers.get("Content-Length")
        expected_size = int(length) if length and length.isdigit() else None
        digest = hashlib.sha256()
        received = 0
        bar = _progress_bar(label, expected_size) if show else None
        if log is not None and bar is None:
            size = f" ({expected_size / 2**20:.1f} MiB)" if expected_size else ""
            log(f"downloading {label}{size} from {url}")
        started = time.monotonic()
        try:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except TimeoutError:
                    raise DownloadError(
                        f"{url}: stalled for {read_timeout:g}s after {received:,} bytes", reason="stalled"
                    ) from None
                except OSError as error:  # reset by peer, http.client.IncompleteRead
                    raise DownloadError(
                        f"{url}: connection lost after {received:,} bytes ({error})", reason="connection dropped"
                    ) from None
                if not chunk:
                    break
                file.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                if bar is not None:
                    bar[0].update(bar[1], completed=received)
        finally:
            if bar is not None:
                bar[0].stop()
        if log is not None and bar is None:
            log(f"downloaded {received / 2**20:.1f} MiB in {time.monotonic() - started:.1f}s")
    return received, expected_size, digest


def _widen_read_timeout(response, seconds: float) -> None:
    """After the headers arrived, allow longer pauses between chunks than the connect timeout.

    urllib applies one socket timeout to the connection and to every read; a short one is right for
    connecting (offline must fail fast) but would abort a healthy download over a slow link.
    """
    with contextlib.suppress(AttributeError):  # another response implementation: keep the connect timeout
        response.fp.raw._sock.settimeout(seconds)


def _progress_bar(label: str, total: int | None):
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(
        TextColumn(f"downloading {label}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task("download", total=total)
    progress.start()
    return progress, task


def _advice(download: Download, why: str) -> str:
    expected = f" (sha256 {download.sha256})" if download.sha256 else ""
    return (
        f"cannot download {download.label}: {why}. Download {download.url} elsewhere and place it at "
        f"{download.target}{expected}, or set {MIRROR_ENV} to a mirror's base URL"
    )


def fetch(download: Download, **options) -> Path:
    """The cached file when present and intact, else ``download_file``; a cached file with a wrong hash is replaced."""
    target = download.target
    if target.exists():
        if hash_matches(sha256_file(target), download):
            return target
        log = options.get("log")
        if log is not None:
            log(f"{target}: sha256 does not match {download.label}; downloading it again")
    try:
        return download_file(download, **options)
    except DownloadError as error:
        # Say where the file goes by hand, whatever went wrong.
        if str(download.target) not in str(error):
            raise DownloadError(_advice(download, str(error)), reason=error.reason) from None
        raise
