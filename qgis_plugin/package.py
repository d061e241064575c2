"""Build the installable plugin zip: `python3 qgis_plugin/package.py --out dist/` -> dist/gtloc-<version>.zip.

The zip holds one folder, `gtloc/` (a valid Python identifier, as QGIS requires), with the plugin's modules,
metadata.txt and LICENSE from the repository root; no caches, no tests, not this script. Standard library only.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
REPO = PLUGIN_DIR.parent
FOLDER = "gtloc"
_SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
_SKIPPED_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}


def plugin_files() -> list[tuple[Path, str]]:
    """(source file, name in the zip) for every file that ships."""
    files = []
    for path in sorted(PLUGIN_DIR.rglob("*")):
        rel = path.relative_to(PLUGIN_DIR)
        if (path.is_dir() or path == Path(__file__).resolve() or path.suffix in _SKIPPED_SUFFIXES
                or any(part in _SKIPPED_DIRS or part.startswith(".") for part in rel.parts)):
            continue
        files.append((path, f"{FOLDER}/{rel.as_posix()}"))
    files += [(REPO / "metadata.txt", f"{FOLDER}/metadata.txt"), (REPO / "LICENSE", f"{FOLDER}/LICENSE")]
    return files


def build(out_dir: Path) -> Path:
    meta = configparser.ConfigParser()
    meta.read(REPO / "metadata.txt", encoding="utf-8")
    version = meta["general"]["version"]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{FOLDER}-{version}.zip"
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for source, name in plugin_files():
            zf.write(source, name)
    tmp.replace(target)  # atomic: a half-written zip never carries the final name
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "dist"), help="folder for the zip (default: dist/)")
    print(build(Path(parser.parse_args(argv).out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
