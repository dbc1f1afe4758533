"""Fetch the production speaker model at build time, verified by checksum: never at run time, never per request.

``python -m infra.model.fetch OUT [--record]`` downloads the files of ``speechbrain/spkrec-ecapa-voxceleb`` listed in
``infra/model/ecapa-voxceleb.lock.json`` at its pinned revision, shows a progress bar, and refuses any file whose
SHA-256 differs from the pin. A file with no pin yet is refused too unless ``--record`` is given, which writes the
checksums it saw into the lock file (trust on first use: review and commit that change). The development machines
cannot reach the Hub, so the pins are recorded by the first build that can; see README "Deploy".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

LOCK_FILE = Path(__file__).with_name("ecapa-voxceleb.lock.json")
CHUNK = 1 << 16


class FetchError(RuntimeError):
    pass


def _progress(name: str, done: int, total: int | None) -> None:
    if total:
        width = 30
        filled = int(width * done / total)
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\r  {name:<24} [{bar}] {done / 2**20:7.1f}/{total / 2**20:.1f} MB")
    else:
        sys.stderr.write(f"\r  {name:<24} {done / 2**20:7.1f} MB")
    sys.stderr.flush()


def fetch_file(url: str, target: Path, expected_sha256: str | None) -> str:
    """Download ``url`` to ``target`` (via a temporary file); returns the SHA-256 it had."""
    digest = hashlib.sha256()
    tmp = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        done = 0
        while chunk := resp.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            _progress(target.name, done, total)
    sys.stderr.write("\n")
    actual = digest.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        tmp.unlink()
        raise FetchError(f"{target.name}: SHA-256 {actual} does not match the pinned {expected_sha256}")
    tmp.replace(target)
    return actual


def fetch(
    out: Path, *, record: bool = False, base_url: str | None = None, lock_file: Path = LOCK_FILE
) -> dict[str, str]:
    lock: dict[str, Any] = json.loads(lock_file.read_text())
    files: dict[str, str | None] = lock["files"]
    unpinned = [name for name, sha in files.items() if not sha]
    if unpinned and not record:
        raise FetchError(
            f"no pinned checksum for {', '.join(unpinned)}: run once with --record and review the lock file"
        )
    base = (base_url or lock["base_url"]).rstrip("/")
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for name, sha in files.items():
        url = f"{base}/{lock['repo']}/resolve/{lock['revision']}/{name}"
        seen[name] = fetch_file(url, out / name, sha)
    if record:
        lock["files"] = seen
        lock_file.write_text(json.dumps(lock, indent=2) + "\n")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--record", action="store_true", help="pin the checksums seen now (trust on first use)")
    parser.add_argument("--base-url", help="a mirror of the Hub (same layout)")
    args = parser.parse_args(argv)
    try:
        fetch(args.out, record=args.record, base_url=args.base_url)
    except (FetchError, OSError) as exc:
        sys.stderr.write(f"model fetch failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
