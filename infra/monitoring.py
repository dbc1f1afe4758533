"""The log-based metrics an operator watches and alerts on: ``python -m infra.monitoring --out DIR`` writes one
Cloud Logging ``LogMetric`` per file, which ``infra.deploy monitoring`` creates or updates in the project.

Each is defined by the log line it counts, as the code writes it (``lockwise.core.log``'s JSON lines, read by Cloud
Logging as ``jsonPayload``, their ``severity`` promoted; the broker plugin's lines as the VM's syslog text), so that
``tests/unit/test_monitoring.py`` holds each to a line the code really writes: a metric whose line was reworded would
count nothing, silently. The README told operators what to alert on and nothing defined it (attack run 97).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from infra import deploy_config

#: the Cloud Run services whose lines the Python metrics count: every one the deploy makes
SERVICES = tuple(spec.name for spec in deploy_config.SERVICES)


@dataclass(frozen=True)
class Metric:
    """One log-based metric: the lines whose ``message`` begins with ``message`` (is it, ``whole``; a Python
    service's, at ``severity`` or above) or whose text holds ``message`` (``broker``: the plugin's lines in the VM's
    syslog)."""

    name: str
    description: str
    message: str
    severity: str = "DEFAULT"
    broker: bool = False
    whole: bool = False
    #: label -> the line's field it is read from (a counter per value)
    labels: tuple[tuple[str, str], ...] = ()
    #: the line's numeric field a distribution is made of (None: a counter of lines)
    value_field: str | None = None

    def log_filter(self) -> str:
        if self.broker:  # syslog's text: the logging agent's textPayload, or the Ops Agent's jsonPayload.message
            begins = _quoted(self.message_pattern())
            return f'resource.type="gce_instance" AND (textPayload=~"{begins}" OR jsonPayload.message=~"{begins}")'
        services = " OR ".join(f'"{name}"' for name in SERVICES)
        return (
            f'resource.type="cloud_run_revision" AND resource.labels.service_name=({services})'
            f' AND severity>={self.severity} AND jsonPayload.message=~"{_quoted(self.message_pattern())}"'
        )

    def message_pattern(self) -> str:
        """The regular expression (RE2's, as Python's ``re`` reads it too) a counted line's ``message`` matches; a
        broker metric's, the syslog line whose message, mosquitto's, begins with ``message`` (a regular expression
        itself: ``BROKER_LINE``)."""
        if self.broker:
            return BROKER_LINE + f"(?:{self.message})"
        return f"^{re.escape(self.message)}" + ("$" if self.whole else "")

    def log_metric(self) -> dict[str, object]:
        """The ``LogMetric`` resource (Cloud Logging API v2) ``gcloud logging metrics create --config-from-file``
        takes."""
        descriptor: dict[str, object] = {
            "metricKind": "DELTA",
            "valueType": "DISTRIBUTION" if self.value_field else "INT64",
            "labels": [{"key": key, "valueType": "STRING"} for key, _ in self.labels],
        }
        body: dict[str, object] = {
            "name": self.name,
            "description": self.description,
            "filter": self.log_filter(),
            "metricDescriptor": descriptor,
            "labelExtractors": {key: f"EXTRACT(jsonPayload.{field})" for key, field in self.labels},
        }
        if self.value_field:
            descriptor["unit"] = "ms"
            body["valueExtractor"] = f"EXTRACT(jsonPayload.{self.value_field})"
            body["bucketOptions"] = {"exponentialBuckets": {"numFiniteBuckets": 32, "growthFactor": 1.5, "scale": 1}}
        return body


#: where a broker metric's message begins in the VM's syslog line: after mosquitto's tag (``mosquitto[pid]: ``, the
#: line's first ``[``: a host name or a time has none) and the time mosquitto may put first, or at the text's start
#: (an agent that reads the message alone). A metric that counted lines holding its message anywhere counted text a
#: caller sent: a paired lock's subscription to a topic named ``x lockwise_acl: holding`` (the plugin's refusal quotes
#: it), and a line of any other program on any VM of the project, such as sshd's ``Invalid user ...`` for a user
#: name of the message (attack run 120)
BROKER_LINE = r"^(?:[^\[]*mosquitto\[[0-9]+\]: )?(?:[0-9]+: )?"
#: a lock's or a relay's identity as the plugin's lines name it (its certificate's: ``use_identity_as_username``)
_IDENTITY = r"[A-Za-z0-9._-]+"


def _quoted(text: str) -> str:
    """``text`` inside a Logging query's double quotes."""
    return text.replace("\\", "\\\\").replace('"', '\\"')


#: what an operator watches: the main job's answers and speed, then what needs someone
METRICS = (
    Metric(
        "lockwise_requests",
        "Requests answered by each LockWise service, by status (the door's 5xx: alert on any)",
        "request",
        labels=(("service", "service"), ("status", "status")),
        whole=True,  # the message whole: no other line's begins with it (the refusals' "request failed" did)
    ),
    Metric(
        "lockwise_request_latency",
        "Each request's time in the function, by service (the door's: verify)",
        "request",
        labels=(("service", "service"),),
        value_field="latency_ms",
        whole=True,
    ),
    Metric(
        "lockwise_unhandled_errors", "A request answered 500 by an error nobody expected", "unhandled error", "ERROR"
    ),
    Metric(
        "lockwise_commit_unknown",
        "A COMMIT whose answer was lost, not known made: the request was answered 503 commit_unconfirmed",
        "a COMMIT's answer was lost and whether it was made is not known",
        "ERROR",
    ),
    Metric(
        "lockwise_mirror_refused",
        "A live-view write Firestore refused, set aside for an operator (firestore_outbox.refused_at)",
        "firestore refused a mirror write; set aside",
        "ERROR",
    ),
    Metric(
        "lockwise_relay_upkeep_failed",
        "The relay's call to the devices function failed (mirror flush, access refresh, sweeps): alert if it lasts",
        "devices upkeep failed",
        "WARNING",
        labels=(("error", "error"),),
    ),
    Metric("lockwise_broker_runs", "The broker started (alert on restarts)", "lockwise_acl: broker run ", broker=True),
    Metric(
        "lockwise_broker_floods",
        "A lock published faster than its allowance and was disconnected",
        f"lockwise_acl: (?:{_IDENTITY}|dropped {_IDENTITY}'s last will: it) publishes faster than ",
        broker=True,
    ),
    Metric(
        "lockwise_broker_holding",
        "The broker holds locks' events while no relay subscribes (alert if it lasts)",
        "lockwise_acl: holding ",
        broker=True,
    ),
)


def write(out: Path) -> list[Path]:
    """One JSON file per metric in ``out``; their paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric in METRICS:
        path = out / f"{metric.name}.json"
        path.write_text(json.dumps(metric.log_metric(), indent=2) + "\n")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in write(args.out):
        sys.stdout.write(f"{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
