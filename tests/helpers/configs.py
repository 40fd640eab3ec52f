"""grain's Hydra config as `python -m grain.run` composes it, the options of its config groups, and the
settings the tasks on the user's own files need."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

import grain  # noqa: F401  (registers the config's resolvers, as `python -m grain.run` does)
from tests.helpers.paths import CONF_DIR, FIXTURES


def compose_config(overrides: list[str] | None = None, tmp_path: Path | None = None):
    """Compose conf/config.yaml like `python -m grain.run` would, with paths pointed at tmp_path."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF_DIR)):
        cfg = compose("config", overrides=overrides or [], return_hydra_config=True)
    if tmp_path is not None:
        with open_dict(cfg):
            cfg.paths.root_dir = str(tmp_path)
            cfg.paths.output_dir = str(tmp_path / "run")
            cfg.paths.cache_dir = str(tmp_path / "cache")
            cfg.paths.data_dir = str(FIXTURES)
    return cfg


def options(group: str) -> list[str]:
    """The options of a config group (conf/<group>/*.yaml), sorted."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# The tasks on the user's own files check them at validation: give them the fixtures (tests/test_own_data.py).
OWN_DATA_FILES = {
    task: [f"task.train_file={FIXTURES / train}", f"task.validation_file={FIXTURES / dev}"]
    for task, train, dev in (
        ("text_classification", "own_data/sst2_train.csv", "own_data/sst2_dev.csv"),
        ("token_classification", "conll2003/train.txt", "conll2003/valid.txt"),
        ("question_answering", "squad/v1.1/dev.json", "squad/v1.1/dev.json"),
    )
}
OWN_DATA_FILES["retrieval"] = [f"task.datamodule.data_folder={FIXTURES / 'beir'}"]  # a BEIR folder
OWN_DATA_FILES["reranking"] = [f"task.train_file={FIXTURES / 'rerank' / 'train.jsonl'}",
                               f"task.datamodule.data_folder={FIXTURES / 'beir'}"]  # triples; BM25 candidates
OWN_DATA_FILES["sts"] = [f"task.validation_file={FIXTURES / 'sts' / 'dev.tsv'}"]  # scored pairs; distils on them
