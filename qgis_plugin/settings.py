"""The plugin's settings as data: one dataclass, read from and written to QgsSettings under `gtloc/`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

_PREFIX = "gtloc/"


@dataclass
class PluginSettings:
    engine: str = ""  # the engine's Python or its `gtloc` executable; empty: $GTLOC_ENGINE or `gtloc` on PATH
    model: str = ""  # gtloc checkpoint (.safetensors) used for predictions
    top_k: int = 5  # candidate places per photo
    out_dir: str = ""  # where prediction GeoPackages go; empty: ~/gtloc

    def output_folder(self) -> Path:
        return Path(self.out_dir).expanduser() if self.out_dir else Path.home() / "gtloc"


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
