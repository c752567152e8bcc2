"""The real download code against a local HTTP server: good file, wrong hash, dropped connection, silence."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from mobilenets.models.hub import Download, DownloadError, download_file, fetch, mirrored_url

PAYLOAD = bytes(range(256)) * 400  # 100 KiB: several chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PROXY_LOGIN = b"<html>Proxy login required</html>"
SERVED: dict[str, bytes] = {}  # more files, by path, that a test puts on the server


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        path = self.path.removeprefix("/mirror-prefix")
        if path.startswith("/proxy-login/"):  # a mirror that answers everything with a login page, HTTP 200
            self._send(PROXY_LOGIN)
        elif path in SERVED:
            self._send(SERVED[path])
        elif path in ("/models/good.bin", "/good.bin"):
            self._send(PAYLOAD)
        elif path == "/bad.bin":
            self._send(b"<html>proxy login</html>" * 100)
        elif path == "/drop.bin":
            # Promise the whole file, send a third of it, hang up.
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    for name in ("MOBILENETS_WEIGHTS_MIRROR", "MOBILENETS_OFFLINE", "MOBILENETS_DOWNLOAD_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_good_file_is_downloaded_verified_and_cached(server, tmp_path):
    target = tmp_path / "cache" / "good.bin"
    spec = Download(f"{server}/good.bin", target, sha256=PAYLOAD_SHA256)
    assert fetch(spec, progress=False) == target
    assert target.read_bytes() == PAYLOAD
    assert leftovers(target.parent) == ["good.bin"]  # no temporary file left behind
    # Cached: a second fetch does not need the server.
    assert fetch(Download("http://127.0.0.1:9/never", target, sha256=PAYLOAD_SHA256)) == target


def test_published_prefix_hash_is_enough(server, tmp_path):
    target = tmp_path / "good.bin"
    download_file(Download(f"{server}/good.bin", target, sha256_prefix=PAYLOAD_SHA256[:8]), progress=False)
    assert target.read_bytes() == PAYLOAD


def test_progress_bar_path_runs(server, tmp_path):
    target = tmp_path / "good.bin"
    download_file(Download(f"{server}/good.bin", target, sha256=PAYLOAD_SHA256), progress=True)
    assert target.read_bytes() == PAYLOAD


def test_wrong_hash_never_enters_the_cache(server, tmp_path):
    target = tmp_path / "bad.bin"
    with pytest.raises(DownloadError) as caught:
        fetch(Download(f"{server}/bad.bin", target, sha256=PAYLOAD_SHA256, name="mobilenet_test"), progress=False)
    assert caught.value.reason == "sha256 mismatch"
    message = str(caught.value)
    assert str(target) in message and PAYLOAD_SHA256 in message  # says where to put the file and what it must be
    assert leftovers(tmp_path) == []


def test_cached_file_with_wrong_hash_is_replaced(server, tmp_path):
    target = tmp_path / "good.bin"
    target.write_bytes(b"corrupt")
    assert fetch(Download(f"{server}/good.bin", target, sha256=PAYLOAD_SHA256), progress=False) == target
    assert target.read_bytes() == PAYLOAD


def test_dropped_connection_leaves_no_partial_file(server, tmp_path):
    target = tmp_path / "drop.bin"
    with pytest.raises(DownloadError) as caught:
        download_file(Download(f"{server}/drop.bin", target, sha256=PAYLOAD_SHA256), progress=False)
    assert caught.value.reason == "connection dropped"
    assert leftovers(tmp_path) == []


def test_dropped_connection_without_a_hash_is_still_refused(server, tmp_path):
    # Content-Length alone catches it: no hash to fall back on.
    with pytest.raises(DownloadError):
        download_file(Download(f"{server}/drop.bin", tmp_path / "drop.bin"), progress=False)
    assert leftovers(tmp_path) == []


def test_server_that_never_answers_times_out_quickly(tmp_path):
    # Accepts TCP connections (the kernel's backlog) but never reads or answers: a black-holing proxy.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        started = time.monotonic()
        with pytest.raises(DownloadError) as caught:
            fetch(Download(f"http://127.0.0.1:{silent.getsockname()[1]}/x.bin", tmp_path / "x.bin"), timeout=0.5)
        assert time.monotonic() - started < 5
        assert caught.value.reason in ("timed out", "stalled")
    finally:
        silent.close()
    assert leftovers(tmp_path) == []


def test_default_timeout_comes_from_the_environment(monkeypatch, tmp_path):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setenv("MOBILENETS_DOWNLOAD_TIMEOUT", "0.3")
    try:
        started = time.monotonic()
        with pytest.raises(DownloadError):
            fetch(Download(f"http://127.0.0.1:{silent.getsockname()[1]}/x.bin", tmp_path / "x.bin"))
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_refused_connection_fails_fast(tmp_path):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    started = time.monotonic()
    with pytest.raises(DownloadError) as caught:
        fetch(Download(f"http://127.0.0.1:{port}/x.bin", tmp_path / "x.bin"))
    assert time.monotonic() - started < 5
    assert caught.value.reason == "offline or unreachable"


def test_http_error_is_one_line(server, tmp_path):
    with pytest.raises(DownloadError) as caught:
        fetch(Download(f"{server}/missing.bin", tmp_path / "missing.bin"))
    assert caught.value.reason == "HTTP 404"
    assert "\n" not in str(caught.value)


def test_mirror_replaces_scheme_and_host(server, tmp_path, monkeypatch):
    assert (
        mirrored_url("https://download.pytorch.org/models/a.pth", "http://10.0.0.5:8080/weights/")
        == "http://10.0.0.5:8080/weights/models/a.pth"
    )
    assert mirrored_url("https://x.org/a.pth", "") == "https://x.org/a.pth"
    monkeypatch.setenv("MOBILENETS_WEIGHTS_MIRROR", f"{server}/mirror-prefix")
    target = tmp_path / "good.bin"
    # The published host does not exist; only the mirror can serve this.
    fetch(Download("https://weights.invalid/models/good.bin", target, sha256=PAYLOAD_SHA256), progress=False)
    assert target.read_bytes() == PAYLOAD


def test_bad_mirror_value_is_one_clear_error(monkeypatch, tmp_path):
    from mobilenets.core.errors import MobilenetsError

    monkeypatch.setenv("MOBILENETS_WEIGHTS_MIRROR", "not a url")
    with pytest.raises(MobilenetsError, match="MOBILENETS_WEIGHTS_MIRROR"):
        fetch(Download("https://x.org/a.pth", tmp_path / "a.pth"))


def test_offline_switch_never_connects(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")
    with pytest.raises(DownloadError) as caught:
        fetch(Download("http://127.0.0.1:9/a.pth", tmp_path / "a.pth"))
    assert "MOBILENETS_OFFLINE" in caught.value.reason


def test_fetch_published_goes_through_the_hub_and_the_mirror(server, tmp_path, monkeypatch):
    """A registry entry whose host does not exist, served by the mirror: lands verified in the cache."""
    from dataclasses import replace

    import mobilenets.models.weights as weights

    original = weights.PUBLISHED_WEIGHTS["mobilenet_v3_small.tv_in1k"]
    fake = replace(
        original,
        name="test.tiny",
        url="https://weights.invalid/models/good.bin",
        sha256=PAYLOAD_SHA256,
        sha256_prefix=None,
        offline_copies=(),
    )
    monkeypatch.setitem(weights.PUBLISHED_WEIGHTS, "test.tiny", fake)
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    with pytest.raises(weights.WeightsError, match=r"place it at .*good\.bin"):
        weights.fetch_published("test.tiny")  # no mirror: the host does not resolve
    monkeypatch.setenv("MOBILENETS_WEIGHTS_MIRROR", f"{server}/mirror-prefix")
    path = weights.fetch_published("test.tiny")
    assert path.read_bytes() == PAYLOAD and path.parent == tmp_path / "weights"


def test_weights_auto_picks_a_published_checkpoint_or_says_why_not():
    from mobilenets.models.published import default_published

    assert default_published("mobilenet_v2").name == "mobilenet_v2.tv_in1k"  # the installed offline copy
    assert default_published("mobilenet_v3_small").name is not None
    # Each width has its own checkpoint: the tensor shapes differ.
    assert default_published("mobilenet_v3_small", 0.75).name == "mobilenet_v3_small_075.timm_lamb_in1k"
    assert default_published("mobilenet_v2", 0.5).name == "mobilenet_v2_050.timm_lamb_in1k"
    assert default_published("mobilenet_v2", 1.4).name == "mobilenet_v2_140.timm_ra_in1k"
    narrow = default_published("mobilenet_v3_small", 0.5)
    assert narrow.name is None
    assert "published only at width 0.75 or 1, not 0.5" in narrow.reason
    assert "--width 0.75 to fine-tune mobilenet_v3_small_075.timm_lamb_in1k" in narrow.reason
    assert "published only at width 1, not 0.75" in default_published("mobilenet_v3_large", 0.75).reason
    # The checkpoint named is the one --weights auto would take at that width (here the installed offline copy).
    assert default_published("mobilenet_v2", 0.75).reason.endswith(
        "published only at width 0.5, 1 or 1.4, not 0.75 (pass --width 1 to fine-tune mobilenet_v2.tv_in1k, or "
        "--weights FILE with a checkpoint of this width)"
    )
    assert default_published("mobilenet_v3_small_minimal").name is None


def test_weights_auto_falls_back_to_scratch_with_one_loud_line(tmp_path, monkeypatch, caplog):
    import logging

    from mobilenets.training.configuration import resolve_initial_weights

    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")  # as on a machine without network
    with caplog.at_level(logging.INFO, logger="mobilenets"):
        assert resolve_initial_weights("auto", model="mobilenet_v2", width=1.0) == "mobilenet_v2.tv_in1k"
        assert resolve_initial_weights("auto", model="mobilenet_v3_small", width=1.0) is None
        assert resolve_initial_weights("auto", model="mobilenet_v3_small", width=0.75) is None
        assert resolve_initial_weights("auto", model="mobilenet_v3_small", width=0.5) is None
        assert resolve_initial_weights("none", model="mobilenet_v2", width=1.0) is None
        assert resolve_initial_weights("run/model.safetensors", model="mobilenet_v2", width=1.0) == (
            "run/model.safetensors"
        )
    loud = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(loud) == 3 and all(message.startswith("TRAINING FROM SCRATCH") for message in loud)
    assert "place it at" in loud[0] and str(tmp_path) in loud[0]
    assert "mobilenet_v3_small_075.timm_lamb_in1k is not available" in loud[1]
    assert "published only at width 0.75 or 1, not 0.5" in loud[2]


# --------------------------------------------------------------------------------------------------
# Files without a usable hash: the format (and, for safetensors, the tensor names and shapes) is checked
# --------------------------------------------------------------------------------------------------

V1 = "mobilenet_v1.timm_ra4_in1k"  # published without a sha256


def v1_path() -> str:
    """The path of the v1 checkpoint's URL, which a mirror serves under its own prefix."""
    from urllib.parse import urlsplit

    from mobilenets.models.published import PUBLISHED_WEIGHTS

    assert PUBLISHED_WEIGHTS[V1].sha256 is None and PUBLISHED_WEIGHTS[V1].sha256_prefix is None
    return urlsplit(PUBLISHED_WEIGHTS[V1].url).path


def safetensors_bytes(state_dict, tmp_path: Path) -> bytes:
    from safetensors.torch import save_file

    path = tmp_path / "made.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    data = path.read_bytes()
    path.unlink()
    return data


def test_format_check_reads_structure_only(tmp_path, real_v2_weights):
    import torch

    from mobilenets import create_model
    from mobilenets.models.hub import format_problem

    def problem(data: bytes, kind: str) -> str | None:
        path = tmp_path / "file"
        path.write_bytes(data)
        return format_problem(path, kind)

    good = safetensors_bytes(create_model("mobilenet_v3_small", width=0.5).state_dict(), tmp_path)
    assert problem(good, "safetensors") is None
    assert "not a readable safetensors file (Error while deserializing header: incomplete metadata, file not fully " \
        "covered)" in problem(good[:-1000], "safetensors")
    assert "not a readable safetensors file (" in problem(good[:8] + b"x" * (len(good) - 8), "safetensors")
    assert problem(PROXY_LOGIN, "safetensors") == (
        f"{len(PROXY_LOGIN)} bytes starting with '<html>Proxy login required</html>', "
        "a web page (a proxy login or an error page?), not a safetensors file"
    )
    assert "a JSON reply" in problem(b'{"error": "Repository not found"}', "safetensors")
    assert problem(b"", "torch") == "an empty file (0 bytes), not a PyTorch checkpoint"
    assert problem(real_v2_weights.read_bytes(), "torch") is None  # torchvision's legacy (pickle) format
    zipped = tmp_path / "zipped.pth"
    torch.save({"w": torch.zeros(2)}, zipped)
    assert problem(zipped.read_bytes(), "torch") is None
    assert "a PyTorch checkpoint, not a safetensors file" in problem(zipped.read_bytes(), "safetensors")
    assert "truncated or damaged PyTorch (zip)" in problem(zipped.read_bytes()[:-200], "torch")
    assert "web page" in problem(b"<!DOCTYPE html>\n<title>Login</title>", "torch")
    assert "\n" not in problem(b"<!DOCTYPE html>\n<title>Login</title>", "torch")


def test_web_page_without_a_hash_never_enters_the_cache(server, tmp_path):
    target = tmp_path / "page.safetensors"
    with pytest.raises(DownloadError) as caught:
        fetch(Download(f"{server}/bad.bin", target, name="test.page", format="safetensors"), progress=False)
    assert caught.value.reason == "not a safetensors file"
    assert "a web page" in str(caught.value) and f"place it at {target}" in str(caught.value)
    assert leftovers(tmp_path) == []


def test_proxy_login_page_for_an_unhashed_checkpoint_is_one_clear_error(server, tmp_path, monkeypatch):
    """The reviewer's case: a mirror answering with a login page; nothing is cached, the error says so."""
    import mobilenets.models.weights as weights

    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    monkeypatch.setenv("MOBILENETS_WEIGHTS_MIRROR", f"{server}/proxy-login")
    with pytest.raises(weights.WeightsError) as caught:
        weights.fetch_published(V1)
    target = tmp_path / "weights" / f"{V1}.safetensors"
    assert str(caught.value) == (
        f"cannot download {V1}: {server}/proxy-login{v1_path()} sent {len(PROXY_LOGIN)} bytes starting with "
        "'<html>Proxy login required</html>', a web page (a proxy login or an error page?), not a safetensors "
        f"file; nothing was cached. Download {weights.PUBLISHED_WEIGHTS[V1].url} elsewhere and place it at "
        f"{target}, or point MOBILENETS_WEIGHTS_MIRROR (now {server}/proxy-login) at a mirror that serves the file"
    )
    assert leftovers(tmp_path / "weights") == []  # neither the page nor a temporary file


def test_unhashed_safetensors_must_fit_the_architecture(server, tmp_path, monkeypatch, timm):
    """The real checkpoint's layout (timm's names) is accepted; another architecture's file is refused."""
    import mobilenets.models.weights as weights
    from mobilenets import create_model

    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOBILENETS_WEIGHTS_MIRROR", f"{server}/mirror-prefix")
    monkeypatch.setitem(SERVED, v1_path(), safetensors_bytes(create_model("mobilenet_v2").state_dict(), tmp_path))
    with pytest.raises(weights.WeightsError, match=r"a safetensors file whose tensors do not fit mobilenet_v1 \(has"):
        weights.fetch_published(V1)
    assert leftovers(tmp_path / "home" / "weights") == []
    timm_v1 = timm.create_model("mobilenetv1_100").state_dict()
    monkeypatch.setitem(SERVED, v1_path(), safetensors_bytes(timm_v1, tmp_path))
    path = weights.fetch_published(V1)
    assert path == tmp_path / "home" / "weights" / f"{V1}.safetensors"
    assert weights.fetch_published(V1) == path  # from the cache, checked again
    assert weights.load_model(V1).architecture.name == "mobilenet_v1"


def test_unreadable_cached_file_is_one_clear_error_not_used(tmp_path, monkeypatch):
    import mobilenets.models.weights as weights

    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")
    cached = tmp_path / "weights" / f"{V1}.safetensors"
    cached.parent.mkdir()
    cached.write_bytes(PROXY_LOGIN)  # as an older version left it
    with pytest.raises(weights.WeightsError) as caught:
        weights.fetch_published(V1)
    assert str(caught.value) == (
        f"{cached}: the cached file of {V1} is {len(PROXY_LOGIN)} bytes starting with "
        "'<html>Proxy login required</html>', a web page (a proxy login or an error page?), not a safetensors "
        f"file; delete it (the next run downloads it again) or replace it with a copy of "
        f"{weights.PUBLISHED_WEIGHTS[V1].url}"
    )
    assert cached.read_bytes() == PROXY_LOGIN  # left for the user to inspect or delete
    cached.write_bytes(b"\x00" * 5000)  # a disk problem
    with pytest.raises(weights.WeightsError, match=r"the cached file of .* is 5,000 bytes starting with bytes 00"):
        weights.fetch_published(V1)


def test_unreadable_cached_file_falls_back_to_scratch_with_one_loud_line(tmp_path, monkeypatch, caplog):
    import logging

    from mobilenets.training.configuration import resolve_initial_weights

    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")
    cached = tmp_path / "weights" / f"{V1}.safetensors"
    cached.parent.mkdir()
    cached.write_bytes(PROXY_LOGIN)
    with caplog.at_level(logging.INFO, logger="mobilenets"):
        assert resolve_initial_weights("auto", model="mobilenet_v1", width=1.0) is None
    loud = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(loud) == 1 and loud[0].startswith(f"TRAINING FROM SCRATCH: {V1} is not available: {cached}: ")
    assert "web page" in loud[0] and "delete it" in loud[0]


def test_train_with_auto_weights_trains_from_scratch_behind_a_login_page_and_with_a_corrupt_cache(
    server, tmp_path, monkeypatch, capsys
):
    """End to end, as reported: `mobilenets train --model mobilenet_v1` (--weights auto) behind a mirror that
    answers with a login page, then offline with the page an older version left in the cache: both train."""
    from PIL import Image

    from mobilenets.cli.main import main

    for label in range(2):
        (tmp_path / "data" / f"c{label}").mkdir(parents=True)
        for index in range(4):
            image = Image.new("RGB", (32, 32), (200 * label + index, 40, 90))
            image.save(tmp_path / "data" / f"c{label}" / f"{index}.png")
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MOBILENETS_FUSED_KERNELS", "0")  # their build is cached under MOBILENETS_HOME: ~30 s
    monkeypatch.setenv("MOBILENETS_WEIGHTS_MIRROR", f"{server}/proxy-login")
    data = str(tmp_path / "data")
    arguments = ["train", "--data", data, "--resolution", "32", "--epochs", "1", "--model", "mobilenet_v1"]
    assert main([*arguments, "--out", str(tmp_path / "w2")]) == 0
    warning = capsys.readouterr().err
    assert f"TRAINING FROM SCRATCH: {V1} is not available: cannot download {V1}: " in warning
    assert "a web page (a proxy login or an error page?)" in warning
    cache = tmp_path / "home" / "weights"
    assert leftovers(cache) == []
    (cache / f"{V1}.safetensors").write_bytes(PROXY_LOGIN)  # what an older version kept
    monkeypatch.setenv("MOBILENETS_OFFLINE", "1")
    assert main([*arguments, "--out", str(tmp_path / "w3")]) == 0
    warning = capsys.readouterr().err
    assert f"TRAINING FROM SCRATCH: {V1} is not available: {cache / V1}.safetensors: the cached file" in warning
