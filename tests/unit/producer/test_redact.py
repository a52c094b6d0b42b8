"""Secrets never leave the process in run_start meta."""

from __future__ import annotations

import dataclasses

from rankstream.producer.redact import REDACTED, looks_secret, redact, redact_meta


def test_secret_keys_are_redacted_at_any_depth() -> None:
    meta = {
        "team": "nlp",
        "config": {
            "api_key": "abc123",
            "wandb": {"WANDB_TOKEN": "t0k", "password": 1234, "db_credentials": {"user": "u"}},
            "hub_token": "plain",
            "Authorization": "whatever",
            "client_secret": 42,
            "lr": 1e-4,
        },
    }
    out = redact_meta(meta)
    cfg = out["config"]
    assert out["team"] == "nlp"
    assert cfg["api_key"] == REDACTED
    assert cfg["wandb"]["WANDB_TOKEN"] == REDACTED
    assert cfg["wandb"]["password"] == REDACTED  # strong words: even numbers
    assert cfg["wandb"]["db_credentials"] == REDACTED
    assert cfg["hub_token"] == REDACTED
    assert cfg["Authorization"] == REDACTED
    assert cfg["client_secret"] == REDACTED
    assert cfg["lr"] == 1e-4


def test_numeric_model_settings_under_weak_words_are_kept() -> None:
    cfg = redact({"num_key_value_heads": 8, "max_tokens": 512, "pad_token_id": 0, "tokenizer_name": "gpt2"})
    assert cfg == {"num_key_value_heads": 8, "max_tokens": 512, "pad_token_id": 0, "tokenizer_name": "gpt2"}


def test_token_like_values_are_redacted_wherever_they_are() -> None:
    values = [
        "sk-proj-abcdefghijklmnop",
        "hf_AbCdEfGhIjKlMnOpQrSt",
        "ghp_0123456789abcdefghijABCDEFGHIJ",
        "AKIAIOSFODNN7EXAMPLE",
        "Bearer eyJhbGciOiJIUzI1NiJ9.payloadpayload.sig",
        "postgres://admin:hunter2@db:5432/x",
        "export HF=hf_AbCdEfGhIjKlMnOpQrSt now",
    ]
    out = redact({"notes": values, "plain": "llama-3-8b", "path": "/data/sk-models/x"})
    assert out["notes"] == [REDACTED] * len(values)
    assert out["plain"] == "llama-3-8b"
    assert out["path"] == "/data/sk-models/x"
    assert not looks_secret("use skip-connections and hf_hub cache")


def test_non_json_values_become_text_and_structures_are_bounded() -> None:
    @dataclasses.dataclass
    class Cfg:
        name: str
        secret_key: str
        dims: tuple[int, ...]

    out = redact({"cfg": Cfg("m", "s3cr3t", (1, 2)), "obj": object(), "nan": float("nan"), "set": {3}})
    assert out["cfg"] == {"name": "m", "secret_key": REDACTED, "dims": [1, 2]}
    assert out["obj"].startswith("<object object")
    assert out["nan"] == "nan"
    assert out["set"] == [3]
    deep: dict = {}
    node = deep
    for _ in range(20):
        node["x"] = {}
        node = node["x"]
    assert "<too deep>" in str(redact(deep))
    assert len(redact({"big": "a" * 10_000})["big"]) < 5000
