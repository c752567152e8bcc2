"""``checkpoint.pt``: written atomically, read back with ``weights_only=True`` (tensors and plain values
only, never an arbitrary unpickled object), and one clear line when it cannot be read."""

from __future__ import annotations

from pathlib import Path

import torch

from mobilenets.core.errors import MobilenetsError
from mobilenets.core.files import atomic_write
from mobilenets.core.run_directory import RunDirectory


def atomic_torch_save(obj: object, path: Path) -> None:
    """Save beside ``path`` and rename: a full disk or Ctrl-C keeps the previous checkpoint whole."""
    estimate = sum(t.numel() * t.element_size() for t in _tensors_in(obj))
    atomic_write(path, lambda temporary: torch.save(obj, temporary), needed_bytes=estimate)


def _tensors_in(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for value in obj.values() for t in _tensors_in(value)]
    if isinstance(obj, (list, tuple)):
        return [t for value in obj for t in _tensors_in(value)]
    return []


def read_checkpoint(path: Path) -> dict:
    """A training checkpoint, read without unpickling code (``weights_only``); damage is one clear line."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint or "state" not in checkpoint:
            raise ValueError("not a mobilenets training checkpoint")
        return checkpoint
    except Exception as error:  # torch raises many types for damaged files; its advice to unpickle must not reach users
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        if "weights_only" in reason or "Weights only load failed" in str(error):
            reason = "holds objects that cannot be read safely (pickled code)"
        last = Path(path).with_name(RunDirectory.LAST)
        raise MobilenetsError(
            f"{path}: unreadable checkpoint ({reason[:120]}); the run cannot continue exactly. Its last saved weights "
            + (f"are in {last}: start a new run from them with --weights {last}" if last.exists() else "are lost")
        ) from None
