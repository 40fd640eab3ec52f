"""Periodic prune-stage checkpoints and exact resume from any of them (issue 16): a run interrupted
mid-epoch (in-process, or `kill -9` of `python -m grain.run`) and resumed from its latest
checkpoints/last.ckpt ends with the masks, scores and weights of the uninterrupted run."""

import os
import shutil
import signal
import subprocess
import time

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from grain.stages.prune import build_student_module
from grain.stages.trainer import PeriodicCheckpoint
from grain.tasks.sampler import EpochSeededRandomSampler, ResumableDataLoader
from tests.helpers.configs import compose_config
from tests.helpers.runs import RESUMABLE_RUN, start_grain
from tests.helpers.training import make_trainer, setup_parts


def trainer_with(tmp_path, callbacks, max_epochs=3, max_steps=-1):
    """make_trainer with checkpointing on (the stage's PeriodicCheckpoint is a ModelCheckpoint)."""
    return make_trainer(tmp_path, max_epochs, max_steps, callbacks, enable_checkpointing=True)


class CopyCheckpointAt(pl.Callback):
    """Keeps the last.ckpt written at `step` (the uninterrupted run goes on and overwrites it). At the
    next batch's start: Lightning runs checkpoint callbacks after all others."""

    def __init__(self, step, source, target):
        self.step, self.source, self.target = step, source, target

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not os.path.exists(self.target):
            shutil.copy(self.source, self.target)


def final_state(module):
    controller = module.controller
    return (
        {k: v.clone() for k, v in controller.masks().items()},
        {k: v.clone() for k, v in controller.scores().items()},
        {k: v.detach().clone() for k, v in module.student.state_dict().items()},
    )


def assert_same_run(a, b):
    for got, want in zip(a, b):
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_resume_mid_epoch_from_a_periodic_checkpoint_is_bit_identical(tmp_path):
    # 64 examples / 8 per batch = 8 steps an epoch, 24 in all, pruning over steps 5..14: step 11 is
    # batch 4 of the second epoch, inside the pruning window
    cfg, datamodule, teacher = setup_parts(tmp_path)
    directory = tmp_path / "checkpoints"
    kept = tmp_path / "step11.ckpt"
    uninterrupted = build_student_module(cfg, teacher, 2)
    trainer = trainer_with(tmp_path, [PeriodicCheckpoint(directory, every_n_steps=11),
                                      CopyCheckpointAt(11, directory / "last.ckpt", kept)])
    trainer.fit(uninterrupted, datamodule=datamodule)
    assert int(uninterrupted.controller.step) == 24
    assert torch.load(directory / "last.ckpt", weights_only=True)["global_step"] == 24  # the stage's end
    saved = torch.load(kept, weights_only=True)
    assert saved["global_step"] == 11
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 3, "batch_size": 8}]
    assert not list(directory.glob(".*.tmp")), "no temporary file left behind"

    resumed = build_student_module(cfg, teacher, 2)
    trainer_with(tmp_path, [PeriodicCheckpoint(tmp_path / "resumed", every_n_steps=11)]).fit(
        resumed, datamodule=datamodule, ckpt_path=str(kept))
    assert int(resumed.controller.step) == 24
    assert_same_run(final_state(resumed), final_state(uninterrupted))


def test_the_loader_hands_out_a_plain_loaders_batches_and_resumes_at_its_position():
    dataset = list(range(37))
    plain = DataLoader(dataset, batch_size=4, sampler=EpochSeededRandomSampler(37, 5))
    loader = ResumableDataLoader(dataset, batch_size=4, sampler=EpochSeededRandomSampler(37, 5))
    for epoch in (0, 1):
        plain.sampler.set_epoch(epoch), loader.sampler.set_epoch(epoch)
        assert [b.tolist() for b in loader] == [b.tolist() for b in plain]
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    first = [next(iterator).tolist() for _ in range(3)]
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches": 3, "batch_size": 4}
    rest = [b.tolist() for b in iterator]

    fresh = ResumableDataLoader(dataset, batch_size=4, sampler=EpochSeededRandomSampler(37, 5))
    fresh.load_state_dict(state)
    fresh.sampler.set_epoch(1)  # Lightning sets the epoch after loading the state, before the first batch
    assert [b.tolist() for b in fresh] == rest and first + rest == [b.tolist() for b in loader]
    assert [b.tolist() for b in fresh] == [b.tolist() for b in loader], "the next epoch is whole"
    # another sampler (as Lightning's distributed wrapper): the first batches are drawn and dropped
    other = ResumableDataLoader(dataset, batch_size=4, shuffle=False)
    other.load_state_dict({"epoch": 0, "batches": 2, "batch_size": 4})
    assert [b.tolist() for b in other][0] == [8, 9, 10, 11]


def kill_9_past_step(args: list[str], directory, checkpoints: str, step: int):
    """Start `args` in `directory` (made here) and SIGKILL it once a checkpoint matching the glob
    `checkpoints` holds `global_step` >= `step`; returns the checkpoints the glob matched then."""
    directory.mkdir()
    proc = start_grain(args, directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while True:
            found = list(directory.glob(checkpoints))
            if found and torch.load(found[0], weights_only=True, map_location="cpu")["global_step"] >= step:
                break
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, f"no checkpoint past step {step}"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    return found


@pytest.mark.slow
def test_kill_9_in_the_prune_stage_then_resume_gives_the_uninterrupted_masks(tmp_path):
    whole = tmp_path / "whole"
    whole.mkdir()
    done = start_grain(RESUMABLE_RUN, whole, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = done.communicate(timeout=300)
    assert done.returncode == 0, stderr[-3000:]
    [want] = whole.glob("outputs/**/masks.safetensors")

    killed = tmp_path / "killed"
    # mid-epoch (8 steps an epoch), inside the pruning window (steps 5..14)
    [checkpoint] = kill_9_past_step(RESUMABLE_RUN, killed, "outputs/**/checkpoints/last.ckpt", 9)
    run_dir = checkpoint.parent.parent
    assert not (run_dir / "masks.safetensors").exists(), "killed inside the prune stage"
    step = torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]
    assert 9 <= step < 24
    print(f"killed after the checkpoint of step {step}")

    resumed = start_grain([*RESUMABLE_RUN, f"ckpt_path={checkpoint}"], killed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr[-3000:]
    got = [p for p in killed.glob("outputs/**/masks.safetensors")]
    assert len(got) == 1
    want_masks, got_masks = load_file(str(want)), load_file(str(got[0]))
    assert want_masks.keys() == got_masks.keys()
    for key in want_masks:
        assert torch.equal(want_masks[key], got_masks[key]), key
    assert any((m == 0).any() for m in got_masks.values())
    # and the metrics of the uninterrupted run
    import json

    [want_summary] = whole.glob("outputs/**/summary.json")
    got_summary = [p for p in killed.glob("outputs/**/summary.json") if p.parent == got[0].parent]
    want_student, got_student = (json.loads(p.read_text())["student"] for p in (want_summary, got_summary[0]))
    assert got_student["metrics"] == want_student["metrics"] and got_student["sparsity"] == want_student["sparsity"]


class SaveFinalState(pl.Callback):
    def __init__(self, path):
        self.path = str(path)

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            masks, scores, weights = final_state(pl_module)
            torch.save({"masks": masks, "scores": scores, "weights": weights}, self.path)


class CopyOnRankZero(CopyCheckpointAt):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.is_global_zero:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)


@pytest.mark.slow  # ~60 s: two spawned processes, twice
def test_two_process_ddp_resume_mid_epoch_is_bit_identical(tmp_path):
    """Under DDP Lightning re-creates the loader around a distributed sampler: its position still comes
    back (64 examples / 8 per batch / 2 ranks = 4 steps an epoch; step 5 is mid-epoch, mid-pruning)."""
    cfg, datamodule, teacher = setup_parts(tmp_path)
    directory, kept = tmp_path / "checkpoints", tmp_path / "step5.ckpt"
    ddp = dict(strategy="ddp_spawn", devices=2)

    def trainer(callbacks):
        return pl.Trainer(
            accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(tmp_path), callbacks=callbacks, **ddp,
        )

    trainer([PeriodicCheckpoint(directory, every_n_steps=5), CopyOnRankZero(5, directory / "last.ckpt", kept),
             SaveFinalState(tmp_path / "whole.pt")]).fit(build_student_module(cfg, teacher, 2), datamodule=datamodule)
    assert torch.load(kept, weights_only=True)["global_step"] == 5
    trainer([PeriodicCheckpoint(tmp_path / "resumed", every_n_steps=5), SaveFinalState(tmp_path / "resumed.pt")]).fit(
        build_student_module(cfg, teacher, 2), datamodule=datamodule, ckpt_path=str(kept))
    whole, resumed = (torch.load(tmp_path / f"{name}.pt", weights_only=True) for name in ("whole", "resumed"))
    assert any((m == 0).any() for m in whole["masks"].values())
    assert_same_run([resumed[k] for k in ("masks", "scores", "weights")], [whole[k] for k in ("masks", "scores", "weights")])


class CountSaves(pl.Callback):
    def __init__(self):
        self.steps = []

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.steps.append(trainer.global_step)


def test_checkpoints_by_minutes_and_at_the_end(tmp_path):
    cfg, datamodule, teacher = setup_parts(tmp_path)
    counted = CountSaves()
    trainer = trainer_with(tmp_path, [PeriodicCheckpoint(tmp_path / "c", every_minutes=1e-9), counted], max_steps=3)
    trainer.fit(build_student_module(cfg, teacher, 2), datamodule=datamodule)
    assert counted.steps == [1, 2, 3]  # each step is "late"; the stage's end (step 3) is not saved twice
    counted = CountSaves()
    trainer = trainer_with(tmp_path, [PeriodicCheckpoint(tmp_path / "d", every_n_steps=2), counted], max_steps=5)
    trainer.fit(build_student_module(cfg, teacher, 2), datamodule=datamodule)
    assert counted.steps == [2, 4, 5]
    assert torch.load(tmp_path / "d" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_an_interrupted_save_leaves_the_previous_last_ckpt(tmp_path, monkeypatch):
    """A save killed mid-write (here: failing after half the bytes) never touches last.ckpt: it is
    written to a temporary file beside it and renamed over it only when complete."""
    cfg, datamodule, teacher = setup_parts(tmp_path)
    callback = PeriodicCheckpoint(tmp_path / "c", every_n_steps=1)
    trainer = trainer_with(tmp_path, [callback], max_steps=1)
    trainer.fit(build_student_module(cfg, teacher, 2), datamodule=datamodule)
    last = tmp_path / "c" / "last.ckpt"
    before = last.read_bytes()

    def torn_save(path, weights_only=False):
        with open(path, "wb") as f:
            f.write(before[: len(before) // 2])
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(trainer, "save_checkpoint", torn_save)
    with pytest.raises(KeyboardInterrupt):
        callback._save_checkpoint(trainer, str(last))
    assert last.read_bytes() == before
    assert torch.load(last, weights_only=True)["global_step"] == 1


TEACHER_RUN = ["task=sst2", "model=tiny", "logger=none", "stages=[teacher]", "teacher.epochs=3", "teacher.batch_size=8",
               "teacher.checkpoint_every_n_steps=2"]


@pytest.mark.slow  # ~1 min: three tiny teacher fine-tunings, one killed with SIGKILL
def test_kill_9_in_the_teacher_stage_then_the_same_run_resumes_to_the_uninterrupted_teacher(tmp_path):
    """A teacher fine-tuning killed with SIGKILL (no handler runs) leaves its last checkpoint beside the
    teacher cache; the same command again resumes from it and caches the uninterrupted run's weights."""
    whole = tmp_path / "whole"
    whole.mkdir()
    done = start_grain(TEACHER_RUN, whole, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert done.wait(timeout=300) == 0, done.stderr.read()[-3000:]
    [want] = whole.glob(".cache/grain/teachers/*/model.safetensors")

    killed = tmp_path / "killed"
    # mid second epoch (8 steps an epoch, 24 in all)
    kill_9_past_step(TEACHER_RUN, killed, ".cache/grain/teachers/*.partial/last.ckpt", 10)
    assert not list(killed.glob(".cache/grain/teachers/*/model.safetensors")), "killed before the teacher was cached"

    again = start_grain(TEACHER_RUN, killed, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert again.wait(timeout=300) == 0, again.stderr.read()[-3000:]
    [got] = killed.glob(".cache/grain/teachers/*/model.safetensors")
    assert not list(killed.glob(".cache/grain/teachers/*.partial"))
    want_weights, got_weights = load_file(str(want)), load_file(str(got))
    assert want_weights.keys() == got_weights.keys()
    assert all(torch.equal(want_weights[k], got_weights[k]) for k in want_weights)
    log = next(p for p in killed.glob("outputs/**/run.log") if "resuming its fine-tuning" in p.read_text())
    assert "Restored all states from the checkpoint" in log.read_text()


def test_a_killed_saves_temporary_file_goes_at_the_next_start(tmp_path):
    """A kill during a checkpoint write leaves `.last.ckpt.<pid>.tmp` (as large as the checkpoint) beside
    last.ckpt: the next start of that checkpoint directory deletes it, and only temporaries whose
    process is gone."""
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid is free now
    directory = tmp_path / "c"
    directory.mkdir()
    stale = directory / f".last.ckpt.{finished.pid}.tmp"
    stale.write_bytes(b"x" * 1000)
    running = directory / f".last.ckpt.{os.getppid()}.tmp"  # a save still under way in another process
    running.write_bytes(b"x")
    other = directory / ".notes.tmp"  # not a save's temporary
    other.write_text("kept")
    cfg, datamodule, teacher = setup_parts(tmp_path)
    trainer_with(tmp_path, [PeriodicCheckpoint(directory, every_n_steps=1)], max_steps=1).fit(
        build_student_module(cfg, teacher, 2), datamodule=datamodule)
    assert not stale.exists() and running.exists() and other.exists()
    assert (directory / "last.ckpt").exists()


def test_checkpoint_settings_are_validated_and_free_on_resume(tmp_path):
    from grain.config import validate_sizes
    from grain.errors import GrainError
    from grain.stages.resume import resume_settings

    for bad in ("student.checkpoint_every_n_steps=0", "student.checkpoint_every_n_steps=1.5",
                "student.checkpoint_every_minutes=0", "student.checkpoint_every_minutes=-1"):
        with pytest.raises(GrainError, match=bad.split("=")[0]):
            validate_sizes(compose_config(["model=tiny", bad], tmp_path))
    validate_sizes(compose_config(["model=tiny", "student.checkpoint_every_n_steps=null",
                                   "student.checkpoint_every_minutes=30"], tmp_path))
    # how often a run saves does not bind the run that resumes it
    assert resume_settings(compose_config(["model=tiny", "student.checkpoint_every_n_steps=2"], tmp_path)) == \
        resume_settings(compose_config(["model=tiny", "student.checkpoint_every_n_steps=null",
                                        "student.checkpoint_every_minutes=5"], tmp_path))
