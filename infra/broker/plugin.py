"""The broker's subscription check (``lockwise_acl.c``, a Mosquitto 2.0 plugin): built here for the local stack and
the tests, and on the broker host from the source ``infra.broker.render`` writes beside the configuration.

Mosquitto's ACL file grants every subscription and checks ``read`` only as it delivers; the plugin grants a lock its
own command topic and nothing else (attack run 15: 200,000 shared-subscription groups from one lock slowed the
broker to ~10 messages a second for every lock)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("lockwise_acl.c")
#: where the broker host's build puts it (``render``'s ``build-lockwise-acl``) and its configuration loads it from
PROD_PATH = "/usr/local/lib/mosquitto/lockwise_acl.so"
HEADERS = (
    Path("/usr/include/mosquitto_plugin.h"),
    Path("/usr/include/mosquitto.h"),
    Path("/usr/include/mqtt_protocol.h"),  # libmosquitto-dev
)
#: Debian packages the build needs
PACKAGES = ("gcc", "libc6-dev", "mosquitto-dev", "libmosquitto-dev")


class CannotBuild(RuntimeError):
    """The machine lacks a compiler or Mosquitto's plugin headers."""


def compile_command(out: Path | str, source: Path | str = SOURCE) -> list[str]:
    return ["cc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-o", str(out), str(source)]


def install_script(target: str) -> str:
    """Shell lines that compile the plugin from the source beside the script into ``target``: written beside it and
    renamed into place, so a build stopped midway (a host shut down, a compiler killed, a full disk) leaves the
    plugin Mosquitto loaded before whole. Compiled straight into place, such a build left it cut short, and
    Mosquitto did not start at its next restart (attack run 126's leftover)."""
    partial = f"{target}.partial.$$"
    compile_line = " ".join(compile_command(f'"{partial}"', f'"$(dirname "$0")/{SOURCE.name}"'))
    return (
        f"mkdir -p {Path(target).parent}\ntrap 'rm -f \"{partial}\"' EXIT\n{compile_line}\n"
        f'chmod 755 "{partial}"\nmv -f "{partial}" {target}\n'
    )


def build(folder: Path) -> Path:
    """The plugin compiled into ``folder`` (once per version of its source: the file's name carries its hash)."""
    missing = [str(h) for h in HEADERS if not h.exists()]
    digest = hashlib.sha256(SOURCE.read_bytes())  # its source, how it is compiled, and the headers it is built on
    digest.update(" ".join(compile_command("")).encode())
    for header in HEADERS:
        digest.update(header.read_bytes() if header.exists() else b"")
    out = folder / f"lockwise_acl-{digest.hexdigest()[:16]}.so"
    if out.exists():
        return out
    if shutil.which("cc") is None or missing:
        raise CannotBuild(
            f"cannot build the broker's subscription plugin (no C compiler or {', '.join(missing) or 'headers'}):"
            f" apt-get install {' '.join(PACKAGES)}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=folder, suffix=".partial")  # two builders never share one
    os.close(handle)
    partial = Path(name)
    done = subprocess.run(compile_command(partial), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise CannotBuild(f"the broker's subscription plugin did not compile:\n{done.stderr}")
    partial.chmod(0o755)
    partial.rename(out)
    return out
