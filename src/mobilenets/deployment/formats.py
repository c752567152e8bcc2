"""The names of the export formats (torch-free, for the command line's choices and option checks);
``mobilenets.deployment.export.FORMATS`` maps each to its exporter."""

EXPORT_FORMATS = ("onnx", "tflite", "executorch", "tflite-micro", "coreml", "all")
