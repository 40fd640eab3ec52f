"""Vocabulary pruning (compact.vocabulary=task): the kept word embeddings and a renumbered tokenizer that
tokenizes the task's text into the same tokens, for WordPiece, Unigram and BPE tokenizers; exact logits."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import grain  # noqa: F401  (registers the compact classes)
from grain.errors import GrainError
from grain.models.masks import EncoderShape
from grain.models.slicing import compact_from_masked, factorized_copy
from grain.models.vocabulary import (
    embedding_parameters,
    prune_word_embeddings,
    pruned_tokenizer,
    renumbering,
    used_token_ids,
)
from tests.helpers.models import hard_masks, tiny_model
from tests.helpers.paths import FIXTURES, REPO
from tests.helpers.runs import run_grain, summaries

TEXTS = [line.split(",", 1)[0] for line in (FIXTURES / "own_data" / "sst2_train.csv").read_text().splitlines()[1:]]
OTHER = ["the film was a triumph", "dull and lifeless"]  # pairs and unseen combinations of the kept tokens


def same_tokens(full, small, texts, pairs=()):
    kept = used_token_ids(full(texts)["input_ids"] + [full(a, b)["input_ids"] for a, b in pairs], full)
    new_id = renumbering(kept)
    for args in [(texts,)] + [(a, b) for a, b in pairs]:
        old, new = full(*args), small(*args)
        rows = old["input_ids"] if isinstance(old["input_ids"][0], list) else [old["input_ids"]]
        got = new["input_ids"] if isinstance(new["input_ids"][0], list) else [new["input_ids"]]
        assert got == [[new_id[i] for i in row] for row in rows]
        assert {k: v for k, v in new.items() if k != "input_ids"} == {k: v for k, v in old.items() if k != "input_ids"}


def test_wordpiece_tokenizer_keeps_the_task_tokens_renumbered(tokenizer, tmp_path):
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3])]
    kept = used_token_ids(tokenizer(TEXTS)["input_ids"] + [tokenizer(a, b)["input_ids"] for a, b in pairs], tokenizer)
    small = pruned_tokenizer(tokenizer, kept)
    assert len(small) == len(kept) < len(tokenizer) / 20
    same_tokens(tokenizer, small, TEXTS, pairs)
    small.save_pretrained(tmp_path)  # what the compact folder holds, loaded by transformers alone
    same_tokens(tokenizer, AutoTokenizer.from_pretrained(tmp_path), TEXTS, pairs)


def unigram_tokenizer(tmp_path) -> PreTrainedTokenizerFast:
    """A small SentencePiece-style Unigram tokenizer, as XLM-R's (<s> A </s></s> B </s>), trained here."""
    backend = Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    backend.train_from_iterator(TEXTS * 3, trainers.UnigramTrainer(vocab_size=300, special_tokens=specials,
                                                                    unk_token="<unk>", show_progress=False))
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def test_unigram_tokenizer_keeps_the_task_tokens_renumbered(tmp_path):
    full = unigram_tokenizer(tmp_path)
    assert json.loads(full.backend_tokenizer.to_str())["model"]["type"] == "Unigram"
    pairs = [(TEXTS[0], TEXTS[1])]
    kept = used_token_ids(full(TEXTS)["input_ids"] + [full(a, b)["input_ids"] for a, b in pairs], full)
    small = pruned_tokenizer(full, kept)
    assert len(small) == len(kept) < len(full)
    same_tokens(full, small, TEXTS, pairs)


def bpe_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    """A small BPE tokenizer trained here: "byte-level" as RoBERTa's and ModernBERT's (<s> A </s></s> B </s>),
    or "prefixed" with WordPiece-style continuation pieces (##) and an unknown token."""
    if kind == "byte-level":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    else:
        backend = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      continuing_subword_prefix="##", show_progress=False)
    backend.train_from_iterator(TEXTS * 3, trainer)
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", cls_token="<s>",
                                   sep_token="</s>", pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize("kind", ["byte-level", "prefixed"])
def test_bpe_tokenizer_keeps_the_task_tokens_and_their_merge_parts(kind, tmp_path):
    """BPE: the kept tokens include the parts the merges build them through, the kept merges are those among
    kept tokens, and the task's text (and pairs of it) tokenizes into the same tokens renumbered; the final
    tokens alone would not do (a word's merges would stop short)."""
    full = bpe_tokenizer(kind)
    assert json.loads(full.backend_tokenizer.to_str())["model"]["type"] == "BPE"
    texts, pairs = TEXTS[:12], [(TEXTS[0], TEXTS[1])]
    rows = full(texts)["input_ids"] + [full(a, b)["input_ids"] for a, b in pairs]
    final = sorted(set(full.all_special_ids).union(*rows))
    kept = used_token_ids(rows, full)
    assert set(final) < set(kept) and len(kept) < len(full)
    small = pruned_tokenizer(full, kept)
    assert len(small) == len(kept)
    same_tokens(full, small, texts, pairs)
    small.save_pretrained(tmp_path)
    same_tokens(full, AutoTokenizer.from_pretrained(tmp_path), texts, pairs)
    with pytest.raises(GrainError, match="lack tokens their merges pass through"):
        pruned_tokenizer(full, final)


def test_tokenizers_that_are_not_fast_are_refused_in_one_line():
    class SlowTokenizer:  # no tokenizers backend, as a Python-only tokenizer
        all_special_ids = [0]

    with pytest.raises(GrainError, match="needs a fast \\(tokenizers\\) tokenizer") as err:
        pruned_tokenizer(SlowTokenizer(), [0, 1, 2])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("rank", [None, 8])
def test_pruned_embeddings_give_the_same_logits_on_renumbered_ids(rank):
    """A compact model (plain or factorized word embeddings) with only the used rows gives exactly the
    full model's logits on the same text renumbered."""
    model = tiny_model("bert", vocab=100)
    compact, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    if rank:
        compact = factorized_copy(compact, rank)
    ids = torch.tensor([[5, 17, 42, 99, 3, 0], [7, 7, 61, 2, 0, 0]])
    mask = (ids > 0).long()
    kept = sorted(set(ids.flatten().tolist()) | {0})
    with torch.no_grad():
        expected = compact(input_ids=ids, attention_mask=mask).logits
        before = embedding_parameters(compact)
        prune_word_embeddings(compact, kept)
        new_id = renumbering(kept)
        got = compact(input_ids=ids.apply_(new_id.get), attention_mask=mask).logits
    assert torch.equal(got, expected)
    assert compact.config.vocab_size == len(kept) and embedding_parameters(compact) < before


def test_xlm_roberta_shaped_model_with_a_unigram_vocabulary_gives_the_same_logits(tmp_path):
    """A tiny XLM-R-shaped compact model with a SentencePiece-style Unigram tokenizer: the pruned vocabulary
    and tokenizer give exactly the full model's logits on the task's text, padded batches and pairs."""
    full = unigram_tokenizer(tmp_path)
    model = tiny_model("xlm-roberta", vocab=len(full), pad_token_id=full.pad_token_id, bos_token_id=0, eos_token_id=2)
    compact, _ = compact_from_masked(model, hard_masks(EncoderShape.of(model)))
    pairs = ([t for t in TEXTS[:8]], [t for t in TEXTS[8:16]])
    kept = used_token_ids(full(TEXTS)["input_ids"] + full(*pairs)["input_ids"], full)
    small_tokenizer = pruned_tokenizer(full, kept)
    with torch.no_grad():
        expected = [compact(**full(*texts, padding=True, return_tensors="pt")).logits for texts in ((TEXTS,), pairs)]
        prune_word_embeddings(compact, kept)
        got = [compact(**small_tokenizer(*texts, padding=True, return_tensors="pt")).logits for texts in ((TEXTS,), pairs)]
    assert len(kept) < len(full) and compact.config.vocab_size == len(kept)
    for g, e in zip(got, expected):
        assert torch.equal(g, e)


def test_tiny_run_saves_the_task_vocabulary(tmp_path):
    """A run with compact.vocabulary=task: the compact folder's embeddings and tokenizer hold the task's
    tokens only, and its metric on the re-tokenized eval split equals the full vocabulary's."""
    args = ["task=text_classification", f"task.train_file={FIXTURES / 'own_data' / 'sst2_train.csv'}",
            f"task.validation_file={FIXTURES / 'own_data' / 'sst2_dev.csv'}", "model=tiny", "trainer.max_steps=4",
            "compact.vocabulary=task", "logger=none"]
    result = run_grain(args, tmp_path, data_dir=None, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    [path] = summaries(tmp_path)
    compact = json.loads(path.read_text())["compact"]
    vocabulary = compact["vocabulary"]
    assert vocabulary["metrics"] == compact["metrics"]
    assert vocabulary["tokens_kept"] < vocabulary["tokens_total"] / 50
    assert vocabulary["embedding_params"] < vocabulary["full_embedding_params"] / 50
    folder = path.parent / "compact"
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == vocabulary["tokens_kept"]
    assert len(AutoTokenizer.from_pretrained(folder)) == vocabulary["tokens_kept"]
