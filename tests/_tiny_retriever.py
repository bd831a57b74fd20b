"""Build a tiny, fully offline sentence-transformers retriever for the tests.

A word-level tokenizer over a small vocabulary, a 2-layer BERT (hidden 32, 2 heads) with random weights and mean
pooling: a few hundred KB on disk, loads and trains in milliseconds on a CPU.
"""

from __future__ import annotations

import os

WORDS = (
    "what who where when which how is was the a an of in on at to by for and or not "
    "paris france london england berlin germany rome italy madrid spain capital city river country "
    "seine thames rhine tiber tagus population large small old new famous museum tower bridge "
    "king queen president born year war peace music art science city's largest longest built "
    "eiffel louvre big ben colosseum prado brandenburg gate noise random filler text passage"
).split()


def build_tiny_retriever(path: str | os.PathLike, seed: int = 0, hidden_size: int = 32):
    """Write a tiny BERT encoder + word-level tokenizer to ``path`` and return a ``SentenceTransformer`` on it."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path = str(path)
    os.makedirs(path, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=vocab["[PAD]"],
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    transformer = models.Transformer(path, max_seq_length=128)
    pooling = models.Pooling(transformer.get_embedding_dimension(), "mean")
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")
