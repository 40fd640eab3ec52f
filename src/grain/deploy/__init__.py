"""The forms a compact model is deployed in besides its saved PyTorch folder, written by
`python -m grain.export` and timed by `grain.measure`: `onnx` (export and check), `quantize` (dynamic
int8), `onnx_model` (an ONNX file run by onnxruntime as a model grain can evaluate), `tei` (the folder
text-embeddings-inference serves). One module per format or serving target."""
