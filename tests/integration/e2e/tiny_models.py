"""A tiny randomly initialised Qwen2 and its tokenizer, built locally (no download) for real-training tests."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_qwen2_tokenizer():
    """A byte-level tokenizer (256 byte tokens, no merges) with Qwen's chat special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_qwen2(vocab_size: int, pad_token_id: int, eos_token_id: int, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def save_tiny_qwen2(model_dir: Path) -> Path:
    """Tokenizer and random model saved as a local model directory (what ``--model`` points at)."""
    tokenizer = tiny_qwen2_tokenizer()
    tokenizer.save_pretrained(model_dir)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tiny_qwen2(len(tokenizer), tokenizer.pad_token_id, eos).save_pretrained(model_dir)
    return model_dir


def write_chat_jsonl(path: Path, n: int, offset: int = 0) -> Path:
    """``n`` short user/assistant conversations in ms-swift's ``messages`` format."""
    with path.open("w") as f:
        for i in range(offset, offset + n):
            messages = [
                {"role": "user", "content": f"what is {i} plus {i}?"},
                {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path
