"""Refresh the NiiVue bundle that ships inside the package (``fastsam3d serve``'s viewer).

The version is the one pinned in ``web/package.json`` / ``web/package-lock.json``. This script
installs it from the npm registry (``npm ci --prefix web``, unless ``--no-install`` and
``web/node_modules`` is already there), copies its self-contained ES module
``dist/index.js`` to ``src/fastsam3d/server/static/vendor/niivue.js``, records version and
SHA-256 in ``niivue.json`` next to it, and gathers the licences of NiiVue and of every package
the lock file lists into ``THIRD_PARTY_LICENSES.txt``. Run it after changing the pin:

    python scripts/update_niivue.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
VENDOR = ROOT / "src" / "fastsam3d" / "server" / "static" / "vendor"
BSD2 = """BSD 2-Clause License (as NiiVue's package.json declares; its npm package ships no licence
file: see https://github.com/niivue/niivue for the copyright holders)

Redistribution and use in source and binary forms, with or without modification, are permitted
provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials provided
   with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND
FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR
CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR SERVICES; LOSS OF USE,
DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN
ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""


def licence_text(package_dir: Path) -> str | None:
    """The licence file a package ships (LICENSE, LICENSE.md, license, COPYING, ...)."""
    for entry in sorted(package_dir.iterdir()):
        if entry.is_file() and entry.name.lower().startswith(("license", "licence", "copying")):
            return entry.read_text(errors="replace")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-install", action="store_true", help="use web/node_modules as is")
    args = parser.parse_args()
    if not (args.no_install and (WEB / "node_modules").is_dir()):
        subprocess.run(["npm", "ci", "--prefix", str(WEB), "--no-audit", "--no-fund"], check=True)
    lock = json.loads((WEB / "package-lock.json").read_text())
    packages = {k: v for k, v in lock["packages"].items() if k.startswith("node_modules/")}
    niivue = packages["node_modules/@niivue/niivue"]
    source = WEB / "node_modules" / "@niivue" / "niivue" / "dist" / "index.js"
    VENDOR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, VENDOR / "niivue.js")
    digest = hashlib.sha256((VENDOR / "niivue.js").read_bytes()).hexdigest()
    record = {
        "package": "@niivue/niivue",
        "version": niivue["version"],
        "file": "dist/index.js",
        "sha256": digest,
        "npm_integrity": niivue.get("integrity"),
        "license": niivue.get("license", "BSD-2-Clause"),
    }
    (VENDOR / "niivue.json").write_text(json.dumps(record, indent=2) + "\n")
    sections = [f"@niivue/niivue {niivue['version']}\n\n{BSD2}"]
    for key in sorted(packages):
        if key == "node_modules/@niivue/niivue":
            continue
        name, info = key.removeprefix("node_modules/"), packages[key]
        text = licence_text(WEB / key) if (WEB / key).is_dir() else None
        header = f"{name} {info.get('version', '')} ({info.get('license', 'licence not declared')})"
        sections.append(f"{header}\n\n{text or 'no licence file in the npm package'}")
    rule = "\n" + "=" * 78 + "\n\n"
    intro = (
        "Licences of the JavaScript that ships with fastsam3d's viewer: NiiVue's ES module\n"
        "(niivue.js, which bundles its dependencies) and the packages of web/package-lock.json.\n"
    )
    (VENDOR / "THIRD_PARTY_LICENSES.txt").write_text(intro + rule + rule.join(sections))
    print(f"vendored @niivue/niivue {niivue['version']} (sha256 {digest[:16]}...) in {VENDOR}")


if __name__ == "__main__":
    main()
