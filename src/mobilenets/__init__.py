"""MobileNet v1/V2/V3 as real software: build, train, quantize, export and check small image classifiers."""

from mobilenets.architectures import MobileNet
from mobilenets.models import create_model, get_architecture, list_models
from mobilenets.weights import WeightsError, list_weights, load_model, save_weights

__version__ = "0.1.0"
__all__ = [
    "MobileNet",
    "WeightsError",
    "create_model",
    "get_architecture",
    "list_models",
    "list_weights",
    "load_model",
    "save_weights",
]
