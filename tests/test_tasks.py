"""Tasks (grain.tasks): every task option builds its Task, every key of a task YAML is read, and only
grain.tasks knows the task types."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from grain.config import validate_config
from grain.errors import GrainError
from grain.stages.trainer import build_datamodule
from grain.tasks.base import Task, task_class
from tests.helpers.configs import OWN_DATA_FILES, compose_config, options
from tests.helpers.paths import CONF_DIR, REPO

SRC = REPO / "src" / "grain"
HEADS = {AutoModelForSequenceClassification, AutoModelForQuestionAnswering, AutoModelForTokenClassification, AutoModel}


@pytest.mark.parametrize("task", options("task"))
def test_every_task_composes_and_builds_its_task(task, tokenizer, tmp_path):
    """Each conf/task option validates and instantiates its data module with the tiny model's tokenizer:
    a datamodule key its class does not take (a typo, a removed argument) fails here."""
    cfg = compose_config([f"task={task}", "model=tiny", *OWN_DATA_FILES.get(task, [])], tmp_path)
    validate_config(cfg)
    datamodule = build_datamodule(cfg, tokenizer, batch_size=4, max_train_samples=cfg.task.max_train_samples)
    assert isinstance(datamodule, Task) and type(datamodule) is task_class(cfg)
    assert datamodule.auto_model_class in HEADS
    assert datamodule.eval_splits[0] == "validation"
    assert datamodule.tokenizer is tokenizer and datamodule.max_length == cfg.task.datamodule.max_length


def task_keys_read(key: str, sources: str) -> bool:
    """Whether grain's code or configs read `task.<key>` (an attribute, a `.get`, an interpolation)."""
    return re.search(rf"task\.{key}\b|task\.get\(['\"]{key}['\"]", sources) is not None


@pytest.mark.parametrize("task", options("task"))
def test_every_key_of_a_task_yaml_is_read(task):
    """A key nothing reads (a misspelt one, or the task-type string the tasks replaced) is refused."""
    sources = "\n".join(p.read_text() for p in [*SRC.rglob("*.py"), *CONF_DIR.rglob("*.yaml")])
    keys = [key for key in OmegaConf.load(CONF_DIR / "task" / f"{task}.yaml") if key != "datamodule"]
    assert [key for key in keys if not task_keys_read(key, sources)] == []


def test_an_unread_task_key_would_be_found():
    sources = "cfg.task.metric\nx: ${task.train_file}\ncfg.task.get('eval_split')"
    assert task_keys_read("metric", sources) and task_keys_read("train_file", sources)
    assert task_keys_read("eval_split", sources)
    assert not task_keys_read("type", sources) and not task_keys_read("metirc", sources)


# How code names a task type: the strings grain branched on, and the names of that old API.
TASK_TYPE_NAMES = re.compile(
    r"""task_type|task\.type\b|TASK_TYPES|AUTO_CLASS_BY_TASK|["'](classification|qa|ner|question_answering|"""
    r"""token_classification|text_classification|squad|glue|conll2003)["']"""
)


def task_type_names(root: Path) -> list[str]:
    """`file:line` of every line of grain's code outside grain/tasks that names a task type."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if (root / "tasks") in path.parents:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if TASK_TYPE_NAMES.search(line):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
    return found


def test_only_grain_tasks_names_task_types():
    assert task_type_names(SRC) == []


def test_a_task_type_name_outside_tasks_would_be_found(tmp_path):
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "glue.py").write_text('task_type = "classification"\n')
    (tmp_path / "losses.py").write_text('valid = labels != -100 if task_type == "ner" else None\n')
    (tmp_path / "config.py").write_text('if cfg.task.type == "qa":\n    pass\n')
    assert [line.split(":")[0] for line in task_type_names(tmp_path)] == ["config.py", "losses.py"]


@pytest.mark.parametrize(
    "target, named",
    [
        ("grain.tasks.classification.glue.NoSuchModule", "cannot be imported"),
        ("grain.errors.GrainError", "is not a grain.tasks.base.Task"),
    ],
)
def test_a_datamodule_target_that_is_no_task_is_refused(target, named, tmp_path):
    cfg = compose_config(["model=tiny", f"task.datamodule._target_={target}"], tmp_path)
    with pytest.raises(GrainError, match=rf"^task\.datamodule\._target_={re.escape(target)} {named}"):
        validate_config(cfg)


def test_question_answering_window_settings_are_checked_by_its_task(tmp_path):
    cfg = compose_config(["model=tiny", "task=squad", "task.datamodule.doc_stride=384"], tmp_path)
    with pytest.raises(GrainError, match=r"^task\.datamodule\.doc_stride=384 is not below task\.datamodule\.max_length=384"):
        validate_config(cfg)
    cfg = compose_config(["model=tiny", "task=squad", "task.datamodule.n_best=0"], tmp_path)
    with pytest.raises(GrainError, match=r"^task\.datamodule\.n_best=0"):
        validate_config(cfg)
