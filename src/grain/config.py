"""Checks of a composed config, run before anything else so bad values fail fast and clearly."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from grain.errors import GrainError

STAGES = ("teacher", "prune", "compact")
STUDENT_INITS = ("pretrained", "teacher")
# Where the prune stage's checkpoints keep the settings of the run that wrote them (see resume_settings).
CHECKPOINT_SETTINGS_KEY = "grain_settings"


def target_label(sparsity, speedup) -> str:
    """The run dir's target component: `s<sparsity>`, or `x<speedup>` with a speedup target."""
    return f"s{sparsity}" if speedup is None else f"x{speedup}"


OmegaConf.register_new_resolver("grain_target", target_label, replace=True)


def command_line_keys(cfg: DictConfig) -> set[str]:
    """Keys the user set on the command line (Hydra's task overrides), e.g. {"sparsity", "task"}."""
    overrides = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if overrides is None:
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return {str(o).split("=", 1)[0].lstrip("+~") for o in overrides}


def validate_target(cfg: DictConfig) -> None:
    """`speedup` (a number > 1) replaces `sparsity`; both given, or pruner.cost=latency without a
    speedup, are refused."""
    speedup, cost = cfg.get("speedup"), cfg.pruner.get("cost", "params")
    if cost not in ("params", "latency"):
        raise GrainError(f"pruner.cost={cost!r}; expected params (GRAIN as published) or latency")
    if speedup is None:
        if cost == "latency":
            raise GrainError("pruner.cost=latency prunes to a speed: give speedup=<x> (e.g. speedup=8) instead of sparsity")
        return
    if isinstance(speedup, bool) or not isinstance(speedup, (int, float)) or not float(speedup) > 1.0:
        raise GrainError(f"speedup={speedup!r} is not a number above 1; e.g. speedup=8 (8x faster than dense)")
    if "sparsity" in command_line_keys(cfg):
        raise GrainError(
            f"sparsity={cfg.sparsity} and speedup={speedup} both given; give one target: sparsity=<fraction> "
            "(parameters removed) or speedup=<x> (predicted latency)"
        )


def validate_config(cfg: DictConfig) -> None:
    validate_target(cfg)
    sparsity = cfg.get("sparsity")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise GrainError(f"sparsity={sparsity!r} is not a number; give a fraction in [0, 1), e.g. sparsity=0.9")
    if not 0.0 <= float(sparsity) < 1.0:
        raise GrainError(
            f"sparsity={sparsity} is outside [0, 1); it is the fraction of encoder linear weights removed, "
            f"e.g. sparsity=0.9 keeps 10%"
        )
    unknown = [stage for stage in cfg.stages if stage not in STAGES]
    if unknown:
        raise GrainError(f"stages={list(cfg.stages)} has unknown stage(s) {unknown}; choose from {list(STAGES)}")
    from grain.tasks.base import task_class

    task_class(cfg)  # task.datamodule._target_ names a Task
    if cfg.student.init not in STUDENT_INITS:
        raise GrainError(f"student.init={cfg.student.init!r}; expected one of {list(STUDENT_INITS)}")
    from grain.pruning.controller import SCORE_KINDS, UNIT_MODES

    if cfg.pruner.units not in UNIT_MODES:
        raise GrainError(f"pruner.units={cfg.pruner.units!r}; expected one of {list(UNIT_MODES)}")
    if cfg.pruner.score not in SCORE_KINDS:
        raise GrainError(f"pruner.score={cfg.pruner.score!r}; expected one of {list(SCORE_KINDS)}")
    from grain.pruning.ranking import BUDGET_MODES

    if cfg.pruner.get("budget", "grain") not in BUDGET_MODES:
        raise GrainError(
            f"pruner.budget={cfg.pruner.budget!r}; expected one of {list(BUDGET_MODES)} (grain: the QK units "
            f"of emptied heads count in the budget; official: they go on top of it, as airaria/GRAIN)"
        )
    if not 0.0 <= cfg.pruner.start <= cfg.pruner.end <= 1.0:
        raise GrainError(
            f"pruner.start={cfg.pruner.start}, pruner.end={cfg.pruner.end}: need 0 <= start <= end <= 1 "
            f"(fractions of the student's training steps)"
        )
    if "prune" in cfg.stages and "teacher" not in cfg.stages and not cfg.teacher.path:
        raise GrainError("stages has 'prune' without 'teacher': add the teacher stage or give teacher.path=...")
    validate_sizes(cfg)
    validate_models(cfg)
    validate_checkpoint(cfg)
    validate_task_data(cfg)


def validate_task_data(cfg: DictConfig) -> None:
    """The task checks the data this run reads (files, columns, labels: the tasks on the user's own
    files), through its `check_data(cfg)`, before anything trains."""
    from grain.tasks.base import task_class

    task_class(cfg).check_data(cfg)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(key: str, value) -> str:
    return f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}"


def check_count(cfg: DictConfig, key: str, example: str, minimum: int = 1, null: str | None = None,
                unlimited: str | None = None) -> None:
    """`key` must be an integer >= minimum; `null` (what null means) allows null, `unlimited` allows -1."""
    value = OmegaConf.select(cfg, key)
    if value is None and null is not None:
        return
    if _is_int(value) and (value >= minimum or (unlimited is not None and value == -1)):
        return
    allowed = [f"an integer >= {minimum}"]
    if unlimited is not None and unlimited == null:
        allowed.append(f"-1 or null ({unlimited})")
    else:
        if unlimited is not None:
            allowed.append(f"-1 ({unlimited})")
        if null is not None:
            allowed.append(f"null ({null})")
    problem = "is not an integer" if not _is_int(value) else "is not allowed"
    if key.endswith("max_steps") and value == 0:
        problem = "is not a step limit (it would train all the epochs)"
    raise GrainError(f"{_show(key, value)} {problem}; give {' or '.join(allowed)}, e.g. {example}")


def check_range(cfg: DictConfig, key: str, low: float, high: float, example: str, low_open: bool = False,
                high_open: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    ok = _is_number(value) and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise GrainError(f"{_show(key, value)} is not a number in {interval}; e.g. {example}")


def validate_sizes(cfg: DictConfig) -> None:
    """Counts, sizes and rates: each a one-line error naming the setting, before anything trains."""
    check_count(cfg, "task.max_train_samples", "task.max_train_samples=1000", null="all")
    check_count(cfg, "task.max_eval_samples", "task.max_eval_samples=500", null="all")
    for stage in ("teacher", "student"):
        check_count(cfg, f"{stage}.batch_size", f"{stage}.batch_size=32")
        check_count(cfg, f"{stage}.epochs", f"{stage}.epochs=3", unlimited="no epoch limit, with a max_steps cap")
        check_count(cfg, f"{stage}.max_steps", f"{stage}.max_steps=100", null="no cap", unlimited="no cap")
        check_count(cfg, f"{stage}.max_train_samples", f"{stage}.max_train_samples=1000", null="all")
        check_range(cfg, f"{stage}.lr", 0.0, 1.0, f"{stage}.lr=2e-5", low_open=True)
        check_range(cfg, f"{stage}.weight_decay", 0.0, float("inf"), f"{stage}.weight_decay=0.01")
        check_range(cfg, f"{stage}.warmup_ratio", 0.0, 1.0, f"{stage}.warmup_ratio=0.1", high_open=True)
    if cfg.student.get("max_grad_norm") is not None:
        check_range(cfg, "student.max_grad_norm", 0.0, float("inf"), "student.max_grad_norm=1.0", low_open=True)
    check_count(cfg, "student.checkpoint_every_n_steps", "student.checkpoint_every_n_steps=200", null="off")
    if cfg.student.get("checkpoint_every_minutes") is not None:
        check_range(cfg, "student.checkpoint_every_minutes", 0.0, float("inf"), "student.checkpoint_every_minutes=30",
                    low_open=True)
    check_count(cfg, "trainer.max_steps", "trainer.max_steps=5", null="no cap", unlimited="no cap")
    check_count(cfg, "trainer.log_every_n_steps", "trainer.log_every_n_steps=10")
    check_count(cfg, "trainer.num_workers", "trainer.num_workers=0", minimum=0)
    from grain.training import PROGRESS_MODES

    if cfg.trainer.get("progress", "auto") not in PROGRESS_MODES:
        raise GrainError(f"trainer.progress={cfg.trainer.progress!r}; expected one of {list(PROGRESS_MODES)}")
    check_range(cfg, "trainer.progress_seconds", 0.0, float("inf"), "trainer.progress_seconds=30", low_open=True)
    devices = cfg.trainer.devices
    if not (devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1)) or OmegaConf.is_list(devices)):
        raise GrainError(
            f"{_show('trainer.devices', devices)} is not a device count; give a number >= 1, -1 (all), 'auto' or a "
            f"list of ids, e.g. trainer.devices=1"
        )
    from grain.training import stage_steps

    for stage in ("teacher", "student"):
        if cfg[stage].epochs == -1 and stage_steps(cfg[stage], cfg.trainer) == -1:
            raise GrainError(
                f"{stage}.epochs=-1 with no step cap would train forever; give a number of epochs or a cap, "
                f"e.g. {stage}.epochs=3 or {stage}.max_steps=1000"
            )
    check_count(cfg, "task.datamodule.max_length", "task.datamodule.max_length=128", minimum=8)
    from grain.tasks.base import task_class

    task_class(cfg).validate_settings(cfg)  # the settings only the task knows (sizes, counts)
    check_count(cfg, "pruner.frequency", "pruner.frequency=1")
    check_range(cfg, "pruner.beta", 0.0, 1.0, "pruner.beta=0.998", high_open=True)
    check_range(cfg, "distillation.temperature", 0.0, float("inf"), "distillation.temperature=2.0", low_open=True)
    check_count(cfg, "compact.embedding_rank", "compact.embedding_rank=192", null="no factorized copy")
    check_count(cfg, "student.embedding_rank", "student.embedding_rank=192", null="full word embeddings")
    if cfg.student.get("embedding_rank") and cfg.compact.embedding_rank:
        raise GrainError(
            f"student.embedding_rank={cfg.student.embedding_rank} and compact.embedding_rank={cfg.compact.embedding_rank} "
            f"both factorize the word embeddings; keep one, e.g. compact.embedding_rank=null (factorized in training) or "
            f"student.embedding_rank=null (a factorized copy after training)"
        )
    check_count(cfg, "compact.bench_batch", "compact.bench_batch=32", null="per device")
    check_count(cfg, "compact.bench_seq_len", "compact.bench_seq_len=128", null="per device")
    shapes = cfg.compact.get("bench_extra_shapes")
    if shapes is not None and not (
        OmegaConf.is_list(shapes)
        and all(OmegaConf.is_list(s) and len(s) == 2 and all(_is_int(n) and n >= 1 for n in s) for s in shapes)
    ):
        raise GrainError(
            f"compact.bench_extra_shapes={OmegaConf.to_container(shapes) if OmegaConf.is_config(shapes) else shapes!r} "
            f"is not a list of [batch, length] pairs of positive integers; e.g. compact.bench_extra_shapes=[[32,128]] or null"
        )


# Settings a resumed run may change: they do not change what the run computes.
RESUME_FREE_KEYS = ("student.checkpoint_every_n_steps", "student.checkpoint_every_minutes")


def resume_settings(cfg: DictConfig) -> dict:
    """The settings a prune-stage checkpoint is only valid for, flattened to dotted keys: the target,
    task data, backbone, pruner, distillation, student training and its step count, seed."""
    from grain.training import stage_steps

    settings = {
        "sparsity": float(cfg.sparsity),
        "speedup": cfg.get("speedup"),
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


def validate_checkpoint(cfg: DictConfig) -> None:
    """ckpt_path: a readable prune-stage checkpoint written with this run's settings (checked before the
    teacher stage, which may fine-tune for hours)."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is None:
        return
    example = "ckpt_path=outputs/<task>/<model>/s<sparsity>/<timestamp>/checkpoints/last.ckpt"
    if "prune" not in cfg.stages:
        raise GrainError(f"ckpt_path={ckpt_path} resumes the prune stage, which stages={list(cfg.stages)} leaves out; add it")
    path = Path(str(ckpt_path)).expanduser()
    if path.is_dir():
        raise GrainError(f"ckpt_path={ckpt_path} is a directory; give the checkpoint file in it, e.g. {example}")
    if not path.is_file():
        raise GrainError(f"ckpt_path={ckpt_path} does not exist; give a checkpoint an earlier run wrote, e.g. {example}")
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # its message may advise weights_only=False, which would run code from the file
        raise GrainError(
            f"ckpt_path={ckpt_path} is not a readable checkpoint ({type(err).__name__}); give the "
            f"checkpoints/last.ckpt of a grain run, e.g. {example}"
        ) from None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not any(key.startswith("controller.") for key in state):
        raise GrainError(
            f"ckpt_path={ckpt_path} is not a checkpoint of grain's prune stage (no pruning controller in it); "
            f"give the checkpoints/last.ckpt of a grain run, e.g. {example}"
        )
    saved = checkpoint.get(CHECKPOINT_SETTINGS_KEY)
    if saved is None:
        import logging

        logging.getLogger(__name__).warning(
            "ckpt_path=%s records no settings (written before grain stored them): resuming without checking "
            "that they match this run's", ckpt_path,
        )
        return
    current = resume_settings(cfg)
    # Settings a checkpoint does not know were added to grain after it was written: compared only where
    # this run departs from their default (null, or the pruner's GRAIN-as-published choices).
    defaults = {"speedup": None, "pruner.cost": "params", "student.embedding_rank": None}
    differ = [
        key for key in sorted(set(saved) | set(current))
        if saved.get(key, defaults.get(key)) != current.get(key)
    ]
    if differ:
        shown = ", ".join(f"{key}={saved.get(key)!r} (this run: {current.get(key)!r})" for key in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise GrainError(
            f"ckpt_path={ckpt_path} was written by a run with other settings: {shown}{more}; resume with the "
            f"checkpoint's settings (its run dir's .hydra/overrides.yaml) or drop ckpt_path to start afresh"
        )


WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def local_model_dir(setting: str, value: str, fix: str) -> Path | None:
    """The local model directory a setting names (None for a hub name); a path that is not a saved model
    is refused here, naming the setting, instead of a traceback from transformers."""
    if value.startswith("package:"):
        from grain.models.backbone import resolve_pretrained

        return Path(resolve_pretrained(value))
    path = Path(value).expanduser()
    looks_local = value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1
    if not path.exists():
        if looks_local:
            raise GrainError(f"{setting}={value} does not exist; {fix}")
        return None  # a hub name, checked when it loads (before anything trains)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise GrainError(f"{setting}={value} is not a saved model directory (no config.json in it); {fix}")
    weights = [f for pattern in WEIGHT_FILES for f in sorted(path.glob(pattern))]
    if setting != "model.tokenizer" and not weights:
        raise GrainError(f"{setting}={value} holds no weights (model.safetensors or pytorch_model.bin); {fix}")
    from safetensors import safe_open

    for weight_file in weights:
        if weight_file.suffix == ".safetensors":
            try:
                with safe_open(str(weight_file), "pt"):
                    pass
            except Exception as err:
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise GrainError(
                    f"{setting}={value}: {weight_file.name} is damaged or not a safetensors file ({reason}); {fix}"
                ) from None
    return path


def read_model_config(setting: str, directory: Path) -> dict:
    import json

    try:
        return json.loads((directory / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise GrainError(f"{setting}={directory}: config.json cannot be read ({type(err).__name__}: {err})") from None


def hub_model_config(name: str) -> dict | None:
    """A hub model's config.json when it is in the local HF cache (no network at validation)."""
    import json

    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a valid repo id: transformers reports it when the model loads
        return None
    if isinstance(cached, str):
        try:
            return json.loads(Path(cached).read_text())
        except (OSError, ValueError):
            return None
    return None


def model_config(cfg: DictConfig) -> dict | None:
    """config.json of the backbone (`model.pretrained`), or None where it is only on the hub."""
    pretrained = str(cfg.model.pretrained)
    if pretrained == "random":
        from grain.architectures import DEFAULT_MODEL_TYPE

        return {"model_type": DEFAULT_MODEL_TYPE, **OmegaConf.to_container(cfg.model.random_config, resolve=True)}
    fix = "give a local model directory (with config.json), a hub name such as bert-base-uncased, or model=minilm (offline)"
    directory = local_model_dir("model.pretrained", pretrained, fix)
    if directory is None:
        return hub_model_config(pretrained)
    return read_model_config("model.pretrained", directory)


def model_family(cfg: DictConfig, config: dict | None) -> str | None:
    if config is not None and config.get("model_type"):
        return str(config["model_type"])
    from grain.architectures import family_from_name

    return family_from_name(f"{cfg.model.name} {cfg.model.pretrained}")


def validate_models(cfg: DictConfig) -> None:
    """model.pretrained, model.tokenizer and teacher.path: existing, loadable, of a family grain can
    compact when the run compacts, and long enough for the task's max_length."""
    config = model_config(cfg)
    tokenizer = str(cfg.model.tokenizer)
    if tokenizer not in ("random", str(cfg.model.pretrained)):
        local_model_dir("model.tokenizer", tokenizer, "give a local tokenizer directory or a hub name")
    if cfg.teacher.path and "teacher" in cfg.stages:
        fix = (
            "give a directory saved with save_pretrained (config.json and weights), a hub name, or drop "
            "teacher.path to fine-tune a teacher"
        )
        teacher_dir = local_model_dir("teacher.path", str(cfg.teacher.path), fix)
        if teacher_dir is not None:
            read_model_config("teacher.path", teacher_dir)

    family = model_family(cfg, config)
    from grain.architectures import find_architecture, supported_families

    if family is not None and find_architecture(family) is None:
        raise GrainError(
            f"model={cfg.model.name} (model.pretrained={cfg.model.pretrained}) is a {family} model, and grain prunes "
            f"encoders of the families {', '.join(supported_families())} (grain.architectures); pick one of those "
            f"(model=minilm, model=roberta-base, ...)"
        )

    rank = cfg.student.get("embedding_rank")
    size = config and (config.get("embedding_size") or config.get("hidden_size") or config.get("dim"))
    if _is_int(rank) and _is_int(size) and rank >= size:
        raise GrainError(
            f"student.embedding_rank={rank} is not below the word embedding size {size} of model={cfg.model.name}; "
            f"give a smaller rank (e.g. student.embedding_rank={max(1, size // 4)}) or null (no factorization)"
        )

    if config is not None and config.get("max_position_embeddings"):
        architecture = find_architecture(family) if family is not None else None
        limit = int(config["max_position_embeddings"]) - (architecture.position_offset if architecture else 0)
        for key in ("task.datamodule.max_length", "compact.bench_seq_len"):
            value = OmegaConf.select(cfg, key)
            if _is_int(value) and value > limit:
                raise GrainError(
                    f"{key}={value} is longer than model={cfg.model.name} can read ({limit} positions); "
                    f"give at most {key}={limit}"
                )
