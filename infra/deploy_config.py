"""What each deployed component gets, and why. ``infra/deploy.py`` turns this into commands, and the production
rehearsal (``tests/rehearsal``) starts every process with exactly the environment ``environment()`` renders here.

Numbers come from the benchmarks in the README (this repository's 2-core development machine); revisit them with
production traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Secret Manager secret names (values never appear in commands or logs)
SECRET_DATABASE_URL = "lockwise-database-url"
SECRET_SERVICE_TOKEN = "lockwise-service-token"
SECRET_COMMAND_KEY = "lockwise-command-signing-key"
SECRET_MQTT_CA = "lockwise-mqtt-ca"  # the CA of the broker's server certificate, mounted as a file
SECRET_LOCK_CA = "lockwise-lock-ca"  # the lock CA's certificate and key: signs the locks' broker certificates
SECRET_RELAY_CERTS = "lockwise-relay-certs"  # one client certificate per relay slot (python -m infra.lock_ca)

#: how many relay replicas may run at once: each leases a slot, whose certificate identity the broker's ACL lists
RELAY_SLOTS = 8


@dataclass(frozen=True)
class ServiceSpec:
    name: str  # Cloud Run service name
    function: str | None  # functions-framework target (None: a container)
    bundle: str  # what infra/build.py builds
    memory: str
    cpu: str
    min_instances: int
    max_instances: int
    concurrency: int
    timeout_s: int
    public: bool  # allow unauthenticated invocations (app and locks call it directly)
    ingress: str  # all | internal | internal-and-cloud-load-balancing
    cpu_boost: bool
    secrets: dict[str, str]
    #: plain settings; ``{placeholders}`` are filled from the ``Place`` it is deployed to (see ``environment``)
    env: dict[str, str] = field(default_factory=dict)
    always_on_cpu: bool = False
    why: str = ""


@dataclass(frozen=True)
class JobSpec:
    """A one-shot container (the migration job)."""

    name: str
    bundle: str
    argv: tuple[str, ...]
    secrets: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    why: str = ""


@dataclass(frozen=True)
class Place:
    """Where a deployable runs: what differs between production and the rehearsal, and nothing else."""

    project: str
    #: the broker as the relay reaches it (private network) and as locks reach it (public name in its certificate)
    broker_host: str
    broker_public_host: str = ""
    broker_port: int = 8883
    devices_relay_url: str = ""
    #: where Cloud Run puts a function's source (its bundle)
    bundle_root: str = "/workspace"
    #: where secret files are mounted (Secret Manager volumes)
    mounts: str = "/etc/lockwise"
    #: what is deployed (the checkout's commit): each deployable's health says it, and its images are tagged with it
    release: str = "dev"

    def fields(self) -> dict[str, str]:
        return {
            "project": self.project,
            "broker_host": self.broker_host,
            "broker_public_host": self.broker_public_host,
            "broker_port": str(self.broker_port),
            "devices_relay_url": self.devices_relay_url,
            "bundle_root": self.bundle_root,
            "mounts": self.mounts,
        }


def environment(spec: ServiceSpec | JobSpec, place: Place) -> dict[str, str]:
    """The plain (non-secret) environment of ``spec`` at ``place``: the one source of the deploy flags and of the
    rehearsal's processes. Secret values are never here; ``secret_targets`` says where each one goes."""
    env = {"LOCKWISE_MODE": "production", "LOCKWISE_RELEASE": place.release}
    # Firestore and Firebase Auth: the functions; the migration job binds the database to it, and the functions and
    # the relay serve only a database bound to it (attack run 116)
    env["LOCKWISE_PROJECT_ID"] = place.project
    fields = place.fields()
    env.update({name: value.format(**fields) for name, value in spec.env.items()})
    return env


def command(spec: JobSpec, place: Place) -> list[str]:
    """The job's command line at ``place``."""
    fields = place.fields()
    return [arg.format(**fields) for arg in spec.argv]


def secret_targets(spec: ServiceSpec | JobSpec, place: Place) -> dict[str, str]:
    """``{variable or mounted file path: Secret Manager secret}`` for ``spec`` at ``place``."""
    return {target.format(**place.fields()): secret for target, secret in spec.secrets.items()}


# Each deployable gets exactly the secrets its settings read (lockwise.core.config.FUNCTION_SECRETS, the relay's
# RelaySettings, DatabaseSettings); tests/unit/test_deploy.py checks the two agree.
DB = {"DATABASE_URL": SECRET_DATABASE_URL}
TOKEN = {"LOCKWISE_SERVICE_TOKEN": SECRET_SERVICE_TOKEN}
SIGNING = {"LOCKWISE_COMMAND_SIGNING_KEY": SECRET_COMMAND_KEY}
LOCK_CA = {"LOCKWISE_LOCK_CA": SECRET_LOCK_CA}

SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        name="lockwise-verify",
        function="verify",
        bundle="verify",
        # Peak RSS measured at 324 MB serving the ONNX export of the full model (788 MB through SpeechBrain); 1 GiB
        # leaves room for a 15 s clip in flight and the allocator.
        memory="1Gi",
        cpu="2",
        # Someone is standing at the door: keep one warm instance (a cold start measured 1.3-1.7 s serving the ONNX
        # export, 4.5-5.1 s with torch) and let the startup boost pay for loading the model at instance start.
        min_instances=1,
        max_instances=20,
        cpu_boost=True,
        # The forward pass is CPU-bound on both cores: one request per instance keeps latency flat.
        concurrency=1,
        timeout_s=30,
        public=True,
        ingress="all",
        secrets={**DB, **TOKEN, **SIGNING},
        # The model directory holds the ONNX export only. onnxruntime keeps its default of one thread per core
        # (2 threads: 95 ms per 3 s clip, 1 thread: 173-180 ms) and glibc's default malloc (the tuned
        # MALLOC_MMAP/TRIM thresholds measured no different: bench verify_runtime).
        env={"LOCKWISE_MODEL_DIR": "{bundle_root}/model"},
        why="locks post audio; decides and issues the unlock",
    ),
    ServiceSpec(
        name="lockwise-embed",
        function="embed",
        bundle="embed",
        # The same ONNX export as verify (no torch): verify's measured 324 MB peak with room for five samples.
        memory="1Gi",
        cpu="2",
        # Enrollment is rare and happens in the app with a progress indicator: no warm instance needed.
        min_instances=0,
        max_instances=5,
        cpu_boost=True,
        concurrency=1,
        timeout_s=60,
        public=True,
        ingress="all",
        secrets={**DB, **TOKEN},
        env={"LOCKWISE_MODEL_DIR": "{bundle_root}/model"},
        why="the app enrolls voices",
    ),
    ServiceSpec(
        name="lockwise-devices",
        function="devices",
        bundle="devices",
        # No torch: ~100 MB RSS; I/O-bound, so many concurrent requests share one instance (pool of 8 connections).
        memory="512Mi",
        cpu="1",
        min_instances=1,
        max_instances=20,
        cpu_boost=True,
        concurrency=40,
        timeout_s=30,
        public=True,
        ingress="all",
        # no service token: this copy serves no trusted caller (LOCKWISE_RELAY_ROUTES=off)
        secrets={**DB, **SIGNING, **LOCK_CA},
        env={
            "LOCKWISE_RELAY_ROUTES": "off",
            "LOCKWISE_DB_POOL_SIZE": "8",
            # handed to a lock at pairing: where it connects
            "LOCKWISE_MQTT_PUBLIC_HOST": "{broker_public_host}",
            "LOCKWISE_MQTT_PUBLIC_PORT": "{broker_port}",
            # Cloud Run's front end appends the caller's address to X-Forwarded-For: the pairing-code limit counts
            # per that address (one more hop if a load balancer is put in front)
            "LOCKWISE_TRUSTED_PROXY_HOPS": "1",
        },
        why="the app's locks, members and commands; the public copy does not serve the relay's endpoints",
    ),
    ServiceSpec(
        name="lockwise-devices-relay",
        function="devices",
        bundle="devices",
        memory="512Mi",
        cpu="1",
        min_instances=0,
        max_instances=5,
        cpu_boost=False,
        concurrency=20,
        timeout_s=30,
        # Only the relay calls this: internal ingress, IAM invoker = the relay's service account, plus the token.
        public=False,
        ingress="internal",
        secrets={**DB, **TOKEN, **SIGNING, **LOCK_CA},
        # the broker's public address too: a devices function in production does not start without it
        env={"LOCKWISE_RELAY_ROUTES": "on", "LOCKWISE_MQTT_PUBLIC_HOST": "{broker_public_host}"},
        why="lock events from the relay",
    ),
    ServiceSpec(
        name="lockwise-relay",
        function=None,
        bundle="relay",
        memory="512Mi",
        cpu="1",
        # Always on: it holds the broker session. Two replicas are safe (SKIP LOCKED claims, one leased slot and MQTT
        # session each, lock events shared between them) and survive a zone loss.
        min_instances=2,
        max_instances=2,
        cpu_boost=False,
        always_on_cpu=True,
        concurrency=10,
        timeout_s=300,
        public=False,
        ingress="internal",
        # never the command-signing key: commands are signed by the functions, the relay only carries them
        secrets={
            **DB,
            **TOKEN,
            "{mounts}/ca.crt": SECRET_MQTT_CA,
            "{mounts}/relay-certs.json": SECRET_RELAY_CERTS,
        },
        env={
            "MQTT_HOST": "{broker_host}",
            "MQTT_PORT": "{broker_port}",
            "MQTT_CA_FILE": "{mounts}/ca.crt",
            "MQTT_CLIENT_CERTS": "{mounts}/relay-certs.json",
            "LOCKWISE_RELAY_SLOTS": str(RELAY_SLOTS),
            "LOCKWISE_DEVICES_URL": "{devices_relay_url}",
            "LOCKWISE_RELAY_ID_TOKEN_AUDIENCE": "{devices_relay_url}",
        },
        why="MQTT session: commands to locks, lock events to devices-relay",
    ),
)

MIGRATE = JobSpec(
    name="lockwise-migrate",
    bundle="migrate",
    argv=("python", "-m", "lockwise.core.migrate"),
    secrets=dict(DB),
    why="applies the database migrations before new code goes live",
)

# Least privilege: each service account gets only these roles (plus access to the secrets its service mounts).
ROLES = {
    "lockwise-verify": ["roles/cloudsql.client", "roles/datastore.user"],
    "lockwise-embed": ["roles/cloudsql.client", "roles/datastore.user"],
    # Firebase Auth read-only (lockwise.core.accounts): the public copy asks it on each operator request and for the
    # address of whoever lists, accepts or declines invitations; the relay's copy in its flush's account sweep
    "lockwise-devices": ["roles/cloudsql.client", "roles/datastore.user", "roles/firebaseauth.viewer"],
    "lockwise-devices-relay": ["roles/cloudsql.client", "roles/datastore.user", "roles/firebaseauth.viewer"],
    "lockwise-relay": ["roles/cloudsql.client"],
    "lockwise-migrate": ["roles/cloudsql.client"],
}
