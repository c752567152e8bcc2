"""What the tests of refused commands share: the one error line a command printed."""

from __future__ import annotations

import shutil
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "fashion-mnist-small"
# The smallest `mobilenets train` that trains: V3-Small α=0.25 at 32 px from scratch, quietly.
TINY = ["--model", "mobilenet_v3_small", "--width", "0.25", "--resolution", "32", "--weights", "none", "--quiet"]


def small_copy(target: Path, per_class: int, classes: int = 10) -> Path:
    """The first ``per_class`` images of the first ``classes`` classes of the shipped example dataset."""
    for folder in sorted(EXAMPLES.iterdir())[:classes]:
        (target / folder.name).mkdir(parents=True)
        for path in sorted(folder.iterdir())[:per_class]:
            shutil.copy(path, target / folder.name / path.name)
    return target


def error_line(capsys, command: str) -> str:
    """The single line a refused ``mobilenets COMMAND`` printed, without its ``… error: `` prefix."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    prefix = f"mobilenets {command}: error: "
    assert lines[0].startswith(prefix) and "internal error" not in lines[0]
    return lines[0].removeprefix(prefix)


def error_of(capsys, code: int) -> str:
    """The single error line of a refused command that exited ``code`` (2), without its ``… error: `` prefix."""
    assert code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0].split(": error: ", 1)[1]
