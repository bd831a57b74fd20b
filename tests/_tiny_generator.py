"""Build a tiny, fully offline causal LM (2-layer Llama + word-level tokenizer with a ChatML chat template)."""

from __future__ import annotations

import os

WORDS = (
    "what who where when which how is was the a an of in on at to by for and or not passage question answer "
    "paris france london england berlin germany rome italy capital city river country seine thames rhine "
    "system user assistant you answer questions using given passages reply with only few words no full sentence : "
    "1 2 3 4 5 6 7 8 9 10 ? . , yes"
).split()

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_generator(path: str | os.PathLike, seed: int = 0, chat_template: bool = True):
    """Write a tiny Llama + tokenizer to ``path``; returns the folder path (load it with ``load_generator``)."""
    import torch
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = str(path)
    os.makedirs(path, exist_ok=True)
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|im_end|>", model_max_length=512,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    if chat_template:
        tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, bos_token_id=vocab["<|im_start|>"],
        eos_token_id=vocab["<|im_end|>"], pad_token_id=vocab["<|im_end|>"], tie_word_embeddings=True,
        initializer_range=0.5,  # large random weights: outputs that depend on the prompt
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
