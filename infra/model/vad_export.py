"""Copy Silero VAD's 16 kHz sequence graph out of the ``silero-vad`` wheel into a serving folder, by checksum:
``python -m infra.model.vad_export OUT``.

Build-time only: the wheel comes from PyPI with the build's other requirements (``requirements-dev.txt``); nothing
is downloaded here and the package is not imported (its ``__init__`` loads torch). The graph must have the SHA-256
pinned below (silero-vad 6.2.3's), else nothing is written. Writes ``OUT/manifest.json`` (what
``lockwise.voice.model.voice_activity`` checks), the graph and the package's MIT licence.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

from infra.staging import staged_dir
from lockwise.voice.model import voice_activity
from lockwise.voice.model.model_files import file_sha256

PACKAGE = "silero-vad"
VERSION = "6.2.3"
GRAPH = "silero_vad_16k_sequence.onnx"
PINNED_SHA256 = "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85"
LICENCE = "MIT (Silero Team, https://github.com/snakers4/silero-vad)"


def packaged_graph() -> Path:
    """The sequence graph inside the installed ``silero_vad`` package (found without importing it)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{PACKAGE} is not installed: pip install {PACKAGE}=={VERSION} (it carries the VAD graph)")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / GRAPH


def licence_file() -> Path:
    files = importlib.metadata.files(PACKAGE) or []
    found = [f for f in files if f.name == "LICENSE" and ".dist-info" in str(f)]
    if not found:
        raise SystemExit(f"{PACKAGE}'s LICENSE is not in its installed metadata")
    return Path(str(found[0].locate()))


def export(out: Path) -> dict[str, object]:
    """Write ``out`` (replacing it) from the installed wheel; return its manifest. ``SystemExit`` when the package
    is not the pinned version or its graph not the pinned file."""
    version = importlib.metadata.version(PACKAGE)
    if version != VERSION:
        raise SystemExit(f"{PACKAGE} {version} is installed; the pinned graph is {VERSION}'s")
    source = packaged_graph()
    sha = file_sha256(source)
    if sha != PINNED_SHA256:
        raise SystemExit(f"{source}: SHA-256 {sha} is not {PACKAGE} {VERSION}'s ({PINNED_SHA256})")
    manifest: dict[str, object] = {
        "format": voice_activity.FORMAT,
        "detector": voice_activity.DETECTOR,
        "file": GRAPH,
        "sha256": sha,
        "sample_rate": voice_activity.SAMPLE_RATE,
        "frame": voice_activity.FRAME,
        "context": voice_activity.CONTEXT,
        "licence": LICENCE,
        "source": {"package": f"{PACKAGE} {VERSION}", "file": f"silero_vad/data/{GRAPH}"},
    }
    with staged_dir(out) as staging:
        shutil.copyfile(source, staging / GRAPH)
        shutil.copyfile(licence_file(), staging / "LICENSE")
        (staging / voice_activity.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        voice_activity.VoiceActivity(staging)  # what serving checks, checked before it is swapped in
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    export(args.out)
    print(f"wrote {args.out} ({PACKAGE} {VERSION}, {GRAPH})")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
