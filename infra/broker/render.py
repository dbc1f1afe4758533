"""Render the broker's configuration: ``python -m infra.broker.render --out DIR --host HOST``.

Writes ``mosquitto.conf`` and ``acl`` (tested here), ``openssl.cnf`` and the systemd drop-in that has Mosquitto read
it (``lockwise-openssl.conf``: no TLS session tickets), the subscription plugin's source and its build
(``lockwise_acl.c``, ``build-lockwise-acl``: ``infra.broker.plugin``), the lock CA's CRL refresh
(``lockwise-crl-refresh``, with its systemd service and one-minute timer), ``emqx.conf`` and ``emqx_acl.conf`` (a
cluster), and ``nanomq.conf`` for the conventional Debian paths (/etc/mosquitto, /var/lib/mosquitto). The local stack
and the tests render the same templates with local paths through ``mosquitto_conf``, ``openssl_conf`` and ``acl``.
The broker needs the lock CA's certificate (never its key) as ``lock-ca.crt``: it checks every client certificate
against it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from string import Template
from urllib.parse import urlsplit

from infra.broker import plugin
from infra.deploy_config import RELAY_SLOTS

TEMPLATES = Path(__file__).parent
TOPIC_ROOT = "lockwise"
#: what a lock publishes for the relays (``mqtt_relay.sessions.EVENT_KINDS``, a unit test ties them): the ACL lets
#: a lock write these and nothing else, and the plugin takes a lock's message to one of them only while a relay holds
#: a subscription for it
LOCK_EVENTS = ("state", "ack", "status")
#: the broker's uptime, which every relay reads (``mqtt_relay.broker_start.UPTIME_TOPIC``, a unit test ties them):
#: it dates the broker's start, and locks not heard from since are turned offline (no last will survives a restart)
UPTIME_TOPIC = "$SYS/broker/uptime"
#: the broker's run, which its plugin publishes and every relay reads (``mqtt_relay.broker_start.RUN_TOPIC`` and
#: ``RUN_TOPIC`` in ``lockwise_acl.c``, a unit test ties them): a lock heard from on an earlier run is not connected
RUN_TOPIC = "$SYS/broker/lockwise/run"
#: the largest MQTT packet the broker takes: commands, acks and state reports are a few hundred bytes
MAX_PACKET_SIZE = 65536
#: the longest keepalive a client may ask (FIRMWARE.md: 15-60 s; the relays ask 30). An MQTT 5 client asking more, or
#: none (0), is given this as its Server Keep Alive; an MQTT 3.1.1 one is refused. A lock asking 0 or 65535 that lost
#: its power silently stayed connected, online, with no last will sent, for good or 27 hours (attack run 131)
MAX_KEEPALIVE = 60
#: a lock's publishing pace (``lockwise_acl.c``, 5): on average, and at once (a lock sends again up to 64 kept
#: messages, its status and a state report as it connects: FIRMWARE.md, "Receipts")
LOCK_MESSAGES_PER_SECOND = 20
LOCK_MESSAGE_BURST = 200
#: ``--min-tls``: Mosquitto's ``tls_version`` is the oldest version a listener takes
TLS_VERSIONS = {"1.2": "tlsv1.2", "1.3": "tlsv1.3"}
PROD = {
    "ACL_FILE": "/etc/mosquitto/acl",
    "EMQX_ACL_FILE": "/etc/emqx/emqx_acl.conf",
    "PERSISTENCE_DIR": "/var/lib/mosquitto",
    "LOG_DEST": "syslog",
    "PORT": "8883",
    "BIND_ADDRESS": "0.0.0.0",
    "CLIENT_CAFILE": "/etc/mosquitto/certs/lock-ca.crt",
    "CRLFILE": "/etc/mosquitto/certs/lock-ca.crl",
    "CERTFILE": "/etc/mosquitto/certs/server.crt",
    "KEYFILE": "/etc/mosquitto/certs/server.key",
    "ACL_PLUGIN": plugin.PROD_PATH,
    "OPENSSL_CONF": "/etc/mosquitto/openssl.cnf",
}


def relay_identities(slots: int = RELAY_SLOTS) -> list[str]:
    """The certificate identities of the relay replicas (``mqtt_relay.slots``: one per slot)."""
    return [f"lockwise-relay-{slot}" for slot in range(1, slots + 1)]


def relayed_topics() -> list[str]:
    """The topic filters the relays subscribe to (each in their shared-subscription group)."""
    return [f"{TOPIC_ROOT}/+/{kind}" for kind in LOCK_EVENTS]


def render(name: str, values: dict[str, str]) -> str:
    return Template((TEMPLATES / name).read_text()).substitute(values)


def mosquitto_conf(values: dict[str, str], min_tls: str = "1.2") -> str:
    """``values`` name the files (``PROD``'s, or the local stack's): the ACL file, the subscription plugin
    (``ACL_PLUGIN``: ``plugin.build``), the certificates, the persistence directory. ``min_tls``: the oldest TLS
    version the listener takes (``TLS_VERSIONS``)."""
    fixed = {
        "TLS_VERSION": TLS_VERSIONS[min_tls],
        "MAX_PACKET_SIZE": str(MAX_PACKET_SIZE),
        "MAX_KEEPALIVE": str(MAX_KEEPALIVE),
        "LOCK_MESSAGES_PER_SECOND": str(LOCK_MESSAGES_PER_SECOND),
        "LOCK_MESSAGE_BURST": str(LOCK_MESSAGE_BURST),
        "TOPIC_ROOT": TOPIC_ROOT,
        "RELAY_USERS": ",".join(relay_identities()),
        "RELAYED_TOPICS": ",".join(relayed_topics()),
    }
    return render("mosquitto.conf.template", {**fixed, **values})


def openssl_conf() -> str:
    """OpenSSL's settings for Mosquitto (``OPENSSL_CONF``): no TLS session tickets (``openssl.cnf.template``)."""
    return render("openssl.cnf.template", {})


def acl() -> str:
    users = "\n".join(
        f"user {name}\ntopic readwrite {TOPIC_ROOT}/#\ntopic read {UPTIME_TOPIC}\ntopic read {RUN_TOPIC}\n"
        for name in relay_identities()
    )
    writes = "\n".join(f"pattern write {TOPIC_ROOT}/%u/{kind}" for kind in LOCK_EVENTS)
    return render("acl.template", {"RELAY_USERS": users, "TOPIC_ROOT": TOPIC_ROOT, "LOCK_WRITES": writes})


#: this machine's names (``lockwise.core.config.LOOPBACK_HOSTS``, a unit test ties them): the broker's render runs
#: where the functions' package may not be importable (``python -m infra.deploy broker``)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def crl_url(value: str) -> str:
    """``--crl-url``: an ``https://`` address (plain ``http://`` only to this machine). Over http anyone on the path
    answered every minute with an older list the lock CA signed, which the refresh keeps out and exits 0 on, as it
    does for a list another function instance read first: revocations never reached the broker, and nothing failed
    (attack run 115)."""
    parts = urlsplit(value)
    try:
        host = parts.hostname
    except ValueError:  # an unclosed IPv6 bracket
        host = None
    if not host or parts.scheme not in ("https", "http") or (parts.scheme == "http" and host not in LOOPBACK_HOSTS):
        raise argparse.ArgumentTypeError(f"{value!r} is not an https:// address (http:// only to this machine)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--host", required=True, help="the broker's DNS name (its certificate must name it)")
    parser.add_argument(
        "--crl-url",
        required=True,
        type=crl_url,
        help="the devices function's GET /devices/lock-ca/crl (the lock CA's CRL), over https",
    )
    parser.add_argument(
        "--min-tls",
        choices=sorted(TLS_VERSIONS),
        default="1.2",
        help="the oldest TLS version locks may use (1.3: every lock's TLS stack has it; in 1.2 its certificate crosses"
        " the network in clear)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    newer = [v for v in sorted(TLS_VERSIONS, reverse=True) if v >= args.min_tls]
    values = {
        **PROD,
        "MAX_PACKET_SIZE": str(MAX_PACKET_SIZE),
        "TOPIC_ROOT": TOPIC_ROOT,
        "EMQX_TLS_VERSIONS": "[" + ", ".join(TLS_VERSIONS[v] for v in newer) + "]",
    }
    (args.out / "mosquitto.conf").write_text(mosquitto_conf(PROD, args.min_tls))
    (args.out / "openssl.cnf").write_text(openssl_conf())  # to /etc/mosquitto/, named by its systemd drop-in
    (args.out / "lockwise-openssl.conf").write_text(render("lockwise-openssl.conf.template", values))
    crl = {**values, "CRL_URL": args.crl_url}
    (args.out / "lockwise-crl-refresh").write_text(render("lockwise-crl-refresh.sh.template", crl))
    (args.out / "lockwise-crl-refresh").chmod(0o755)
    for unit in ("lockwise-crl.service", "lockwise-crl.timer"):
        (args.out / unit).write_text(render(f"{unit}.template", crl))
    (args.out / "acl").write_text(acl())
    # the subscription plugin's source, and the build that puts it where mosquitto.conf loads it from
    (args.out / plugin.SOURCE.name).write_bytes(plugin.SOURCE.read_bytes())
    build = args.out / "build-lockwise-acl"
    build.write_text(
        "#!/bin/sh\n# Mosquitto's subscription check (lockwise_acl.c): run on the broker host before starting it\n"
        f"set -eu\napt-get install -y {' '.join(plugin.PACKAGES)}\n{plugin.install_script(plugin.PROD_PATH)}"
    )
    build.chmod(0o755)
    rules = "\n".join(f'{{allow, {{username, "{n}"}}, all, ["{TOPIC_ROOT}/#"]}}.' for n in relay_identities())
    (args.out / "emqx.conf").write_text(render("emqx.conf.template", values))
    (args.out / "emqx_acl.conf").write_text(render("emqx_acl.conf.template", {**values, "EMQX_RELAY_RULES": rules}))
    nanomq = dict(values, PERSISTENCE_DIR="/var/lib/nanomq")
    (args.out / "nanomq.conf").write_text(render("nanomq.conf.template", nanomq))
    sys.stdout.write(f"broker config for {args.host} written to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
