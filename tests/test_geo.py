"""Equal Earth (GeoCLIP's scaling), haversine and the generic gallery."""

import numpy as np
import pytest
import torch
from pyproj import Transformer

from gtloc_engine.geo import EE_SCALE, fibonacci_sphere_latlon, equal_earth, haversine_km


def test_equal_earth_matches_proj():
    # PROJ's eqearth on a sphere of radius 1 gives the unscaled projection in radians; ours scales by 66.50336/180.
    rng = np.random.default_rng(1)
    latlon = np.stack([rng.uniform(-90, 90, 300), rng.uniform(-180, 180, 300)], -1)
    proj = Transformer.from_crs("+proj=lonlat +R=1", "+proj=eqearth +R=1", always_xy=True)
    x, y = proj.transform(latlon[:, 1], latlon[:, 0])
    ours = equal_earth(torch.tensor(latlon, dtype=torch.float64)).numpy() / EE_SCALE
    np.testing.assert_allclose(ours[:, 0], x, atol=2e-6)
    np.testing.assert_allclose(ours[:, 1], y, atol=2e-6)


def test_equal_earth_extremes_are_bounded():
    corners = torch.tensor([[90.0, 180.0], [-90.0, -180.0], [0.0, 0.0]], dtype=torch.float64)
    xy = equal_earth(corners)
    assert torch.all(xy.abs() <= 1.0)
    assert xy[2].abs().max() == 0.0


@pytest.mark.parametrize("a,b,km", [
    ((48.8566, 2.3522), (51.5074, -0.1278), 343.5),  # Paris - London
    ((0.0, 179.5), (0.0, -179.5), 111.2),  # across the antimeridian
    ((90.0, 0.0), (-90.0, 0.0), 20015.1),  # pole to pole
])
def test_haversine_known_distances(a, b, km):
    assert haversine_km(np.array(a), np.array(b)) == pytest.approx(km, rel=2e-3)


def test_fibonacci_gallery_is_even():
    pts = fibonacci_sphere_latlon(2000)
    assert pts.shape == (2000, 2)
    assert np.all(np.abs(pts[:, 0]) <= 90) and np.all(np.abs(pts[:, 1]) <= 180)
    # About half the points in each hemisphere and each half of the longitudes.
    assert abs((pts[:, 0] > 0).mean() - 0.5) < 0.01 and abs((pts[:, 1] > 0).mean() - 0.5) < 0.02
