"""The notify YAML: receivers, routes as a union, secrets from env and files that never print."""

from __future__ import annotations

from pathlib import Path

import pytest

from rankstream.errors import ConfigError
from rankstream.sinks.notify.config import Secret, alertmanager_only, load_config, parse_config

BASE = {
    "receivers": {
        "am": {"kind": "alertmanager", "url": "http://127.0.0.1:9093"},
        "slack": {"kind": "slack", "url": "${SLACK_URL}"},
        "ding": {
            "kind": "dingtalk",
            "url": "https://ding.example/robot?access_token=${DING_TOKEN}",
            "secret": "${DING_SECRET}",
        },
    },
    "routes": [
        {"receivers": ["am"]},
        {"match": {"team": ["nlp"], "severity": ["warning", "critical"]}, "receivers": ["slack", "ding"]},
        {"match": {"rule": "rank_hung"}, "receivers": ["ding", "am"]},
    ],
}
ENV = {"SLACK_URL": "https://hooks.slack.example/T/B/xyz", "DING_TOKEN": "tok123", "DING_SECRET": "SECabc"}


def test_routes_are_a_union_in_configuration_order() -> None:
    config = parse_config(BASE, env=ENV)
    names = lambda fields: [r.name for r in config.receivers_for(fields)]  # noqa: E731
    assert names({"team": "nlp", "severity": "critical", "rule": "loss_spike"}) == ["am", "slack", "ding"]
    assert names({"team": "nlp", "severity": "info", "rule": "loss_spike"}) == ["am"]
    assert names({"team": "cv", "severity": "critical", "rule": "rank_hung"}) == ["am", "ding"]
    assert config.receivers["ding"].url.reveal() == "https://ding.example/robot?access_token=tok123"
    assert config.receivers["ding"].secret.reveal() == "SECabc"
    assert config.group_wait_s == 10.0 and config.resolve_after_s == 900.0


def test_secrets_never_show_in_reprs() -> None:
    config = parse_config(BASE, env=ENV)
    text = repr(config) + str(config.receivers["ding"])
    for value in ENV.values():
        assert value not in text
    assert repr(Secret("x")) == "Secret('***')"


def test_secret_file_is_read_and_stripped(tmp_path: Path) -> None:
    path = tmp_path / "ding.secret"
    path.write_text("SECfromfile\n")
    raw = {"receivers": {"d": {"kind": "dingtalk", "url": "https://d.example/x", "secret_file": str(path)}}}
    config = parse_config(raw, env={})
    assert config.receivers["d"].secret.reveal() == "SECfromfile"
    assert [r.name for r in config.receivers_for({"team": "any"})] == ["d"]  # no routes: every receiver


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"receivers": {"s": {"kind": "slack", "url": "${NOPE}"}}}, "NOPE is not set"),
        ({"receivers": {"s": {"kind": "teams", "url": "http://x"}}}, "receivers.s.kind"),
        ({"receivers": {"s": {"kind": "slack", "url": "ftp://x"}}}, "receivers.s.url"),
        (
            {"receivers": {"s": {"kind": "slack", "url": "http://x"}}, "routes": [{"receivers": ["t"]}]},
            "unknown receiver",
        ),
        (
            {
                "receivers": {"s": {"kind": "slack", "url": "http://x"}},
                "routes": [{"receivers": ["s"], "match": {"sev": "x"}}],
            },
            "unknown key",
        ),
        ({"receivers": {"s": {"kind": "slack", "url": "http://x"}}, "retry": {"attempts": 0}}, "retry.attempts"),
        ({"receivers": {}}, "at least one receiver"),
    ],
)
def test_bad_configs_name_the_key(raw: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_config(raw, env={})


def test_load_config_reports_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_alertmanager_only() -> None:
    config = alertmanager_only("http://127.0.0.1:9093")
    assert [(r.name, r.kind) for r in config.receivers_for({})] == [("alertmanager", "alertmanager")]


def test_example_config_in_docs_parses() -> None:
    example = Path(__file__).resolve().parents[4] / "infra" / "prometheus" / "notify.example.yaml"
    config = load_config(
        example,
        env={"SLACK_WEBHOOK_URL": "https://hooks.slack.example/x", "DINGTALK_TOKEN": "t", "DINGTALK_SECRET": "s"},
    )
    assert {r.kind for r in config.receivers.values()} >= {"alertmanager", "slack", "dingtalk"}
