"""Fetch the production speaker model at build time, verified by checksum: never at run time, never per request.

``python -m infra.model.fetch OUT [--record]`` downloads the files of ``speechbrain/spkrec-ecapa-voxceleb`` listed in
``infra/model/ecapa-voxceleb.lock.json`` with ``huggingface_hub.hf_hub_download`` (the Hub's own client: redirects,
resumed downloads, tokens and mirrors through ``HF_ENDPOINT``) at the lock file's pinned **commit**, and refuses any
file whose SHA-256 differs from its pin. A lock file without a pinned commit or with a file not pinned yet is refused
too unless ``--record`` is given: that resolves the tracked branch (``track``, ``main``) to the commit it points at
now, downloads at that commit and writes the commit and the checksums it saw into the lock file (trust on first use:
review and commit that change). The development machines cannot reach the Hub, so the pins are recorded by the first
build that can; see README "Deploy".
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

LOCK_FILE = Path(__file__).with_name("ecapa-voxceleb.lock.json")
CHUNK = 1 << 16
COMMIT = re.compile(r"[0-9a-f]{40}")


class FetchError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(repo: str, branch: str, filename: str, endpoint: str | None) -> str:
    """The commit ``branch`` of ``repo`` points at now (from the Hub's answer for one of its files)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    commit = get_hf_file_metadata(hf_hub_url(repo, filename, revision=branch, endpoint=endpoint)).commit_hash
    if not commit or not COMMIT.fullmatch(commit):
        raise FetchError(f"{repo}@{branch}: the Hub named no commit ({commit!r})")
    return commit


def fetch(
    out: Path, *, record: bool = False, base_url: str | None = None, lock_file: Path = LOCK_FILE
) -> dict[str, str]:
    from huggingface_hub import hf_hub_download

    lock: dict[str, Any] = json.loads(lock_file.read_text())
    files: dict[str, str | None] = lock["files"]
    revision = lock.get("revision")
    unpinned = [name for name, sha in files.items() if not sha]
    if not record:
        if not revision or not COMMIT.fullmatch(str(revision)):
            raise FetchError(
                f"{lock['repo']}: revision {revision!r} is not a pinned commit: run once with --record and review "
                "the lock file"
            )
        if unpinned:
            raise FetchError(
                f"no pinned checksum for {', '.join(unpinned)}: run once with --record and review the lock file"
            )
    endpoint = base_url.rstrip("/") if base_url else None  # None: HF_ENDPOINT, else the Hub itself
    if record:
        revision = resolve(lock["repo"], lock.get("track", "main"), next(iter(files)), endpoint)
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, str] = {}
    for name, sha in files.items():
        path = Path(hf_hub_download(lock["repo"], name, revision=revision, local_dir=out, endpoint=endpoint))
        seen[name] = sha256_of(path)
        if sha is not None and seen[name] != sha:
            path.unlink()
            raise FetchError(f"{name}: SHA-256 {seen[name]} does not match the pinned {sha}")
    shutil.rmtree(out / ".cache", ignore_errors=True)  # the client's download bookkeeping, not part of the model
    if record:
        lock["revision"], lock["files"] = revision, seen
        lock_file.write_text(json.dumps(lock, indent=2) + "\n")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--record", action="store_true", help="pin the checksums seen now (trust on first use)")
    parser.add_argument("--base-url", help="a mirror of the Hub (same API; HF_ENDPOINT works too)")
    args = parser.parse_args(argv)
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        fetch(args.out, record=args.record, base_url=args.base_url)
    except (FetchError, OSError, EntryNotFoundError, LocalEntryNotFoundError) as exc:  # HTTP errors are OSErrors
        sys.stderr.write(f"model fetch failed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
