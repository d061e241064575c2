"""What a search asks: its settings (SearchConfig), time windows (TimeWindow) and the query with its filters
(SearchQuery), built directly or from the typed search parameters of gtloc_engine/protocol.py (from_params).

    SearchConfig(...).validate(), SearchConfig.from_params(values)   how a collection is searched
    TimeWindow.parse('11-2', '22-3')                                  month x local-hour windows that may wrap
    SearchQuery(...).validate(), SearchQuery.from_params(values)      one query and its filters
    local_wall_clock(text)                                            a claimed time as a naive local datetime
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass

import numpy as np

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import validate_latlon
from gtloc_engine.timecode import parse_time

POOLINGS = ("max", "mean")
POINT_SOURCES = ("point", "claim", "prediction")


@dataclass(frozen=True)
class SearchConfig:
    """How a collection is searched; the defaults suit collections from a few photos to millions."""

    exact_max_rows: int = 100_000  # above this many photos the FAISS index is used
    # FAISS scans nprobe / nlist of the collection per query vector, one vector at a time; exact search does all T
    # vectors of a time window in one matrix product, which cost ~4 single-vector passes in bench/bench_search.py.
    # So FAISS is used only while T * nprobe / nlist <= this.
    ann_max_relative_scan: float = 4.0
    target_recall: float = 0.97  # nprobe calibration target, above the promised 0.95 recall@10 for margin
    calibration_queries: int = 200
    month_step: float = 0.5  # months between the grid times of a time-of-year window
    hour_step: float = 1.0  # hours between the grid times of a time-of-day window
    pooling: str = "max"
    point_source: str = "point"  # which place of a photo the radius and polygon filters test
    exclude_query_photo: bool = True  # a photo query does not return its own bytes
    seed: int = 0

    @classmethod
    def from_params(cls, values: dict) -> SearchConfig:
        """The settings a search request carries (pooling, point_source), from protocol.read_params('search')."""
        return cls(pooling=values["pooling"], point_source=values["point_source"]).validate()

    def validate(self) -> SearchConfig:
        if self.pooling not in POOLINGS:
            raise GtlocError(f"pooling {self.pooling!r} must be one of {POOLINGS}")
        if self.point_source not in POINT_SOURCES:
            raise GtlocError(f"point_source {self.point_source!r} must be one of {POINT_SOURCES}")
        if not (0.0 < self.month_step <= 12.0 and 0.0 < self.hour_step <= 24.0):
            raise GtlocError(f"month_step {self.month_step} / hour_step {self.hour_step} must be in (0, 12] / (0, 24]")
        return self


@dataclass(frozen=True)
class TimeWindow:
    """A time-of-year x time-of-day window; each part is [start, end) on its circle and wraps when end <= start.

    month_start / month_end are month positions (0 = Jan 1, 12 = the next Jan 1); hour_*_local are local hours.
    The whole year is (0, 12) and the whole day (0, 24).
    """

    month_start: float = 0.0
    month_end: float = 12.0
    hour_start_local: float = 0.0
    hour_end_local: float = 24.0

    @classmethod
    def parse(cls, month: str | None, hour: str | None) -> TimeWindow:
        """'6' (June), '11-2' (Nov 1 to the end of Feb); hours '14' (14:00-15:00), '22-3' (22:00 to 03:00)."""
        m0, m1 = _parse_range(month, "month", 1, 12, inclusive_end=True) if month else (0.0, 12.0)
        h0, h1 = _parse_range(hour, "hour", 0, 23, inclusive_end=False) if hour else (0.0, 24.0)
        return cls(m0, m1, h0, h1)

    @property
    def month_span(self) -> float:
        return _span(self.month_start, self.month_end, 12.0)

    @property
    def hour_span(self) -> float:
        return _span(self.hour_start_local, self.hour_end_local, 24.0)

    def torus_grid(self, month_step: float, hour_step: float) -> np.ndarray:
        """(T, 2) (theta_year, phi_day) at the centres of equal cells covering the window, month-major."""
        months = _circle_grid(self.month_start, self.month_span, month_step, 12.0)
        hours = _circle_grid(self.hour_start_local, self.hour_span, hour_step, 24.0)
        mm, hh = np.meshgrid(months / 12.0, hours / 24.0, indexing="ij")
        return np.stack((mm.ravel(), hh.ravel()), axis=-1)

    def contains(self, month_pos: np.ndarray, hour_local: np.ndarray) -> np.ndarray:
        """True where (month position, local hour) lies inside the window."""
        in_month = (np.asarray(month_pos) - self.month_start) % 12.0 < self.month_span
        in_hour = (np.asarray(hour_local) - self.hour_start_local) % 24.0 < self.hour_span
        return in_month & in_hour

    def describe(self) -> dict:
        return {k: round(v, 4) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class SearchQuery:
    """One search: the query (place and/or time window, or a photo, or a text) and the filters."""

    near_latlon_deg: tuple[float, float] | None = None
    window: TimeWindow | None = None
    like_photo: str | None = None
    text: str | None = None
    radius_km: float | None = None  # filter: the photo's point within this distance of near_latlon_deg
    within: str | None = None  # filter: a polygon file (GeoJSON, GeoPackage, Shapefile ...) read with geopandas
    within_layer: str | None = None  # the layer of `within` to use (default: its first)
    claimed_after: dt.datetime | None = None  # filter: claimed local time >= this (naive, wall clock)
    claimed_before: dt.datetime | None = None  # filter: claimed local time < this
    top_k: int = 10

    @classmethod
    def from_params(cls, values: dict) -> SearchQuery:
        """The query of a search request, from protocol.read_params('search'): near, radius_km, month, hour, like,
        text, within, within_layer, claimed_after, claimed_before (local times, ISO 8601 or EXIF), top_k."""
        month, hour = values["month"], values["hour"]
        after, before = values["claimed_after"], values["claimed_before"]
        return cls(near_latlon_deg=values["near"], window=TimeWindow.parse(month, hour) if (month or hour) else None,
                   like_photo=values["like"], text=values["text"], radius_km=values["radius_km"],
                   within=values["within"], within_layer=values["within_layer"],
                   claimed_after=local_wall_clock(after) if after else None,
                   claimed_before=local_wall_clock(before) if before else None, top_k=values["top_k"]).validate()

    @property
    def kind(self) -> str:
        if self.like_photo and self.window is not None and self.near_latlon_deg is None and not self.text:
            return "photo+time"  # the query photo's place at another time (TIGeR's task)
        kinds = [name for name, given in (("photo", self.like_photo), ("text", self.text)) if given]
        if self.near_latlon_deg is not None or self.window is not None:
            kinds.append("place+time" if self.near_latlon_deg is not None and self.window is not None
                         else "place" if self.near_latlon_deg is not None else "time")
        if len(kinds) != 1:
            raise GtlocError("give exactly one query: a place and/or a time window (--near, --month, --hour), "
                             "a photo (--like, optionally with --month/--hour: the same place at another time) or "
                             f"a text (--text); got {kinds or 'none'}")
        return kinds[0]

    def validate(self) -> SearchQuery:
        kind = self.kind
        if self.top_k < 1:
            raise GtlocError(f"top_k {self.top_k} must be at least 1")
        if self.near_latlon_deg is not None:
            validate_latlon(*self.near_latlon_deg, where="--near")
        if self.radius_km is not None and self.near_latlon_deg is None:
            raise GtlocError("--radius-km filters around --near; give --near LAT,LON with it")
        if self.radius_km is not None and not (self.radius_km > 0 and math.isfinite(self.radius_km)):
            raise GtlocError(f"--radius-km {self.radius_km} must be a positive number of km")
        if kind == "text" and not self.text.strip():
            raise GtlocError("--text is empty; give a description such as 'snow at dusk'")
        return self

    def to_json(self) -> dict:
        out = {"kind": self.kind, "top_k": self.top_k}
        for name in ("near_latlon_deg", "like_photo", "text", "radius_km", "within", "within_layer"):
            value = getattr(self, name)
            if value is not None:
                out[name] = list(value) if isinstance(value, tuple) else value
        if self.window is not None:
            out["window"] = self.window.describe()
        for name in ("claimed_after", "claimed_before"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).isoformat()
        return out


def local_wall_clock(text: str) -> dt.datetime:
    """A time string (ISO 8601 or EXIF) as a naive local wall clock, whole seconds; its UTC offset is dropped."""
    t = parse_time(text)
    return dt.datetime(t.year, t.month, t.day, t.hour, t.minute, int(t.second))


def _parse_range(text: str, what: str, low: int, high: int, *, inclusive_end: bool) -> tuple[float, float]:
    """'A' or 'A-B' (integers in [low, high]) -> (start, end) positions on the circle."""
    parts = text.replace(" ", "").split("-")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or any(not low <= v <= high for v in values):
        raise GtlocError(f"{what} {text!r} must be N or A-B with whole numbers in [{low}, {high}], e.g. "
                         + ("'6' or '11-2' (Nov to Feb)" if what == "month" else "'14' or '22-3' (22:00 to 03:00)"))
    first, last = values[0], values[-1]
    if what == "month":  # month numbers are 1-based and both ends are whole months
        return float(first - 1), float(last if inclusive_end else last - 1)
    end = last + 1 if len(values) == 1 else last  # '14' is the hour 14:00-15:00; '22-3' ends at 03:00
    return float(first), float(end % 24)


def _span(start: float, end: float, period: float) -> float:
    span = (end - start) % period
    return period if span == 0 else span  # start == end means the whole circle


def _circle_grid(start: float, span: float, step: float, period: float) -> np.ndarray:
    n = max(1, math.ceil(span / step - 1e-9))
    return (start + (np.arange(n) + 0.5) * span / n) % period
