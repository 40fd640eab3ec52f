"""Bad inputs a user can give (checkpoints, model and teacher paths, label orders) are refused clearly
before anything trains, or handled right."""

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict
from transformers import AutoModelForSequenceClassification

from grain.config import validate_config
from grain.errors import GrainError
from grain.models.masks import EncoderShape
from grain.stages.resume import CHECKPOINT_SETTINGS_KEY, RecordSettings, resume_settings
from tests.helpers.configs import compose_config
from tests.helpers.models import all_kept_masks, tiny_model
from tests.helpers.pruning import sparsity_bound
from tests.helpers.runs import run_grain

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


def test_a_resume_on_another_number_of_processes_is_refused_naming_the_counts(tmp_path):
    """Each process reads its own share of the data: a checkpoint of 2 processes resumed on 1 (accepted
    before, ending with other masks than the uninterrupted run) is refused at validation, or, where the
    count is `auto`, when Lightning loads it."""
    cfg = compose_config(TINY, tmp_path)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"controller.mask_ffn": torch.ones(2, 4)}, "global_step": 3,
                CHECKPOINT_SETTINGS_KEY: {**resume_settings(cfg), "processes": 2}}, ckpt)
    with pytest.raises(GrainError) as err:
        validate_config(with_ckpt(tmp_path, ckpt))
    assert one_line(err) == (
        f"ckpt_path={ckpt} was written by a run on 2 process(es) and this run has 1: each process reads its own "
        f"share of the data, so the run would not continue as it was; resume with trainer.devices=2")
    validate_config(with_ckpt(tmp_path, ckpt, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"))
    validate_config(with_ckpt(tmp_path, ckpt, "trainer.devices=auto"))  # known only when Lightning starts:

    class OneProcess:
        world_size = 1

    with pytest.raises(GrainError, match="on 2 process"):
        RecordSettings({}).on_load_checkpoint(OneProcess(), None, torch.load(ckpt, weights_only=True))


def test_ckpt_path_needs_the_prune_stage(tmp_path):
    ckpt = prune_checkpoint(tmp_path / "last.ckpt", None)
    with pytest.raises(GrainError, match="add it"):
        validate_config(with_ckpt(tmp_path, ckpt, "stages=[teacher]"))


def test_the_prune_stage_records_its_settings_and_refuses_another_runs_checkpoint(tmp_path):
    from grain.pipeline import run_pipeline

    cfg = compose_config([*TINY, "sparsity=0.5", "stages=[teacher,prune]"], tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]  # as Hydra hands the config to a job
    run_pipeline(cfg, tmp_path / "run", validate_config(cfg))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)[CHECKPOINT_SETTINGS_KEY]
    assert saved == {**resume_settings(cfg), "processes": 1} and saved["sparsity"] == 0.5
    validate_config(with_ckpt(tmp_path, ckpt, "sparsity=0.5", "stages=[teacher,prune]"))
    with pytest.raises(GrainError, match=r"sparsity=0\.5 \(this run: 0\.9\)"):
        validate_config(with_ckpt(tmp_path, ckpt, "sparsity=0.9", "stages=[teacher,prune]"))


def saved_model_dir(model, tokenizer, path):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_missing_pretrained_model_is_one_line_naming_the_setting(tmp_path):
    with pytest.raises(GrainError) as err:
        validate_config(compose_config(["model.pretrained=/nonexistent"], tmp_path))
    message = one_line(err)
    assert message.startswith("model.pretrained=/nonexistent does not exist") and "model=minilm" in message
    with pytest.raises(GrainError, match=r"^model.pretrained=.* \(no config.json in it\)"):
        validate_config(compose_config([f"model.pretrained={tmp_path}"], tmp_path))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no weights", "no config"])
def test_a_damaged_teacher_path_is_refused_before_training(damage, tmp_path, tiny_bert, tokenizer):
    teacher = saved_model_dir(tiny_bert, tokenizer, tmp_path / "teacher")
    weights = teacher / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(b"\x00" * 64)
    elif damage == "no weights":
        weights.unlink()
    else:
        (teacher / "config.json").unlink()
    with pytest.raises(GrainError) as err:
        validate_config(compose_config([*TINY, f"teacher.path={teacher}"], tmp_path))
    assert one_line(err).startswith(f"teacher.path={teacher}")
    if damage in ("truncated", "garbage"):
        assert "model.safetensors is damaged" in str(err.value)


class RunsCode:
    """A pickle that runs `touch <marker>` when loaded without weights_only: a malicious weights file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_in_teacher_path_is_one_line_and_never_runs(tmp_path, tiny_bert, tokenizer):
    """teacher.path with a pytorch_model.bin that holds code: refused at validation in one line, without
    torch's advice to load it with weights_only=False (which would run it); the code never runs."""
    teacher = saved_model_dir(tiny_bert, tokenizer, tmp_path / "teacher")
    (teacher / "model.safetensors").unlink()
    marker = tmp_path / "ran"
    torch.save({"bert.embeddings.word_embeddings.weight": RunsCode(marker)}, teacher / "pytorch_model.bin")
    with pytest.raises(GrainError) as err:
        validate_config(compose_config([*TINY, f"teacher.path={teacher}"], tmp_path))
    message = one_line(err)
    assert message.startswith(f"teacher.path={teacher}: pytorch_model.bin holds objects other than tensors")
    assert "weights_only=False" not in str(err.value) and not marker.exists()


def test_a_model_directory_without_tokenizer_files_is_refused(tmp_path, tiny_bert):
    """A model saved without its tokenizer: transformers builds a 5-token tokenizer from its config and every
    word became [UNK]; refused at validation (model.tokenizer defaults to model.pretrained), and on load."""
    from grain.models.backbone import load_tokenizer

    bare = tmp_path / "bare"
    tiny_bert.save_pretrained(bare)
    with pytest.raises(GrainError) as err:
        validate_config(compose_config(["model=bert-base", f"model.pretrained={bare}", *TINY[1:]], tmp_path))
    assert one_line(err).startswith(f"model.tokenizer={bare} holds no tokenizer files")
    with pytest.raises(GrainError, match=r"has \d tokens \(no tokenizer files: every word would be \[UNK\]\)"):
        load_tokenizer(str(bare))


def test_a_tokenizer_that_pads_on_the_left_pads_on_the_right_in_grain(tmp_path, tokenizer):
    """padding_side=left in a tokenizer's config shifted [CLS] and the positions of every padded row; grain
    pads on the right, where its encoders read the first token and count positions."""
    from grain.models.backbone import load_tokenizer

    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp_path / "left")
    tokenizer.padding_side = "right"
    loaded = load_tokenizer(str(tmp_path / "left"))
    assert loaded.padding_side == "right"
    batch = loaded(["a short one", "a rather longer sentence than that"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0].tolist()[:4] == [1, 1, 1, 1] and batch["attention_mask"][0, -1] == 0
    assert batch["input_ids"][0, 0] == loaded.cls_token_id


def test_a_damaged_model_file_fails_to_load_in_one_line(tmp_path, tiny_bert, tokenizer):
    """Where validation cannot look (a model swapped after it), loading still names the model."""
    from grain.models.backbone import load_task_model, load_tokenizer

    cfg = compose_config(TINY, tmp_path)
    teacher = saved_model_dir(tiny_bert, tokenizer, tmp_path / "teacher")
    (teacher / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(GrainError) as err:
        load_task_model(cfg.model, AutoModelForSequenceClassification, 3, path=str(teacher))
    assert str(teacher) in one_line(err)
    with pytest.raises(GrainError) as err:
        load_tokenizer("not a valid repo id!!")  # transformers: 'Repo id must use alphanumeric chars', 70 lines
    assert "model.tokenizer" in one_line(err)


def test_a_max_length_beyond_the_model_is_refused(tmp_path):
    with pytest.raises(GrainError) as err:
        validate_config(compose_config(["model=tiny", "task.datamodule.max_length=1024"], tmp_path))
    assert one_line(err).startswith("task.datamodule.max_length=1024 is longer than model=tiny can read (512")


def test_an_unsupported_family_is_refused_naming_the_supported_ones(tmp_path, tokenizer):
    """A decoder (GPT-2) is refused at validation, whatever its name, before anything trains."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = saved_model_dir(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=100)), tokenizer,
                           tmp_path / "gpt2")
    with pytest.raises(GrainError) as err:
        validate_config(compose_config(["model=tiny", f"model.pretrained={gpt2}", "model.name=mine"], tmp_path))
    message = one_line(err)
    assert message.startswith("model=mine") and "gpt2 model" in message
    assert "bert, camembert, deberta-v2, distilbert, electra, modernbert, roberta, xlm-roberta" in message
    validate_config(compose_config(["model=roberta-base"], tmp_path))  # RoBERTa compacts now


def test_a_local_roberta_runs_masked(tmp_path, tokenizer):
    """A (tiny, local) RoBERTa run without compaction prunes to the target, masked; its position
    offset counts against max_length."""
    from transformers import RobertaForMaskedLM

    from grain.pipeline import run_pipeline

    model = tiny_model("roberta", RobertaForMaskedLM, layers=2, ffn=64, vocab=len(tokenizer), labels=2, seed=None,
                       max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id, type_vocab_size=2)
    roberta = saved_model_dir(model, tokenizer, tmp_path / "roberta")
    overrides = ["model=roberta-base", f"model.pretrained={roberta}", "task.datamodule.max_length=64", *TINY]
    with pytest.raises(GrainError, match=r"max_length=200 is longer than .* \(128 positions\)"):
        validate_config(compose_config([*overrides, "stages=[teacher,prune]", "pruner.compact_after_end=false",
                                        "task.datamodule.max_length=200"], tmp_path))
    cfg = compose_config([*overrides, "stages=[teacher,prune]", "pruner.compact_after_end=false"], tmp_path)
    with open_dict(cfg):
        del cfg["hydra"]
    summary = run_pipeline(cfg, tmp_path / "run", validate_config(cfg))
    assert summary["status"] == "completed"
    shape = EncoderShape(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64)
    assert sparsity_bound(0.9, shape) <= summary["student"]["sparsity"] <= 0.9


MNLI = ["entailment", "neutral", "contradiction"]


def mnli_teacher_dirs(cfg, tokenizer, tmp_path):
    """A 3-label teacher saved twice: in the task's label order, and with its labels (and classifier
    rows) in another order, as a teacher fine-tuned elsewhere may be."""
    from grain.models.backbone import load_task_model

    model = load_task_model(cfg.model, AutoModelForSequenceClassification, 3)
    model.config.id2label, model.config.label2id = dict(enumerate(MNLI)), {n: i for i, n in enumerate(MNLI)}
    in_order = saved_model_dir(model, tokenizer, tmp_path / "in_order")
    other = ["contradiction", "neutral", "entailment"]
    rows = torch.tensor([MNLI.index(name) for name in other])
    with torch.no_grad():
        model.classifier.weight.copy_(model.classifier.weight[rows])
        model.classifier.bias.copy_(model.classifier.bias[rows])
    model.config.id2label, model.config.label2id = dict(enumerate(other)), {n: i for i, n in enumerate(other)}
    reordered = saved_model_dir(model, tokenizer, tmp_path / "reordered")
    return in_order, reordered


def test_a_given_teacher_with_another_label_order_is_scored_by_label_name(tmp_path, tokenizer):
    from grain.stages.teacher import run_teacher_stage

    cfg = compose_config(["task=mnli", *TINY], tmp_path)
    in_order, reordered = mnli_teacher_dirs(cfg, tokenizer, tmp_path)
    results = {}
    for name, path in (("in_order", in_order), ("reordered", reordered)):
        with open_dict(cfg):
            cfg.teacher.path = str(path)
        results[name] = run_teacher_stage(cfg, tokenizer, tmp_path / name, logger=None)
    batch = tokenizer(["a cat sat", "two dogs ran far"], ["a cat", "dogs"], return_tensors="pt", padding=True)
    expected = results["in_order"].model.eval()(**batch).logits
    torch.testing.assert_close(results["reordered"].model.eval()(**batch).logits, expected)
    assert results["reordered"].metrics == results["in_order"].metrics
    assert results["reordered"].model.config.id2label == dict(enumerate(MNLI))


@pytest.mark.parametrize("id2label", [{0: "positive", 1: "negative", 2: "other"}, {0: "LABEL_0", 1: "LABEL_1"}])
def test_a_given_teacher_with_other_labels_is_refused(id2label, tmp_path, tokenizer, tiny_bert):
    from grain.stages.teacher import run_teacher_stage

    tiny_bert.config.id2label = id2label
    tiny_bert.config.label2id = {v: k for k, v in id2label.items()}
    if len(id2label) == 2:
        tiny_bert.classifier = torch.nn.Linear(tiny_bert.config.hidden_size, 2)
    teacher = saved_model_dir(tiny_bert, tokenizer, tmp_path / "teacher")
    cfg = compose_config(["task=mnli", *TINY, f"teacher.path={teacher}"], tmp_path)
    with pytest.raises(GrainError) as err:
        run_teacher_stage(cfg, tokenizer, tmp_path / "run", logger=None)
    message = one_line(err)
    assert message.startswith(f"teacher.path={teacher} predicts the labels") and "entailment" in message


def test_a_given_teacher_with_named_other_labels_is_one_line_at_validation_leaving_nothing(tmp_path, tokenizer,
                                                                                         tiny_bert):
    """Refused in the teacher stage before (three lines, and a run dir); now at validation: one line, exit 2,
    no run dir."""
    tiny_bert.config.id2label = {0: "positive", 1: "negative", 2: "other"}
    tiny_bert.config.label2id = {v: k for k, v in tiny_bert.config.id2label.items()}
    teacher = saved_model_dir(tiny_bert, tokenizer, tmp_path / "teacher")
    result = run_grain(["task=mnli", *TINY, f"teacher.path={teacher}"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"grain: error: teacher.path={teacher} predicts the labels")
    assert not (tmp_path / "outputs").exists()


def test_a_given_teacher_with_another_head_is_refused(tmp_path, tokenizer):
    """A token classifier given as the teacher of a sentence task was accepted with a new, untrained
    sequence head when its labels were unnamed; refused at validation by the class its config names."""
    tagger = tiny_model(head="token", labels=2)
    teacher = saved_model_dir(tagger, tokenizer, tmp_path / "tagger")
    with pytest.raises(GrainError) as err:
        validate_config(compose_config(["task=sst2", *TINY, f"teacher.path={teacher}"], tmp_path))
    assert one_line(err) == (
        f"teacher.path={teacher} is a BertForTokenClassification (a TokenClassification head) and task=sst2 needs a "
        f"SequenceClassification head; give a teacher fine-tuned for this kind of task, or drop teacher.path to "
        f"fine-tune one")


def test_saved_models_carry_the_tasks_label_names(tmp_path, tokenizer):
    from grain.models.compact.bert import GrainBertPreTrainedModel
    from grain.models.slicing import compact_from_masked
    from grain.stages.prune import run_prune_stage
    from grain.stages.teacher import run_teacher_stage

    cfg = compose_config(["task=mnli", *TINY, "stages=[teacher,prune]"], tmp_path)
    teacher = run_teacher_stage(cfg, tokenizer, tmp_path / "run", logger=None)
    cached = json.loads((Path(teacher.path) / "config.json").read_text())
    assert cached["id2label"] == {str(i): name for i, name in enumerate(MNLI)}
    assert cached["label2id"] == {name: i for i, name in enumerate(MNLI)}
    with open_dict(cfg):
        cfg.student.init = "pretrained"  # not a copy of the (named) teacher
    pruned = run_prune_stage(cfg, tokenizer, teacher.model, tmp_path / "run", logger=None)
    assert pruned.student.config.id2label == dict(enumerate(MNLI))
    compact = pruned.student
    if not isinstance(compact, GrainBertPreTrainedModel):  # not compacted when its masks froze
        pruned.controller.detach()
        compact, _ = compact_from_masked(compact, all_kept_masks(EncoderShape.of(compact)))
    compact.save_pretrained(tmp_path / "compact")
    assert json.loads((tmp_path / "compact" / "config.json").read_text())["id2label"]["2"] == "contradiction"
