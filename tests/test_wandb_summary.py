"""A run's final numbers in its W&B run summary (the runs table and parallel-coordinates panels read
`run.summary`), structure.png as an image, the compact model as an artifact when asked."""

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grain.wandb_summary import publish, summary_scalars  # noqa: E402
from tests.helpers.runs import run_grain  # noqa: E402

SUMMARY = {
    "status": "completed", "task": "sst2", "model": "tiny", "pruner": "grain", "sparsity": 0.9,
    "metric_name": "accuracy",
    "teacher": {"metric": 0.8, "metrics": {"validation/accuracy": 0.8}, "path": "/t"},
    "student": {"metric": 0.6, "sparsity": 0.89, "heads_kept": 3, "heads_total": 8, "layers": [{"qk": [1, 2]}],
                "target_speedup": None, "cost": "latency"},
    "compact": {"metric": 0.6, "speedup": 2.5, "params": 1234, "encoder_params": 456, "flops": 7.0e6,
                "dense_flops": 2.0e7, "latency_ms": 1.5, "device": "cpu (1 threads)"},
    "timing": {"total_seconds": 12.0},
}


def wandb_records(path):
    """The records of an offline run's `run-*.wandb` file (wandb's leveldb-style log: 32 KiB blocks,
    each chunk a 7-byte header of checksum, length and type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks, block = Path(path).read_bytes(), 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer
            pos += left
            continue
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def offline_run_summary(path) -> tuple[dict, list]:
    """The run summary an offline run would sync (its summary records applied in order) and its artifacts."""
    summary, artifacts = {}, []
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "artifact":
            artifacts.append((record.artifact.name, record.artifact.type))
    return summary, artifacts


class FakeRun:
    def __init__(self):
        self.summary, self.logged, self.artifacts = {}, [], []

    def log(self, data):
        self.logged.append(data)

    def log_artifact(self, artifact):
        self.artifacts.append(artifact)


def test_scalars_are_flat_and_leave_out_structure_and_nones():
    flat = summary_scalars(SUMMARY)
    assert flat["student/metric"] == 0.6 and flat["teacher/metric"] == 0.8 and flat["compact/speedup"] == 2.5
    assert flat["compact/params"] == 1234 and flat["compact/flops"] == 7.0e6 and flat["student/sparsity"] == 0.89
    assert flat["retention"] == 0.6 / 0.8 and flat["student/cost"] == "latency" and flat["status"] == "completed"
    assert "student/target_speedup" not in flat and not any("layers" in key for key in flat)


def test_publish_writes_summary_image_and_optional_artifact(tmp_path):
    import wandb

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    fig.savefig(tmp_path / "structure.png")
    plt.close(fig)
    (tmp_path / "compact").mkdir()
    (tmp_path / "compact" / "config.json").write_text("{}")
    run = FakeRun()
    publish(run, SUMMARY, tmp_path)
    assert run.summary["compact/speedup"] == 2.5 and run.summary["student/metric"] == 0.6
    assert isinstance(run.summary["structure"], wandb.Image) and isinstance(run.logged[0]["structure"], wandb.Image)
    assert run.artifacts == []  # log_model_artifact is off by default
    publish(run, SUMMARY, tmp_path, log_model_artifact=True)
    [artifact] = run.artifacts
    assert artifact.type == "model" and artifact.metadata["compact/speedup"] == 2.5


@pytest.mark.slow  # a whole run (~20 s); the summary and image publishing are checked in-process above
def test_a_tiny_offline_run_puts_its_results_in_the_wandb_summary(tmp_path):
    args = ["task=sst2", "model=tiny", "trainer.max_steps=3", "logger=wandb", "logger.log_model_artifact=true"]
    result = run_grain(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = sorted(tmp_path.glob("**/summary.json"))
    summary = json.loads(path.read_text())
    [run_file] = sorted(path.parent.glob("wandb/offline-run-*/run-*.wandb"))
    logged, artifacts = offline_run_summary(run_file)
    assert logged["student/metric"] == summary["student"]["metric"]
    assert logged["student/sparsity"] == summary["student"]["sparsity"]
    assert logged["teacher/metric"] == summary["teacher"]["metric"]
    assert logged["compact/speedup"] == summary["compact"]["speedup"]
    assert logged["compact/params"] == summary["compact"]["params"] and logged["compact/flops"] == summary["compact"]["flops"]
    assert logged["structure"]["_type"] == "image-file"
    assert artifacts == [("compact-sst2-tiny-s0.9", "model")]
