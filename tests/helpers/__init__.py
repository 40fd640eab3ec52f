"""Helpers shared by the test modules, one module per job (test modules import from here, never from
each other or from conftest.py, which keeps only fixtures and pytest hooks):

- paths: where the repository, the configs, the test fixtures and the offline data are;
- configs: composing grain's Hydra config as `python -m grain.run` does, and the config groups' options;
- models: the one tiny-model builder, the one token-batch builder, masks, masked outputs;
- runs: `python -m grain.run` as a subprocess, its summaries, the README's commands;
- training: the student's parts and a Lightning trainer for them;
- pruning: a controller on a model, seeded scores, and how close to its target the pruner lands;
- latency: a latency model of known parts;
- device_guard, fake_device: the two CPU-only checks of device hygiene (their docstrings say how).
"""
