"""What Firebase Hosting serves: the console's files alone. ``python -m infra.hosting_site`` exits 1 naming any other
file of ``infra/hosting`` Hosting would upload, or a console file missing; the deploy's ``firebase`` step runs it
after bundling the SDK and before uploading.

firebase-tools uploads every file of the public folder its ``ignore`` rules do not leave out (hidden files,
``node_modules``, source maps, ``.sha256`` stamps, logs: attack run 101). Anything else there was served from the
site: ``vendor/`` is git-ignored (the SDK bundle is built into it), so a ``vendor/firebase.js.orig``, a debugging
build of the SDK or a dump left there was deployed with no release, diff or status naming it, as was an untracked
file elsewhere in the folder, since the Hosting step reads no release (attack run 124). The bundles of the functions
ship a list of kinds of file (``infra.build.SHIPPED``); the site is a list of files.

What Hosting would upload is read as firebase-tools reads it: every file but those a rule of ``firebase.json``'s
``hosting.ignore`` (or firebase-tools' own, ``ALWAYS_LEFT_OUT``) matches, a glob of the whole path. A rule naming a
folder leaves out what it holds only when it ends in ``/**``: ``**/.*`` left out hidden files, not the files in a
hidden folder, which were uploaded and served (``.idea/workspace.xml``, ``vendor/.cache/...``), while this check
passed over every path with a hidden part (attack run 128).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "infra" / "hosting"
FIREBASE_JSON = REPO / "firebase.json"
#: what firebase-tools leaves out of every upload whatever firebase.json says (its ``listFiles``)
ALWAYS_LEFT_OUT = ("**/firebase-debug.log", "**/firebase-debug.*.log", ".firebase/*")
#: every file Hosting serves (``vendor/firebase.js``: the SDK bundle ``infra/console/build.sh`` makes)
SERVED = ("index.html", "app.js", "recorder.js", "style.css", "vendor/firebase.js")
#: what the site's folder holds that firebase.json leaves out of the upload: the SDK bundle's build stamp
KEPT_BACK = ("vendor/firebase.js.sha256",)


def left_out_rules(config: Path = FIREBASE_JSON) -> tuple[str, ...]:
    """The globs whose files firebase-tools leaves out of the upload: its own and ``config``'s ``hosting.ignore``."""
    return (*ALWAYS_LEFT_OUT, *json.loads(config.read_text())["hosting"].get("ignore", []))


def _glob(rule: str) -> re.Pattern[str]:
    """``rule`` as firebase-tools' glob matches a path with it (dot files too): ``**`` any number of folders (at the
    end, anything below), ``*`` and ``?`` within one name. ValueError for what else a glob may say (classes,
    braces, negation), which this check does not read."""
    if any(c in rule for c in "[]{}!()+@\\"):
        raise ValueError(rule)
    parts = rule.split("/")
    regex = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            regex += ".*" if last else "(?:[^/]+/)*"
        else:
            regex += "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in part)
            regex += "" if last else "/"
    return re.compile(regex)


def uploaded(site: Path, rules: tuple[str, ...]) -> list[str]:
    """Each file of ``site`` (a link too, whatever it names) that no rule of ``rules`` leaves out, sorted."""
    globs = [_glob(rule) for rule in rules]
    files = [path.relative_to(site).as_posix() for path in site.rglob("*") if path.is_file() or path.is_symlink()]
    return sorted(name for name in files if not any(glob.fullmatch(name) for glob in globs))


def problems(site: Path, rules: tuple[str, ...] | None = None) -> list[str]:
    """What stops the upload of ``site``: each file Hosting would serve (``rules``, firebase.json's by default) that is
    not the console's, and each of the console's files missing."""
    try:
        found = uploaded(site, left_out_rules() if rules is None else rules)
    except ValueError as exc:
        return [f"firebase.json's hosting.ignore rule {exc} is not one this check reads: write it with * and ** alone"]
    strays = [name for name in found if name not in SERVED and name not in KEPT_BACK]
    missing = [name for name in SERVED if not (site / name).is_file()]
    return [f"{name} is not the console's" for name in strays] + [f"{name} is missing" for name in missing]


def main(argv: list[str] | None = None) -> int:
    site = Path(argv[0]) if argv else SITE
    found = problems(site)
    if found:
        sys.stderr.write(
            f"hosting: not uploading {site}: {'; '.join(found)}. Hosting serves {', '.join(SERVED)} alone: move or"
            " delete anything else (infra/console/build.sh makes vendor/firebase.js)\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
