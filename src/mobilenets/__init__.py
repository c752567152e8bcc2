"""MobileNet v1/V2/V3 as real software: build, train, quantize, export and check small image classifiers.

Public names are imported on first use (PEP 562), so that ``import mobilenets`` and
``mobilenets --help`` do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "MobileNet": "mobilenets.models.architectures",
    "create_model": "mobilenets.models.factory",
    "get_architecture": "mobilenets.models.registry",
    "list_models": "mobilenets.models.registry",
    "WeightsError": "mobilenets.models.weights",
    "ModelArgumentError": "mobilenets.core.errors",
    "list_weights": "mobilenets.models.published",
    "load_model": "mobilenets.models.weights",
    "save_weights": "mobilenets.models.weights",
    "MobilenetsError": "mobilenets.core.errors",
    "Preprocessing": "mobilenets.models.preprocessing",
    "train": "mobilenets.api",
    "load_run": "mobilenets.api",
    "robustness": "mobilenets.api",
    "Run": "mobilenets.api",
    "RunDirectory": "mobilenets.core.run_directory",
}
__all__ = [
    "MobileNet",
    "MobilenetsError",
    "ModelArgumentError",
    "Preprocessing",
    "Run",
    "RunDirectory",
    "WeightsError",
    "create_model",
    "get_architecture",
    "list_models",
    "list_weights",
    "load_model",
    "load_run",
    "robustness",
    "save_weights",
    "train",
]

if TYPE_CHECKING:
    from mobilenets.api import Run, load_run, robustness, train
    from mobilenets.core.errors import MobilenetsError, ModelArgumentError
    from mobilenets.core.run_directory import RunDirectory
    from mobilenets.models.architectures import MobileNet
    from mobilenets.models.factory import create_model
    from mobilenets.models.preprocessing import Preprocessing
    from mobilenets.models.published import list_weights
    from mobilenets.models.registry import get_architecture, list_models
    from mobilenets.models.weights import WeightsError, load_model, save_weights


# Public functions named like a subpackage. The import system binds a subpackage to its parent's attribute
# when it first loads it, so ``import mobilenets.robustness.run`` after ``mobilenets.robustness`` was resolved
# would replace the function with the module. Loading the subpackage here (its ``__init__`` is a docstring)
# means that binding happens once, now, and is dropped: the name then resolves to the function, on first use.
_SHADOWED_SUBPACKAGES = ("robustness",)
for _name in _SHADOWED_SUBPACKAGES:
    importlib.import_module(f"{__name__}.{_name}")
    globals().pop(_name, None)
del _name


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names (once, resolved or not) and the module's own dunders; not typing's helpers.
    return sorted({*_PUBLIC, *(name for name in globals() if name.startswith("__") and name.endswith("__"))})
