from __future__ import annotations

import pytest

from rankstream.config import ENV_VARS, ConfigError, Settings


def test_env_and_flags() -> None:
    env = {"RANKSTREAM_BOOTSTRAP_SERVERS": "a:1,b:2", "RANKSTREAM_PARTITIONS": "12", "RANKSTREAM_TOPIC_PREFIX": "x"}
    s = Settings.from_env(env, topic_prefix="y")
    assert s.partitions == 12
    assert s.topics.events == "y.events"
    assert s.kafka_python_kwargs()["bootstrap_servers"] == ["a:1", "b:2"]
    assert s.aiokafka_kwargs()["bootstrap_servers"] == "a:1,b:2"


def test_default_dsn_is_embedded_under_state_dir(tmp_path) -> None:
    s = Settings.from_env({}, state_dir=str(tmp_path))
    assert s.dsn == f"chdb://{tmp_path.resolve()}/store"
    assert Settings.from_env({"RANKSTREAM_STORE_DSN": "http://u:p@h:8123/db"}).dsn == "http://u:p@h:8123/db"


def test_sasl_settings_reach_both_clients() -> None:
    s = Settings.from_env(
        {
            "RANKSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "RANKSTREAM_SASL_MECHANISM": "SCRAM-SHA-512",
            "RANKSTREAM_SASL_USERNAME": "u",
            "RANKSTREAM_SASL_PASSWORD": "s3cr3t-pw",
        }
    )
    for kwargs in (s.kafka_python_kwargs(), s.aiokafka_kwargs()):
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kwargs["sasl_plain_username"] == "u"
        assert kwargs["sasl_plain_password"] == "s3cr3t-pw"
    assert "s3cr3t-pw" not in repr(s)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANKSTREAM_SECURITY_PROTOCOL": "TLS"}, "RANKSTREAM_SECURITY_PROTOCOL"),
        ({"RANKSTREAM_SECURITY_PROTOCOL": "SASL_SSL"}, "RANKSTREAM_SASL_MECHANISM"),
        ({"RANKSTREAM_PARTITIONS": "many"}, "expected an integer"),
        ({"RANKSTREAM_TOPIC_PREFIX": "a b"}, "RANKSTREAM_TOPIC_PREFIX"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_env_var_list_covers_every_field() -> None:
    assert "RANKSTREAM_STORE_DSN" in ENV_VARS and "RANKSTREAM_SSL_CAFILE" in ENV_VARS
