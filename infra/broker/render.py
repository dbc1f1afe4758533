"""Render the broker VM's configuration: ``python -m infra.broker.render --out DIR --host HOST``.

Writes ``mosquitto.conf``, ``acl`` and ``nanomq.conf`` for the conventional Debian paths (/etc/mosquitto,
/var/lib/mosquitto), and ``lockwise-broker-accounts.service``, the systemd unit of the account sync
(``infra.deploy_config.BROKER_SYNC``; its bundle is ``python -m infra.build broker``). The local stack and the tests
render the same templates with local paths.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).parent
PROD = {
    "PASSWORD_FILE": "/etc/mosquitto/passwd",
    "ACL_FILE": "/etc/mosquitto/acl",
    "PERSISTENCE_DIR": "/var/lib/mosquitto",
    "LOG_DEST": "syslog",
    "PORT": "8883",
    "BIND_ADDRESS": "0.0.0.0",
    "CAFILE": "/etc/mosquitto/certs/ca.crt",
    "CERTFILE": "/etc/mosquitto/certs/server.crt",
    "KEYFILE": "/etc/mosquitto/certs/server.key",
    "RELAY_USER": "lockwise-relay",
    "TOPIC_ROOT": "lockwise",
}


def render(name: str, values: dict[str, str]) -> str:
    return Template((TEMPLATES / name).read_text()).substitute(values)


def sync_unit(host: str) -> str:
    """The systemd unit of the broker host's account sync: its bundle and venv in /opt/lockwise-broker, its one
    secret (DATABASE_URL, Cloud SQL through the Auth Proxy on the VM) in an environment file only root reads."""
    import shlex

    from infra.deploy_config import BROKER_SYNC, Place, command, environment

    place = Place(project="", broker_host=host)
    return "\n".join(
        [
            "[Unit]",
            f"Description=LockWise: {BROKER_SYNC.why}",
            "After=network-online.target mosquitto.service",
            "",
            "[Service]",
            "WorkingDirectory=/opt/lockwise-broker",
            "EnvironmentFile=/etc/lockwise/broker-accounts.env",
            *(f"Environment={k}={v}" for k, v in sorted(environment(BROKER_SYNC, place).items())),
            "ExecStart=/opt/lockwise-broker/venv/bin/" + shlex.join(command(BROKER_SYNC, place)),
            "Restart=always",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--host", required=True, help="the broker's DNS name (its certificate must name it)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mosquitto.conf").write_text(render("mosquitto.conf.template", PROD))
    (args.out / "acl").write_text(render("acl.template", PROD))
    nanomq = dict(PROD, PASSWORD_FILE="/etc/nanomq_pwd.conf", PERSISTENCE_DIR="/var/lib/nanomq")
    (args.out / "nanomq.conf").write_text(render("nanomq.conf.template", nanomq))
    (args.out / "lockwise-broker-accounts.service").write_text(sync_unit(args.host))
    sys.stdout.write(f"broker config for {args.host} written to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
