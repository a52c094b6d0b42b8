"""``rankstream access kafka``: team identity on Kafka (SCRAM users, ACLs, topics) from one teams YAML.

Without ``--apply`` it prints Kafka's own commands for a cluster (no password needed); with
``--apply`` it creates users, ACLs and topics as the admin of ``RANKSTREAM_SASL_*`` (docs:
infra/kafka/README.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rankstream.cli.common import BootstrapOpt, load_settings

access_app = typer.Typer(help="Who may write and read what: team identity on Kafka.", no_args_is_help=True)


@access_app.command("kafka")
def kafka_cmd(
    config: Annotated[Path, typer.Argument(help="Teams YAML: team, SCRAM user, password_env | password_file")],
    apply: Annotated[
        bool,
        typer.Option(
            "--apply", help="Create the users, ACLs and topics on the broker as the admin of RANKSTREAM_SASL_*"
        ),
    ] = False,
    bootstrap: BootstrapOpt = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="Topic prefix [the YAML's prefix, env RANKSTREAM_TOPIC_PREFIX]")
    ] = None,
    replication_factor: Annotated[
        int, typer.Option("--replication-factor", min=1, help="Of the topics --apply creates")
    ] = 1,
) -> None:
    """Print the production commands (kafka-configs.sh, kafka-acls.sh) for the teams of CONFIG, or --apply them."""
    from rankstream.kafka_access import apply as apply_access
    from rankstream.kafka_access import load_access_config, render_commands

    access = load_access_config(config)
    settings = load_settings(bootstrap_servers=bootstrap, topic_prefix=prefix or access.prefix or None)
    if not apply:
        typer.echo(
            render_commands(
                settings.topic_prefix, access.team_principals, access.service_user, settings.bootstrap_servers
            ),
            nl=False,
        )
        return
    _require_admin(settings.security_protocol, settings.sasl_username)
    teams, service = access.principals()
    done = apply_access(settings, teams, service, replication_factor=replication_factor)
    typer.echo(
        f"{settings.bootstrap_servers}: {len(done.users)} SCRAM user(s) set ({', '.join(done.users)}), "
        f"{done.acls} ACL(s) ensured, {len(done.topics_created)} topic(s) created under {settings.topic_prefix}."
    )


def _require_admin(protocol: str, user: str) -> None:
    from rankstream.errors import ConfigError

    if not protocol.startswith("SASL") or not user:
        raise ConfigError(
            "--apply needs the admin's credentials: RANKSTREAM_SECURITY_PROTOCOL=SASL_SSL (or SASL_PLAINTEXT), "
            "RANKSTREAM_SASL_MECHANISM, RANKSTREAM_SASL_USERNAME and RANKSTREAM_SASL_PASSWORD"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(access_app, name="access")
