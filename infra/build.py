"""Build a deployable bundle per function, and the relay's container context:
``python -m infra.build devices --out .build/devices`` (default: every target into ``.build/``).

A function bundle is what Cloud Functions / Cloud Run receives as source: the function's ``main.py`` and
``requirements.txt``, plus the shared ``lockwise`` package copied in (the one place it is edited is
``functions/lockwise``); embed and verify also carry ``models/ge2e`` (the GE2E export, 5.5 MB: the encoder used
when no ECAPA model directory is configured). The relay's context holds ``mqtt_relay/``, ``lockwise/``, its
requirements and Dockerfile. Nothing else of the repository is needed to run either.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS_DIR = REPO / "functions"
SHARED_PACKAGE = FUNCTIONS_DIR / "lockwise"
FUNCTIONS = ("embed", "verify", "devices")
#: functions that load a speaker model: they carry the GE2E export (the encoder when no model directory is set)
VOICE_FUNCTIONS = ("embed", "verify")
GE2E_DIR = FUNCTIONS_DIR / "models" / "ge2e"
RELAY = "relay"
MIGRATE = "migrate"
TARGETS = (*FUNCTIONS, RELAY, MIGRATE)
#: production installs torch from the CPU wheel index: the PyPI build bundles CUDA (~7 GB) that Cloud Run cannot use
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
MIGRATE_DOCKERFILE = """FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir pg8000==1.31.6 && useradd --system --uid 10001 migrate
COPY lockwise /app/lockwise
USER migrate
CMD ["python", "-m", "lockwise.migrate"]
"""
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache")


def build(name: str, out: Path, *, production: bool = False) -> Path:
    """Write the bundle of ``name`` into ``out`` (replaced if it exists); return ``out``.

    ``production`` points torch at the CPU wheel index (same versions, no CUDA libraries).
    """
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    if out.exists():
        shutil.rmtree(out)
    if name == RELAY:  # the relay's container context: its package, requirements and Dockerfile
        shutil.copytree(REPO / "mqtt_relay", out / "mqtt_relay", ignore=_IGNORE)
        shutil.copy(REPO / "mqtt_relay" / "requirements.txt", out / "requirements.txt")
        shutil.copy(REPO / "mqtt_relay" / "Dockerfile", out / "Dockerfile")
    elif name == MIGRATE:  # a one-shot container that applies the migrations
        out.mkdir(parents=True)
        (out / "Dockerfile").write_text(MIGRATE_DOCKERFILE)
    else:
        shutil.copytree(FUNCTIONS_DIR / name, out, ignore=_IGNORE)
        requirements = out / "requirements.txt"
        pins, swapped = re.subn(r"^(torch(?:audio)?==[\d.]+)$", r"\1+cpu", requirements.read_text(), flags=re.M)
        if production and swapped:
            requirements.write_text(f"{CPU_INDEX}\n{pins}")
    shutil.copytree(SHARED_PACKAGE, out / "lockwise", ignore=_IGNORE)
    if name in VOICE_FUNCTIONS:
        if not (GE2E_DIR / "manifest.json").is_file():
            raise SystemExit(f"{GE2E_DIR} is missing: run ./dev setup (it exports the GE2E weights there)")
        shutil.copytree(GE2E_DIR, out / "models" / "ge2e")
    manifest = {
        "function": name,
        "files": {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file()
        },
    }
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("functions", nargs="*", default=list(TARGETS), help="what to build (default: all)")
    parser.add_argument("--production", action="store_true", help="torch from the CPU wheel index")
    parser.add_argument("--out", type=Path, help="output folder (one function) or parent folder (several)")
    args = parser.parse_args(argv)
    names: list[str] = args.functions
    for name in names:
        if args.out is None:
            out = REPO / ".build" / name
        elif len(names) == 1:
            out = args.out
        else:
            out = args.out / name
        build(name, out, production=args.production)
        sys.stdout.write(f"built {name} -> {out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
