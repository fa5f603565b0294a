"""Build `.dvc/plots.html`, the page template of `dvc plots show` / `dvc plots diff` with Vega, Vega-Lite and
vega-embed inlined, so the pages DVC writes draw their plots without a network (DVC's own template loads
the three from a CDN, and offline its pages are blank).

    python gain/evaluation/plots_template.py              # npm pack the pinned packages, check them, write the template
    python gain/evaluation/plots_template.py --from DIR   # the same from tarballs already in DIR (an offline rebuild)

The packages come from the npm registry at the versions and sha512 integrities pinned below (what
`npm view <package>@<version> dist.integrity` prints); only their minified browser builds are inlined.
The template has no `{scripts}` placeholder, where DVC would put its CDN <script> tags.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / ".dvc" / "plots.html"
# name, version, npm dist.integrity, browser build inside the tarball; in load order (each needs the previous).
PACKAGES = [
    ("vega", "5.33.1",
     "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
     "package/build/vega.min.js"),
    ("vega-lite", "5.23.0",
     "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
     "package/build/vega-lite.min.js"),
    ("vega-embed", "6.29.0",
     "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
     "package/build/vega-embed.min.js"),
]  # fmt: skip
# DVC fills these; a library that contained one would be rewritten by DVC.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Built by gain/evaluation/plots_template.py: {names}, from npm, inlined (no network needed). -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def npm_pack(dest: Path) -> None:
    """Download the pinned tarballs from the npm registry into `dest`."""
    specs = [f"{name}@{version}" for name, version, _, _ in PACKAGES]
    subprocess.run(["npm", "pack", "--silent", "--pack-destination", str(dest), *specs], check=True)


def integrity(data: bytes) -> str:
    """npm's `sha512-<base64>` integrity string of a tarball."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def library(tarball: Path, expected: str, member: str) -> tuple[str, str]:
    """The browser build and the license of a checked tarball. -> (javascript, license)."""
    data = tarball.read_bytes()
    if integrity(data) != expected:
        raise SystemExit(f"{tarball}: integrity {integrity(data)} is not the pinned {expected}")
    with tarfile.open(tarball) as tar:
        script = tar.extractfile(member).read().decode("utf-8")
        meta = json.loads(tar.extractfile("package/package.json").read())
    bad = [p for p in (*PLACEHOLDERS, "</script") if p in script]
    if bad:
        raise SystemExit(f"{tarball}:{member} contains {bad}, which would break the inlined page")
    return script, meta.get("license", "unknown")


def build(tarballs: Path) -> str:
    """The template text from the pinned tarballs in `tarballs`."""
    scripts, names = [], []
    for name, version, expected, member in PACKAGES:
        script, license_ = library(tarballs / f"{name}-{version}.tgz", expected, member)
        names.append(f"{name} {version} ({license_})")
        scripts.append(f'    <script type="text/javascript">/* {name} {version} */\n{script}\n    </script>')
    return PAGE.format(names=", ".join(names), scripts="\n".join(scripts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", type=Path, help="folder holding the tarballs (no npm)")
    parser.add_argument("--out", type=Path, default=TEMPLATE)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source is None:
            source = Path(tmp)
            npm_pack(source)
        text = build(source)
    partial = args.out.with_name(args.out.name + ".tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(args.out)
    print(f"{args.out}: {len(text.encode()):,} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
