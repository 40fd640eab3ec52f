"""Vocabulary pruning: keep only the word embeddings of the tokens a task's text uses, and a tokenizer that
gives those tokens their new ids.

A large vocabulary is most of a small encoder's parameters (MiniLM-L6: 11.7M of 22.7M in its 30,522 x 384
word table; XLM-R's 250,002 rows; mmBERT's 256,000), and encoder pruning never touches it. A task's text
uses a small part of it: the kept rows are the ids its tokenized training and evaluation text holds, plus
the tokenizer's special tokens, in their old order.

The pruned tokenizer is the same tokenizers pipeline with the vocabulary cut to those tokens and renumbered
(special tokens, the post-processor's and the unknown token's ids with them). It tokenizes that text into
the same tokens, hence the renumbered ids:
- WordPiece (BERT, ELECTRA, DistilBERT, MiniLM): the greedy longest match finds the same entries (the ones
  it skipped were never in the vocabulary); WordLevel likewise looks words up.
- Unigram (XLM-R, DeBERTa-v3, SentencePiece models): the best segmentation of a text is still available
  and no new one appears.
- BPE (byte-level: RoBERTa, ModernBERT, GPT-2; SentencePiece BPE: mmBERT's Gemma tokenizer): a word's
  tokens are built by merges, each step taking the applicable merge of lowest rank. The kept tokens also
  hold the two parts of the merge that makes each kept token, recursively (`bpe_parts`: the tokens the
  text's words pass through), and the kept merges are those whose parts and result are all kept, in
  their order. Replaying a word, the merge BPE took at each step is kept and is still the lowest-ranked
  applicable one among fewer, so every step, hence every token, is the same.
Text outside the task's may tokenize differently (tokens it needs are gone: the unknown token, or other
pieces).
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable, Sequence

import torch
from torch import nn

from grain.errors import GrainError

SUPPORTED_MODELS = ("WordPiece", "WordLevel", "Unigram", "BPE")


def _spec(tokenizer) -> dict | None:
    """The tokenizers pipeline spec of a fast tokenizer (its "model": {"type": "WordPiece", "vocab": ...},
    post-processor, added tokens); None for a tokenizer without a tokenizers backend."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return None if backend is None else json.loads(backend.to_str())


def used_token_ids(token_ids: Iterable[Sequence[int]], tokenizer) -> list[int]:
    """The sorted ids that occur in `token_ids` (rows of input ids) and the tokenizer's special tokens; for a
    BPE tokenizer also the tokens the merges build them through (`bpe_parts`)."""
    used: set[int] = set(tokenizer.all_special_ids)
    for row in token_ids:
        used.update(row)
    spec = _spec(tokenizer)
    if spec is not None and spec["model"]["type"] == "BPE":
        used |= bpe_parts(used, spec["model"])
    return sorted(used)


def _merges(model: dict) -> list[tuple[str, str, str]]:
    """A BPE model spec's merges as (left, right, result), in rank order; the result drops the right part's
    `continuing_subword_prefix`, as the tokenizers library builds it."""
    cut = len(model.get("continuing_subword_prefix") or "")
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        merges.append((left, right, left + right[cut:]))
    return merges


def bpe_parts(ids: set[int], model: dict) -> set[int]:
    """The ids of the tokens a BPE model (its spec) builds the tokens `ids` from: the two parts of each
    merge whose result is one of them, recursively (in a trained BPE one merge makes each token)."""
    vocab = model["vocab"]
    token_of = {i: token for token, i in vocab.items()}
    made_by: dict[str, list[tuple[str, str]]] = {}
    for left, right, result in _merges(model):
        made_by.setdefault(result, []).append((left, right))
    seen = {token_of[i] for i in ids if i in token_of}
    stack = list(seen)
    while stack:
        for pair in made_by.get(stack.pop(), ()):
            for part in pair:
                if part in vocab and part not in seen:
                    seen.add(part)
                    stack.append(part)
    return {vocab[token] for token in seen}


def renumbering(kept: Sequence[int]) -> dict[int, int]:
    """{old id: new id} for the kept ids, in their old order."""
    return {old: new for new, old in enumerate(kept)}


def pruned_tokenizer(tokenizer, kept: Sequence[int]):
    """A fast tokenizer whose vocabulary is `tokenizer`'s kept ids (sorted old ids), renumbered 0..len-1 in
    that order; special tokens, the unknown token, a BPE model's merges among kept tokens and the
    post-processor (e.g. [CLS] ... [SEP]) follow. Raises GrainError for a tokenizer that is not a fast
    one of SUPPORTED_MODELS, or when `kept` lacks a special token's id (or, for BPE, a merge's part)."""
    from tokenizers import Tokenizer  # noqa: PLC0415  (transformers' dependency)
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

    spec = _spec(tokenizer)
    if spec is None:
        raise GrainError(f"compact.vocabulary=task needs a fast (tokenizers) tokenizer; {type(tokenizer).__name__} is "
                         f"not one: set compact.vocabulary=null")
    model = spec["model"]
    if model["type"] not in SUPPORTED_MODELS:
        raise GrainError(
            f"compact.vocabulary=task: {type(tokenizer).__name__} is a {model['type']} tokenizer; vocabulary pruning "
            f"supports {', '.join(SUPPORTED_MODELS)} tokenizers: set compact.vocabulary=null"
        )
    new_id = renumbering(kept)
    missing = [i for i in tokenizer.all_special_ids if i not in new_id]
    if missing:
        raise GrainError(f"compact.vocabulary: the kept ids lack the special token ids {missing}")
    if model["type"] == "BPE" and bpe_parts(set(kept), model) - set(kept):
        raise GrainError("compact.vocabulary: the kept ids of a BPE tokenizer lack tokens their merges pass "
                         "through (give the ids used_token_ids returns)")
    if model["type"] in ("WordPiece", "WordLevel", "BPE"):
        by_id = {i: token for token, i in model["vocab"].items()}
        model["vocab"] = {by_id[old]: new for old, new in new_id.items()}
        if model["type"] == "BPE":  # the merges among kept tokens, in their order (format as given)
            vocab = model["vocab"]
            model["merges"] = [merge for merge, (left, right, result) in zip(model["merges"], _merges(model))
                               if left in vocab and right in vocab and result in vocab]
    else:  # Unigram: [[piece, log probability], ...] in id order
        model["vocab"] = [model["vocab"][old] for old in kept]
        if model.get("unk_id") is not None:
            model["unk_id"] = new_id[model["unk_id"]]
    # added tokens (the special ones among them) that the kept ids hold, renumbered; the others go
    spec["added_tokens"] = [{**t, "id": new_id[t["id"]]} for t in spec.get("added_tokens") or [] if t["id"] in new_id]
    _renumber_post_processor(spec.get("post_processor"), new_id)
    spec["padding"] = spec["truncation"] = None  # a call's settings, not the tokenizer's
    # a name of its own (the source's and the kept ids'): caches keyed by a tokenizer's name and size
    # (grain.tasks.cache) must not take two pruned vocabularies of one size for the same
    digest = hashlib.sha256(json.dumps(list(kept)).encode()).hexdigest()[:16]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **tokenizer.special_tokens_map,
        name_or_path=f"{tokenizer.name_or_path}#vocabulary-{digest}",
        model_max_length=tokenizer.model_max_length, model_input_names=list(tokenizer.model_input_names),
        padding_side=tokenizer.padding_side, truncation_side=tokenizer.truncation_side,
    )


def _renumber_post_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    """The special tokens' ids in a post-processor spec (TemplateProcessing, BertProcessing,
    RobertaProcessing, or a Sequence of them), renumbered in place."""
    if not processor:
        return
    for inner in processor.get("processors") or []:
        _renumber_post_processor(inner, new_id)
    for special in (processor.get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    for key in ("sep", "cls"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(processor.get(key), list):
            processor[key] = [processor[key][0], new_id[processor[key][1]]]


@torch.no_grad()
def prune_word_embeddings(model: nn.Module, kept: Sequence[int]) -> None:
    """Keep the rows `kept` (sorted old ids) of `model`'s word embeddings, in place: a plain embedding
    table or the first factor of a factorized one (grain's FactorizedEmbedding: [vocab, rank] @ [rank,
    hidden]); `config.vocab_size` and `pad_token_id` follow. Raises GrainError for a model whose output
    layer is tied to the word embeddings (a language-model head)."""
    if model.get_output_embeddings() is not None:
        raise GrainError("compact.vocabulary=task: the model's output layer is its word embeddings (a language-model "
                         "head); prune the vocabulary of encoders with task heads only")
    embeddings = model.get_input_embeddings()
    table = getattr(embeddings, "embedding", embeddings)  # FactorizedEmbedding keeps its [vocab, rank] table there
    index = torch.tensor(list(kept), dtype=torch.long, device=table.weight.device)
    new_id = renumbering(kept)
    pad = model.config.pad_token_id
    new_pad = new_id.get(pad) if pad is not None else None
    smaller = nn.Embedding(len(kept), table.embedding_dim, padding_idx=new_pad, device=table.weight.device,
                           dtype=table.weight.dtype)
    smaller.weight.copy_(table.weight.index_select(0, index))
    if table is embeddings:
        model.set_input_embeddings(smaller)
    else:
        embeddings.embedding = smaller
    model.config.vocab_size = len(kept)
    model.config.pad_token_id = new_pad
    for module in model.modules():  # RoBERTa's embeddings count positions from the padding id they keep
        if not isinstance(module, nn.Embedding) and pad is not None and getattr(module, "padding_idx", None) == pad:
            module.padding_idx = new_pad


def embedding_parameters(model: nn.Module) -> int:
    """Parameters of the word embeddings (both factors of a factorized table)."""
    return sum(p.numel() for p in model.get_input_embeddings().parameters())
