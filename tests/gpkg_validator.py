"""GDAL's GeoPackage validator (validate_gpkg.py, run by the system's Python, whose GDAL 3.6 is QGIS 3.22's), shared
by the engine suite and the QGIS suite (stdlib and pytest only, so QGIS's Python imports it too)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SYSTEM_PYTHON = Path("/usr/bin/python3")  # GDAL's Python bindings and samples come with the system's GDAL
GPKG_VALIDATOR = Path("/usr/lib/python3/dist-packages/osgeo_utils/samples/validate_gpkg.py")


def validate_gpkg(path: Path) -> list[str]:
    """What the validator reports on `path` (-k: every finding; --extra: its extra checks), one line each:
    requirement failures and warnings alike; [] for a file it passes. Skips the test when the validator is absent."""
    if not (SYSTEM_PYTHON.is_file() and GPKG_VALIDATOR.is_file()):
        pytest.skip(f"GDAL's GeoPackage validator is absent ({GPKG_VALIDATOR} run by {SYSTEM_PYTHON}; Debian "
                    "package python3-gdal)")
    proc = subprocess.run([str(SYSTEM_PYTHON), str(GPKG_VALIDATOR), "-k", "--extra", str(path)], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert (proc.returncode == 0) == (not lines), (proc.returncode, lines)
    return lines
