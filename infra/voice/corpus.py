"""A real-speech test corpus from Debian's Asterisk prompt packages: ``python -m infra.voice.corpus OUT``.

Each ``asterisk-core-sounds-<lang>-gsm`` package holds ~550 studio prompts of one professional voice (8 kHz GSM,
CC-BY-SA 3.0); ``asterisk-prompt-es-co``, ``-fr-armelle`` (GPL) and ``-it-menardi-gsm`` (CC-BY-SA) add three more
voices, 285-555 prompts each. They are fetched with ``apt-get download`` and unpacked with ``dpkg -x`` (nothing is
installed), the GSM is decoded by ``sox`` to 16-bit WAV at 8 kHz, and consecutive prompts of one voice are joined
(with 0.25 s of silence between them) into clips of 3-8 s, the length a person speaks at a door. The en and es
packages are the same speaker (Allison Smith), so both go into one speaker folder. Output, the layout ``calibrate``
reads::

    OUT/<speaker>/<voice>-<nnn>.wav      one folder per speaker
    OUT/SOURCES.json                     packages, versions, SHA-256 of each .deb, licence; speakers -> voices
    OUT/licences/<package>.copyright     each package's copyright file

Building is idempotent: an existing ``OUT/SOURCES.json`` with the same package list is reused.

``--wideband`` builds the same layout from the ``asterisk-core-sounds-<lang>-g722`` packages instead: four of those
voices (Allison, June, Carlo, the Russian voice) recorded at 16 kHz, 50-7,000 Hz (G.722, decoded by the ``G722``
wheel, libg722's bindings, public domain), the band a lock's microphone hears, where the corpus above is telephone
band (300-3,400 Hz). The product's decision is calibrated on the telephone band; the wideband set measures what that
calibration does with the speech a lock really sends (README "Wideband speech").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import tempfile
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from infra.staging import staged_dir

# package -> (speaker folder, voice directory in the package, licence of the recordings, and the text of the
# package's copyright file that states it); en and es are both Allison Smith. Seven speakers: enough to evaluate
# speaker-disjoint (a threshold and a score cohort fitted without the speaker under test).
PACKAGES: dict[str, tuple[str, str, str, str]] = {
    "asterisk-core-sounds-en-gsm": ("allison", "en_US_f_Allison", "CC-BY-SA-3.0", "License: CC-BY-SA-3.0"),
    "asterisk-core-sounds-es-gsm": ("allison", "es_MX_f_Allison", "CC-BY-SA-3.0", "License: CC-BY-SA-3.0"),
    "asterisk-core-sounds-fr-gsm": ("june", "fr_CA_f_June", "CC-BY-SA-3.0", "License: CC-BY-SA-3.0"),
    "asterisk-core-sounds-it-gsm": ("carlo", "it_IT_m_Carlo", "CC-BY-3.0", "License: CC-BY-3.0"),
    "asterisk-core-sounds-ru-gsm": ("ivrvoice-ru", "ru_RU_f_IvrvoiceRU", "CC-BY-3.0", "License: CC-BY-3.0"),
    "asterisk-prompt-es-co": ("es-co", "es", "GPL-2+", "GNU General Public License"),
    "asterisk-prompt-fr-armelle": ("armelle", "fr", "GPL-2+", "either version 2 of the License, or (at your option)"),
    "asterisk-prompt-it-menardi-gsm": ("menardi", "it_IT_f_Menardi", "CC-BY-SA-3.0", "License: CC-SA-BY-3.0"),
}
#: the same voices at 16 kHz (no G.722 package of es-co, Armelle or Menardi exists; es is Allison again)
WIDEBAND_PACKAGES: dict[str, tuple[str, str, str, str]] = {
    "asterisk-core-sounds-en-g722": ("allison", "en_US_f_Allison", "CC-BY-SA-3.0", "License: CC-BY-SA-3.0"),
    "asterisk-core-sounds-fr-g722": ("june", "fr_CA_f_June", "CC-BY-SA-3.0", "License: CC-BY-SA-3.0"),
    "asterisk-core-sounds-it-g722": ("carlo", "it_IT_m_Carlo", "CC-BY-3.0", "License: CC-BY-3.0"),
    "asterisk-core-sounds-ru-g722": ("ivrvoice-ru", "ru_RU_f_IvrvoiceRU", "CC-BY-3.0", "License: CC-BY-3.0"),
}
RATE = 8000
WIDEBAND_RATE = 16000
GAP_S = 0.25
MIN_CLIP_S = 3.0
MAX_CLIP_S = 8.0
LAYOUT_VERSION = 1


class CorpusError(RuntimeError):
    pass


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str
    licence: str


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError as exc:
        raise CorpusError(f"{argv[0]} is not installed (needed to build the corpus: apt-get, dpkg, sox)") from exc
    except subprocess.CalledProcessError as exc:
        raise CorpusError(f"{' '.join(argv)} failed: {exc.stderr.strip()[-500:]}") from exc
    return done.stdout


def fetch(package: str, debs: Path) -> Path:
    """The package's .deb in ``debs`` (downloaded with ``apt-get download`` if not there yet)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        try:
            _run(["apt-get", "download", "-q", package], cwd=debs)
        except CorpusError:  # a fresh machine may have no package lists yet
            _run(["apt-get", "update", "-qq"])
            _run(["apt-get", "download", "-q", package], cwd=debs)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise CorpusError(f"apt-get download {package} wrote no .deb")
    return found[-1]


def read_gsm(path: Path) -> np.ndarray:
    """Decode one GSM prompt with sox: int16 samples at 8 kHz."""
    raw = subprocess.run(
        ["sox", "-t", "gsm", "-r", str(RATE), "-c", "1", str(path), "-t", "raw", "-e", "signed", "-b", "16", "-L", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, dtype="<i2")


def read_g722(path: Path) -> np.ndarray:
    """Decode one G.722 prompt (64 kbit/s) with libg722: int16 samples at 16 kHz."""
    from G722 import G722  # type: ignore[import-not-found]  # build-time and test-time only

    return np.asarray(G722(WIDEBAND_RATE, 64000).decode(path.read_bytes()), dtype=np.int16)


@dataclass(frozen=True)
class Codec:
    """How a package's prompts are stored: their file suffix, their rate and how to decode one into int16."""

    suffix: str
    rate: int
    read: Callable[[Path], np.ndarray]


GSM = Codec(".gsm", RATE, read_gsm)
G722_WIDEBAND = Codec(".g722", WIDEBAND_RATE, read_g722)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.astype("<i2").tobytes())


def join_prompts(prompts: list[np.ndarray], rate: int = RATE) -> list[np.ndarray]:
    """Consecutive prompts joined with short gaps into clips of MIN_CLIP_S-MAX_CLIP_S (a longer prompt is cut)."""
    gap = np.zeros(int(GAP_S * rate), dtype=np.int16)
    clips: list[np.ndarray] = []
    current: list[np.ndarray] = []
    length = 0
    for prompt in prompts:
        prompt = prompt[: int(MAX_CLIP_S * rate)]
        if length and length + len(gap) + len(prompt) > MAX_CLIP_S * rate:
            current, length = [], 0  # would overflow: start afresh (a short leftover is dropped)
        if length:
            current.append(gap)
            length += len(gap)
        current.append(prompt)
        length += len(prompt)
        if length >= MIN_CLIP_S * rate:
            clips.append(np.concatenate(current))
            current, length = [], 0
    return clips


def build(
    out: Path,
    cache: Path | None = None,
    packages: dict[str, tuple[str, str, str, str]] | None = None,
    codec: Codec = GSM,
) -> Path:
    """Build (or reuse) the corpus in ``out``; ``cache`` keeps the downloaded .debs (default ``out/../debs``)."""
    packages = packages or PACKAGES
    out = Path(out)
    sources_file = out / "SOURCES.json"
    if sources_file.is_file():
        sources = json.loads(sources_file.read_text())
        if sources.get("layout") == LAYOUT_VERSION and sorted(sources.get("packages", {})) == sorted(packages):
            return out
    debs = Path(cache) if cache else out.parent / "debs"
    with staged_dir(out) as staging:
        record: dict[str, object] = {}
        speakers: dict[str, list[str]] = {}
        for package, (speaker, voice, licence, stated) in packages.items():
            deb = fetch(package, debs)
            info = _unpack(deb, package, voice, speaker, licence, stated, staging, codec)
            record[package] = info.__dict__
            speakers.setdefault(speaker, []).append(voice)
        sources = {
            "layout": LAYOUT_VERSION,
            "description": f"Asterisk sound prompts (Debian packages), joined into 3-8 s clips at {codec.rate} Hz",
            "packages": record,
            "speakers": speakers,
        }
        (staging / "SOURCES.json").write_text(json.dumps(sources, indent=2) + "\n")
    return out


def build_wideband(out: Path, cache: Path | None = None) -> Path:
    """The wideband set (``WIDEBAND_PACKAGES``, 16 kHz) in ``out``, as ``build``."""
    return build(out, cache, WIDEBAND_PACKAGES, G722_WIDEBAND)


def _unpack(
    deb: Path, package: str, voice: str, speaker: str, licence: str, stated: str, staging: Path, codec: Codec
) -> Package:
    with tempfile.TemporaryDirectory(prefix="corpus-deb-") as tmp:
        _run(["dpkg", "-x", str(deb), tmp])
        root = Path(tmp)
        prompts_dir = root / "usr/share/asterisk/sounds" / voice
        files = sorted(prompts_dir.rglob(f"*{codec.suffix}"))
        if not files:
            raise CorpusError(f"{deb.name}: no {codec.suffix} prompts under usr/share/asterisk/sounds/{voice}")
        clips = join_prompts([codec.read(f) for f in files], codec.rate)
        folder = staging / speaker
        folder.mkdir(exist_ok=True)
        short = voice.split("_")[0]
        for i, clip in enumerate(clips):
            write_wav(folder / f"{short}-{i:03d}.wav", clip, codec.rate)
        copyright_file = root / "usr/share/doc" / package / "copyright"
        (staging / "licences").mkdir(exist_ok=True)
        text = copyright_file.read_text(errors="replace") if copyright_file.is_file() else ""
        (staging / "licences" / f"{package}.copyright").write_text(text)
    if stated not in " ".join(text.split()):
        raise CorpusError(f"{deb.name}: its copyright file no longer states {licence}; review the licence")
    version = _run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
    return Package(
        name=package,
        version=version,
        sha256=hashlib.sha256(deb.read_bytes()).hexdigest(),
        licence=licence,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cache", type=Path, help="where the .deb files are kept (default OUT/../debs)")
    parser.add_argument("--wideband", action="store_true", help="the 16 kHz G.722 packages (WIDEBAND_PACKAGES)")
    args = parser.parse_args(argv)
    out = build_wideband(args.out, args.cache) if args.wideband else build(args.out, args.cache)
    sources = json.loads((out / "SOURCES.json").read_text())
    for speaker in sorted(sources["speakers"]):
        clips = len(list((out / speaker).glob("*.wav")))
        print(f"{speaker:<14} {clips:4d} clips  ({', '.join(sources['speakers'][speaker])})")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
