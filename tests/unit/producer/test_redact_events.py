"""Secrets in tags, tag names and metric names never reach the wire bytes (issue 14 item 5)."""

from __future__ import annotations

import json

import pytest

from rankstream.producer.events import EventEncoder
from rankstream.producer.redact import REDACTED, looks_secret, redact_metric_names, redact_name, redact_tags

HF = "hf_kKpXyZAbCdEfGhIjKlMnOpQrStUvWxYz12"
AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dBjftJeZ4CVPmB92K27uhbUJU1p1r_wW1gFWFOEjXk"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "-----END RSA PRIVATE KEY-----"
)

SECRET_TAG_VALUES = [
    f"python train.py --hub_token {HF}",
    f"AWS_ACCESS_KEY_ID={AWS_ID}",
    f"aws_secret_access_key = {AWS_SECRET}",
    f"Authorization: Bearer {JWT}",
    "Basic dXNlcjpodW50ZXIyMDI2",
    "s3://ml-bucket/ckpt?X-Amz-Security-Token=FwoGZXIvYXdzEJr//////////wEaDNhbG9uZ",
    "https://trainer:S3cr3tPassw0rd@registry.internal:5000/v2/",
    "postgresql://mlflow:hunter2hunter2@db.internal/mlflow",
    PEM,
    "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ",
    "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX",
    "https://api.example.com/v1?api_key=9f8e7d6c5b4a39281706",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
    "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWx",
    "pypi-AgEIcHlwaS5vcmcCJGE4ZjY5",
]


@pytest.mark.parametrize("value", SECRET_TAG_VALUES)
def test_realistic_secrets_in_tag_values_are_redacted(value: str) -> None:
    assert looks_secret(value), value
    assert redact_tags({"note": value}) == {"note": REDACTED}


def test_tags_under_secret_names_and_ordinary_tags() -> None:
    tags = {"hf_token": "abc", "db_password": "x", "auth": "anything", "phase": "train", "tokenizer": "llama3"}
    assert redact_tags(tags) == {
        "hf_token": REDACTED,
        "db_password": REDACTED,
        "auth": REDACTED,
        "phase": "train",
        "tokenizer": "llama3",
    }


@pytest.mark.parametrize(
    "harmless",
    ["train", "eval/loss", "llama-3-8b-instruct", "/data/sk-models/x", "skip-connections", "basic augmentation",
     "Basic tokenization pipeline", "max_tokens=4096", "hf_hub cache", "s3://bucket/ckpt/step-100"],
)  # fmt: skip
def test_ordinary_text_is_kept(harmless: str) -> None:
    assert not looks_secret(harmless), harmless
    assert redact_tags({"note": harmless}) == {"note": harmless}


def test_secret_parts_of_names_are_replaced_and_the_rest_kept() -> None:
    assert redact_name(f"eval/{HF}/loss") == f"eval/{REDACTED}/loss"
    assert redact_name("loss") == "loss"
    metrics = {"loss": 1.0, f"val_{AWS_ID}_acc": 0.5}
    out = redact_metric_names(metrics)
    assert out == {"loss": 1.0, f"val_{REDACTED}_acc": 0.5}
    plain = {"loss": 1.0}
    assert redact_metric_names(plain) is plain  # nothing to do: no copy on the common path


def test_nothing_secret_reaches_the_wire() -> None:
    encoder = EventEncoder("run-1", 0, 2, 0, host="h")
    secrets = [
        HF,
        AWS_ID,
        AWS_SECRET,
        JWT,
        "S3cr3tPassw0rd",
        "hunter2hunter2",
        "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgO",
    ]
    tags = {f"note{i}": v for i, v in enumerate(SECRET_TAG_VALUES)} | {f"run_{HF}": "x", "phase": "train"}
    metrics = {"loss": 2.5, f"grad_norm/{AWS_ID}": 1.0, f"{JWT}": 3.0}
    wire = encoder.encode("step", 3, 1.0, 7, metrics=metrics, tags=tags)
    text = wire.decode()
    for secret in secrets:
        assert secret not in text, secret
    event = json.loads(wire)
    assert event["metrics"]["loss"] == 2.5 and event["metrics"][f"grad_norm/{REDACTED}"] == 1.0
    assert event["metrics"][REDACTED] == 3.0
    assert event["tags"]["phase"] == "train" and event["tags"][f"run_{REDACTED}"] == "x"
    assert all(event["tags"][f"note{i}"] == REDACTED for i in range(len(SECRET_TAG_VALUES)))
