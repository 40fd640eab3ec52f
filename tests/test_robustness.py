"""Bad inputs a user can give (checkpoints, model and teacher paths, label orders) are refused clearly
before anything trains, or handled right."""

import pytest
import torch
from omegaconf import open_dict

from grain.config import CHECKPOINT_SETTINGS_KEY, resume_settings, validate_config
from grain.errors import GrainError
from tests.conftest import compose_config

TINY = ["model=tiny", "trainer.max_steps=2", "logger=none"]


class PickledClass:
    pass


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def prune_checkpoint(path, cfg, **extra):
    """A file shaped like the prune stage's last.ckpt (a controller in its state dict)."""
    checkpoint = {"state_dict": {"controller.mask_ffn": torch.ones(2, 4)}, "global_step": 3, **extra}
    if cfg is not None:
        checkpoint[CHECKPOINT_SETTINGS_KEY] = resume_settings(cfg)
    torch.save(checkpoint, path)
    return path


def with_ckpt(tmp_path, ckpt, *overrides):
    return compose_config([*TINY, f"ckpt_path={ckpt}", *overrides], tmp_path)


def test_a_missing_ckpt_path_is_refused_at_validation(tmp_path):
    with pytest.raises(GrainError) as err:
        validate_config(with_ckpt(tmp_path, tmp_path / "nope.ckpt"))
    assert one_line(err).startswith(f"ckpt_path={tmp_path / 'nope.ckpt'} does not exist")
    with pytest.raises(GrainError, match="is a directory"):
        validate_config(with_ckpt(tmp_path, tmp_path))


def test_an_unreadable_ckpt_path_is_refused_without_weights_only_advice(tmp_path):
    garbage = tmp_path / "last.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(GrainError) as err:
        validate_config(with_ckpt(tmp_path, garbage))
    assert "not a readable checkpoint" in one_line(err) and "weights_only" not in str(err.value)

    unsafe = tmp_path / "unsafe.ckpt"  # a pickle of a class: torch's error advises weights_only=False
    torch.save({"state_dict": {}, "custom": PickledClass()}, unsafe)
    with pytest.raises(GrainError) as err:
        validate_config(with_ckpt(tmp_path, unsafe))
    assert "weights_only" not in one_line(err)


def test_a_checkpoint_of_something_else_is_refused(tmp_path):
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"linear.weight": torch.ones(2)}}, other)
    with pytest.raises(GrainError, match="not a checkpoint of grain's prune stage"):
        validate_config(with_ckpt(tmp_path, other))


def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    ckpt = prune_checkpoint(tmp_path / "last.ckpt", compose_config([*TINY, "sparsity=0.5"], tmp_path))
    validate_config(with_ckpt(tmp_path, ckpt, "sparsity=0.5"))  # the same settings resume
    with pytest.raises(GrainError) as err:
        validate_config(with_ckpt(tmp_path, ckpt, "sparsity=0.9"))
    message = one_line(err)
    assert "sparsity=0.5 (this run: 0.9)" in message and "drop ckpt_path" in message
    with pytest.raises(GrainError, match="pruner.units='intra'"):
        validate_config(with_ckpt(tmp_path, ckpt, "sparsity=0.5", "pruner=head"))


def test_ckpt_path_needs_the_prune_stage(tmp_path):
    ckpt = prune_checkpoint(tmp_path / "last.ckpt", None)
    with pytest.raises(GrainError, match="add it"):
        validate_config(with_ckpt(tmp_path, ckpt, "stages=[teacher]"))


def test_the_prune_stage_records_its_settings_and_refuses_another_runs_checkpoint(tmp_path):
    from grain.pipeline import run_pipeline

    cfg = compose_config([*TINY, "sparsity=0.5", "stages=[teacher,prune]"], tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to a job
    run_pipeline(cfg, tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)[CHECKPOINT_SETTINGS_KEY]
    assert saved == resume_settings(cfg) and saved["sparsity"] == 0.5
    validate_config(with_ckpt(tmp_path, ckpt, "sparsity=0.5", "stages=[teacher,prune]"))
    with pytest.raises(GrainError, match=r"sparsity=0\.5 \(this run: 0\.9\)"):
        validate_config(with_ckpt(tmp_path, ckpt, "sparsity=0.9", "stages=[teacher,prune]"))
