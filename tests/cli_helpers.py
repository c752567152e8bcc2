"""What the tests of refused commands share: the one error line a command printed."""

from __future__ import annotations


def error_line(capsys, command: str) -> str:
    """The single line a refused ``mobilenets COMMAND`` printed, without its ``… error: `` prefix."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    prefix = f"mobilenets {command}: error: "
    assert lines[0].startswith(prefix) and "internal error" not in lines[0]
    return lines[0].removeprefix(prefix)
