"""The names of the export formats (torch-free, for the command line's choices and option checks);
``mobilenets.deployment.export.FORMATS`` maps each to its exporter."""

EXPORT_FORMATS = ("onnx", "tflite", "executorch", "tflite-micro", "coreml", "all")

# Images an export is checked on against PyTorch (when that many exist): at 32, one image was 3 points of
# agreement, too coarse to tell a file at 96% from one at 99%; 200 resolve half a point, in a few seconds.
CHECK_IMAGES = 200
