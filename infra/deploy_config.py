"""What each deployed component gets, and why. ``infra/deploy.py`` turns this into commands.

Numbers come from the benchmarks in the README (this repository's 2-core development machine); revisit them with
production traffic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Secret Manager secret names (values never appear in commands or logs)
SECRET_DATABASE_URL = "lockwise-database-url"
SECRET_SERVICE_TOKEN = "lockwise-service-token"
SECRET_COMMAND_KEY = "lockwise-command-signing-key"
SECRET_MQTT_RELAY_PASSWORD = "lockwise-mqtt-relay-password"
SECRET_MQTT_CA = "lockwise-mqtt-ca"  # the broker's CA certificate, mounted as a file


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
    env: dict[str, str] = field(default_factory=dict)
    always_on_cpu: bool = False
    why: str = ""


COMMON_SECRETS = {"DATABASE_URL": SECRET_DATABASE_URL, "LOCKWISE_SERVICE_TOKEN": SECRET_SERVICE_TOKEN}

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
        secrets={**COMMON_SECRETS, "LOCKWISE_COMMAND_SIGNING_KEY": SECRET_COMMAND_KEY},
        # The model directory holds the ONNX export only. onnxruntime keeps its default of one thread per core
        # (2 threads: 95 ms per 3 s clip, 1 thread: 173-180 ms) and glibc's default malloc (the tuned
        # MALLOC_MMAP/TRIM thresholds measured no different: bench verify_runtime).
        env={"LOCKWISE_MODEL_DIR": "/workspace/model"},
        why="locks post audio; decides and issues the unlock",
    ),
    ServiceSpec(
        name="lockwise-embed",
        function="embed",
        bundle="embed",
        memory="2Gi",
        cpu="2",
        # Enrollment is rare and happens in the app with a progress indicator: no warm instance needed.
        min_instances=0,
        max_instances=5,
        cpu_boost=True,
        concurrency=1,
        timeout_s=60,
        public=True,
        ingress="all",
        secrets=dict(COMMON_SECRETS),
        env={"LOCKWISE_MODEL_DIR": "/workspace/model"},
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
        secrets={**COMMON_SECRETS, "LOCKWISE_COMMAND_SIGNING_KEY": SECRET_COMMAND_KEY},
        env={"LOCKWISE_RELAY_ROUTES": "off", "LOCKWISE_DB_POOL_SIZE": "8"},
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
        secrets={**COMMON_SECRETS, "LOCKWISE_COMMAND_SIGNING_KEY": SECRET_COMMAND_KEY},
        env={"LOCKWISE_RELAY_ROUTES": "on"},
        why="lock events from the relay",
    ),
    ServiceSpec(
        name="lockwise-relay",
        function=None,
        bundle="relay",
        memory="512Mi",
        cpu="1",
        # Always on: it holds the broker session. Two replicas are safe (SKIP LOCKED claims) and survive a zone loss.
        min_instances=2,
        max_instances=2,
        cpu_boost=False,
        always_on_cpu=True,
        concurrency=10,
        timeout_s=300,
        public=False,
        ingress="internal",
        secrets={**COMMON_SECRETS, "MQTT_PASSWORD": SECRET_MQTT_RELAY_PASSWORD, "/etc/lockwise/ca.crt": SECRET_MQTT_CA},
        why="MQTT session: commands to locks, lock events to devices-relay",
    ),
)

# Least privilege: each service account gets only these roles (plus access to the secrets its service mounts).
ROLES = {
    "lockwise-verify": ["roles/cloudsql.client", "roles/datastore.user"],
    "lockwise-embed": ["roles/cloudsql.client", "roles/datastore.user"],
    "lockwise-devices": ["roles/cloudsql.client", "roles/datastore.user"],
    "lockwise-devices-relay": ["roles/cloudsql.client", "roles/datastore.user"],
    "lockwise-relay": ["roles/cloudsql.client"],
    "lockwise-migrate": ["roles/cloudsql.client"],
}
