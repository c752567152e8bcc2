"""Downloads of published checkpoints: once, into the cache, verified, atomic, never hanging offline.

- The file is streamed into a temporary file beside its final name and renamed only after its sha256
  matched and, unless a full sha256 proved it, its structure is that of the expected format
  (``Download.format``: a safetensors header that parses and covers the file, or a PyTorch zip/pickle
  checkpoint; never unpickled) and it passes ``Download.check``: a wrong hash, a proxy's login page or
  a truncated file never enters the cache, and a dropped connection or Ctrl-C leaves no partial file
  under the final name (the temporary one is removed). A cached file is checked the same way when used.
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
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mobilenets.core.errors import MobilenetsError

MIRROR_ENV = "MOBILENETS_WEIGHTS_MIRROR"
OFFLINE_ENV = "MOBILENETS_OFFLINE"
TIMEOUT_ENV = "MOBILENETS_DOWNLOAD_TIMEOUT"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
CHUNK = 1 << 16
FORMATS = {"safetensors": "safetensors file", "torch": "PyTorch checkpoint"}  # format: what it is called


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
    # "safetensors" or "torch": the file's structure is checked before it enters the cache (or is used from it).
    format: str | None = None
    # A further check of the content (e.g. tensor names and shapes): None when fine, else what is wrong.
    check: Callable[[Path], str | None] | None = field(default=None, compare=False)

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


def content_problem(path: Path, download: Download) -> str | None:
    """What is wrong with ``path`` as the file ``download`` describes (format, then ``check``), or None.

    Called once the hash matched; a full published sha256 already proves the file, so only files with a
    prefix or no hash at all are checked (a proxy's page, a truncated or a different file).
    """
    if download.sha256 is not None:
        return None
    if download.format is not None:
        problem = format_problem(path, download.format)
        if problem is not None:
            return problem
    return download.check(path) if download.check is not None else None


def format_problem(path: Path, format: str) -> str | None:
    """None when ``path`` is structurally a ``format`` file, else one phrase: what arrived and why it is not one.

    Structure only, never unpickling: a safetensors header that parses and whose tensors exactly cover
    the rest of the file; for "torch", a zip archive holding a ``data.pkl`` or a pickle stream (the legacy
    format). E.g. "34 bytes starting with '<html>Proxy login required</html>', a web page (a proxy login
    or an error page?), not a safetensors file".
    """
    if format not in FORMATS:
        raise ValueError(f"unknown checkpoint format {format!r}; expected one of {', '.join(FORMATS)}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError as error:
        return f"unreadable ({error.strerror or error})"
    expected = FORMATS[format]
    if size == 0:
        return f"an empty file (0 bytes), not a {expected}"
    looks = _looks_like_text(head)
    if looks is not None:
        return f"{describe_start(size, head)}, {looks}, not a {expected}"
    if format == "safetensors":
        reason = _safetensors_reason(path)
        if reason is not None and _torch_reason(path, head) is None:  # a valid header can start like a pickle
            reason = f"a PyTorch checkpoint, not a {expected}"
    else:
        reason = _torch_reason(path, head)
    return None if reason is None else f"{describe_start(size, head)}, {reason}"


def describe_start(size: int, head: bytes) -> str:
    """'34 bytes starting with '<html>…'' or '12.3 MiB starting with bytes 50 4b 03 04 …': what arrived."""
    text = _decoded(head[:48])
    if text is not None and text.strip():
        shown = text.strip()
        return f"{amount(size)} starting with {shown!r}{'…' if size > len(head[:48]) else ''}"
    return f"{amount(size)} starting with bytes {head[:8].hex(' ')}"


def amount(size: int) -> str:
    """'34 bytes' below 1 MiB (a web page is not '0.0 MiB'), else '16.2 MiB'."""
    return f"{size:,} byte{'s' if size != 1 else ''}" if size < 2**20 else f"{size / 2**20:.1f} MiB"


def _decoded(head: bytes) -> str | None:
    """``head`` as text when it is text (UTF-8 without control bytes other than whitespace), else None."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 3:  # not just a multi-byte character cut at the end
            return None
        text = head[: error.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def _looks_like_text(head: bytes) -> str | None:
    """'a web page (…)' or 'text (…)' when the file is text: no checkpoint format starts with text."""
    if _decoded(head) is None:
        return None
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml")) or b"<html" in start:
        return "a web page (a proxy login or an error page?)"
    if start.startswith((b"{", b"[")):
        return "a JSON reply (a server's error message?)"
    return "text (a server's error message?)"


def _safetensors_reason(path: Path) -> str | None:
    """Why ``path`` is not a safetensors file, or None: the safetensors library's own check (a header that
    parses, and tensors that cover the rest of the file exactly: a truncated download fails it)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, "pt") as file:
            if not list(file.keys()):
                return "a safetensors file without tensors"
    except (SafetensorError, OSError) as error:
        return f"not a readable safetensors file ({_first_line(error)})"
    return None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _torch_reason(path: Path, head: bytes) -> str | None:
    """Why ``path`` is not a PyTorch checkpoint (zip with data.pkl, or a legacy pickle stream), or None."""
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return "a truncated or damaged PyTorch (zip) checkpoint"
        if not any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
            return "a zip archive without data.pkl, not a PyTorch checkpoint"
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5: torch's legacy format
        return None
    return "not a PyTorch checkpoint (neither a zip archive nor a pickle stream)"


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
        problem = content_problem(temporary, download)
        if problem is not None:
            raise DownloadError(
                _advice(download, f"{url} sent {problem}; nothing was cached"),
                reason=f"not a {download.format or 'usable'} file",
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
            size = f" ({amount(expected_size)})" if expected_size else ""
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
            log(f"downloaded {amount(received)} in {time.monotonic() - started:.1f}s")
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
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    fix = (
        f"point {MIRROR_ENV} (now {mirror}) at a mirror that serves the file"
        if mirror
        else f"set {MIRROR_ENV} to a mirror's base URL"
    )
    return (
        f"cannot download {download.label}: {why}. Download {download.url} elsewhere and place it at "
        f"{download.target}{expected}, or {fix}"
    )


def fetch(download: Download, **options) -> Path:
    """The cached file when present and intact, else ``download_file``; a cached file with a wrong hash,
    or one that fails the format check or ``check``, is replaced."""
    target = download.target
    if target.exists():
        if not hash_matches(sha256_file(target), download):
            problem = f"sha256 does not match {download.label}"
        else:
            problem = content_problem(target, download)
            if problem is None:
                return target
        log = options.get("log")
        if log is not None:
            log(f"{target}: {problem}; downloading it again")
    try:
        return download_file(download, **options)
    except DownloadError as error:
        # Say where the file goes by hand, whatever went wrong.
        if str(download.target) not in str(error):
            raise DownloadError(_advice(download, str(error)), reason=error.reason) from None
        raise
