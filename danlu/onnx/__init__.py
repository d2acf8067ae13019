"""ONNX export of trained runs (`danlu export RUN --format onnx OUT`) and prediction through
onnxruntime (`danlu predict RUN --runtime onnx`).

- graph.py: `Graph`, what a kind's `export_onnx` hook (danlu/kinds.py) returns: the run's
  exportable forward as an nn.Module, its inputs and outputs by name, dynamic axes, sample
  batches for the parity check, and the preprocessing left outside the graph.
- rows.py: the hook of the rows kinds (tables, images, text, multimodal rows): the fitted
  scaling, category encodings and image normalisation move inside the graph.
- export.py: export, onnx's checker, the parity check against eager PyTorch, metadata.json,
  written beside OUT and renamed into place.
- runtime.py: `OnnxPredictor` and the choice of runtime for `danlu predict`.

The language-model and speech hooks live in their packages (danlu/lm/onnx.py,
danlu/speech/onnx.py). onnx and onnxruntime are imported only when exporting or predicting
with them (the `onnx` extra).
"""
