"""The plugin's settings as data: one dataclass, read from and written to QgsSettings under `gtloc/`.

    PluginSettings              engine, model, top-k, output folder, known capture time, surface resolution,
                                device
    parse_capture_time(text)    a known local capture time -> 'YYYY-MM-DDTHH:MM:SS' (None when empty); ValueError
    describe_time(iso)          '2024-07-14 18:30' for group names and messages
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

_PREFIX = "gtloc/"
# The local wall clock where the photos were taken, no UTC offset: ISO 8601 (seconds optional) or EXIF's form.
_ISO_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2}))?$")
_EXIF_TIME = re.compile(r"^(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})$")
RES_DEG_CHOICES = (2.0, 1.0, 0.5, 0.25, 0.1, 0.05)  # divide 0.5 or are multiples of it: what the engine takes
DEVICE_CHOICES = ("auto", "cpu", "cuda")  # the engine's `serve --device` values (its gtloc_engine/device.py)
TIME_FORMATS = "2024-07-14T18:30 (ISO 8601, seconds optional) or 2024:07:14 18:30:00 (EXIF)"


@dataclass
class PluginSettings:
    engine: str = ""  # the engine's Python or its `gtloc` executable; empty: $GTLOC_ENGINE or `gtloc` on PATH
    model: str = ""  # gtloc checkpoint (.safetensors) used for predictions
    top_k: int = 5  # candidate places per photo
    out_dir: str = ""  # where prediction GeoPackages go; empty: ~/gtloc
    # A known local capture time (ISO, as parse_capture_time returns it) for Locate and drops: every photo's place
    # is then predicted given that time (where given when). Empty: the place from the image alone.
    known_time: str = ""
    # Cell size of each photo's global likelihood surface (degrees): the raster's resolution and the grid the
    # candidate places and credible regions come from. Verdicts do not depend on it (the engine scores the claimed
    # point itself); finer costs time per photo. Recorded per photo in the results (surface_res_deg).
    res_deg: float = 0.25
    # Where the engine's model computes: auto (its first CUDA GPU, else the CPU), cpu, or cuda (an error at the
    # engine's start where there is no GPU). A change restarts the engine.
    device: str = "auto"

    def __post_init__(self):
        if self.res_deg not in RES_DEG_CHOICES:
            self.res_deg = PluginSettings.res_deg  # a hand-edited value: back to the default
        if self.device not in DEVICE_CHOICES:
            self.device = PluginSettings.device

    def output_folder(self) -> Path:
        return Path(self.out_dir).expanduser() if self.out_dir else Path.home() / "gtloc"


def parse_capture_time(text: str | None) -> str | None:
    """A known local capture time typed by the analyst -> ISO 'YYYY-MM-DDTHH:MM:SS'; None when empty.

    Accepts 'YYYY-MM-DDTHH:MM[:SS]' (or a space instead of the T) and EXIF 'YYYY:MM:DD HH:MM:SS'; anything else,
    or an impossible date (Feb 30, hour 24), is a ValueError with one line that says what to write."""
    text = (text or "").strip()
    if not text:
        return None
    match = _ISO_TIME.match(text) or _EXIF_TIME.match(text)
    if match is None:
        raise ValueError(f"known capture time {text!r} is not a local date and time: write it as {TIME_FORMATS}")
    try:
        stamp = dt.datetime(*(int(group or 0) for group in match.groups()))
    except ValueError as exc:
        raise ValueError(f"known capture time {text!r} is not a real date and time ({exc}): "
                         f"write it as {TIME_FORMATS}") from None
    return stamp.isoformat(timespec="seconds")


def describe_time(iso: str) -> str:
    """'2024-07-14T18:30:00' -> '2024-07-14 18:30' (seconds only when they are not zero)."""
    stamp = dt.datetime.fromisoformat(iso)
    return stamp.strftime("%Y-%m-%d %H:%M" + (":%S" if stamp.second else ""))


def load_settings() -> PluginSettings:
    from qgis.core import QgsSettings

    stored, defaults = QgsSettings(), PluginSettings()
    values = {}
    for f in fields(PluginSettings):
        default = getattr(defaults, f.name)
        value = stored.value(_PREFIX + f.name, default)
        try:
            values[f.name] = type(default)(value)
        except (TypeError, ValueError):
            values[f.name] = default
    return PluginSettings(**values)


def save_settings(settings: PluginSettings) -> None:
    from qgis.core import QgsSettings

    stored = QgsSettings()
    for name, value in asdict(settings).items():
        stored.setValue(_PREFIX + name, value)
