"""Deploying a trained category as one ONNX graph, and running it without PyTorch.

* :mod:`vtfusion.deploy.export` (PyTorch, onnx): ``checkpoint -> model.onnx``, one graph
  from image pixels to the pixel map ``M^f`` and the image score, with the prototypes, the
  memory bank and the text features folded in as constants; optional int8 variant.
* :mod:`vtfusion.deploy.onnx_predict` (numpy, PIL, onnxruntime; no torch): reads the
  images as :mod:`vtfusion.data.images` does and writes what ``vtfusion predict`` writes.

Both need the ``deploy`` extra (``pip install 'vtfusion[deploy]'``). This package file
imports neither, so that ``import vtfusion.deploy.onnx_predict`` stays torch-free.
"""

#: Names of the exported graph's input and outputs.
INPUT_NAME = "images"
OUTPUT_NAMES = ("final", "score")
#: The input kinds an exported graph can take: uint8 pixels in [0, 255] or float in [0, 1].
INPUT_KINDS = ("uint8", "float")
#: The deploy format; ``vtfusion predict --onnx`` refuses a model of another format.
FORMAT = "vtfusion-onnx-1"
