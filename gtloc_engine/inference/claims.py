"""Claim verification: does what a photo's EXIF claims (place, capture time) agree with what its pixels say?

A claim is scored by its *credible level* in the model's posterior: the probability mass of everything the
model finds more likely than the claim. The smallest credible region that contains the claim has exactly this
mass, so a claim is inside the 90% region iff its level is below 0.9. Level 0 means the claim is the model's
own first choice; a level near 1 means the model gives almost everything else more weight.

- Place: the level of the claimed point in the global location surface (surfaces.credible_level, computed by
  the caller, which owns the surface), the distance from the most likely place, inside/outside the 90% region.
- Time: the level of the claimed (month, hour) cell in the month x hour posterior, conditioned on the claimed
  place when there is one (image + place -> time), else on the image alone; circular month and hour errors of
  the claim from the posterior's modes.
- Verdict per part from `VerdictThresholds` (consistent below 0.9, doubtful below 0.99, inconsistent beyond);
  the overall verdict is the worst part. 'no claim' when nothing claimed could be checked: no claim at all, or
  only claims whose head the checkpoint never trained (a note says so; an untrained head would give noise).

Public surface:
    VerdictThresholds   the two level thresholds, as data
    ClaimReport         every number and verdict of one photo's check, plus notes
    grid_credible_level mass of the cells more probable than a given cell of a probability grid
    verify_claims       claims + posteriors -> ClaimReport
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gtloc_engine.geo import haversine_km
from gtloc_engine.inference.predictor import TimeEstimate
from gtloc_engine.io.exif import ExifClaims
from gtloc_engine.io.results_schema import (  # noqa: F401  (the verdict and time_given strings are the schema's)
    CONSISTENT,
    DOUBTFUL,
    INCONSISTENT,
    NO_CLAIM,
    TIME_GIVEN_IMAGE,
    TIME_GIVEN_PLACE,
)
from gtloc_engine.timecode import hour_error, month_error, parse_time

_SEVERITY = {CONSISTENT: 0, DOUBTFUL: 1, INCONSISTENT: 2}
CREDIBLE_90 = 0.9  # the region reported as place_in_90, independent of where the verdict thresholds sit


@dataclass(frozen=True)
class VerdictThresholds:
    """Credible-level thresholds: level < consistent_below -> consistent; < doubtful_below -> doubtful; else
    inconsistent. The defaults read: inside the 90% credible region is consistent, outside the 99% region is
    inconsistent, the 9% shell between them is doubtful."""

    consistent_below: float = 0.90
    doubtful_below: float = 0.99

    def __post_init__(self):
        if not 0.0 < self.consistent_below <= self.doubtful_below <= 1.0:
            raise ValueError(f"need 0 < consistent_below <= doubtful_below <= 1, got {self}")

    def verdict(self, level: float) -> str:
        if level < self.consistent_below:
            return CONSISTENT
        return DOUBTFUL if level < self.doubtful_below else INCONSISTENT


@dataclass
class ClaimReport:
    """One photo's claim check; a part that was not claimed or not checkable has None everywhere."""

    place_level: float | None = None
    place_dist_km: float | None = None
    place_in_90: bool | None = None
    place_verdict: str | None = None
    time_level: float | None = None
    claim_month_err: float | None = None
    claim_hour_err: float | None = None
    time_verdict: str | None = None
    verdict: str = NO_CLAIM
    notes: list[str] = field(default_factory=list)


def grid_credible_level(probs: np.ndarray, index: tuple[int, ...]) -> float:
    """Mass of the cells strictly more probable than `probs[index]`: ties (a flat posterior) count as level 0."""
    probs = np.asarray(probs, dtype=np.float64)
    return float(min(probs[probs > probs[index]].sum(), 1.0))


def _time_cell(month_pos: float, hour_local: float, shape: tuple[int, int]) -> tuple[int, int]:
    """The (month bin, hour bin) of a month x hour grid whose bins start at Jan 1 00:00."""
    month_bins, hour_bins = shape
    return int(month_pos / 12.0 * month_bins) % month_bins, int(hour_local / 24.0 * hour_bins) % hour_bins


def verify_claims(
    claims: ExifClaims | None,
    *,
    place_level: float | None,
    pred_latlon_deg: tuple[float, float] | None,
    time_grid: np.ndarray | None,
    time_estimate: TimeEstimate | None,
    heads_trained: dict[str, bool],
    thresholds: VerdictThresholds = VerdictThresholds(),
) -> ClaimReport:
    """Check a photo's claims against its posteriors.

    `place_level` is the claimed place's credible level in the global surface (None without a place claim or a
    trained location head); `pred_latlon_deg` the most likely place; `time_grid` / `time_estimate` the month x
    hour posterior the time claim is judged in (already conditioned on the claimed place where wanted).
    """
    report = ClaimReport()
    claims = claims or ExifClaims()
    if claims.has_place:
        if not heads_trained.get("location"):
            report.notes.append("place claim not checked: this checkpoint's location head was never trained")
        elif place_level is not None:
            report.place_level = float(place_level)
            report.place_in_90 = bool(place_level < CREDIBLE_90)
            report.place_verdict = thresholds.verdict(place_level)
            if pred_latlon_deg is not None:
                report.place_dist_km = float(haversine_km((claims.lat_deg, claims.lon_deg), pred_latlon_deg))
    if claims.has_time:
        if not heads_trained.get("time"):
            report.notes.append("time claim not checked: this checkpoint's time head was never trained")
        elif time_grid is not None and time_estimate is not None:
            claimed = parse_time(claims.local_datetime)
            cell = _time_cell(claimed.month_pos, claimed.hour_local, time_grid.shape)
            report.time_level = grid_credible_level(time_grid, cell)
            report.claim_month_err = float(month_error(claimed.month_pos, time_estimate.month_pos))
            report.claim_hour_err = float(hour_error(claimed.hour_local, time_estimate.hour_local))
            report.time_verdict = thresholds.verdict(report.time_level)
    verdicts = [v for v in (report.place_verdict, report.time_verdict) if v is not None]
    report.verdict = max(verdicts, key=_SEVERITY.__getitem__) if verdicts else NO_CLAIM
    return report
