"""What Firebase Hosting serves: the console's files alone. ``python -m infra.hosting_site`` exits 1 naming any other
file of ``infra/hosting`` Hosting would upload, or a console file missing; the deploy's ``firebase`` step runs it
after bundling the SDK and before uploading.

firebase-tools uploads every file of the public folder its ``ignore`` rules do not leave out (hidden files,
``node_modules``, source maps, ``.sha256`` stamps, logs: attack run 101). Anything else there was served from the
site: ``vendor/`` is git-ignored (the SDK bundle is built into it), so a ``vendor/firebase.js.orig``, a debugging
build of the SDK or a dump left there was deployed with no release, diff or status naming it, as was an untracked
file elsewhere in the folder, since the Hosting step reads no release (attack run 124). The bundles of the functions
ship a list of kinds of file (``infra.build.SHIPPED``); the site is a list of files.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "infra" / "hosting"
#: every file Hosting serves (``vendor/firebase.js``: the SDK bundle ``infra/console/build.sh`` makes)
SERVED = ("index.html", "app.js", "recorder.js", "style.css", "vendor/firebase.js")
#: what the site's folder holds that firebase.json leaves out of the upload: the SDK bundle's build stamp
KEPT_BACK = ("vendor/firebase.js.sha256",)


def problems(site: Path) -> list[str]:
    """What stops the upload of ``site``: each file Hosting would serve that is not the console's, and each of the
    console's files missing. Hidden files (``.gitignore``, an editor's swap file) are never uploaded."""
    found = sorted(
        path.relative_to(site).as_posix()
        for path in site.rglob("*")
        if (path.is_file() or path.is_symlink())
        and not any(part.startswith(".") for part in path.relative_to(site).parts)
    )
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
