"""Random model inputs, the one builder for timing, FLOP counting, exactness checks and export."""

from __future__ import annotations

import inspect

import torch

# Ids below this are special tokens in BERT-style vocabularies ([PAD] 0, [UNK] 100, [CLS] 101, ...).
FIRST_WORD_ID = 1000
LAST_WORD_ID = 20000


def random_batch(config, batch: int, seq_len: int, padded: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Inputs of a [batch, seq_len] block for a model with HF config `config`, on `device`.

    input_ids: random word ids within the vocabulary (from FIRST_WORD_ID, or half the vocabulary where
    it is smaller, up to LAST_WORD_ID), drawn by a seeded CPU generator, so every device type gets the
    same ids. attention_mask: all ones; with `padded`, row i keeps seq_len - i * step tokens (at least
    1; step = seq_len // (batch + 1)) and the rest is padding (`pad_token_id`). token_type_ids: zeros;
    with `padded` and a model with two segments (type_vocab_size > 1), the second half of each row's
    tokens is segment 1. All int64 [batch, seq_len].
    """
    vocab = int(config.vocab_size)
    low = min(FIRST_WORD_ID, vocab // 2)
    high = max(low + 1, min(vocab, LAST_WORD_ID))
    generator = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(low, high, (batch, seq_len), generator=generator, device="cpu")
    attention = torch.ones_like(ids)
    token_types = torch.zeros_like(ids)
    if padded:
        step = max(1, seq_len // (batch + 1))
        for row in range(batch):
            length = max(1, seq_len - row * step)
            attention[row, length:] = 0
            if (getattr(config, "type_vocab_size", None) or 0) > 1:
                token_types[row, length // 2:length] = 1
        ids = ids.masked_fill(attention == 0, getattr(config, "pad_token_id", None) or 0)
    batch_inputs = {"input_ids": ids, "attention_mask": attention, "token_type_ids": token_types}
    return {name: tensor.to(device) for name, tensor in batch_inputs.items()}


def model_input_names(model) -> list[str]:
    """The inputs `model` (an HF or compact encoder) reads: input_ids and attention_mask, plus
    token_type_ids where its forward takes them and its config has two or more segments
    (type_vocab_size > 1: BERT, ELECTRA; not RoBERTa/XLM-R with one, DeBERTa-v3 with none, DistilBERT
    whose config has no token types). What ONNX files and serving folders declare; Hugging Face's optimum
    declares the same per family."""
    names = ["input_ids", "attention_mask"]
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    if takes_types and (getattr(model.config, "type_vocab_size", None) or 0) > 1:
        names.append("token_type_ids")
    return names
