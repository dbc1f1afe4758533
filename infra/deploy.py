"""Deploy LockWise to Google Cloud: ``python -m infra.deploy COMPONENT --project P [--dry-run]``.

Components: ``accounts`` (service accounts and roles), ``build`` (bundles; model fetched by checksum, exported to
ONNX once for embed and verify), ``migrate`` (database migrations as a Cloud Run job, run before any new code goes
live), ``functions`` (verify, embed, devices, devices-relay), ``broker`` (Mosquitto config for the broker VM),
``relay`` (the always-on container, ready only once it reaches the broker: the VM runs the rendered config first;
it and ``functions`` first have the job check the database has every migration of this build, and stop if not),
``firebase`` (Firestore rules and indexes, Hosting rewrites), ``monitoring`` (the log-based metrics operators alert
on: ``infra.monitoring``), ``all`` (in that order).

``--dry-run`` validates the configuration and prints exactly the commands that would run, one per line, without
running anything; the tests check that output. Secret values never appear: services mount them from Secret Manager.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from infra import firebase_tools
from infra.build import VOICE_FUNCTIONS as VOICE
from infra.build import ships
from infra.deploy_config import (
    MIGRATE,
    ROLES,
    SECRET_DATABASE_URL,
    SERVICES,
    JobSpec,
    Place,
    ServiceSpec,
    environment,
    secret_targets,
)
from infra.monitoring import METRICS

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("accounts", "build", "migrate", "functions", "broker", "relay", "firebase", "monitoring")
_PROJECT_RE = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")
_REGION_RE = re.compile(r"[a-z]+-[a-z]+[0-9]")
_IPV4_RE = re.compile(r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)")
_HOST_RE = re.compile(r"(?=.{1,253}\Z)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}")


class DeployConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Target:
    project: str
    region: str
    sql_instance: str  # PROJECT:REGION:INSTANCE
    vpc_connector: str
    broker_host: str
    broker_public_host: str
    api_host: str  # where the app and the locks reach the functions (Firebase Hosting's rewrites)
    image_repo: str  # REGION-docker.pkg.dev/PROJECT/REPO
    devices_relay_url: str
    broker_min_tls: str  # the oldest TLS version the broker takes from locks (``infra.broker.render --min-tls``)
    #: the voice bundles also carry the ONNX graph pre-optimised for the build machine's kind of CPU
    #: (lockwise.voice.model.cpu_graph); off where this machine is unlike the ones that serve
    cpu_graph: bool = True
    #: what is deployed (``release_of``): the images' tag, so that a step deploys what this checkout built (from
    #: ``:latest``, a check ran the migrations of whatever image was last pushed: attack run 63), and each
    #: deployable's ``LOCKWISE_RELEASE``, which its health reports (it said ``dev`` in production)
    release: str = "dev"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Target:
        if not _PROJECT_RE.fullmatch(args.project or ""):
            raise DeployConfigError(f"--project {args.project!r} is not a valid Google Cloud project id")
        if not _REGION_RE.fullmatch(args.region):
            raise DeployConfigError(f"--region {args.region!r} is not a region name such as europe-west1")
        if args.project.startswith("demo-"):
            raise DeployConfigError("demo-* projects are emulator-only; give a real project id")
        if args.component in ("relay", "all") and not (args.devices_relay_url or "").startswith("https://"):
            raise DeployConfigError(
                "--devices-relay-url (https://..., from `gcloud run services describe lockwise-devices-relay`) is"
                " required to deploy the relay"
            )
        if args.component in ("functions", "all") and not _HOST_RE.fullmatch(args.broker_public_host or ""):
            raise DeployConfigError(
                "--broker-public-host (the broker's public DNS name, which its certificate names) is required to"
                " deploy the functions: locks are told at pairing where to connect"
            )
        for flag, value in (("--broker-host", args.broker_host), ("--api-host", args.api_host)):
            if value and not (_HOST_RE.fullmatch(value) or _IPV4_RE.fullmatch(value)):
                raise DeployConfigError(f"{flag} {value!r} is not a host name or an IPv4 address")
        if args.devices_relay_url and not _is_https_base(args.devices_relay_url):
            raise DeployConfigError(f"--devices-relay-url {args.devices_relay_url!r} is not an https:// base URL")
        if args.release and not _RELEASE_RE.fullmatch(args.release):
            raise DeployConfigError(f"--release {args.release!r} is not an image tag: a-z, 0-9, '.', '_', '-'")
        sql = args.sql_instance or f"{args.project}:{args.region}:lockwise"
        if sql.count(":") != 2:
            raise DeployConfigError("--sql-instance must be PROJECT:REGION:INSTANCE")
        return cls(
            project=args.project,
            region=args.region,
            sql_instance=sql,
            vpc_connector=args.vpc_connector,
            broker_host=args.broker_host,
            broker_public_host=args.broker_public_host,
            api_host=args.api_host or f"{args.project}.web.app",
            image_repo=f"{args.region}-docker.pkg.dev/{args.project}/lockwise",
            devices_relay_url=args.devices_relay_url,
            broker_min_tls=args.broker_min_tls,
            cpu_graph=not args.no_cpu_graph,
            release=args.release or release_of(REPO),
        )

    def image(self, name: str) -> str:
        """This release's image of ``name`` (``relay``, ``migrate``)."""
        return f"{self.image_repo}/{name}:{self.release}"

    def sa(self, service: str) -> str:
        return f"{service}@{self.project}.iam.gserviceaccount.com"

    @property
    def place(self) -> Place:
        return Place(
            project=self.project,
            broker_host=self.broker_host,
            broker_public_host=self.broker_public_host,
            devices_relay_url=self.devices_relay_url,
            release=self.release,
        )


Command = list[str]
#: a release as an image tag takes it (``--release``)
_RELEASE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


#: what the bundles and images are built from (``infra.build``)
BUNDLED_PATHS = ("functions", "mqtt_relay", "infra")


def release_of(repo: Path) -> str:
    """The checkout's commit (12 hex digits), and ``-dirty-`` and a hash of what differs from it when a bundled file
    does (files not added yet too: a new migration not committed was built in, untold; each dirty state its own
    name: two of one commit were one release, attack run 66): what ``build`` tags its images with and every step
    deploys. Files git ignores are not read (the models ``./dev setup`` fetches, which the build checks), but those the
    build ships. ``DeployConfigError`` outside a git
    checkout or without git (give ``--release``)."""
    # this checkout is read whoever owns it (git refuses another user's as "dubious ownership": a CI container's)
    git = ["git", "-c", f"safe.directory={repo}", "-C", str(repo)]

    def out(*args: str) -> bytes:
        return subprocess.run([*git, *args], capture_output=True, check=True).stdout

    try:
        commit = out("rev-parse", "--short=12", "HEAD").decode().strip()
        changed = out("diff", "HEAD", "--binary", "--", *BUNDLED_PATHS)
        added = out("ls-files", "--others", "--exclude-standard", "-z", "--", *BUNDLED_PATHS).split(b"\0")
        ignored = out("ls-files", "--others", "--ignored", "--exclude-standard", "-z", "--", *BUNDLED_PATHS)
    except OSError as exc:  # no git program (a slim CI image): not the same fix as a folder that is no checkout
        raise DeployConfigError(f"git could not be run ({exc.strerror}): install it, or give --release") from exc
    except subprocess.CalledProcessError as exc:
        said = exc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise DeployConfigError(f"{repo} is not a git checkout git can read ({said[0]}): give --release") from exc
    # a file git ignores that the build ships all the same (a rule in .git/info/exclude or the user's core.excludesFile
    # read by no one else: attack run 124) is part of what the release names, as an added one is
    names = sorted([name for name in added if name] + [n for n in ignored.split(b"\0") if n and ships(n.decode())])
    if not changed and not names:
        return commit
    digest = hashlib.sha256(changed)
    for name in names:
        digest.update(name + b"\0" + (repo / name.decode()).read_bytes())
    return f"{commit}-dirty-{digest.hexdigest()[:8]}"


def accounts(t: Target) -> list[Command]:
    cmds: list[Command] = []
    for service, roles in ROLES.items():
        cmds.append(
            [
                "gcloud",
                "iam",
                "service-accounts",
                "create",
                service,
                f"--project={t.project}",
                f"--display-name=LockWise {service}",
            ]
        )
        for role in roles:
            cmds.append(
                [
                    "gcloud",
                    "projects",
                    "add-iam-policy-binding",
                    t.project,
                    f"--member=serviceAccount:{t.sa(service)}",
                    f"--role={role}",
                    "--condition=None",
                ]
            )
    for spec in SERVICES:
        for secret in sorted(set(spec.secrets.values())):
            cmds.append(
                [
                    "gcloud",
                    "secrets",
                    "add-iam-policy-binding",
                    secret,
                    f"--project={t.project}",
                    f"--member=serviceAccount:{t.sa(spec.name)}",
                    "--role=roles/secretmanager.secretAccessor",
                ]
            )
    cmds.append(
        [
            "gcloud",
            "secrets",
            "add-iam-policy-binding",
            SECRET_DATABASE_URL,
            f"--project={t.project}",
            f"--member=serviceAccount:{t.sa('lockwise-migrate')}",
            "--role=roles/secretmanager.secretAccessor",
        ]
    )
    return cmds


def build(t: Target) -> list[Command]:
    py = sys.executable
    source = REPO / ".build" / "model-source"  # SpeechBrain's files: build-time only, never deployed
    exported = REPO / ".build" / "model-onnx"
    no_cpu_graph = [] if t.cpu_graph else ["--no-cpu-graph"]
    return [
        [py, "-m", "infra.build", "--out", str(REPO / ".build")],
        [py, "-m", "infra.model.fetch", str(source)],
        # embed and verify serve the ONNX export (no torch in either bundle), checked against SpeechBrain here, once:
        # both bundles carry the same files
        [py, "-m", "infra.model.export_onnx", str(source), str(exported), *no_cpu_graph],
        *(["cp", "-R", f"{exported}/.", str(REPO / ".build" / f / "model")] for f in VOICE),
        [
            "gcloud",
            "builds",
            "submit",
            str(REPO / ".build" / "relay"),
            f"--project={t.project}",
            f"--tag={t.image('relay')}",
        ],
        [
            "gcloud",
            "builds",
            "submit",
            str(REPO / ".build" / "migrate"),
            f"--project={t.project}",
            f"--tag={t.image('migrate')}",
        ],
        # last: what failed before it leaves no release recorded, and the functions step refuses the bundles
        [py, "-m", "infra.build", "--out", str(REPO / ".build"), "--record-release", t.release],
    ]


def _env_flag(env: dict[str, str]) -> str:
    """``--set-env-vars``: a value holding the list's ``,`` would add or replace another variable (a
    ``--broker-host`` of ``host,GCE_METADATA_HOST=...`` set the relay's metadata server: attack run 89), refused."""
    for name, value in env.items():
        if "," in value or "\n" in value:
            raise DeployConfigError(f"{name}'s value {value!r} holds a ',' or a line break: refused as a deploy flag")
    return "--set-env-vars=" + ",".join(f"{k}={v}" for k, v in sorted(env.items()))


def _is_https_base(url: str) -> bool:
    """An ``https://host[:port][/path]`` URL with no query, fragment or credentials, its host a DNS name."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme == "https"
        and port_ok
        and bool(_HOST_RE.fullmatch(host))
        and not (parts.query or parts.fragment or parts.username or parts.password)
        and not set(url) & {",", " ", "\n"}
    )


def _secrets_flag(spec: ServiceSpec | JobSpec, place: Place) -> str:
    targets = secret_targets(spec, place)
    return "--set-secrets=" + ",".join(f"{target}={name}:latest" for target, name in sorted(targets.items()))


#: the migration job's whole run: waiting for another run's advisory lock, then each pending migration (one statement
#: up to ``migrate.STATEMENT_TIMEOUT_S``); it was that one statement's 600 s, and the platform stopped the job while
#: its statement ran on (attack run 62)
JOB_TASK_TIMEOUT_S = 3600


def _migrate_job(t: Target) -> Command:
    """The migration job, on this build's image (deployed before it runs: a job keeps the image it was deployed
    with)."""
    job = MIGRATE.name
    return [
        "gcloud",
        "run",
        "jobs",
        "deploy",
        job,
        f"--project={t.project}",
        f"--region={t.region}",
        f"--image={t.image('migrate')}",
        f"--service-account={t.sa(job)}",
        f"--set-cloudsql-instances={t.sql_instance}",
        _secrets_flag(MIGRATE, t.place),
        _env_flag(environment(MIGRATE, t.place)),
        "--max-retries=0",
        f"--task-timeout={JOB_TASK_TIMEOUT_S}s",
    ]


def _execute_job(t: Target, *args: str) -> Command:
    cmd = ["gcloud", "run", "jobs", "execute", MIGRATE.name, f"--project={t.project}", f"--region={t.region}"]
    return [*cmd, *([f"--args={','.join(args)}"] if args else []), "--wait"]


def _built(t: Target) -> Command:
    """The check that the build step recorded ``t.release`` in ``.build`` over bundles unchanged since (``infra.build
    --expect-release``). The images are pushed before that step's last command, the record: a build that failed
    after them (an export of other weights, a bundle changed since its build, a failed parity check) left this
    release's relay and migration images in the registry, and the ``migrate`` and ``relay`` steps, which read no
    record, deployed them (attack run 124)."""
    return [sys.executable, "-m", "infra.build", "--out", str(REPO / ".build"), "--expect-release", t.release]


def migrate(t: Target) -> list[Command]:
    return [_built(t), _migrate_job(t), _execute_job(t)]


def schema_check(t: Target) -> list[Command]:
    """Before new code goes live: the job, on this build's image, checks the database has every migration bundled
    with it, and the deploy stops while one is missing (``migrate --check``): a relay deployed ahead of its
    migration failed every delivery round, its health 200, and a function failed on what it lacked (attack run
    62)."""
    return [_migrate_job(t), _execute_job(t, "--check")]


def _service_flags(t: Target, spec: ServiceSpec) -> Command:
    flags = [
        f"--project={t.project}",
        f"--region={t.region}",
        f"--service-account={t.sa(spec.name)}",
        f"--memory={spec.memory}",
        f"--cpu={spec.cpu}",
        f"--min-instances={spec.min_instances}",
        f"--max-instances={spec.max_instances}",
        f"--concurrency={spec.concurrency}",
        f"--timeout={spec.timeout_s}s",
        f"--ingress={spec.ingress}",
        _secrets_flag(spec, t.place),
        _env_flag(environment(spec, t.place)),
        f"--add-cloudsql-instances={t.sql_instance}",
        "--allow-unauthenticated" if spec.public else "--no-allow-unauthenticated",
        "--cpu-boost" if spec.cpu_boost else "--no-cpu-boost",
    ]
    if spec.always_on_cpu:
        flags.append("--no-cpu-throttling")
    return flags


def functions(t: Target) -> list[Command]:
    # deployed from .build whatever release this is told: the bundles there must be this release's
    cmds: list[Command] = [_built(t)]
    cmds += schema_check(t)
    for spec in SERVICES:
        if spec.function is None:
            continue
        cmds.append(
            [
                "gcloud",
                "run",
                "deploy",
                spec.name,
                f"--source={REPO / '.build' / spec.bundle}",
                f"--function={spec.function}",
                "--base-image=python311",
                *_service_flags(t, spec),
            ]
        )
    cmds.append(
        [
            "gcloud",
            "run",
            "services",
            "add-iam-policy-binding",
            "lockwise-devices-relay",
            f"--project={t.project}",
            f"--region={t.region}",
            f"--member=serviceAccount:{t.sa('lockwise-relay')}",
            "--role=roles/run.invoker",
        ]
    )
    return cmds


def relay(t: Target) -> list[Command]:
    spec = next(s for s in SERVICES if s.name == "lockwise-relay")
    flags = _service_flags(t, spec)
    return [
        _built(t),
        *schema_check(t),
        [
            "gcloud",
            "run",
            "deploy",
            spec.name,
            f"--image={t.image('relay')}",
            *flags,
            f"--vpc-connector={t.vpc_connector}",
            "--vpc-egress=private-ranges-only",
            "--port=8090",
            # ready once its health is 200: the migrations it needs there, its slot leased, the broker and the
            # devices function reached. By the port alone, a relay waiting for its migration replaced the one that ran
            # (attack run 63); by its start alone, one that could not reach the broker (a wrong host, a CA mismatch)
            # did, and commands stopped (attack run 66). The broker step comes first; a relay deployed while the
            # broker is down fails its deploy after 240 s and the running one stays
            "--startup-probe=httpGet.path=/health,httpGet.port=8090,periodSeconds=10,timeoutSeconds=3,"
            "failureThreshold=24",
        ],
    ]


def broker(t: Target) -> list[Command]:
    py = sys.executable
    out = REPO / ".build" / "broker-host"
    crl_url = f"https://{t.api_host}/devices/lock-ca/crl"
    return [
        [py, "-m", "infra.broker.render", "--out", str(out), "--host", t.broker_host, "--crl-url", crl_url]
        + ["--min-tls", t.broker_min_tls]
    ]


def hosting_rewrites() -> dict[str, tuple[str, str]]:
    """``firebase.json``'s Hosting rewrites: ``{source: (Cloud Run service, region)}``."""
    config = json.loads((REPO / "firebase.json").read_text())
    return {
        rule["source"]: (rule.get("run", {}).get("serviceId", ""), rule.get("run", {}).get("region", ""))
        for rule in config["hosting"]["rewrites"]
    }


def firebase(t: Target) -> list[Command]:
    """Firestore's rules and indexes, and Hosting, whose rewrites send the API to the public services deployed in
    ``t.region`` (a rewrite to a function of the names ``embed`` or ``devices`` reached no service the deploy makes:
    attack run 89; one to another region than the deploy's, none either)."""
    public = {spec.name for spec in SERVICES if spec.public}
    for source, (service, region) in hosting_rewrites().items():
        if service not in public or region != t.region:
            raise DeployConfigError(
                f"firebase.json rewrites {source} to {service or 'no Cloud Run service'} in {region or 'no region'}:"
                f" Hosting must send it to one of {', '.join(sorted(public))} in {t.region} (edit firebase.json)"
            )
    return [
        # the web console's SDK bundle made again from the pinned versions (npm ci checks package-lock's hashes),
        # whatever a stamp says: it is git-ignored, and no release names it (attack run 124)
        ["bash", str(REPO / "infra" / "console" / "build.sh"), "--fresh"],
        [sys.executable, "-m", "infra.hosting_site"],  # the console's files alone, or nothing is uploaded
        # the CLI npm ci installed from infra/local/firebase-tools' lock file, where ./dev setup put it (attack run 124)
        [sys.executable, "-m", "infra.firebase_tools"],
        [
            str(firebase_tools.cli()),
            "deploy",
            "--only",
            "firestore:rules,firestore:indexes,hosting",
            "--project",
            t.project,
            "--config",
            str(REPO / "firebase.json"),
            # Hosting's release history names what it serves (attack run 124: the rules and the console went up
            # from the working tree with nothing saying which commit, or that it was dirty)
            "--message",
            f"LockWise {t.release}",
            "--non-interactive",
        ],
    ]


def monitoring(t: Target) -> list[Command]:
    """The log-based metrics (``infra.monitoring``), each created, or updated where it exists: rendered first, then
    one command per metric (its name and file passed as arguments, never into the shell's text)."""
    out = REPO / ".build" / "monitoring"
    upsert = (
        'gcloud logging metrics update "$1" --project="$2" --config-from-file="$3" >/dev/null 2>&1'
        ' || gcloud logging metrics create "$1" --project="$2" --config-from-file="$3"'
    )
    return [[sys.executable, "-m", "infra.monitoring", "--out", str(out)]] + [
        ["bash", "-c", upsert, "metric", metric.name, t.project, str(out / f"{metric.name}.json")] for metric in METRICS
    ]


PLANS = {
    "accounts": accounts,
    "build": build,
    "migrate": migrate,
    "functions": functions,
    "relay": relay,
    "broker": broker,
    "firebase": firebase,
    "monitoring": monitoring,
}


def plan(component: str, target: Target) -> list[Command]:
    """The commands that deploy ``component`` (or all, in order); the migration job deployed, and the build's record
    checked, once a plan."""
    names = COMPONENTS if component == "all" else (component,)
    cmds: list[Command] = []
    once = (["gcloud", "run", "jobs", "deploy"], _built(target)[:4])
    for cmd in (cmd for name in names for cmd in PLANS[name](target)):
        if cmd[:4] in once and cmd in cmds:
            continue
        cmds.append(cmd)
    return cmds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("component", choices=(*COMPONENTS, "all"))
    parser.add_argument("--project", required=True)
    parser.add_argument("--region", default="europe-west1")
    parser.add_argument("--sql-instance", help="PROJECT:REGION:INSTANCE (default: PROJECT:REGION:lockwise)")
    parser.add_argument("--vpc-connector", default="lockwise-connector")
    parser.add_argument("--broker-host", default="broker.lockwise.internal", help="the broker on the private network")
    parser.add_argument("--broker-public-host", default="", help="the broker's public DNS name, for the locks")
    parser.add_argument("--api-host", default="", help="the API's public host name (default: PROJECT.web.app)")
    parser.add_argument("--devices-relay-url", default="", help="URL of the internal devices service (for the relay)")
    parser.add_argument(
        "--broker-min-tls",
        choices=("1.2", "1.3"),
        default="1.2",
        help="the oldest TLS version the broker takes from locks (1.3 once every lock's TLS stack has it)",
    )
    parser.add_argument(
        "--no-cpu-graph",
        action="store_true",
        help="build: voice bundles without the ONNX graph pre-optimised for this machine's kind of CPU (build here"
        " only for serving machines like this one: the same onnxruntime kernels, see README)",
    )
    parser.add_argument(
        "--release",
        default="",
        help="what is deployed: the images' tag and each service's LOCKWISE_RELEASE (default: the checkout's commit)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print the commands; run nothing")
    args = parser.parse_args(argv)
    try:
        target = Target.from_args(args)
    except DeployConfigError as exc:
        sys.stderr.write(f"deploy: {exc}\n")
        return 2
    commands = plan(args.component, target)
    for cmd in commands:
        sys.stdout.write(shlex.join(cmd) + "\n")
        if not args.dry_run:
            sys.stdout.flush()
            result = subprocess.run(cmd, check=False)
            if result.returncode != 0:
                sys.stderr.write(f"deploy: step failed ({result.returncode}): {shlex.join(cmd)}\n")
                return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
