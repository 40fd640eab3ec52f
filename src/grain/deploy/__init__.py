"""The forms a compact model is deployed in besides its saved PyTorch folder (one module per target:
`onnx`), written by `python -m grain.export` and timed by `grain.measure`."""
