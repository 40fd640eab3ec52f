"""The measuring library: FLOPs, latency, operator profiles, onnxruntime timing, dense-vs-compact
comparisons and the latency model the prune stage trains against. Commands (`grain.bench`) and the
compact stage call it; it reads models and exports them (`grain.deploy`), never stages or commands."""
