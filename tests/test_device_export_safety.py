"""Device exports never lose a good file: a new one replaces it only once verified; a full disk is one line.

The exporters and runtimes are replaced by stand-ins where the point is the order of writes and renames
(any format, quickly); one LiteRT test runs the real converter and interpreter end to end.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import pytest
from deploy_helpers import tiny_run_dir, write_class_folder

from mobilenets.cli.main import main
from mobilenets.core.files import DiskFullError
from mobilenets.core.run_directory import RunDirectory
from mobilenets.deployment import device_export
from mobilenets.deployment.device_files import DeviceFile, atomic_output, write_device_file

FILES = {
    "tflite": "model.tflite",
    "executorch": "model.pte",
    "tflite-micro": "model_micro_int8.tflite",
    "coreml": "model.mlpackage",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("safety")
    return tiny_run_dir(folder / "run", write_class_folder(folder / "data", classes=2, per_class=4))


def fake_export(content: str):
    """An exporter that writes ``content`` (a Core ML package: a folder holding it) where it is told to."""

    def export(module, spec, model, path, **options):
        if path.suffix == ".mlpackage":
            path.mkdir()
            (path / "Manifest.json").write_text(content)
        else:
            path.write_text(content)
        return path

    return export


def fake_verify(module, spec, path, model, check, *, size):
    return DeviceFile("any", path, 1, "stand-in", "fp32", images=4, agreement=1.0)


def content(path: Path) -> str:
    return (path / "Manifest.json").read_text() if path.is_dir() else path.read_text()


def export(run: Path, format: str) -> list:
    return device_export.export_device_format(device_export.ModelSource(run_dir=run), format=format, report=print)


def deployment(run: Path) -> list:
    return RunDirectory(run).metrics().get("deployment", [])


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("format", list(FILES))
def test_an_interrupted_export_keeps_the_earlier_file_and_its_row(format, run_dir, monkeypatch):
    monkeypatch.setattr(device_export, "_import_runtime", lambda format: None)
    monkeypatch.setattr(device_export, "_export", fake_export("earlier, verified"))
    monkeypatch.setattr(device_export, "_verify", fake_verify)
    path = run_dir / FILES[format]
    [record] = export(run_dir, format)
    assert record.path == path and content(path) == "earlier, verified"
    rows = deployment(run_dir)

    def interrupted(*args, **options):
        raise KeyboardInterrupt  # Ctrl-C while the new file runs in its runtime

    monkeypatch.setattr(device_export, "_export", fake_export("new, not verified"))
    monkeypatch.setattr(device_export, "_verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(run_dir, format)
    assert content(path) == "earlier, verified" and deployment(run_dir) == rows
    assert hidden(run_dir) == []  # no pending file or folder left


def test_a_verified_core_ml_package_replaces_the_earlier_folder_whole(run_dir, monkeypatch):
    monkeypatch.setattr(device_export, "_import_runtime", lambda format: None)
    monkeypatch.setattr(device_export, "_verify", fake_verify)
    path = run_dir / "model.mlpackage"
    monkeypatch.setattr(device_export, "_export", fake_export("first"))
    export(run_dir, "coreml")
    (path / "weights.bin").write_text("a file only the first package had")
    monkeypatch.setattr(device_export, "_export", fake_export("second"))
    [record] = export(run_dir, "coreml")
    assert record.path == path and sorted(p.name for p in path.iterdir()) == ["Manifest.json"]
    assert content(path) == "second" and hidden(run_dir) == []


def test_a_file_already_replaced_keeps_its_new_row_when_the_next_one_fails(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(device_export, "_import_runtime", lambda format: None)
    monkeypatch.setattr(device_export, "_export", fake_export("new"))

    def int8_fails(module, spec, path, model, check, *, size):
        if "int8" in path.name:
            raise device_export.MobilenetsError("the int8 file failed its check")
        return DeviceFile("tflite", path, 3, "stand-in", "fp32", images=4, agreement=0.25)

    monkeypatch.setattr(device_export, "_verify", int8_fails)
    (run_dir / "model_int8.tflite").write_text("earlier int8")
    assert main(["export", str(run_dir), "--format", "tflite", "--int8"]) == 2
    assert capsys.readouterr().err.strip().endswith("the int8 file failed its check")
    rows = {row["path"]: row for row in deployment(run_dir)}
    assert rows["model.tflite"]["agreement"] == 0.25 and content(run_dir / "model.tflite") == "new"
    assert content(run_dir / "model_int8.tflite") == "earlier int8" and hidden(run_dir) == []


@pytest.mark.slow  # a real LiteRT export and check (~25 s); the fake-exporter variants above stay in CI
def test_ctrl_c_in_the_real_litert_check_keeps_the_earlier_file(tmp_path, monkeypatch):
    pytest.importorskip("litert_torch")
    from mobilenets.deployment import litert

    run = tiny_run_dir(tmp_path / "run", write_class_folder(tmp_path / "data", classes=2, per_class=3))
    assert main(["export", str(run), "--format", "tflite"]) == 0
    path = run / "model.tflite"
    before, inode, rows = path.read_bytes(), path.stat().st_ino, deployment(run)

    def interrupted(*args, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(litert, "verify_litert", interrupted)
    assert main(["export", str(run), "--format", "tflite"]) == 130
    assert path.read_bytes() == before and path.stat().st_ino == inode and deployment(run) == rows
    assert hidden(run) == []


def full_disk_for_temporaries(monkeypatch) -> None:
    """Writes to a temporary file beside a target fail as on a full disk (the target's old file is untouched)."""
    write_bytes = Path.write_bytes

    def write(self, data):
        if self.name.startswith(".") and self.name.endswith(".tmp"):
            write_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write)


def test_a_full_disk_keeps_the_earlier_device_file(tmp_path, monkeypatch):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"earlier")
    full_disk_for_temporaries(monkeypatch)
    with pytest.raises(DiskFullError, match=f"^no space left on the disk holding {re.escape(str(tmp_path))} "):
        write_device_file(path, b"x" * 1000)
    assert path.read_bytes() == b"earlier" and [p.name for p in tmp_path.iterdir()] == ["model.tflite"]


def test_a_full_disk_while_saving_a_core_ml_package_is_one_line(tmp_path):
    path = tmp_path / "model.mlpackage"
    with pytest.raises(DiskFullError, match=r"^no space left on the disk holding"), atomic_output(path) as temporary:
        temporary.mkdir()
        # shutil.copytree (coremltools' save) gathers the failed copies into one error without an errno.
        raise shutil.Error([("a", str(temporary / "a"), "[Errno 28] No space left on device")])
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_during_a_real_litert_export_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    pytest.importorskip("litert_torch")
    run = tiny_run_dir(tmp_path / "run", write_class_folder(tmp_path / "data", classes=2, per_class=3))
    full_disk_for_temporaries(monkeypatch)
    assert main(["export", str(run), "--format", "tflite", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "no space left on the disk holding" in error and "internal error" not in error
    assert len(error.strip().splitlines()) == 1 and list((tmp_path / "out").iterdir()) == []
    assert "deployment" not in json.loads((run / "metrics.json").read_text())


def test_a_refusal_names_the_file_the_user_asked_for_not_its_pending_name(run_dir, monkeypatch):
    from mobilenets.core.errors import MobilenetsError

    def refusing_verify(module, spec, path, model, check, *, size):
        raise MobilenetsError(f"{path.name}: XNNPACK delegates the graph in 3 partitions; keep hard-swish in float")

    monkeypatch.setattr(device_export, "_import_runtime", lambda format: None)
    monkeypatch.setattr(device_export, "_export", fake_export("refused"))
    monkeypatch.setattr(device_export, "_verify", refusing_verify)
    with pytest.raises(MobilenetsError) as raised:
        export(run_dir, "tflite")
    assert str(raised.value).startswith("model.tflite: XNNPACK delegates the graph in 3 partitions")
    assert not [name for name in hidden(run_dir) if "pending" in name]


def test_a_swapped_package_is_recorded_even_when_its_old_copy_cannot_be_removed(run_dir, monkeypatch):
    from mobilenets.deployment import device_files

    monkeypatch.setattr(device_export, "_import_runtime", lambda format: None)
    monkeypatch.setattr(device_export, "_verify", fake_verify)
    monkeypatch.setattr(device_export, "_export", fake_export("first"))
    export(run_dir, "coreml")
    original = shutil.rmtree

    def stuck(path, ignore_errors=False, **kwargs):  # a read-only subfolder, say: the old copy stays
        if ".old" in Path(path).name:
            if ignore_errors:
                return None
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return original(path, ignore_errors=ignore_errors, **kwargs)

    monkeypatch.setattr(device_files.shutil, "rmtree", stuck)
    monkeypatch.setattr(device_export, "_export", fake_export("second"))
    [record] = export(run_dir, "coreml")
    assert record.path == run_dir / "model.mlpackage" and content(record.path) == "second"
    assert [row for row in deployment(run_dir) if row["path"].endswith("model.mlpackage")]
