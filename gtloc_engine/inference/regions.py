"""Credible regions: the smallest set of cells holding a given share of the posterior mass, as lon/lat polygons.

Cells are ranked by density (mass per km2, see surfaces.py), not by mass, so the region is the highest-density
region of the continuous posterior rather than a set biased towards the larger low-latitude cells. The level is
absolute (a share of the global posterior's mass): on a regional surface that holds less than the level, that
level is left out. Ties at the threshold density are all included, so `mass` can exceed the level slightly.

Readable regions. A weak model's posterior is speckled: its densest cells lie scattered over the globe (4,000-9,000
separate specks per level at 0.25 deg for the demo model, 2-5 MB of GeoPackage per photo, no shape an analyst can
read; bench/bench_regions.py). So a level whose region has more than `RegionConfig.max_polygons` polygons is drawn at a
coarser resolution: the posterior is summed over blocks of 2 x 2, 4 x 4, ... cells (anchored at the raster's
north-west corner; a block cut by the raster's edge holds only its cells inside) and the region is the smallest
set of blocks holding the level, ranked by block density (block mass / block area), ties included: the
highest-density region of the posterior at that resolution, at the finest block size that gives at most
max_polygons polygons (one block covering the raster gives one). Its mass is still at least the level and close to
it (OR-ing the exact region's cells up to blocks instead would also hold the level, but for a speckled posterior
its "50%" region covered 60-90% of the Earth holding 96-98% of the mass, in measurements on the demo model).
`mass` is the exact mass of the cells the region covers, `area_km2` their area, `cell_deg` the block size
(the surface's resolution when nothing was coarsened). Levels are built from the smallest up and each region
takes in the smaller levels' regions, so the 50% region lies inside the 90% one even when they are drawn at
different block sizes (the cap is checked on that union). credible_level (surfaces.py, the claim check) stays at
the surface's resolution: near the edge of a coarsened region a place can be inside the level there and outside
the drawn block, or the other way round.

Polygons come from rasterio.features.shapes (4-connected cells, exact cell edges, holes kept) in EPSG:4326
lon/lat; a region touching +-180 is two polygons, one at each edge (regional windows past 180 keep their
own longitudes). Area on the WGS84 ellipsoid with pyproj.Geod: the region is a union of cells, so its area is
the sum of its cells' areas, and each row's cell area is Geod.geometry_area_perimeter of one cell polygon with
its parallels densified (a parallel is not a geodesic). This equals geometry_area_perimeter of the region's
densified polygons (the tests check it), stays right where that is ill-posed (a ring running along both poles,
as a diffuse posterior's 90% region can be: 271 vs the cells' 239 million km2 in one measured case), and costs
one small call per row instead of one per vertex.

Public surface:
    RegionConfig        max_polygons per level (data)
    CredibleRegion      level, geometry, area_km2, mass, cell_deg (the block size it was drawn at)
    credible_regions    one CredibleRegion per level the surface can hold
    row_cell_area_km2   WGS84 area of one cell in each row of a surface
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from pyproj import Geod
from rasterio.features import shapes
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, shape

from gtloc_engine.errors import GtlocError
from gtloc_engine.geo import Surface

WGS84 = Geod(ellps="WGS84")
PARALLEL_STEP_DEG = 0.05  # a geodesic over 0.05 deg of a parallel strays from it by centimetres
LEVEL_RTOL = 1e-9  # float32 masses summed in float64: a level reached to within this counts as reached


@dataclass(frozen=True)
class RegionConfig:
    """How credible regions are drawn (see the module docstring)."""

    # A handful of shapes an analyst can read; a speckled posterior's region is coarsened until it has at most
    # this many polygons (a region across +-180 counts as two). 64: ~30-60 KB of GeoPackage per photo, not MBs.
    max_polygons: int = 64

    def validate(self) -> RegionConfig:
        if self.max_polygons < 1:
            raise GtlocError(f"region config max_polygons={self.max_polygons}: use at least 1 (e.g. 64)")
        return self


@dataclass
class CredibleRegion:
    """The cells of the `level` credible region as a lon/lat MultiPolygon, its geodesic area, its mass, and the size
    of the blocks it was drawn with (the surface's resolution unless it had to be coarsened)."""

    level: float
    geometry: MultiPolygon
    area_km2: float
    mass: float
    cell_deg: float


def row_cell_area_km2(surface: Surface) -> np.ndarray:
    """(H,) WGS84 area of one cell in each row of the surface (read-only: shared by every surface on that grid)."""
    return _row_cell_area_km2(float(surface.west_deg), float(surface.north_deg), float(surface.res_deg),
                              int(surface.shape[0]))


@functools.lru_cache(maxsize=64)
def _row_cell_area_km2(west_deg: float, north_deg: float, res_deg: float, n_rows: int) -> np.ndarray:
    # Cached: every global surface of a run has the same grid, and its 720 Geod calls (at 0.25 deg) cost ~25 ms.
    n_edge = max(2, int(np.ceil(res_deg / PARALLEL_STEP_DEG)) + 1)
    lons = np.linspace(west_deg, west_deg + res_deg, n_edge)
    areas = np.empty(n_rows)
    for row, north in enumerate(north_deg - np.arange(n_rows) * res_deg):
        south = max(north - res_deg, -90.0)
        cell = Polygon(list(zip(lons, np.full(n_edge, south)))
                       + list(zip(lons[::-1], np.full(n_edge, min(north, 90.0)))))
        areas[row] = abs(WGS84.geometry_area_perimeter(cell)[0]) / 1e6
    areas.flags.writeable = False
    return areas


class BlockPosterior:
    """The surface's mass summed over block x block tiles and each tile's density (once per block size), and the
    density at which the densest tiles reach a level.

    That threshold needs no sort of every tile: float32 densities are >= 0, so their bit patterns order as their
    values do, and the top 16 bits (exponent and 7 mantissa bits: bins 0.8% wide) bin them in order. The mass per
    bin (one bincount) finds the bin where the level is crossed; only that bin's tiles are sorted. The same
    threshold as a full argsort and cumulative sum (tested), in a few passes over the raster instead of an
    O(n log n) sort of its 1M cells."""

    _SHIFT = 16  # of float32's 32 bits, the top 16 make the bins

    def __init__(self, surface: Surface, block: int):
        h, w = surface.shape
        if block == 1:  # the cells themselves
            # float32 as Surface.density_per_km2: this ranks (and ties) cells exactly as credible_level does.
            self.density = np.ascontiguousarray(surface.density_per_km2, dtype=np.float32)
            self.mass = surface.mass_per_cell.astype(np.float64).ravel()
        else:
            tiled = (-(-h // block) * block, -(-w // block) * block)
            mass = np.zeros(tiled)
            mass[:h, :w] = surface.mass_per_cell
            area = np.zeros(tiled)
            area[:h, :w] = surface.cell_area_km2  # sphere areas, as surfaces.py ranks cells
            tile_mass = mass.reshape(tiled[0] // block, block, tiled[1] // block, block).sum(axis=(1, 3))
            tile_area = area.reshape(tiled[0] // block, block, tiled[1] // block, block).sum(axis=(1, 3))
            self.density = (tile_mass / tile_area).astype(np.float32)
            self.mass = tile_mass.ravel()
        self.bins = self.density.ravel().view(np.uint32) >> self._SHIFT
        n_bins = 1 << (32 - self._SHIFT)
        # Mass at or above each bin, densest bin first: from_top[j] holds bins n_bins - 1 - j and up.
        self.from_top = np.cumsum(np.bincount(self.bins, weights=self.mass, minlength=n_bins)[::-1])
        self.block, self.shape = block, (h, w)

    def threshold(self, level: float) -> float:
        """The density of the tile with which the tiles, densest first, reach `level` (the least dense tile's when
        they never quite do: then the region is every tile)."""
        target = level * (1.0 - LEVEL_RTOL)
        j = int(np.searchsorted(self.from_top, target))
        density = self.density.ravel()
        if j >= len(self.from_top):
            return float(density.min())
        crossing = len(self.from_top) - 1 - j
        above = float(self.from_top[j - 1]) if j > 0 else 0.0
        tiles = np.flatnonzero(self.bins == crossing)
        tiles = tiles[np.argsort(-density[tiles], kind="stable")]
        k = min(int(np.searchsorted(above + np.cumsum(self.mass[tiles]), target)), len(tiles) - 1)
        return float(density[tiles[k]])

    def region_tiles(self, level: float) -> np.ndarray:
        """(H / block, W / block) bool: the smallest set of tiles holding the level, tiles at the threshold included."""
        return self.density >= np.float32(self.threshold(level))

    def cells(self, tiles: np.ndarray) -> np.ndarray:
        """(H, W) bool: the cells of a tile mask."""
        if self.block == 1:
            return tiles
        return tiles.repeat(self.block, axis=0).repeat(self.block, axis=1)[:self.shape[0], :self.shape[1]]

    def region(self, level: float) -> np.ndarray:
        """(H, W) bool: the cells of region_tiles(level)."""
        return self.cells(self.region_tiles(level))


def n_polygons(mask: np.ndarray) -> int:
    """How many polygons rasterio.features.shapes makes of the mask: its 4-connected components."""
    return int(ndimage.label(mask)[1])  # scipy's default structure is 4-connectivity, as shapes(connectivity=4)


def credible_regions(surface: Surface, levels=(0.5, 0.9), config: RegionConfig | None = None) -> list[CredibleRegion]:
    """One region per level the surface can hold, in the order given, each of at most config.max_polygons polygons."""
    config = (config or RegionConfig()).validate()
    total_mass = surface.total_mass
    row_area = row_cell_area_km2(surface)
    largest_block = 1 << int(np.ceil(np.log2(max(surface.shape))))  # one tile covers the raster: one polygon
    by_block: dict[int, BlockPosterior] = {}
    covered = np.zeros(surface.shape, bool)  # the smaller levels' regions, taken into each larger one
    regions = {}
    for level in sorted({float(level) for level in levels}):
        if total_mass < level * (1.0 - LEVEL_RTOL):
            continue
        block = 1
        while True:
            if block not in by_block:
                by_block[block] = BlockPosterior(surface, block)
            tiles = by_block[block].region_tiles(level)
            cells = by_block[block].cells(tiles)
            mask = cells | covered
            if block >= largest_block:
                break
            # A mask made of whole tiles has the components of its tile mask, which is block^2 times smaller.
            if n_polygons(tiles if not np.any(covered & ~cells) else mask) <= config.max_polygons:
                break
            block *= 2
        covered = mask
        polygons = [shape(geom) for geom, value in
                    shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=surface.transform) if value]
        regions[level] = CredibleRegion(level, MultiPolygon(polygons), float(mask.sum(axis=1) @ row_area),
                                        float(surface.mass_per_cell[mask].sum(dtype=np.float64)),
                                        block * surface.res_deg)
    return [regions[float(level)] for level in levels if float(level) in regions]
