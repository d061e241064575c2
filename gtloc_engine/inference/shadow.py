"""The shadow locus: where on Earth the sun stood as a measured shadow says, at the time it was cast, and where that
agrees with a photo's learned place posterior (Bellingcat's ShadowFinder question, with its uncertainties carried).

A measurement (ShadowMeasurement) gives the sun's elevation, e_obs = atan(height / length) from an object and its
shadow (any unit, the same for both) or directly, optionally the shadow's bearing (clockwise from true north; the sun
stands opposite, a_obs = bearing + 180), and a time t0: an instant (ISO 8601 with Z or an offset) or a local wall clock
(no offset), which is read at every place in that place's own IANA zone (the nautical zone at open sea;
timezones.zones_at), daylight saving included.

Likelihood of a place x (one measurement), with the time's uncertainty marginalised:
    L(x) = integral N(t; t0, sigma_t^2) N(e_obs; e(x, t), sigma_e^2) [N(a_obs - a(x, t); 0, sigma_a^2)] dt
- sigma_e: a given elevation's sigma, or first-order propagation of the height and length sigmas,
  de/dh = L / (h^2 + L^2), de/dL = -h / (h^2 + L^2); never below ELEVATION_SIGMA_FLOOR_DEG (the sun's disc is
  0.53 deg wide: its penumbra blurs the shadow's tip by that much whatever the measurement). sigma_a: the bearing's.
  Azimuth residuals are wrapped to [-180, 180).
- The sun: gtloc_engine.solar (NOAA/Meeus, within 0.01 deg of NREL SPA; geometric elevation, no refraction).
- Time: the normal N(t0, sigma_t) is cut into K bins, equal-width over t0 +- 4 sigma_t with the outer two reaching to
  +-infinity, K = ceil(8 sigma_t * 0.25 deg/min / min(sigma_e, sigma_a)) (0.25 deg/min is the fastest the sun's
  elevation can change) clipped to 1..MAX_TIME_BINS, so that the sun moves about 0.3 sigma within a bin (where
  the cap binds it moves more, and the Gaussian smear overstates the far tails: by ~0.1 in log L at 4 sigma when the
  within-bin spread is 0.4 sigma). Each bin contributes its probability times the Gaussians at the sun of the
  bin's conditional mean time, their variances widened by (rate x the bin's conditional time sigma)^2, the rates being
  the exact derivatives of elevation and azimuth in the hour angle (linearised within the bin). One bin is the plain
  linearisation sigma_e^2 + (de/dt sigma_t)^2; many bins are a quadrature that follows the sun's curve.
- Several measurements (two shadows of one scene, or one object at two times): independent errors, so their
  likelihoods multiply: the loci intersect.
- The locus surface: a uniform prior by area, mass per cell = L(cell centre) x cell area, normalised over the
  globe (geo.Surface, the same mass-per-cell convention as the learned posteriors; log_norm is the log of the
  normalising sum in steradians). A fused surface multiplies a photo's posterior mass per cell with L and
  renormalises: the place posterior given the photo and the shadow, "where the model and the shadow agree".

Public surface:
    ELEVATION_SIGMA_FLOOR_DEG, MAX_TIME_BINS, SUN_MAX_RATE_DEG_PER_MIN
    ShadowMeasurement        one measurement (data), validated; .sun_elevation_deg, .elevation_sigma_deg,
                             .sun_azimuth_deg, .instant_utc, .wall_clock_local, .to_json()
    time_bins(m)             (offsets_min, weights, sigmas_min) of the time marginalisation
    log_likelihood(m, lat_deg, lon_deg, zones=None)   log L at places (any broadcastable arrays)
    locus_surface(measurements, res_deg)              the locus of one or more measurements on a global grid
    fuse(locus, posterior)   the product of a locus and a place posterior on the same grid
    ShadowConfig, ShadowResult, locate_by_shadow(...)  surfaces, credible regions and candidates; .write(out_dir)
    photo_posterior(model_path, photo, res_deg, cache_dir)   a photo's learned place surface (img_gps)
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from gtloc_engine.errors import GtlocError, TimeValueError

ELEVATION_SIGMA_FLOOR_DEG = 0.25  # half the sun's disc: the penumbra's blur of a shadow's tip
SUN_MAX_RATE_DEG_PER_MIN = 0.25  # 360 deg / 1440 min: the fastest change of the sun's elevation
# Equal-width time bins over t0 +- this many sigma (the two outer ones run on to infinity). 4, not 3: a place the
# measured sun reaches only 3-4 sigma away from t0 gets its likelihood from those times, which a single wide tail
# bin would misjudge (against the brute-force integral, in one such case: 0.07 in log L with 3, 0.007 with 4).
TIME_BIN_RANGE_SIGMA = 4.0
MAX_TIME_BINS = 48  # bins of the time marginalisation; each costs one sun position per cell (~0.1 s at 0.25 deg)
TIME_SIGMA_MAX_MIN = 24 * 60.0
DEFAULT_ELEVATION_SIGMA_DEG = 1.0
DEFAULT_BEARING_SIGMA_DEG = 5.0
TIME_KIND_UTC = "instant"  # the time carried its offset (Z or +hh:mm)
TIME_KIND_LOCAL = "local wall clock at each place"
NORMALISATION = ("mass = shadow likelihood at the cell centre x cell area on the sphere (a uniform prior by area), "
                 "normalised over the globe; a fused surface is the photo's posterior mass x the likelihood, "
                 "renormalised")
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_HOUR_ANGLE_RAD_PER_MIN = 2.0 * math.pi / 1440.0


class ShadowCancelled(GtlocError):
    """The caller's cancel event was set between two time bins; nothing was written."""


@dataclass(frozen=True)
class ShadowMeasurement:
    """One shadow: object height and shadow length (same unit) or the sun's elevation; optionally the shadow's
    bearing; and the time (ISO 8601: with Z or an offset an instant, without one the local wall clock at each
    place), each with its sigma. Construct through validated()."""

    time: str = ""
    height_m: float | None = None
    length_m: float | None = None
    height_sigma_m: float = 0.0
    length_sigma_m: float = 0.0
    elev_deg: float | None = None
    elev_sigma_deg: float | None = None  # default DEFAULT_ELEVATION_SIGMA_DEG; only with elev_deg
    bearing_deg: float | None = None  # where the shadow points, clockwise from true north
    bearing_sigma_deg: float | None = None  # default DEFAULT_BEARING_SIGMA_DEG; only with bearing_deg
    time_sigma_min: float = 0.0
    # Derived once in validated(): the time as an instant (UTC) or as a naive local wall clock.
    _instant_utc: dt.datetime | None = field(default=None, repr=False, compare=False)
    _wall_clock: dt.datetime | None = field(default=None, repr=False, compare=False)

    @classmethod
    def validated(cls, **values) -> ShadowMeasurement:
        """A measurement from its fields (protocol.MEASUREMENT_PARAMS names), or GtlocError naming the bad value."""
        m = cls(**{k: v for k, v in values.items() if v is not None})
        where = "shadow measurement"
        for name in ("height_m", "length_m", "height_sigma_m", "length_sigma_m", "elev_deg", "elev_sigma_deg",
                     "bearing_deg", "bearing_sigma_deg", "time_sigma_min"):
            value = getattr(m, name)
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise GtlocError(f"{where}: {name} {value!r} is not a finite number")
        has_shadow = m.height_m is not None or m.length_m is not None
        if has_shadow == (m.elev_deg is not None):
            raise GtlocError(f"{where}: give either height_m and length_m (an object and its shadow) or elev_deg "
                             "(the sun's elevation), not both and not neither")
        if has_shadow:
            if m.height_m is None or m.length_m is None:
                raise GtlocError(f"{where}: height_m and length_m go together (the object's height and its "
                                 "shadow's length, in the same unit)")
            if m.height_m <= 0:
                raise GtlocError(f"{where}: height_m {m.height_m} must be positive (the object's height)")
            if m.length_m < 0:
                raise GtlocError(f"{where}: length_m {m.length_m} must not be negative (the shadow's length)")
            if m.elev_sigma_deg is not None:
                raise GtlocError(f"{where}: elev_sigma_deg goes with elev_deg; with height_m and length_m give "
                                 "height_sigma_m and length_sigma_m")
        else:
            if not 0.0 < m.elev_deg <= 90.0:
                raise GtlocError(f"{where}: elev_deg {m.elev_deg} is out of range: a shadow needs the sun above "
                                 "the horizon, in (0, 90] degrees")
            if m.height_sigma_m or m.length_sigma_m:
                raise GtlocError(f"{where}: height_sigma_m and length_sigma_m go with height_m and length_m; "
                                 "with elev_deg give elev_sigma_deg")
        for name in ("height_sigma_m", "length_sigma_m", "elev_sigma_deg", "bearing_sigma_deg", "time_sigma_min"):
            value = getattr(m, name)
            if value is not None and value < 0:
                raise GtlocError(f"{where}: {name} {value} must not be negative")
        if m.bearing_sigma_deg is not None and m.bearing_deg is None:
            raise GtlocError(f"{where}: bearing_sigma_deg goes with bearing_deg (the shadow's direction)")
        if m.bearing_sigma_deg is not None and m.bearing_sigma_deg == 0:
            raise GtlocError(f"{where}: bearing_sigma_deg must be positive (no bearing is read exactly)")
        if m.time_sigma_min > TIME_SIGMA_MAX_MIN:
            raise GtlocError(f"{where}: time_sigma_min {m.time_sigma_min} is more than a day; a shadow's time must "
                             "be known to within hours")
        instant, wall = _read_time(m.time)
        object.__setattr__(m, "_instant_utc", instant)
        object.__setattr__(m, "_wall_clock", wall)
        return m

    @property
    def sun_elevation_deg(self) -> float:
        if self.elev_deg is not None:
            return float(self.elev_deg)
        return math.degrees(math.atan2(self.height_m, self.length_m))

    @property
    def elevation_sigma_deg(self) -> float:
        """The elevation's sigma: given, or propagated from height and length; at least the floor."""
        if self.elev_deg is not None:
            sigma = DEFAULT_ELEVATION_SIGMA_DEG if self.elev_sigma_deg is None else self.elev_sigma_deg
        else:
            h, length = self.height_m, self.length_m
            sigma = math.degrees(math.hypot(length * self.height_sigma_m, h * self.length_sigma_m)
                                 / (h * h + length * length))
        return max(float(sigma), ELEVATION_SIGMA_FLOOR_DEG)

    @property
    def sun_azimuth_deg(self) -> float | None:
        return None if self.bearing_deg is None else (float(self.bearing_deg) + 180.0) % 360.0

    @property
    def azimuth_sigma_deg(self) -> float | None:
        if self.bearing_deg is None:
            return None
        return DEFAULT_BEARING_SIGMA_DEG if self.bearing_sigma_deg is None else float(self.bearing_sigma_deg)

    @property
    def instant_utc(self) -> dt.datetime | None:
        """The time as a naive UTC datetime when it carried an offset, else None."""
        return self._instant_utc

    @property
    def wall_clock_local(self) -> dt.datetime | None:
        """The time as a naive local wall clock when it carried no offset, else None."""
        return self._wall_clock

    @property
    def time_kind(self) -> str:
        return TIME_KIND_UTC if self._instant_utc is not None else TIME_KIND_LOCAL

    def to_json(self) -> dict:
        given = {k: v for k, v in asdict(self).items() if not k.startswith("_") and v is not None}
        return {**given, "sun_elevation_deg": round(self.sun_elevation_deg, 6),
                "elevation_sigma_deg": round(self.elevation_sigma_deg, 6),
                "sun_azimuth_deg": self.sun_azimuth_deg, "azimuth_sigma_deg": self.azimuth_sigma_deg,
                "time_kind": self.time_kind,
                "time_utc": None if self._instant_utc is None else self._instant_utc.isoformat() + "Z",
                "time_bins": len(time_bins(self)[0])}


def _read_time(text) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(instant as naive UTC, None) for a time with an offset, (None, naive wall clock) for one without."""
    from gtloc_engine.timecode import parse_time

    if not isinstance(text, str) or not text.strip():
        raise GtlocError("shadow measurement: time is missing; give the shadow's date and time in ISO 8601, e.g. "
                         "2024-06-21T14:05 (local at each place) or 2024-06-21T12:05Z (UTC)")
    try:
        t = parse_time(text)
    except TimeValueError as exc:
        raise GtlocError(f"shadow measurement: {exc}; e.g. 2024-06-21T14:05 (local) or 2024-06-21T12:05Z (UTC)") \
            from None
    whole = int(t.second)
    micro = min(int(round((t.second - whole) * 1e6)), 999_999)
    wall = dt.datetime(t.year, t.month, t.day, t.hour, t.minute, whole, micro)
    if t.utc_offset_min is None:
        return None, wall
    return wall - dt.timedelta(minutes=t.utc_offset_min), None


def time_bins(m: ShadowMeasurement) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets_min, weights, sigmas_min): each bin's conditional mean time (minutes from t0), its probability, and
    the conditional standard deviation of the time within it (module docstring); one exact bin for an exact time."""
    from scipy.special import ndtr

    sigma_t = float(m.time_sigma_min)
    if sigma_t == 0.0:
        return np.zeros(1), np.ones(1), np.zeros(1)
    sigma_deg = min(m.elevation_sigma_deg, m.azimuth_sigma_deg or math.inf)
    k = int(np.clip(math.ceil(2 * TIME_BIN_RANGE_SIGMA * sigma_t * SUN_MAX_RATE_DEG_PER_MIN / sigma_deg), 1,
                    MAX_TIME_BINS))
    inner = np.linspace(-TIME_BIN_RANGE_SIGMA, TIME_BIN_RANGE_SIGMA, k + 1)[1:-1]
    edges = np.concatenate(([-np.inf], inner, [np.inf]))  # in units of sigma_t
    z = np.where(np.isfinite(edges), edges, 0.0)
    pdf = np.where(np.isfinite(edges), np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi), 0.0)
    weight = np.diff(ndtr(edges))
    # Moments of the standard normal restricted to [a, b]: mean (phi(a) - phi(b)) / P, and
    # variance 1 + (a phi(a) - b phi(b)) / P - mean^2 (z phi(z) is 0 at +-infinity).
    mean = (pdf[:-1] - pdf[1:]) / weight
    var = 1.0 + ((z * pdf)[:-1] - (z * pdf)[1:]) / weight - mean**2
    return mean * sigma_t, weight, np.sqrt(np.clip(var, 0.0, None)) * sigma_t


def _log_normal(residual, sigma):
    return -0.5 * (residual / sigma) ** 2 - np.log(sigma) - _LOG_SQRT_2PI


def _wrap_deg(x):
    return (x + 180.0) % 360.0 - 180.0


def _offsets_min(zones_index, when) -> np.ndarray:
    """Minutes east of UTC per place at `when` (a naive local wall clock), from (zones, index)."""
    zones, index = zones_index
    table = np.array([zone.offset_min(when) for zone in zones], dtype=np.int64)
    return table[index]


def log_likelihood(m: ShadowMeasurement, lat_deg, lon_deg, *, zones=None,
                   cancel=None, step: Callable[[], None] | None = None) -> np.ndarray:
    """log L(x) of one measurement at places (lat_deg, lon_deg broadcast together), in log of (1/deg)^n, n = 1 or 2.

    `zones`: timezones.zones_at of the broadcast places (computed when needed and not given). `step()` is called
    after each time bin, `cancel.is_set()` checked before each (ShadowCancelled)."""
    from gtloc_engine.solar import solar_position

    lat = np.asarray(lat_deg, dtype=np.float64)
    lon = np.asarray(lon_deg, dtype=np.float64)
    shape = np.broadcast_shapes(lat.shape, lon.shape)
    if m.wall_clock_local is not None and zones is None:
        from gtloc_engine.timezones import zones_at

        zones = zones_at(np.broadcast_to(lat, shape), np.broadcast_to(lon, shape))
    e_obs, sigma_e = m.sun_elevation_deg, m.elevation_sigma_deg
    a_obs, sigma_a = m.sun_azimuth_deg, m.azimuth_sigma_deg
    offsets, weights, sigmas_t = time_bins(m)
    total = np.full(shape, -np.inf)
    for offset_min, weight, sigma_t in zip(offsets, weights, sigmas_t):
        if cancel is not None and cancel.is_set():
            raise ShadowCancelled("shadow locus cancelled")
        shift = dt.timedelta(seconds=round(float(offset_min) * 60.0))
        if m.instant_utc is not None:
            sun = solar_position(lat, lon, m.instant_utc + shift, 0)
        else:
            wall = m.wall_clock_local + shift
            sun = _sun_by_offset(lat, lon, shape, wall, _offsets_min(zones, wall))
        ll = math.log(weight) + _elevation_term(sun, lat, e_obs, sigma_e, sigma_t)
        if a_obs is not None:
            ll = ll + _azimuth_term(sun, lat, a_obs, sigma_a, sigma_t)
        total = np.logaddexp(total, ll)
        if step is not None:
            step()
    return total


@dataclass
class _Sun:
    elevation_deg: np.ndarray
    azimuth_deg: np.ndarray
    declination_deg: np.ndarray
    hour_angle_deg: np.ndarray


def _sun_by_offset(lat, lon, shape, wall: dt.datetime, offsets_min: np.ndarray) -> _Sun:
    """The sun at one wall clock read in per-place offsets: one solar_position per distinct offset (a few dozen),
    whose sun's orbit is then one instant, instead of an orbit per place (12x faster on a 0.25 deg grid)."""
    from gtloc_engine.solar import solar_position

    lat_b, lon_b = np.broadcast_to(lat, shape), np.broadcast_to(lon, shape)
    out = _Sun(*(np.empty(shape) for _ in range(4)))
    for offset in np.unique(offsets_min):
        where = offsets_min == offset
        sun = solar_position(lat_b[where], lon_b[where], wall, int(offset))
        for name in ("elevation_deg", "azimuth_deg", "declination_deg", "hour_angle_deg"):
            getattr(out, name)[where] = getattr(sun, name)
    return out


def _rates_per_min(sun, lat) -> tuple[np.ndarray, np.ndarray]:
    """d elevation / dt and d azimuth / dt in deg per minute: exact derivatives in the hour angle (the declination
    and the equation of time change a thousand times slower)."""
    phi = np.deg2rad(lat)
    d = np.deg2rad(sun.declination_deg)
    h = np.deg2rad(sun.hour_angle_deg)
    cos_e = np.maximum(np.cos(np.deg2rad(sun.elevation_deg)), 1e-9)
    de_dh = -np.cos(phi) * np.cos(d) * np.sin(h) / cos_e
    y = -np.cos(d) * np.sin(h)
    x = np.sin(d) * np.cos(phi) - np.cos(d) * np.sin(phi) * np.cos(h)
    dy, dx = -np.cos(d) * np.cos(h), np.cos(d) * np.sin(phi) * np.sin(h)
    da_dh = (x * dy - y * dx) / np.maximum(x * x + y * y, 1e-12)
    return de_dh * _HOUR_ANGLE_RAD_PER_MIN * (180.0 / math.pi), da_dh * _HOUR_ANGLE_RAD_PER_MIN * (180.0 / math.pi)


def _elevation_term(sun, lat, e_obs, sigma_e, sigma_t):
    if sigma_t == 0.0:
        return _log_normal(e_obs - sun.elevation_deg, sigma_e)
    rate_e, _ = _rates_per_min(sun, lat)
    return _log_normal(e_obs - sun.elevation_deg, np.sqrt(sigma_e**2 + (rate_e * sigma_t) ** 2))


def _azimuth_term(sun, lat, a_obs, sigma_a, sigma_t):
    residual = _wrap_deg(a_obs - sun.azimuth_deg)
    if sigma_t == 0.0:
        return _log_normal(residual, sigma_a)
    _, rate_a = _rates_per_min(sun, lat)
    return _log_normal(residual, np.sqrt(sigma_a**2 + (rate_a * sigma_t) ** 2))


@lru_cache(maxsize=2)
def _grid_zones(res_deg: float):
    """(zones, index) of the global grid's cell centres: ~1.2 s at 0.25 deg, kept for the next locus."""
    from gtloc_engine.geo import grid_rows
    from gtloc_engine.timezones import zones_at

    rows = grid_rows(res_deg, "shadow locus resolution")
    lat = 90.0 - (np.arange(rows) + 0.5) * res_deg
    lon = -180.0 + (np.arange(2 * rows) + 0.5) * res_deg
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    return zones_at(la, lo)


def grid_log_likelihood(measurements: Sequence[ShadowMeasurement], res_deg: float, *, cancel=None,
                        step: Callable[[], None] | None = None) -> np.ndarray:
    """(H, W) sum over the measurements of log L at the cell centres of the global grid at res_deg."""
    from gtloc_engine.geo import grid_rows

    rows = grid_rows(res_deg, "shadow locus resolution")
    lat = (90.0 - (np.arange(rows) + 0.5) * res_deg)[:, None]
    lon = (-180.0 + (np.arange(2 * rows) + 0.5) * res_deg)[None, :]
    total = np.zeros((rows, 2 * rows))
    for m in measurements:
        zones = _grid_zones(float(res_deg)) if m.wall_clock_local is not None else None
        total += log_likelihood(m, lat, lon, zones=zones, cancel=cancel, step=step)
    return total


def _surface_from_log(log_weight: np.ndarray, res_deg: float, model_key: str = "", tags: dict | None = None):
    """A global Surface whose mass per cell is exp(log_weight) normalised over the globe."""
    from gtloc_engine.geo import Surface

    finite = np.isfinite(log_weight)
    if not finite.any():
        raise GtlocError("the shadow and the photo's posterior agree nowhere on Earth (every cell has zero "
                         "probability under one of them); check the measurements, their time and sigmas")
    top = float(log_weight[finite].max())
    log_norm = top + math.log(float(np.exp(log_weight[finite] - top).sum(dtype=np.float64)))
    mass = np.exp(log_weight - log_norm).astype(np.float32)
    return Surface(mass, -180.0, 90.0, float(res_deg), "global", model_key, log_norm, dict(tags or {}))


def locus_surface(measurements: Sequence[ShadowMeasurement], res_deg: float = 0.25, *, cancel=None,
                  step: Callable[[], None] | None = None):
    """The locus of the measurements (their likelihoods multiplied) as a global Surface at res_deg."""
    from gtloc_engine.geo import row_area_sr

    if not measurements:
        raise GtlocError("a shadow locus needs at least one measurement")
    ll = grid_log_likelihood(measurements, res_deg, cancel=cancel, step=step)
    log_area = np.log(row_area_sr(90.0, res_deg, ll.shape[0]))[:, None]
    return _surface_from_log(ll + log_area, res_deg, tags={"GTLOC_NORMALISATION": NORMALISATION})


def fuse(locus, posterior):
    """The place posterior given both: posterior mass per cell x the locus's likelihood, renormalised (the locus's
    own mass is likelihood x area, so its area is divided out). Both must be global surfaces on the same grid."""
    from gtloc_engine.geo import row_area_sr

    same_grid = (locus.shape == posterior.shape and math.isclose(locus.res_deg, posterior.res_deg, rel_tol=1e-9)
                 and math.isclose(locus.west_deg, posterior.west_deg, abs_tol=1e-9)
                 and math.isclose(locus.north_deg, posterior.north_deg, abs_tol=1e-9))
    if not same_grid:
        raise GtlocError(f"the photo's posterior is a {posterior.shape} grid of {posterior.res_deg} deg cells from "
                         f"({posterior.west_deg}, {posterior.north_deg}); the shadow locus needs a global grid like "
                         f"its own {locus.shape} of {locus.res_deg} deg: predict with --res-deg {locus.res_deg}")
    log_area = np.log(row_area_sr(90.0, locus.res_deg, locus.shape[0]))[:, None]
    with np.errstate(divide="ignore"):
        log_weight = np.log(posterior.mass_per_cell.astype(np.float64)) \
            + (np.log(locus.mass_per_cell.astype(np.float64)) - log_area)
    return _surface_from_log(log_weight, locus.res_deg, posterior.model_key, {"GTLOC_NORMALISATION": NORMALISATION})


@dataclass(frozen=True)
class ShadowConfig:
    """How a shadow locus is drawn: grid, credible levels, candidates."""

    res_deg: float = 0.25
    credible_levels: tuple[float, ...] = (0.5, 0.9)
    top_k: int = 5
    candidate_radius_km: float = 100.0
    # A band read in local time breaks at every zone border (the clock jumps, so does the sun): a few hundred pieces
    # are its true shape, not a posterior's speckle (regions.RegionConfig coarsens above this many polygons).
    max_polygons: int = 512

    def validate(self) -> ShadowConfig:
        if not 0.0 < self.res_deg <= 10.0:
            raise GtlocError(f"res_deg {self.res_deg} must be a cell size in degrees in (0, 10], e.g. 0.25")
        if self.top_k < 1 or self.candidate_radius_km <= 0:
            raise GtlocError(f"shadow config {self}: top_k and candidate_radius_km must be positive")
        return self


@dataclass
class ShadowResult:
    """The locus, the fused surface (None without a posterior), and their regions and candidates."""

    measurements: list[ShadowMeasurement]
    locus: object  # geo.Surface
    fused: object | None
    regions: dict[str, list]  # 'locus' | 'fused' -> [regions.CredibleRegion]
    candidates: dict[str, list]  # 'locus' | 'fused' -> [surfaces.Candidate]
    posterior_mass_in_locus: dict[str, float] = field(default_factory=dict)  # level -> photo posterior mass there
    notes: list[str] = field(default_factory=list)

    def write(self, out_dir: str | Path, *, posterior_source: str | None = None) -> dict:
        """shadow_locus.tif, shadow_fused.tif (with a posterior) and shadow.gpkg into out_dir (each written aside
        and renamed into place); returns the JSON summary with their paths."""
        from gtloc_engine.io.rasters import write_surface_geotiff
        from gtloc_engine.io.shadow_gpkg import SHADOW_GPKG, write_shadow_gpkg

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise GtlocError(f"shadow output folder {out} is a file; choose a folder (--out DIR)")
        measurements_json = [m.to_json() for m in self.measurements]
        tags = {"GTLOC_SHADOW_MEASUREMENTS": json.dumps(measurements_json, ensure_ascii=False)}
        locus_tif = write_surface_geotiff(out / "shadow_locus.tif", self.locus, tags={**self.locus.tags, **tags})
        fused_tif = None
        if self.fused is not None:
            fused_tif = write_surface_geotiff(out / "shadow_fused.tif", self.fused, tags={
                **self.fused.tags, **tags, "GTLOC_POSTERIOR": posterior_source or ""})
        gpkg = write_shadow_gpkg(out / SHADOW_GPKG, self.regions, self.candidates, measurements_json)
        return {"out_dir": str(out), "locus_tif": str(locus_tif),
                "fused_tif": None if fused_tif is None else str(fused_tif), "gpkg": str(gpkg),
                "measurements": measurements_json, "res_deg": self.locus.res_deg, "posterior": posterior_source,
                "posterior_mass_in_locus": {f"{k:g}": v for k, v in self.posterior_mass_in_locus.items()},
                "locus": self._summary("locus"), "fused": self._summary("fused"), "notes": list(self.notes)}

    def _summary(self, name: str) -> dict | None:
        if name not in self.regions:
            return None
        surface = self.locus if name == "locus" else self.fused
        peak_lat, peak_lon = surface.peak_latlon_deg()
        return {"peak_lat_deg": peak_lat, "peak_lon_deg": peak_lon,
                "candidates": [c.to_json() for c in self.candidates[name]],
                "regions": [{"level": r.level, "area_km2": r.area_km2, "mass": r.mass, "cell_deg": r.cell_deg}
                            for r in self.regions[name]]}


def locate_by_shadow(measurements: Sequence[ShadowMeasurement], *, posterior=None,
                     config: ShadowConfig | None = None, progress: Callable[[int, int], None] | None = None,
                     cancel=None) -> ShadowResult:
    """The locus of the measurements and, given a photo's place posterior (a global Surface), the fused surface;
    credible regions and candidates of each. progress(done, total) counts time bins (and the fusion)."""
    from gtloc_engine.inference.regions import BlockPosterior, RegionConfig, credible_regions
    from gtloc_engine.inference.surfaces import find_candidates

    config = (config or ShadowConfig()).validate()
    measurements = list(measurements)
    res_deg = config.res_deg if posterior is None else posterior.res_deg
    total = sum(len(time_bins(m)[0]) for m in measurements) + (posterior is not None)
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    locus = locus_surface(measurements, res_deg, cancel=cancel, step=step)
    surfaces = {"locus": locus}
    notes = []
    if any(m.wall_clock_local is not None for m in measurements):
        notes.append("a time without an offset is the local wall clock at each place: its IANA zone with daylight "
                     "saving (timezonefinder + zoneinfo), the nautical zone round(lon / 15) h at open sea")
    fused, mass_in_locus = None, {}
    if posterior is not None:
        fused = fuse(locus, posterior)
        surfaces["fused"] = fused
        step()
        for level in config.credible_levels:
            inside = BlockPosterior(locus, 1).region(level)
            mass_in_locus[level] = float(posterior.mass_per_cell[inside].sum(dtype=np.float64))
        weakest = min(mass_in_locus.values()) if mass_in_locus else 1.0
        if weakest < 0.01:
            notes.append(f"the photo's posterior puts only {weakest:.2%} of its mass inside the shadow's "
                         f"{max(config.credible_levels):.0%} region: the model and the shadow disagree")
    region_config = RegionConfig(max_polygons=config.max_polygons)
    regions = {name: credible_regions(s, config.credible_levels, region_config) for name, s in surfaces.items()}
    candidates = {name: find_candidates(s, config.top_k, radius_km=config.candidate_radius_km)
                  for name, s in surfaces.items()}
    return ShadowResult(measurements, locus, fused, regions, candidates, mass_in_locus, notes)


def photo_posterior(model_path: str | Path, photo: str | Path, *, res_deg: float = 0.25, cache_dir=None,
                    predictor=None):
    """A photo's learned place posterior (global Surface of the img_gps head at res_deg): the surface whose modes
    are its places in the results GeoPackage. `predictor` reuses a loaded one."""
    from gtloc_engine.inference.predictor import Predictor, embed_photos

    if predictor is None:
        from gtloc_engine.model.checkpoint import load_checkpoint

        predictor = Predictor(load_checkpoint(model_path), global_res_deg=res_deg, cache_dir=cache_dir)
    if not predictor.model.heads_trained.get("location"):
        raise GtlocError(f"checkpoint {model_path} has no trained location head, so it has no place posterior to "
                         "fuse with the shadow; leave --photo out for the locus alone")
    emb, ok, failures = embed_photos(predictor.model, [Path(photo)])
    if failures:
        raise GtlocError(failures[0][1])
    return predictor.surface_maker.global_surface(emb[0], "img_gps")


def shadow_to_files(measurements: Sequence[ShadowMeasurement], out_dir: str | Path, *,
                    config: ShadowConfig | None = None, photo=None, model=None, posterior_tif=None,
                    res_deg_given: bool = True, cache_dir=None, progress=None, cancel=None, predictor=None) -> dict:
    """The whole job behind `gtloc shadow` and the worker's `shadow`: the photo's posterior (photo + model, or a
    global likelihood GeoTIFF), the locus, the fused surface, their regions and candidates, written into out_dir.
    `res_deg_given`: config.res_deg was the caller's own, so it must match a posterior raster's grid."""
    from gtloc_engine.io.rasters import read_surface_geotiff

    config = (config or ShadowConfig()).validate()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # before any work: a wrong --out should cost no time
        raise GtlocError(f"shadow output folder {out} is a file; choose a folder (--out DIR)")
    from gtloc_engine.io.shadow_gpkg import SHADOW_GPKG, check_shadow_gpkg_path

    check_shadow_gpkg_path(out / SHADOW_GPKG)
    posterior, source = None, None
    if posterior_tif is not None:
        posterior = read_surface_geotiff(posterior_tif)
        w, s, e, n = posterior.bounds_deg
        if not (math.isclose(w, -180.0) and math.isclose(e, 180.0) and math.isclose(s, -90.0)
                and math.isclose(n, 90.0)):
            raise GtlocError(f"posterior raster {posterior_tif} covers ({w}, {s}, {e}, {n}), not the globe: give a "
                             "photo's global likelihood GeoTIFF (predict --rasters writes *_global.tif)")
        if res_deg_given and not math.isclose(posterior.res_deg, config.res_deg, rel_tol=1e-9):
            raise GtlocError(f"posterior raster {posterior_tif} has {posterior.res_deg} deg cells but res_deg is "
                             f"{config.res_deg}: leave res_deg out to use the raster's grid")
        source = str(posterior_tif)
    elif photo is not None:
        posterior = photo_posterior(model, photo, res_deg=config.res_deg, cache_dir=cache_dir, predictor=predictor)
        source = f"{photo} (img_gps posterior of {model})"
    result = locate_by_shadow(measurements, posterior=posterior, config=config, progress=progress, cancel=cancel)
    return result.write(out, posterior_source=source)
