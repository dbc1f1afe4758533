"""Build a deployable bundle per function, and the relay's container context:
``python -m infra.build devices --out .build/devices`` (default: every target into ``.build/``).

A function bundle is what Cloud Functions / Cloud Run receives as source: the function's ``main.py`` and
``requirements.txt``, plus the shared ``lockwise`` package copied in (the one place it is edited is
``functions/lockwise``); embed and verify also carry ``models/ge2e`` (the GE2E export, 5.5 MB: the encoder used
when no ECAPA model directory is configured), and embed ``models/vad`` (Silero VAD's graph, 1.2 MB: enrollment
samples must hold a voice). The relay's context holds ``mqtt_relay/``, ``lockwise/``, its
requirements and Dockerfile; the migration job's holds ``lockwise/`` and what ``infra/bundles/migrate/`` has
(requirements, Dockerfile). Nothing else of the repository is needed to run any of
them: the production rehearsal (tests/rehearsal) installs each into its own virtualenv from its own requirements.
"""

from __future__ import annotations

import argparse
import compileall
import fnmatch
import hashlib
import json
import py_compile
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from infra import pin_hashes, pins

REPO = Path(__file__).resolve().parents[1]
FUNCTIONS_DIR = REPO / "functions"
SHARED_PACKAGE = FUNCTIONS_DIR / "lockwise"
FUNCTIONS = ("embed", "verify", "devices")
#: functions that load a speaker model: they carry the GE2E export (the encoder when no model directory is set)
VOICE_FUNCTIONS = ("embed", "verify")
GE2E_DIR = FUNCTIONS_DIR / "models" / "ge2e"
#: the voice activity graph (``python -m infra.model.vad_export``): embed refuses enrollment samples without a voice
VAD_DIR = FUNCTIONS_DIR / "models" / "vad"
VAD_FUNCTIONS = ("embed",)
RELAY = "relay"
MIGRATE = "migrate"
#: bundles that are the shared package plus their own requirements (and Dockerfile): infra/bundles/<name>/
PACKAGE_BUNDLES = (MIGRATE,)
TARGETS = (*FUNCTIONS, RELAY, *PACKAGE_BUNDLES)
#: what the source folders copied into a bundle may ship: Python, the migrations, each deployable's requirements and
#: Dockerfile. Anything else there is refused by name, not shipped (attack run 101: every file of functions/<name>,
#: functions/lockwise, mqtt_relay and infra/bundles/<name> was copied, a ``.env``, a ``.venv``, the rejected voices of
#: a ``LOCKWISE_DEBUG_REJECTED_DIR`` relative to the local stack's working directory (functions/verify), and those git
#: ignores left the release labelled clean)
SHIPPED = ("*.py", "*.sql", "requirements.txt", "Dockerfile")
#: what tools leave in a source folder: never shipped, and no reason to stop a build
CACHES = ("__pycache__", "*.pyc", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", ".import_linter_cache")


#: the folders (relative to the checkout) whose files a bundle ships, as ``SHIPPED`` and ``CACHES`` say
SOURCE_FOLDERS = (*(f"functions/{name}/" for name in (*FUNCTIONS, "lockwise")), "mqtt_relay/", "infra/bundles/")


def ships(relative: str) -> bool:
    """Whether a build ships the file at ``relative`` (a path in the checkout, with ``/``): one of a source folder's
    kinds of file, in no hidden folder or cache (the models are checked apart: ``check_models``)."""
    parts = relative.split("/")
    return (
        relative.startswith(SOURCE_FOLDERS)
        and not any(part.startswith(".") or any(fnmatch.fnmatch(part, c) for c in CACHES) for part in parts)
        and any(fnmatch.fnmatch(parts[-1], kind) for kind in SHIPPED)
    )


def build(name: str, out: Path) -> Path:
    """Write the bundle of ``name`` into ``out`` (replaced if it exists); return ``out``.

    No bundle carries torch: embed and verify serve the speaker model's ONNX export (or GE2E with numpy), so every
    bundle installs from PyPI alone.
    """
    if name not in TARGETS:
        raise SystemExit(f"unknown target {name!r}; expected one of {', '.join(TARGETS)}")
    if out.exists():
        shutil.rmtree(out)
    strays: list[Path] = []
    ignore = _shipped_only(strays)
    if name == RELAY:  # the relay's container context: its package, requirements and Dockerfile
        shutil.copytree(REPO / "mqtt_relay", out / "mqtt_relay", ignore=ignore)
        shutil.copy(REPO / "mqtt_relay" / "requirements.txt", out / "requirements.txt")
        shutil.copy(REPO / "mqtt_relay" / "Dockerfile", out / "Dockerfile")
    elif name in PACKAGE_BUNDLES:  # the migration job's container; the broker host's account sync
        shutil.copytree(REPO / "infra" / "bundles" / name, out, ignore=ignore)
    else:
        shutil.copytree(FUNCTIONS_DIR / name, out, ignore=ignore)
    shutil.copytree(SHARED_PACKAGE, out / "lockwise", ignore=ignore)
    if strays:
        shutil.rmtree(out)
        named = ", ".join(_shown(p) for p in strays[:10]) + (
            f" and {len(strays) - 10} more" if len(strays) > 10 else ""
        )
        raise SystemExit(
            f"{name}: not building a bundle that would ship {named}: only {', '.join(SHIPPED)} (and caches, left out)"
            " belong in its source folders; move or delete them"
        )
    # each pin with the hashes of the files it may install: pip checks them (hash-checking mode) where it deploys,
    # and takes wheels alone: a source archive's build dependencies would be fetched and run unchecked (attack run
    # 124: the recorded source archives were taken wherever pip chose one, a platform without a wheel for a pin)
    requirements = out / "requirements.txt"
    options = "".join(f"{option}\n" for option in pins.INSTALL_OPTIONS)
    requirements.write_text(options + pin_hashes.with_hashes(requirements.read_text(), pin_hashes.load()))
    if name in VOICE_FUNCTIONS:
        if not (GE2E_DIR / "manifest.json").is_file():
            raise SystemExit(f"{GE2E_DIR} is missing: run ./dev setup (it exports the GE2E weights there)")
        check_models(GE2E_DIR, VAD_DIR if name in VAD_FUNCTIONS else None)
        shutil.copytree(GE2E_DIR, out / "models" / "ge2e")
    if name in VAD_FUNCTIONS:
        if not (VAD_DIR / "manifest.json").is_file():
            raise SystemExit(f"{VAD_DIR} is missing: run ./dev setup (it copies Silero VAD's graph there)")
        shutil.copytree(VAD_DIR, out / "models" / "vad")
    compile_bytecode(out)
    write_manifest(name, out)
    return out


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (its path relative to it) with its SHA-256, in path order; a bundle's own
    ``bundle.json`` left out (the manifest these make, ``write_manifest``, and check, ``changes``)."""
    manifest = folder / "bundle.json"
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p != manifest)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def write_manifest(name: str, out: Path) -> None:
    """``bundle.json``: every file of the bundle ``out`` with its SHA-256 (itself left out)."""
    manifest = {"function": name, "files": file_hashes(out)}
    (out / "bundle.json").write_text(json.dumps(manifest, indent=2) + "\n")


#: the files a model folder ships, each read by its loader and checked here (VAD's graph: the file its manifest names);
#: any other file there stops the build by name (attack run 124: the folders, git-ignored, were copied whole)
GE2E_FILES = ("manifest.json", "ge2e.npz", "cohort.json", "cohort.npz")
VAD_FILES = ("manifest.json", "LICENSE")


def check_models(ge2e_dir: Path, vad_dir: Path | None) -> None:
    """Stop the build unless the model files it ships are the ones their manifests name and were made from the pinned
    sources: GE2E's export says it came from resemblyzer's pinned weights, its weights and cohort are the files its
    manifests hash (the cohort made for this export), Silero VAD's graph is the pinned file itself. The files are
    git-ignored and were copied unchecked, under the checkout's release tag (attack run 101): a stale export, another
    model's cohort or a graph from elsewhere shipped. An export rewritten with a manifest made to match is not caught
    here (the npz is not byte-reproducible); ``./dev setup`` checks its parity with resemblyzer when it exports. A
    file in either folder that is none of these stops the build too: the folders are copied whole (``GE2E_FILES``)."""
    from infra.model import ge2e_export, vad_export  # numpy and the encoder: only where a voice bundle is built

    def sha256(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    manifest = json.loads((ge2e_dir / "manifest.json").read_text())
    cohort = json.loads((ge2e_dir / "cohort.json").read_text())
    found = {
        "GE2E's source weights": (manifest.get("source", {}).get("sha256"), ge2e_export.PINNED_SHA256),
        "ge2e.npz": (sha256(ge2e_dir / "ge2e.npz"), manifest.get("sha256")),
        "cohort.npz": (sha256(ge2e_dir / "cohort.npz"), cohort.get("sha256")),
        "the cohort's model": (cohort.get("model_id"), manifest.get("model_id")),
    }
    if vad_dir is not None:
        vad = json.loads((vad_dir / "manifest.json").read_text())
        found["Silero VAD's graph"] = (sha256(vad_dir / str(vad.get("file"))), vad_export.PINNED_SHA256)
        found["the VAD manifest"] = (vad.get("sha256"), vad_export.PINNED_SHA256)
    wrong = [f"{what}: {got} is not {pinned}" for what, (got, pinned) in found.items() if got != pinned]
    named = {ge2e_dir: set(GE2E_FILES)} | ({vad_dir: {*VAD_FILES, str(vad.get("file"))}} if vad_dir is not None else {})
    wrong += [
        f"{_shown(path)} is no file the model's manifests name"
        for folder, files in named.items()
        for path in sorted(folder.rglob("*"))
        if not (path.parent == folder and path.name in files and path.is_file() and not path.is_symlink())
    ]
    if wrong:
        raise SystemExit("not building with model files other than the pinned ones: " + "; ".join(wrong))


def _shipped_only(strays: list[Path]) -> Callable[[str, list[str]], set[str]]:
    """A ``copytree`` ignore that leaves caches out and everything else but ``SHIPPED`` too, noting it in ``strays``:
    a hidden folder whole (a ``.venv``), any other folder file by file, and a symbolic link, whatever it names (attack
    run 124: a link named ``*.py`` shipped its target's bytes, from wherever it pointed, while the release hashed the
    link)."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        left_out = set()
        for name in names:
            path = Path(folder) / name
            if any(fnmatch.fnmatch(name, cache) for cache in CACHES):
                left_out.add(name)
            elif path.is_symlink():  # its target's bytes would ship, read from outside what the release names
                left_out.add(name)
                strays.append(path)
            elif path.is_dir():
                if name.startswith("."):
                    left_out.add(name)
                    strays.append(path)
            elif name.startswith(".") or not any(fnmatch.fnmatch(name, kind) for kind in SHIPPED):
                left_out.add(name)
                strays.append(path)
        return left_out

    return ignore


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def compile_bytecode(out: Path) -> None:
    """Compile every module of the bundle into its ``__pycache__``, so an instance imports bytecode instead of
    compiling its modules at each cold start (verify: 36 of them, ~0.05 s of its cold start, measured). The ``.pyc``
    files are checked by the source's hash, not its modification time, which an upload or an unzip does not keep; a
    source edited after the build is compiled again as usual. They are the building Python's (``cpython-311`` from
    ``./dev``'s virtualenv, the deployment's ``python311`` too); another version ignores them and compiles the source.
    """
    # stripdir: the code objects name their files relative to the bundle (Python points them at the real file when
    # it imports them), so two builds of the same source give the same bytes wherever they were built
    ok = compileall.compile_dir(
        out, quiet=1, stripdir=str(out), invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH, workers=1
    )
    if not ok:
        raise SystemExit(f"the bundle in {out} has Python that does not compile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("functions", nargs="*", default=list(TARGETS), help="what to build (default: all)")
    parser.add_argument("--out", type=Path, help="output folder (one function) or parent folder (several)")
    parser.add_argument(
        "--record-release",
        default="",
        help="build nothing: record in the output folder's RELEASE that its bundles are this release (the deploy's"
        " build step, last)",
    )
    parser.add_argument(
        "--expect-release",
        default="",
        help="build nothing: fail unless the output folder's RELEASE names this release (the deploy's check)",
    )
    args = parser.parse_args(argv)
    parent = args.out or REPO / ".build"
    if args.expect_release:
        return expect_release(parent, args.expect_release)
    if args.record_release:
        return record_release(parent, args.record_release)
    names: list[str] = args.functions
    # whatever this builds, the folder's bundles are no one release's any more until the deploy records one
    (parent.parent if args.out is not None and len(names) == 1 else parent).joinpath(RELEASE_FILE).unlink(
        missing_ok=True
    )
    for name in names:
        if args.out is None:
            out = REPO / ".build" / name
        elif len(names) == 1:
            out = args.out
        else:
            out = args.out / name
        build(name, out)
        sys.stdout.write(f"built {name} -> {out}\n")
    return 0


#: the release the bundles of a folder were built from (``--record-release``); removed by any build into it
RELEASE_FILE = "RELEASE"


#: the speaker model's source files, pinned by SHA-256 (``infra.model.fetch``): the ONNX export is of its weights
MODEL_LOCK = REPO / "infra" / "model" / "ecapa-voxceleb.lock.json"
#: what the deploy adds to a bundle after its build: the ONNX export, in the voice bundles' ``model/``
ADDED_AFTER_BUILD: dict[str, tuple[str, ...]] = {name: ("model/",) for name in VOICE_FUNCTIONS}


def changes(name: str, out: Path, *, added_under: tuple[str, ...] = ()) -> list[str]:
    """How the bundle ``out`` of ``name`` differs from its ``bundle.json``: each file changed, missing or not listed
    (but those under ``added_under``), or a manifest that is not the one ``infra.build`` wrote for ``name``."""
    try:
        manifest = json.loads((out / "bundle.json").read_text())
        listed: dict[str, str] = manifest["files"]
        made_for = manifest["function"]
        if not isinstance(listed, dict):
            raise TypeError(type(listed).__name__)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{_shown(out)} has no bundle.json infra.build wrote ({type(exc).__name__}): build it again"]
    if made_for != name:
        return [f"{_shown(out)} is the bundle of {made_for!r}, not of {name!r}"]
    found = file_hashes(out)
    said = [
        f"{name}/{file} changed since its build"
        for file in sorted(found)
        if listed.get(file, found[file]) != found[file]
    ]
    said += [f"{name}/{file} is missing" for file in sorted(listed.keys() - found.keys())]
    said += [
        f"{name}/{file} was added since its build"
        for file in sorted(found.keys() - listed.keys())
        if not file.startswith(added_under)
    ]
    return said


def _unchanged(parent: Path, names: tuple[str, ...], added: dict[str, tuple[str, ...]]) -> bool:
    """Whether each bundle of ``names`` under ``parent`` holds what its manifest lists (and what ``added`` allows
    beside it); if not, how it differs is written to stderr."""
    found = [line for name in names for line in changes(name, parent / name, added_under=added.get(name, ()))]
    if found:
        shown = "; ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        sys.stderr.write(f"build: {parent} holds bundles other than built: {shown}. Run the build step again\n")
    return not found


def record_release(parent: Path, release: str) -> int:
    """Record that the bundles under ``parent`` are ``release``: the deploy's build step, once everything of it
    succeeded (recorded first, a model export that failed after it left bundles without their model passed the
    check: attack run 66). 1 while a target is missing, or holds a file changed, missing or added since its build
    but the ONNX export the deploy copies into the voice bundles' ``model/`` (attack run 124: the manifests were
    written again from whatever the folders held, so a file edited between the build and this step was recorded as
    the release's), or while the export is not of the pinned weights (``export_problems``)."""
    missing = [name for name in TARGETS if not (parent / name).is_dir()]
    if missing:
        sys.stderr.write(f"build: {parent} lacks {', '.join(missing)}: build everything first\n")
        return 1
    if not _unchanged(parent, TARGETS, ADDED_AFTER_BUILD):
        return 1
    wrong = export_problems(parent, MODEL_LOCK)
    if wrong:
        sys.stderr.write(f"build: not recording {parent}: {'; '.join(wrong)}\n")
        return 1
    for name in TARGETS:  # listed again: the deploy copied the ONNX export into the voice bundles after their build
        write_manifest(name, parent / name)
    (parent / RELEASE_FILE).write_text(release + "\n")
    return 0


def export_problems(parent: Path, lock_file: Path) -> list[str]:
    """Why the ONNX export the deploy copied into the voice bundles' ``model/`` is not this release's: one bundle
    carries it and another not, or another one; its manifest names other weights (``model_id``, the start of the
    SHA-256 of ``embedding_model.ckpt``) than ``lock_file`` pins. Attack run 124: whatever the deploy found in
    ``model/`` was listed and recorded, an export made from other weights (a test's random model, a stale export of
    another pin) too; the functions check the export's files against its own manifest alone. An export rewritten with
    a manifest naming the pinned weights is still not caught here."""
    folders = {name: parent / name / "model" for name in VOICE_FUNCTIONS}
    exports = {name: file_hashes(folder) for name, folder in folders.items() if folder.is_dir()}
    if not exports:
        return []  # the GE2E export alone: no ECAPA model deployed
    if len(exports) < len(folders) or len({json.dumps(files, sort_keys=True) for files in exports.values()}) > 1:
        return [f"{' and '.join(VOICE_FUNCTIONS)} do not carry one ONNX export in model/: copy the same into each"]
    lock = json.loads(lock_file.read_text())
    pinned = (lock.get("files") or {}).get("embedding_model.ckpt")
    if not pinned:
        return [f"{_shown(lock_file)} pins no embedding_model.ckpt: the export's weights are no pinned ones"]
    try:
        model_id = json.loads((folders[VOICE_FUNCTIONS[0]] / "manifest.json").read_text()).get("model_id")
    except (OSError, ValueError, AttributeError) as exc:
        return [f"the ONNX export in model/ has no manifest infra.model.export_onnx wrote ({type(exc).__name__})"]
    if model_id != f"ecapa-{pinned[:16]}":
        return [f"the ONNX export in model/ is of the weights {model_id!r}, not the pinned ecapa-{pinned[:16]}"]
    return []


def expect_release(parent: Path, release: str) -> int:
    """0 when the bundles under ``parent`` were built for ``release`` and hold what their manifests list, no more;
    else 1, saying so: functions are deployed from these folders whatever release the deploy is told, and a step run
    from another checkout's build deployed its code under this release's name (attack run 65); a file of a bundle
    edited, added or removed after the build step (a patched module, a ``.pyc`` its hash-checked source no longer
    matches, a model file) was deployed under the release's name, its build's commit not what ran (attack run
    124)."""
    recorded = parent / RELEASE_FILE
    built = recorded.read_text().strip() if recorded.exists() else "nothing recorded"
    if built != release:
        sys.stderr.write(f"build: {parent} holds release {built}, not {release}: run the build step first\n")
        return 1
    return 0 if _unchanged(parent, TARGETS, {}) else 1


if __name__ == "__main__":
    sys.exit(main())
