"""`python -m grain.run` end to end on model=tiny, and its refusals of bad input."""

import json
import re
import signal
import subprocess
import sys
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException

from grain.conf import CONFIG_DIR
from grain.run import composition_error
from tests.helpers.pruning import sparsity_bound
from tests.helpers.runs import TINY_RUN_SHAPE, grain_env, run_grain, start_grain, summaries


def test_tiny_run_writes_summary(tmp_path):
    result = run_grain(["task=sst2", "model=tiny", "trainer.max_steps=5", "logger=csv"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    assert path.parent.parent.name == "s0.9" and path.parent.parent.parent.name == "tiny"
    summary = json.loads(path.read_text())
    assert summary["status"] == "completed"
    assert (summary["task"], summary["model"], summary["metric_name"]) == ("sst2", "tiny", "accuracy")
    assert summary["sparsity"] == 0.9
    assert 0.0 <= summary["teacher"]["metric"] <= 1.0
    assert set(summary["teacher"]) >= {"metric", "path", "train_seconds"}
    assert summary["config"]["task"]["name"] == "sst2"
    assert set(summary["versions"]) >= {"torch", "transformers", "lightning"}
    assert summary["timing"]["total_seconds"] > 0
    student = summary["student"]
    assert student["target_sparsity"] == 0.9 and sparsity_bound(0.9, TINY_RUN_SHAPE) <= student["sparsity"] <= 0.9
    # the same masks in the paper's measure: the removed parameters over all encoder linear weights
    removed = student["sparsity"] * 66176  # model=tiny's prunable-unit parameters: 2 x (64 x 130 + 64 x 129 + 128 x 129)
    assert student["encoder_params_dense"] == 66432  # plus the 2 x 2 x 64 output biases of W_O and W_2
    assert student["encoder_linear_sparsity"] == pytest.approx(removed / 66432)
    assert len(student["layers"]) == 2 and student["heads_total"] == 8
    assert (path.parent / "masks.safetensors").exists() and (path.parent / "structure.png").exists()
    assert (path.parent / ".hydra" / "config.yaml").exists()

    output = result.stdout + result.stderr  # captured: not a terminal
    assert output.count("Seed set to 42") == 1, "each Lightning INFO line once"
    assert "teacher: step 1/5 (20%)" in output and "student: step 1/5 (20%)" in output  # progress lines
    assert "student: trained 5 steps" in output
    block = result.stdout[result.stdout.index("grain: sst2 tiny sparsity 0.9: completed"):]
    assert f"student  accuracy {student['metric']:.4f}" in block and f"summary  {path}" in block
    assert str(path.parent / "compact") in block
    # what a user sees (issue 24): no progress-bar redraws where the output is a file, no library advert or
    # warnings that do not apply, metrics to 4 significant digits, the dataset's label names
    log = (path.parent / "run.log").read_text()
    for text in (output, log):
        assert "\r" not in text and max(len(line) for line in text.splitlines()) < 400
        for noise in ("💡 Tip", "LeafSpec", "in eval mode at the start of training", "zero-element tensors"):
            assert noise not in text, noise
    assert f"teacher accuracy = {summary['teacher']['metric']:.4g} (" in log
    assert re.search(r"accuracy = 0\.\d{1,4} ", log) and not re.search(r"accuracy = 0\.\d{5,}", log)
    saved = json.loads((path.parent / "compact" / "config.json").read_text())
    assert saved["id2label"] == {"0": "negative", "1": "positive"}
    # self-contained (tests/test_self_contained.py loads such folders without grain)
    assert saved["auto_map"]["AutoModelForSequenceClassification"] == "bert.GrainBertForSequenceClassification"
    assert (path.parent / "compact" / "bert.py").exists() and (path.parent / "compact" / "kernels.py").exists()
    card = (path.parent / "compact" / "README.md").read_text()
    assert 'AutoModelForSequenceClassification.from_pretrained("<this dir>", trust_remote_code=True)' in card

    # a second run reuses the cached teacher
    again = run_grain(["task=sst2", "model=tiny", "trainer.max_steps=5", "logger=none", "stages=[teacher]"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    cached = [json.loads(p.read_text()) for p in summaries(tmp_path) if p != path]
    assert cached[0]["teacher"]["cached"] is True
    assert cached[0]["teacher"]["metric"] == summary["teacher"]["metric"]


@pytest.mark.slow  # the entry's one line, exit 2 and nothing left: checked by default by the Hydra and offline tests below
def test_bad_sparsity_exits_with_one_line(tmp_path):
    result = run_grain(["sparsity=1.5"], tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sparsity=1.5" in lines[0]
    assert not summaries(tmp_path) and not (tmp_path / "outputs" / "sst2" / "minilm" / "s1.5").exists()


def test_a_command_line_hydra_cannot_compose_is_one_line(tmp_path):
    """A Lightning option through the trainer group: Hydra's 7-line struct error (and its HYDRA_FULL_ERROR
    hint) before; one line naming the setting and the fix, exit 2, nothing left."""
    result = run_grain(["trainer.accumulate_grad_batches=4", "model=tiny"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "grain: error: trainer.accumulate_grad_batches=4 is not a setting grain passes to Lightning: grain does not "
        "accumulate gradients"), result.stderr[-3000:]
    assert "HYDRA_FULL_ERROR" not in result.stderr and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override,expected", [
    ("task=nope", "task=nope is not an option of task; choose one of conll2003, mnli,"),
    ("+trainer.accumulate_grad_batches=4", None),  # composes: refused at validation (test_config)
    ("student.lrr=3", "student.lrr=3: there is no setting student.lrr"),
    ("sparsity=[", "sparsity=[: no viable alternative"),
])
def test_what_hydra_cannot_compose_reads_as_one_line(override, expected):
    """`composition_error` on what Hydra raises for each kind of bad command line (as `python -m grain.run`
    sees it once HYDRA_FULL_ERROR makes Hydra raise)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        if expected is None:
            compose("config", overrides=[override])
            return
        with pytest.raises(HydraException) as err:
            compose("config", overrides=[override])
    message = composition_error(err.value, [override])
    assert "\n" not in message and message.startswith(expected), message


@pytest.mark.parametrize("task,extra", [
    # QA by default in parts (windows, offsets, metrics: test_tasks, test_data_squad); end to end here, slow
    pytest.param("squad_offline", ["task.datamodule.max_length=64", "task.datamodule.doc_stride=16"], marks=pytest.mark.slow),
    ("conll2003", []),
])
def test_tiny_runs_for_qa_and_ner_write_their_metrics(tmp_path, task, extra):
    result = run_grain([f"task={task}", "model=tiny", "trainer.max_steps=4", "logger=none", *extra], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["metric_name"] == "f1"
    for section in ("teacher", "student", "compact"):
        assert 0.0 <= summary[section]["metric"] <= 1.0
    assert summary["compact"]["max_abs_logit_diff_vs_masked"] < 1e-4
    if task == "squad_offline":
        assert "not the official" in summary["eval_split"]
        assert set(summary["teacher"]["metrics"]) == {"validation/exact_match", "validation/f1"}
    else:
        assert {"validation/precision", "validation/recall"} <= set(summary["teacher"]["metrics"])


@pytest.mark.slow  # ~20 s: a two-job sweep (make test-full; the default suite keeps under 10 min)
def test_sweep_runs_the_valid_job_past_a_bad_value_and_exits_non_zero(tmp_path):
    result = run_grain(
        ["-m", "model=tiny", "trainer.max_steps=2", "logger=none", "stages=[teacher,prune]", "sparsity=1.5,0.5"], tmp_path
    )
    assert result.returncode == 1, result.stderr[-3000:]
    by_sparsity = {json.loads(p.read_text())["sparsity"]: json.loads(p.read_text()) for p in summaries(tmp_path)}
    assert set(by_sparsity) == {1.5, 0.5}
    assert by_sparsity[1.5]["status"] == "failed" and "sparsity=1.5" in by_sparsity[1.5]["error"]
    assert by_sparsity[0.5]["status"] == "completed"
    assert sparsity_bound(0.5, TINY_RUN_SHAPE) <= by_sparsity[0.5]["student"]["sparsity"] <= 0.5
    assert all(p.parent.parent.parent.name == "multirun" for p in summaries(tmp_path))
    failures = [line for line in result.stderr.splitlines() if line.startswith("grain: error: sweep job 0")]
    assert len(failures) == 1 and "sparsity=1.5" in failures[0]


def test_sigterm_stops_a_run_with_a_non_zero_status(tmp_path):
    args = ["model=tiny", "logger=csv", "teacher.epochs=100000", "teacher.batch_size=4"]  # trains until stopped
    proc = start_grain(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("outputs/**/logs/*")):  # the teacher's Trainer is up
            assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.2)
        time.sleep(1.0)  # in its setup (where `datasets` swallows an exception) or training
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    [path] = summaries(tmp_path)
    summary = json.loads(path.read_text())
    assert summary["status"] == "stopped" and "SIGTERM" in summary["error"]
    assert not list((tmp_path / ".cache" / "grain").glob("teachers/*")), "no teacher cached from a stopped run"


@pytest.mark.parametrize("hub", [
    {"HF_ENDPOINT": "http://127.0.0.1:9"},  # no hub answers (what a machine without network sees), no flag set
    pytest.param({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},  # told to stay offline, nothing cached
                 marks=pytest.mark.slow),
])
def test_offline_without_a_data_directory_is_one_line_before_anything_trains(tmp_path, monkeypatch, hub):
    """The quickstart's own command with no GRAIN_DATA_DIR and no hub (an empty HF cache): one line naming
    GRAIN_DATA_DIR / paths.data_dir and the hub, exit 2, no run dir left (it was a 55-67 line ConnectionError
    traceback from the teacher stage, after half a minute of logged retries)."""
    for name, value in {**hub, "HF_HOME": str(tmp_path / "hf")}.items():
        monkeypatch.setenv(name, value)
    result = run_grain([], tmp_path, data_dir=None)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "glue/sst2 from the Hugging Face hub" in lines[0] and "GRAIN_DATA_DIR or paths.data_dir" in lines[0]
    assert "glue/SST-2/train.tsv, glue/SST-2/dev.tsv" in lines[0]
    assert not summaries(tmp_path) and not (tmp_path / "outputs").exists()


def test_a_full_disk_is_one_line_naming_the_file_being_written(tmp_path):
    """Every weights file written with safetensors fails as a full disk does (ENOSPC): the run ends
    non-zero with one line naming what it was writing (the teacher's cache dir), not a traceback."""
    program = (
        "import errno, runpy, sys, safetensors.torch\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "safetensors.torch.save_file = full\n"
        "sys.argv = ['grain.run', *sys.argv[1:]]\n"
        "runpy.run_module('grain.run', run_name='__main__')\n"
    )
    result = subprocess.run([sys.executable, "-c", program, "model=tiny", "trainer.max_steps=2", "logger=none"],
                            cwd=tmp_path, env=grain_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("grain: error: no space left on the device writing ") and "/teachers/sst2-tiny-" in lines[0]
    [summary] = summaries(tmp_path)
    assert json.loads(summary.read_text())["status"] == "failed"
