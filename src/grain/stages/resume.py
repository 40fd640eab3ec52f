"""Resuming the prune stage: the settings a checkpoint is valid for, stored in every checkpoint and
compared with the resuming run's before anything trains."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from grain.errors import GrainError
from grain.stages.trainer import stage_steps
from grain.target import Target

log = logging.getLogger(__name__)

# Where the prune stage's checkpoints keep the settings of the run that wrote them.
CHECKPOINT_SETTINGS_KEY = "grain_settings"
PROCESSES = "processes"  # among them: the processes that trained it
# Settings a resumed run may change: they do not change what the run computes.
RESUME_FREE_KEYS = ("student.checkpoint_every_n_steps", "student.checkpoint_every_minutes")
# Settings a checkpoint does not know were added to grain after it was written: compared only where the
# resuming run departs from these defaults (null, or the pruner's GRAIN-as-published choices).
ADDED_SETTINGS = {"speedup": None, "pruner.cost": "params", "student.embedding_rank": None}
EXAMPLE = "ckpt_path=outputs/<task>/<model>/<target>/<timestamp>/checkpoints/last.ckpt"


def resume_settings(cfg: DictConfig) -> dict:
    """The settings a prune-stage checkpoint is only valid for, flattened to dotted keys: the target,
    task data, backbone, pruner, distillation, student training and its step count, seed."""
    target = Target.of(cfg)
    settings = {
        "sparsity": target.sparsity,
        "speedup": target.speedup,
        "seed": cfg.seed,
        "task.name": cfg.task.name,
        "student.steps": stage_steps(cfg.student, cfg.trainer),
    }
    for key in ("task.datamodule", "model", "pruner", "distillation", "student"):
        node = OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)
        settings.update(_flatten(node, key))
    for key in RESUME_FREE_KEYS:  # how often a run saves does not change what it computes
        settings.pop(key, None)
    return settings


def _flatten(node, prefix: str) -> dict:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}"))
        return flat
    return {prefix: node}


class RecordSettings(pl.Callback):
    """Stores the run's settings in every checkpoint, with the number of processes that trained it, so that
    a resume from another run's checkpoint is refused (`check_checkpoint` compares them), and a resume on
    another number of processes too (checked again here once Lightning knows the count: `devices=auto`)."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_SETTINGS_KEY] = {**self.settings, PROCESSES: trainer.world_size}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        saved = (checkpoint.get(CHECKPOINT_SETTINGS_KEY) or {}).get(PROCESSES)
        if saved is not None and saved != trainer.world_size:
            raise GrainError(other_process_count("the checkpoint", saved, trainer.world_size))


def other_process_count(what: str, saved: int, current: int) -> str:
    return (
        f"{what} was written by a run on {saved} process(es) and this run has {current}: each process reads its "
        f"own share of the data, so the run would not continue as it was; resume with trainer.devices={saved}"
    )


def planned_processes(cfg: DictConfig) -> int | None:
    """The processes `cfg` trains on when its settings say (a count or a list of devices; None: `auto`/-1,
    known only once Lightning starts)."""
    devices = cfg.trainer.devices
    if isinstance(devices, int) and devices >= 1:
        return devices
    if OmegaConf.is_list(devices):
        return len(devices)
    return None


def check_checkpoint(cfg: DictConfig) -> None:
    """`ckpt_path`: a readable prune-stage checkpoint written with this run's settings (checked before the
    teacher stage, which may fine-tune for hours). Raises GrainError naming the path and the fix."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return
    if "prune" not in cfg.stages:
        raise GrainError(f"ckpt_path={ckpt_path} resumes the prune stage, which stages={list(cfg.stages)} leaves out; add it")
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        raise GrainError(f"ckpt_path={ckpt_path} is a directory; give the checkpoint file in it, e.g. {EXAMPLE}")
    if not path.is_file():
        raise GrainError(f"ckpt_path={ckpt_path} does not exist; give a checkpoint an earlier run wrote, e.g. {EXAMPLE}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # its message may advise weights_only=False, which would run code from the file
        raise GrainError(
            f"ckpt_path={ckpt_path} is not a readable checkpoint ({type(err).__name__}); give the "
            f"checkpoints/last.ckpt of a grain run, e.g. {EXAMPLE}"
        ) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(key.startswith("controller.") for key in state):
        raise GrainError(
            f"ckpt_path={ckpt_path} is not a checkpoint of grain's prune stage (no pruning controller in it); "
            f"give the checkpoints/last.ckpt of a grain run, e.g. {EXAMPLE}"
        )
    saved = checkpoint.get(CHECKPOINT_SETTINGS_KEY)
    if saved is None:
        log.warning(
            "ckpt_path=%s records no settings (written before grain stored them): resuming without checking "
            "that they match this run's", ckpt_path,
        )
        return
    saved = dict(saved)
    processes, planned = saved.pop(PROCESSES, None), planned_processes(cfg)
    if processes is not None and planned is not None and processes != planned:
        raise GrainError(other_process_count(f"ckpt_path={ckpt_path}", processes, planned))
    current = resume_settings(cfg)
    if current["speedup"] is not None:  # a speedup target: the sparsity default plays no part
        saved = {k: v for k, v in saved.items() if k != "sparsity"}
        current = {k: v for k, v in current.items() if k != "sparsity"}
    differ = [key for key in sorted(set(saved) | set(current)) if saved.get(key, ADDED_SETTINGS.get(key)) != current.get(key)]
    if differ:
        shown = ", ".join(f"{key}={saved.get(key)!r} (this run: {current.get(key)!r})" for key in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise GrainError(
            f"ckpt_path={ckpt_path} was written by a run with other settings: {shown}{more}; resume with the "
            f"checkpoint's settings (its run dir's .hydra/overrides.yaml) or drop ckpt_path to start afresh"
        )
