"""`rankstream notify` without a broker: configuration errors exit 2 with one line, --check lists receivers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[4] / "infra" / "prometheus" / "notify.example.yaml"


def notify(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rankstream.cli", "notify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_check_lists_receivers_without_their_urls_or_secrets() -> None:
    env = {"SLACK_WEBHOOK_URL": "https://hooks.example/T/B/sekrit", "DINGTALK_TOKEN": "tok9", "DINGTALK_SECRET": "SEC7"}
    done = notify("--config", str(EXAMPLE), "--check", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "alertmanager: alertmanager",
        "nlp-slack: slack",
        "nlp-dingtalk: dingtalk (signed)",
    ]
    assert not any(secret in done.stdout + done.stderr for secret in ("sekrit", "tok9", "SEC7"))


def test_configuration_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    missing_env = notify("--config", str(EXAMPLE), "--check")
    assert missing_env.returncode == 2
    assert missing_env.stderr.strip() == (
        "rankstream: error: configuration error: "
        "receivers.nlp-slack.url: environment variable SLACK_WEBHOOK_URL is not set"
    )
    neither = notify()
    assert neither.returncode == 2 and "give --config FILE or --alertmanager URL" in neither.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("receivers: {x: {kind: pager, url: 'http://x'}}\n")
    wrong = notify("--config", str(bad))
    assert wrong.returncode == 2 and "receivers.x.kind" in wrong.stderr and len(wrong.stderr.splitlines()) == 1


def test_team_option_is_validated_like_the_variable() -> None:
    bad = notify("--alertmanager", "http://127.0.0.1:9", "--team", "a.b", "--check")
    assert bad.returncode == 2 and "RANKSTREAM_TEAM='a.b'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    every = notify("--alertmanager", "http://127.0.0.1:9", "--team", "*", "--check")
    assert every.returncode == 0 and every.stdout.splitlines() == ["alertmanager: alertmanager"]
