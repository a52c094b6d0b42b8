"""The compose file cannot run here (no Docker engine); check it lines up with the code."""

from __future__ import annotations

import re

import yaml

from rankstream.config import ENV_VARS, Settings
from tests.paths import REPO_ROOT

COMPOSE = REPO_ROOT / "infra" / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_present_and_wired() -> None:
    services = _compose()["services"]
    assert {"kafka", "clickhouse", "worker", "sink"} <= set(services)
    assert services["worker"]["command"][:2] == ["rankstream", "worker"]
    assert services["sink"]["command"][:2] == ["rankstream", "sink"]
    assert "service_healthy" in str(services["sink"]["depends_on"]["clickhouse"])


def test_clickhouse_is_at_least_25_8_and_kafka_is_kraft() -> None:
    services = _compose()["services"]
    major, minor = (int(x) for x in services["clickhouse"]["image"].split(":")[1].split(".")[:2])
    assert (major, minor) >= (25, 8)
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert services["kafka"]["image"].startswith("apache/kafka:4")


def test_every_rankstream_variable_is_a_config_name() -> None:
    services = _compose()["services"]
    for name in ("worker", "sink", "topics"):
        env = services[name]["environment"]
        names = {k for k in env if k.startswith("RANKSTREAM_")}
        assert names, name
        unknown = names - set(ENV_VARS)
        assert not unknown, f"{name} uses variables the code does not read: {unknown}"
        for key in ("RANKSTREAM_BOOTSTRAP_SERVERS", "RANKSTREAM_STORE_DSN", "RANKSTREAM_TOPIC_PREFIX"):
            assert key in env


def test_compose_environment_parses_into_settings() -> None:
    env = dict(_compose()["services"]["sink"]["environment"])
    # resolve ${VAR:-default} the way compose does with an empty environment
    resolved = {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}
    settings = Settings.from_env(resolved)
    assert settings.bootstrap_servers == "kafka:9092"
    assert settings.dsn.startswith("http://rankstream:rankstream@clickhouse:8123/")
    kafka_port = _compose()["services"]["kafka"]["environment"]["KAFKA_LISTENERS"]
    assert ":9092" in kafka_port
