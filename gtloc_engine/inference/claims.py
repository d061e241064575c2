"""Claim verification: does what a photo's EXIF claims (place, capture time) agree with what its pixels say, and can
the model tell at all?

Three numbers per claimed part (place, time), all read off the model's posterior:
- level: the claim's *credible level*, the probability mass of everything the model finds more likely than the
  claim. The smallest credible region that contains the claim has exactly this mass, so a claim is inside the 90%
  region iff its level is below 0.9. Level 0: the model's own first choice; near 1: the model gives almost
  everything else more weight.
- evidence: the likelihood ratio of the claim against the prior, p(claim | image) / p(claim): how many times more
  (> 1) or less (< 1) likely the image makes the claimed place or time than one drawn from the prior. Place: the
  posterior density at the claimed point over the uniform density on the sphere, 1 / 510.1 million km2 (the GPS
  galleries some models ship are not used as a prior: they describe the training photos, not the claims an analyst
  checks, and a toy or synthetic model has none). Time: the posterior probability of the claimed month x hour cell
  times the number of cells (a uniform prior over the month x hour torus; with a time gallery the posterior already
  carries the gallery's hours, which then show in the evidence).
- region share: the prior probability of the `consistent_below` (90%) credible region, i.e. the chance that a claim
  picked at random would pass as consistent. Time: the region's share of the month x hour cells. Place: the
  region's area over the Earth's land area (148.94 million km2): claims, true or forged, are places where photos are
  taken, nearly always on land; a model that has learnt no more than "photos are on land" has a region of 90% of the
  land (26% of the globe), and dividing by the globe would let every land claim pass. Ocean inside the region is
  counted as land, so the share is an upper bound: the rule errs towards inconclusive.

Verdict of a part (VerdictThresholds; one number, min_evidence = 3, sets both tests). A verdict is itself evidence:
a true claim of a calibrated model lands in the 90% region with probability 0.9, a random claim with probability
region share, so "consistent" is worth 0.9 / share. Kass & Raftery (1995, JASA 90:773) call a Bayes factor below 3
"not worth more than a bare mention", hence:
1. inconclusive when the posterior is too diffuse to test the claim: region share > consistent_below / min_evidence
   (0.9 / 3 = 0.30 of the land, 44.7 million km2, or of the month x hour cells), in either direction: a model that
   spreads its mass this widely gives no reliable "against" either;
2. else by the level: consistent below consistent_below (0.9), doubtful below doubtful_below (0.99), else
   inconsistent;
3. inconclusive again when the claim's own evidence does not back the level's verdict by min_evidence: consistent
   needs evidence >= 3, doubtful and inconsistent need evidence <= 1/3 (the image makes the claim at least 3 times
   less likely than a random one).
A note says which test made a part inconclusive, with its numbers.

Overall verdict: the worst checked part by SEVERITY, inconsistent > doubtful > inconclusive > consistent. So a
confident inconsistent or doubtful part is never hidden by an inconclusive one, the whole claim is consistent only
when every checked part is, and an inconclusive part is never reported as consistent. 'no claim' when nothing
claimed could be checked: no claim at all, or only claims whose head the checkpoint never trained (a note says so;
an untrained head would give noise).

Public surface:
    VerdictThresholds   the level thresholds and min_evidence, as data; .verdict(level), .part_verdict(...)
    SEVERITY            part verdict -> rank, worst highest (the overall verdict is the maximum)
    LAND_AREA_KM2       the Earth's land area, the place test's reference
    ClaimReport         every number and verdict of one photo's check, plus notes
    grid_credible_level mass of the cells more probable than a given cell of a probability grid
    grid_credible_levels  every cell's rank as mass (its smallest credible region's mass), as a grid
    grid_region_share   the share of a grid's cells in its smallest credible region of a given mass
    verify_claims       claims + posteriors -> ClaimReport
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gtloc_engine.geo import haversine_km
from gtloc_engine.inference.predictor import TimeEstimate
from gtloc_engine.inference.surfaces import PlaceScore
from gtloc_engine.io.exif import ExifClaims
from gtloc_engine.io.results_schema import (  # noqa: F401  (the verdict and time_given strings are the schema's)
    CONSISTENT,
    DOUBTFUL,
    INCONCLUSIVE,
    INCONSISTENT,
    NO_CLAIM,
    TIME_GIVEN_IMAGE,
    TIME_GIVEN_PLACE,
)
from gtloc_engine.timecode import hour_error, month_error, parse_time

SEVERITY = {CONSISTENT: 0, INCONCLUSIVE: 1, DOUBTFUL: 2, INCONSISTENT: 3}
CREDIBLE_90 = 0.9  # the region reported as place_in_90, independent of where the verdict thresholds sit
# CIA World Factbook (2024), "World: Geography": land 148.94 million km2, 29.2% of the Earth's surface.
LAND_AREA_KM2 = 148.94e6


@dataclass(frozen=True)
class VerdictThresholds:
    """Credible-level thresholds: level < consistent_below -> consistent; < doubtful_below -> doubtful; else
    inconsistent. The defaults read: inside the 90% credible region is consistent, outside the 99% region is
    inconsistent, the 9% shell between them is doubtful. `min_evidence` is the smallest likelihood ratio a verdict
    must carry, both for the verdict itself (consistent_below / region share) and for the claim (its evidence, or
    1 / its evidence against); see the module docstring."""

    consistent_below: float = 0.90
    doubtful_below: float = 0.99
    min_evidence: float = 3.0

    def __post_init__(self):
        if not 0.0 < self.consistent_below <= self.doubtful_below <= 1.0:
            raise ValueError(f"need 0 < consistent_below <= doubtful_below <= 1, got {self}")
        if not self.min_evidence >= 1.0:
            raise ValueError(f"min_evidence must be a likelihood ratio >= 1 (1: never inconclusive), got {self}")

    @property
    def max_region_share(self) -> float:
        """The largest prior share of the consistent region at which a consistent verdict is worth min_evidence."""
        return self.consistent_below / self.min_evidence

    def verdict(self, level: float) -> str:
        """The verdict of a credible level alone."""
        if level < self.consistent_below:
            return CONSISTENT
        return DOUBTFUL if level < self.doubtful_below else INCONSISTENT

    def part_verdict(self, level: float, evidence: float, region_share: float, reference: str = "the prior"
                     ) -> tuple[str, str | None]:
        """(verdict, why it is inconclusive or None) of one claimed part: the three tests of the module docstring;
        `reference` names what region_share is a share of, for the reason."""
        if region_share > self.max_region_share:
            return INCONCLUSIVE, (f"the model's {self.consistent_below:.0%} region covers {region_share:.0%} of "
                                  f"{reference}, more than the {self.max_region_share:.0%} a verdict allows")
        by_level = self.verdict(level)
        if by_level == CONSISTENT and evidence < self.min_evidence:
            return INCONCLUSIVE, (f"inside the {self.consistent_below:.0%} region, but the image makes the claim only "
                                  f"{evidence:.2g} times as likely as a random one, under the {self.min_evidence:g} "
                                  "that consistent needs")
        if by_level != CONSISTENT and evidence > 1.0 / self.min_evidence:
            return INCONCLUSIVE, (f"level {level:.3f}, but the image makes the claim {evidence:.2g} times as likely "
                                  f"as a random one, over the 1/{self.min_evidence:g} that {by_level} allows")
        return by_level, None


@dataclass
class ClaimReport:
    """One photo's claim check; a part that was not claimed or not checkable has None everywhere."""

    place_level: float | None = None
    place_evidence: float | None = None
    place_region_share: float | None = None  # area of the consistent region / LAND_AREA_KM2
    place_dist_km: float | None = None
    place_in_90: bool | None = None
    place_verdict: str | None = None
    time_level: float | None = None
    time_evidence: float | None = None
    time_region_share: float | None = None  # share of the month x hour cells in the consistent region
    claim_month_err: float | None = None
    claim_hour_err: float | None = None
    time_verdict: str | None = None
    verdict: str = NO_CLAIM
    notes: list[str] = field(default_factory=list)


def grid_credible_level(probs: np.ndarray, index: tuple[int, ...]) -> float:
    """Mass of the cells strictly more probable than `probs[index]`: ties (a flat posterior) count as level 0."""
    probs = np.asarray(probs, dtype=np.float64)
    return float(min(probs[probs > probs[index]].sum(), 1.0))


def grid_credible_levels(probs: np.ndarray) -> np.ndarray:
    """Every cell's rank as mass: the (normalised) mass of the cells before it, most probable first, ties in a
    stable order. The cells below `level` form the smallest region holding mass `level`."""
    flat = np.asarray(probs, dtype=np.float64).ravel()
    order = np.argsort(-flat, kind="stable")
    mass_before = np.empty(flat.size)
    mass_before[order] = np.cumsum(flat[order]) - flat[order]
    return (mass_before / max(flat.sum(), 1e-300)).reshape(np.shape(probs))


def grid_region_share(probs: np.ndarray, level: float) -> float:
    """Share of the cells in the smallest region of mass `level` (grid_credible_levels): under a uniform prior over
    the cells, the chance that a random cell falls in it."""
    return float((grid_credible_levels(probs) < level).mean())


def _time_cell(month_pos: float, hour_local: float, shape: tuple[int, int]) -> tuple[int, int]:
    """The (month bin, hour bin) of a month x hour grid whose bins start at Jan 1 00:00."""
    month_bins, hour_bins = shape
    return int(month_pos / 12.0 * month_bins) % month_bins, int(hour_local / 24.0 * hour_bins) % hour_bins


def verify_claims(
    claims: ExifClaims | None,
    *,
    place: PlaceScore | None,
    pred_latlon_deg: tuple[float, float] | None,
    time_grid: np.ndarray | None,
    time_estimate: TimeEstimate | None,
    heads_trained: dict[str, bool],
    thresholds: VerdictThresholds = VerdictThresholds(),
) -> ClaimReport:
    """Check a photo's claims against its posteriors.

    `place` is the claimed place's score in the photo's location posterior (SurfaceMaker.score_place, with
    region_level = thresholds.consistent_below; None without a place claim or a trained location head);
    `pred_latlon_deg` the most likely place; `time_grid` / `time_estimate` the month x hour posterior the time
    claim is judged in (already conditioned on the claimed place where wanted).
    """
    report = ClaimReport()
    claims = claims or ExifClaims()
    if claims.has_place:
        if not heads_trained.get("location"):
            report.notes.append("place claim not checked: this checkpoint's location head was never trained")
        elif place is not None:
            report.place_level = float(place.level)
            report.place_evidence = float(place.evidence)
            report.place_region_share = float(place.region_area_km2 / LAND_AREA_KM2)
            report.place_in_90 = bool(place.level < CREDIBLE_90)
            land = f"the Earth's land ({place.region_area_km2 / 1e6:.1f} of {LAND_AREA_KM2 / 1e6:.1f} million km2)"
            report.place_verdict, why = thresholds.part_verdict(place.level, place.evidence,
                                                                report.place_region_share, land)
            if why is not None:
                report.notes.append(f"place inconclusive: {why}")
            if pred_latlon_deg is not None:
                report.place_dist_km = float(haversine_km((claims.lat_deg, claims.lon_deg), pred_latlon_deg))
    if claims.has_time:
        if not heads_trained.get("time"):
            report.notes.append("time claim not checked: this checkpoint's time head was never trained")
        elif time_grid is not None and time_estimate is not None:
            claimed = parse_time(claims.local_datetime)
            grid = np.asarray(time_grid, dtype=np.float64)
            cell = _time_cell(claimed.month_pos, claimed.hour_local, grid.shape)
            report.time_level = grid_credible_level(grid, cell)
            report.time_evidence = float(grid[cell] / grid.sum() * grid.size)
            report.time_region_share = grid_region_share(grid, thresholds.consistent_below)
            report.claim_month_err = float(month_error(claimed.month_pos, time_estimate.month_pos))
            report.claim_hour_err = float(hour_error(claimed.hour_local, time_estimate.hour_local))
            report.time_verdict, why = thresholds.part_verdict(report.time_level, report.time_evidence,
                                                               report.time_region_share, "the months x hours")
            if why is not None:
                report.notes.append(f"time inconclusive: {why}")
    verdicts = [v for v in (report.place_verdict, report.time_verdict) if v is not None]
    report.verdict = max(verdicts, key=SEVERITY.__getitem__) if verdicts else NO_CLAIM
    return report
