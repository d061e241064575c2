"""The sun check of a claim: where the sun was at a photo's claimed place and time, and whether the model's time
posterior sees that light.

For a photo that claims a place and a time (io/exif.py: the time as a local wall clock with its UTC offset):
- the sun's geometric elevation and azimuth at that instant and place (gtloc_engine.solar, checked against pvlib);
- sunrise and sunset around that local day's solar noon, on the clock of the place's IANA zone (DST included),
  when the sun's centre crosses -0.833 deg (its upper limb on the horizon, refraction included: the standard
  definition; a sunset after midnight, as in Reykjavik in June, is that day's);
- the light regime then, by elevation (REGIME_FLOORS_DEG): day above -0.833 deg, civil twilight above -6, nautical
  twilight above -12, astronomical twilight above -18, night below;
- the check: the posterior mass the model's month x hour time posterior (given the claimed place, when the
  pipeline had it) puts on cells in that light regime. Each cell's share of every regime is the fraction of its
  time in that regime at the claimed place, in the claimed year, its wall clocks made UTC with the place's zone:
  cells are half an hour wide and twilight lasts about as long, so a cell's centre alone would miss it. The claim
  'disagrees' when that mass is below `min_mass` (5%) and also below `min_share_of_blind` (a quarter) of the mass a
  posterior that knew nothing (uniform) would put there: twilight is short, so even a blind posterior puts only a
  few percent on it, and that alone must not read as disagreement. Otherwise it 'agrees'; 'not checked' when there
  is no time posterior (a `sun:` note says why). A disagreement is a `sun:` note too: e.g. the model sees daylight
  but the claim is two hours after sunset.

Public surface:
    REGIME_FLOORS_DEG   (light regime, lowest geometric sun elevation in it), brightest first
    light_regime        sun elevation(s) in degrees -> regime name(s)
    SunCheckConfig      the two thresholds of the check (data)
    SunReport           the photos-layer fields (.fields()) and notes of one photo's sun check
    regime_fractions    place, zone, year, grid shape -> (months, hours, regimes) share of each cell's time
    check_sun           claims + time posterior -> SunReport
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from gtloc_engine.io.exif import ExifClaims
from gtloc_engine.io.results_schema import (ASTRONOMICAL_TWILIGHT, CIVIL_TWILIGHT, DAY, LIGHT_REGIMES,
                                            NAUTICAL_TWILIGHT, NIGHT, SUN_AGREES, SUN_DISAGREES, SUN_NOT_CHECKED)
from gtloc_engine.solar import solar_position
from gtloc_engine.timecode import date_at_month_pos
from gtloc_engine.timezones import Zone, zone_at

__all__ = ["REGIME_FLOORS_DEG", "light_regime", "SunCheckConfig", "SunReport", "regime_fractions", "check_sun"]

# The sun's centre 50' below the horizon: its 16' radius plus 34' of refraction put its upper limb on the horizon.
SUNRISE_ELEVATION_DEG = -0.833
REGIME_FLOORS_DEG = ((DAY, SUNRISE_ELEVATION_DEG), (CIVIL_TWILIGHT, -6.0), (NAUTICAL_TWILIGHT, -12.0),
                     (ASTRONOMICAL_TWILIGHT, -18.0), (NIGHT, -90.0))
_FLOORS = np.array([floor for _, floor in REGIME_FLOORS_DEG[:-1]])
# Where the orbital series behind gtloc_engine.solar holds to well under a degree; a claimed year outside is junk.
_YEARS = (1800, 2200)
# Time samples per posterior cell for its regime shares (5 minutes apart in a 30-minute cell).
_SAMPLES_PER_CELL = 6
_UTC = dt.timezone.utc


def light_regime(elevation_deg):
    """The light regime of geometric sun elevation(s): a name, or an object array of names."""
    index = _regime_index(elevation_deg)
    names = np.array(LIGHT_REGIMES, dtype=object)[index]
    return str(names) if np.ndim(names) == 0 else names


def _regime_index(elevation_deg) -> np.ndarray:
    """Index into LIGHT_REGIMES: how many floors (brightest first) the elevation is not above."""
    return (np.asarray(elevation_deg, dtype=np.float64)[..., None] <= _FLOORS).sum(axis=-1)


@dataclass(frozen=True)
class SunCheckConfig:
    """The claim's light regime 'disagrees' with the time posterior when the posterior's mass on it is below
    `min_mass` and below `min_share_of_blind` times the mass a uniform posterior would put on it."""

    min_mass: float = 0.05
    min_share_of_blind: float = 0.25

    def __post_init__(self):
        if not (0.0 < self.min_mass < 1.0 and 0.0 < self.min_share_of_blind <= 1.0):
            raise ValueError(f"need 0 < min_mass < 1 and 0 < min_share_of_blind <= 1, got {self}")


@dataclass
class SunReport:
    """One photo's sun check; everything None when the photo does not claim both a place and a time."""

    sun_elev_deg: float | None = None
    sun_azimuth_deg: float | None = None
    sunrise_local: str | None = None  # ISO 8601 with the zone's offset, whole minutes
    sunset_local: str | None = None
    light_regime: str | None = None
    sun_check: str | None = None
    sun_regime_mass: float | None = None  # the time posterior's mass on light_regime
    notes: list[str] = field(default_factory=list)

    def fields(self) -> dict:
        """The photos-layer fields (results_schema.PHOTOS) of this check."""
        return {name: getattr(self, name) for name in ("sun_elev_deg", "sun_azimuth_deg", "sunrise_local",
                                                       "sunset_local", "light_regime", "sun_check",
                                                       "sun_regime_mass")}


def regime_fractions(lat_deg: float, lon_deg: float, zone: Zone, year: int, shape: tuple[int, int]) -> np.ndarray:
    """(months, hours, len(LIGHT_REGIMES)) share of each month x hour cell's time in each light regime at a place.

    Cells are those of the predictor's time grid: month bins from Jan 1 (month positions, timecode), hour bins of
    the local wall clock from 00:00. A month bin is taken at its middle day in `year`; each hour bin is sampled
    _SAMPLES_PER_CELL times, each wall clock made UTC with `zone`'s offset at the bin's centre (DST included)."""
    month_bins, hour_bins = shape
    days = [date_at_month_pos(year, (i + 0.5) * 12.0 / month_bins) for i in range(month_bins)]
    bin_min = 24 * 60 / hour_bins
    offsets_min = np.array([[zone.offset_min(dt.datetime.combine(day, dt.time()) + dt.timedelta(
        minutes=(j + 0.5) * bin_min)) for j in range(hour_bins)] for day in days], dtype=np.float64)
    sample_min = (np.arange(hour_bins)[:, None] + (np.arange(_SAMPLES_PER_CELL) + 0.5) / _SAMPLES_PER_CELL) * bin_min
    day64 = np.array(days, dtype="datetime64[D]").astype("datetime64[s]")
    utc_s = (day64[:, None, None] + (sample_min[None] * 60).astype("timedelta64[s]")
             - (offsets_min[:, :, None] * 60).astype(np.int64).astype("timedelta64[s]"))
    elevation = solar_position(lat_deg, lon_deg, utc_s, 0).elevation_deg
    index = _regime_index(elevation)  # (months, hours, samples)
    return np.stack([(index == r).mean(axis=-1) for r in range(len(LIGHT_REGIMES))], axis=-1)


def check_sun(claims: ExifClaims | None, time_grid: np.ndarray | None,
              config: SunCheckConfig = SunCheckConfig()) -> SunReport:
    """The sun at a photo's claimed place and time, and its check against `time_grid` (the month x hour time
    posterior, None without a trained time head). Never raises for odd claims: a claim it cannot place in time
    gets a note."""
    report = SunReport()
    if claims is None or not claims.has_place or not claims.has_time:
        return report
    if claims.utc_offset_min is None:
        report.notes.append("sun: not computed: the claimed time has no known UTC offset")
        return report
    if not _YEARS[0] <= claims.local_datetime.year <= _YEARS[1]:
        report.notes.append(f"sun: not computed: the claimed year {claims.local_datetime.year} is outside "
                            f"{_YEARS[0]}-{_YEARS[1]}")
        return report
    lat, lon = claims.lat_deg, claims.lon_deg
    zone = zone_at(lat, lon)
    instant = (claims.local_datetime - dt.timedelta(minutes=claims.utc_offset_min)).replace(tzinfo=_UTC)
    sun = solar_position(lat, lon, np.datetime64(instant.replace(tzinfo=None), "s"), 0)
    report.sun_elev_deg = float(sun.elevation_deg)
    report.sun_azimuth_deg = float(sun.azimuth_deg)
    report.light_regime = light_regime(report.sun_elev_deg)
    _sunrise_sunset(report, lat, lon, zone, instant)
    if time_grid is None:
        report.sun_check = SUN_NOT_CHECKED
        report.notes.append("sun: not checked against the model: no time posterior (time head not trained)")
        return report
    grid = np.asarray(time_grid, dtype=np.float64)
    grid = grid / grid.sum()
    fractions = regime_fractions(lat, lon, zone, zone.from_utc(instant).year, grid.shape)
    r = LIGHT_REGIMES.index(report.light_regime)
    mass = float((grid * fractions[..., r]).sum())
    blind = float(fractions[..., r].mean())
    report.sun_regime_mass = mass
    if mass < config.min_mass and mass < config.min_share_of_blind * blind:
        report.sun_check = SUN_DISAGREES
        local = zone.from_utc(instant)
        rise_set = ", ".join(f"{name} {text[11:16]}" for name, text in (("sunrise", report.sunrise_local),
                                                                          ("sunset", report.sunset_local)) if text)
        report.notes.append(
            f"sun: the claim is in {report.light_regime} (sun {report.sun_elev_deg:+.1f} deg at "
            f"{local.strftime('%H:%M')} {zone.name}{'; ' + rise_set if rise_set else ''}) but the model's time "
            f"posterior puts {mass:.1%} of its mass on {report.light_regime} (a blind one: {blind:.1%})")
    else:
        report.sun_check = SUN_AGREES
    return report


def _sunrise_sunset(report: SunReport, lat: float, lon: float, zone: Zone, instant: dt.datetime) -> None:
    """Sunrise and sunset around the solar noon (transit) of the instant's local day in `zone`, to the minute: the
    last rise in the 12 hours before it, the first set in the 12 hours after (which may fall after midnight, as
    in Reykjavik in June: almanacs and pvlib count it so). Notes polar day and polar night."""
    day = zone.from_utc(instant).date()
    start = zone.localize(dt.datetime.combine(day, dt.time())).astimezone(_UTC)
    end = zone.localize(dt.datetime.combine(day + dt.timedelta(days=1), dt.time())).astimezone(_UTC)
    first = start - dt.timedelta(hours=12)
    minutes = np.arange(int((end - first).total_seconds() // 60) + 12 * 60 + 1)
    t0 = np.datetime64(first.replace(tzinfo=None), "s")
    above = solar_position(lat, lon, t0 + minutes.astype("timedelta64[m]"), 0).elevation_deg - SUNRISE_ELEVATION_DEG
    day_lo, day_hi = 12 * 60, 12 * 60 + int((end - start).total_seconds() // 60)
    transit = day_lo + int(np.argmax(above[day_lo:day_hi]))
    before, after = above[transit - 12 * 60:transit + 1], above[transit:transit + 12 * 60 + 1]
    rises = np.flatnonzero((before[:-1] < 0) & (before[1:] >= 0)) + transit - 12 * 60
    sets = np.flatnonzero((after[:-1] >= 0) & (after[1:] < 0)) + transit

    def crossing(i: int) -> str:
        minute = i + above[i] / (above[i] - above[i + 1])  # linear between the two samples
        when = first + dt.timedelta(minutes=round(float(minute)))
        return when.astimezone(zone.tzinfo).isoformat(timespec="minutes")

    report.sunrise_local = crossing(int(rises[-1])) if len(rises) else None
    report.sunset_local = crossing(int(sets[0])) if len(sets) else None
    if not len(rises) and not len(sets):
        report.notes.append(f"sun: {'polar day' if above[transit] >= 0 else 'polar night'} at the claimed place on "
                            f"{day}: no sunrise or sunset")
