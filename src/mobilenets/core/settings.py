"""Settings read from the environment."""

from __future__ import annotations

import os


def env_flag(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    return None


def usable_cpu_count() -> int:
    """CPUs this process may run on: the affinity mask where the OS has one (Linux), else all of them
    (macOS and Windows have no ``os.sched_getaffinity``)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+: affinity-aware on every OS that has it
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
