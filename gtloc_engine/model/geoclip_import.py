"""Import GeoCLIP's released weights (PyPI `geoclip`) as a gtloc checkpoint: real geolocation on day one.

GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023) ships inside its package the trained location encoder, the image
adapter (its `image_encoder.mlp`), the logit scale and the 100K MP-16 GPS gallery. GT-Loc uses the same shapes
and the same frozen CLIP ViT-L/14, so the import is a renaming of tensors:

- `LocEnc{i}.capsule.{j}.*` / `LocEnc{i}.head.0.*` -> `location_encoder.rff.branches.{i}.capsule.{j}.*` /
  `...head.0.*` (the random Fourier matrices `b` included; branch i has sigma 2^(4i));
- `image_encoder.mlp` `{0,2}.*` -> `adapter.mlp.{0,2}.*`; `logit_scale` -> `logit_scales.img_gps`;
- `gps_gallery/coordinates_100K.csv` (LAT,LON) -> the checkpoint's gallery.

The backbone is referenced as open_clip ('ViT-L-14', 'openai'), the same OpenAI weights as GeoCLIP's
`openai/clip-vit-large-patch14`; the machine that predicts needs them (fetched once with internet). GeoCLIP has
no time encoder: the time head keeps its random init and is marked untrained, so predictions say so.

The `.pth` files are read with `torch.load(weights_only=True)`, PyTorch's restricted loader that accepts tensors
and plain containers only and refuses any other pickled object; nothing else is unpickled.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import importlib.util
import pickle  # only for its exception type: torch.load(weights_only=True) raises UnpicklingError
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gtloc_engine.errors import GtlocError
from gtloc_engine.model.checkpoint import save_checkpoint
from gtloc_engine.model.config import preset
from gtloc_engine.model.encoders import check_rff_sigmas
from gtloc_engine.model.gtloc import GTLoc

LOCATION_WEIGHTS = "weights/location_encoder_weights.pth"
ADAPTER_WEIGHTS = "weights/image_encoder_mlp_weights.pth"
LOGIT_SCALE_WEIGHTS = "weights/logit_scale_weights.pth"
GALLERY_CSV = "gps_gallery/coordinates_100K.csv"
GEOCLIP_SIGMAS = (2.0**0, 2.0**4, 2.0**8)  # GeoCLIP's LocationEncoder default; branch order LocEnc0..2
_LOC_KEY = re.compile(r"^LocEnc(\d+)\.(capsule|head)\.(\d+)\.(b|weight|bias)$")


@dataclass
class GeoclipRelease:
    """GeoCLIP's released tensors and gallery, read from an installed (or unpacked) `geoclip` package."""

    package_dir: Path  # the folder holding weights/ and gps_gallery/ (geoclip/model)
    version: str
    location_state: dict[str, torch.Tensor]  # GeoCLIP LocationEncoder state dict
    adapter_state: dict[str, torch.Tensor]  # GeoCLIP ImageEncoder.mlp state dict
    logit_scale: torch.Tensor  # log of the softmax temperature's inverse, a scalar
    gallery_latlon_deg: np.ndarray  # (G, 2) float64 lat/lon degrees
    file_sha256: dict[str, str]


def find_geoclip_package() -> tuple[Path, str]:
    """The installed geoclip package's model folder and version, without importing it (it imports transformers)."""
    spec = importlib.util.find_spec("geoclip")
    if spec is None or not spec.submodule_search_locations:
        raise GtlocError("the geoclip package is not installed: pip install 'geoclip==1.3.0' (or "
                         "pip install -e '.[geoclip]'), or pass --geoclip-dir pointing at its geoclip/model folder")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    try:
        version = importlib.metadata.version("geoclip")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return model_dir, version


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_tensors(path: Path) -> dict[str, torch.Tensor] | torch.Tensor:
    if not path.is_file():
        raise GtlocError(f"GeoCLIP weights file {path} not found; reinstall geoclip or point --geoclip-dir at "
                         "the folder holding weights/ and gps_gallery/")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise GtlocError(f"GeoCLIP weights file {path} cannot be read as plain tensors ({type(exc).__name__}); "
                         "it may be corrupt: reinstall geoclip") from None


def read_gallery_csv(path: Path) -> np.ndarray:
    """(G, 2) lat/lon degrees from GeoCLIP's gallery CSV (header LAT,LON), checked for range and finiteness."""
    if not path.is_file():
        raise GtlocError(f"GeoCLIP gallery {path} not found; reinstall geoclip")
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if [h.strip().upper() for h in header[:2]] != ["LAT", "LON"]:
        raise GtlocError(f"GeoCLIP gallery {path} has header {header}, expected LAT,LON first")
    try:
        latlon = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise GtlocError(f"GeoCLIP gallery {path} has a row that is not two numbers ({exc})") from None
    bad = ~np.isfinite(latlon).all(axis=1) | (np.abs(latlon[:, 0]) > 90) | (np.abs(latlon[:, 1]) > 180)
    if len(latlon) == 0 or bad.any():
        raise GtlocError(f"GeoCLIP gallery {path}: {int(bad.sum())} of {len(latlon)} rows are not valid lat/lon "
                         "degrees (or the file is empty)")
    return latlon


def read_geoclip_release(package_dir: str | Path | None = None) -> GeoclipRelease:
    """Read the release from `package_dir` (geoclip/model), or from the installed package when None."""
    if package_dir is None:
        model_dir, version = find_geoclip_package()
    else:
        model_dir, version = Path(package_dir), "unknown"
        if not (model_dir / "weights").is_dir() and (model_dir / "model" / "weights").is_dir():
            model_dir = model_dir / "model"  # the package root was given instead of geoclip/model
    location = _load_tensors(model_dir / LOCATION_WEIGHTS)
    adapter = _load_tensors(model_dir / ADAPTER_WEIGHTS)
    scale = _load_tensors(model_dir / LOGIT_SCALE_WEIGHTS)
    if not isinstance(location, dict) or not isinstance(adapter, dict) or not isinstance(scale, torch.Tensor):
        raise GtlocError(f"GeoCLIP weights in {model_dir / 'weights'} do not have the released layout "
                         "(two state dicts and a scalar); this geoclip version is not supported")
    files = (LOCATION_WEIGHTS, ADAPTER_WEIGHTS, LOGIT_SCALE_WEIGHTS, GALLERY_CSV)
    return GeoclipRelease(
        package_dir=model_dir, version=version, location_state=location, adapter_state=adapter,
        logit_scale=scale.detach().float().reshape(()), gallery_latlon_deg=read_gallery_csv(model_dir / GALLERY_CSV),
        file_sha256={name: _sha256(model_dir / name) for name in files},
    )


def _location_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        m = _LOC_KEY.match(key)
        if m is None:
            raise GtlocError(f"GeoCLIP location encoder has an unexpected tensor {key!r}; this geoclip version "
                             "is not supported")
        branch, part, index, leaf = m.groups()
        out[f"rff.branches.{branch}.{part}.{index}.{leaf}"] = value
    return out


def _load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    wrong = [k for k in expected.keys() & tensors.keys() if tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise GtlocError(f"GeoCLIP {what} does not fit gtloc's GeoCLIP-sized encoder: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]}")
    module.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)


def sigma_estimates(release: GeoclipRelease) -> list[float]:
    """Per branch, the standard deviation of its Fourier matrix B: the sigma it was drawn with (about 1, 16, 256)."""
    n = len({m.group(1) for k in release.location_state if (m := _LOC_KEY.match(k))})
    return [float(release.location_state[f"LocEnc{i}.capsule.0.b"].float().std()) for i in range(n)]


def geoclip_to_gtloc(release: GeoclipRelease, *, load_backbone_weights: bool = False) -> GTLoc:
    """A GTLoc with GeoCLIP's location encoder, adapter, logit scale and gallery; time head untrained.

    `load_backbone_weights=False` (the default) builds the ViT-L/14 with random weights: the checkpoint only
    references ('ViT-L-14', 'openai'), so nothing is fetched for an import.
    """
    cfg = preset("gtloc-vitl14")
    n = len({m.group(1) for k in release.location_state if (m := _LOC_KEY.match(k))})
    check_rff_sigmas([release.location_state[f"LocEnc{i}.capsule.0.b"] for i in range(n)], GEOCLIP_SIGMAS,
                     "GeoCLIP location encoder")
    cfg.location.sigmas = list(GEOCLIP_SIGMAS)
    cfg.feature_norm = "none"  # GeoCLIP's MLP takes CLIP features as they are
    model = GTLoc(cfg, load_backbone_weights=load_backbone_weights)
    _load_into(model.location_encoder, _location_tensors(release.location_state), "location encoder")
    _load_into(model.adapter.mlp, release.adapter_state, "image adapter")
    with torch.no_grad():
        model.logit_scales["img_gps"].copy_(release.logit_scale)
    model.heads_trained = {**model.heads_trained, "location": True}
    model.gallery_latlon_deg = release.gallery_latlon_deg
    return model.eval()


def import_geoclip(out: str | Path, *, package_dir: str | Path | None = None) -> Path:
    """Write GeoCLIP's release as a gtloc checkpoint at `out` (atomically); returns the path."""
    release = read_geoclip_release(package_dir)
    model = geoclip_to_gtloc(release)
    info = {
        "source": "geoclip",
        "source_url": "https://github.com/VicenteVivan/geo-clip (PyPI geoclip)",
        "geoclip_version": release.version,
        "source_files_sha256": release.file_sha256,
        "rff_sigma_estimates": [round(e, 3) for e in sigma_estimates(release)],
        "gallery": f"GeoCLIP {GALLERY_CSV} ({len(release.gallery_latlon_deg)} MP-16 places)",
        "time_head": "untrained: GeoCLIP has no time encoder; predictions report 'time head not trained'",
        "backbone": "frozen open_clip ViT-L-14 'openai' (= GeoCLIP's openai/clip-vit-large-patch14), referenced, "
                    "not stored: fetched once with internet",
    }
    return save_checkpoint(out, model, info=info)
