"""gtloc import-gtloc: the authors' released state_dict layout -> a gtloc checkpoint, checked against what the
authors' own code computed on the same seeded tensors (tests/fixtures/authors_parity/outputs.npz, made by
make_fixture.py there; tests/authors_layout.py builds the tensors)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from authors_layout import LOGIT_SCALE_NAMES, LOGIT_SCALE_VALUES, authors_state_dict
from gtloc_engine.errors import GtlocError
from gtloc_engine.model.checkpoint import load_checkpoint, read_header
from gtloc_engine.model.gtloc_import import authors_to_gtloc, import_authors_model, read_authors_state

FIXTURE = Path(__file__).parent / "fixtures" / "authors_parity" / "outputs.npz"


@pytest.fixture(scope="module")
def recorded():
    with np.load(FIXTURE, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def authors_pt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("authors") / "gtloc.pt"
    torch.save(authors_state_dict(seed=0), path)
    return path


@pytest.fixture(scope="module")
def imported(authors_pt, tmp_path_factory) -> Path:
    return import_authors_model(authors_pt, tmp_path_factory.mktemp("imported") / "gtloc.safetensors")


@pytest.fixture(scope="module")
def model(imported):
    return load_checkpoint(imported, load_backbone=False)


def _max_rel(a: torch.Tensor, b: np.ndarray) -> float:
    b = torch.as_tensor(b)
    return float((a - b).abs().max() / b.abs().max())


def test_encoder_inputs_are_bit_identical_to_the_authors(recorded):
    from gtloc_engine.geo import equal_earth
    from gtloc_engine.model.encoders import month_hour_from_fields, time_angles

    places = torch.as_tensor(recorded["places"], dtype=torch.float32)
    assert torch.equal(equal_earth(places), torch.as_tensor(recorded["equal_earth"]))
    times = torch.as_tensor(recorded["times"])
    assert torch.equal(time_angles(month_hour_from_fields(times)), torch.as_tensor(recorded["time_angles"]))


def test_location_time_and_adapter_outputs_match_the_authors_code(model, recorded):
    with torch.no_grad():
        loc = model.location_encoder(torch.as_tensor(recorded["places"], dtype=torch.float32))
        tim = model.time_encoder.forward_fields(torch.as_tensor(recorded["times"]))
        mlp = model.adapter(torch.as_tensor(recorded["features"]))
    assert _max_rel(loc, recorded["loc_out"]) < 1e-5
    assert _max_rel(tim, recorded["time_out"]) < 1e-5
    assert _max_rel(mlp, recorded["mlp_out"]) < 1e-5


def test_top1_place_and_time_match_the_authors_eval(model, recorded):
    from gtloc_engine.inference.predictor import Predictor

    predictor = Predictor(model, gallery_latlon_deg=recorded["gallery_places"],
                          time_gallery_fields=recorded["gallery_times"], cache=False)
    with torch.no_grad():
        emb = model.embed_features(torch.as_tensor(recorded["features"])).numpy()
    assert predictor.location_posterior(emb).argmax(axis=1).tolist() == recorded["top1_place"].tolist()
    f = recorded["gallery_times"][recorded["top1_time"]].astype(np.float64)
    expected = np.stack(((f[:, 0] - 1) + (f[:, 1] - 1) / (365 / 12), f[:, 2] + f[:, 3] / 60 + f[:, 4] / 3600), 1)
    assert np.allclose(predictor.gallery_top1_times(emb), expected)
    # Ten-crop: the 8 features as 2 photos x 4 crops; the mean of the crops' unit embeddings ranks as their mean
    # cosine does.
    crops = emb.reshape(2, 4, -1).mean(axis=1)
    assert predictor.location_posterior(crops).argmax(axis=1).tolist() == recorded["top1_place_crops"].tolist()


def test_the_six_heads_arrive_under_their_names(model):
    for name, value in zip(LOGIT_SCALE_NAMES, LOGIT_SCALE_VALUES):
        head = name.removesuffix("_logit_scale")
        assert float(model.logit_scales[head]) == pytest.approx(value)
        assert model.heads_trained[{"img_gps": "location", "img_time": "time"}.get(head, head)]
    assert float(model.logit_scale("it2g")) == pytest.approx(math.exp(4.0))


def test_fused_heads_left_at_their_initial_scale_count_as_untrained():
    state = authors_state_dict(seed=0)
    state["ig2t_logit_scale"] = torch.tensor(math.log(1 / 0.07))
    model = authors_to_gtloc(state)
    assert not model.heads_trained["ig2t"] and model.heads_trained["it2g"]
    assert float(model.logit_scale("ig2t")) == pytest.approx(math.exp(2.5))  # borrows img_time's


def test_a_file_trained_with_a_fixed_image_time_temperature_still_imports():
    state = authors_state_dict(seed=0)
    del state["img_time_logit_scale"]  # their GTLoc(temperature=T): not a parameter, so not in the state_dict
    model = authors_to_gtloc(state)
    assert float(model.logit_scales["img_time"]) == pytest.approx(math.log(1 / 0.07))


def test_header_records_source_sha256_and_licence(imported, authors_pt):
    import hashlib

    header = read_header(imported)
    info = header["info"]
    assert info["source_sha256"] == hashlib.sha256(authors_pt.read_bytes()).hexdigest()
    assert info["licence"] == "CC BY-NC 4.0" and "non-commercial" in info["licence_note"]
    assert sorted(info["dropped"]) == sorted(["gps_queue", "gps_queue_ptr", "time_queue", "time_queue_ptr"])
    assert header["model"]["backbone"] == {**header["model"]["backbone"], "name": "ViT-L-14", "pretrained": "openai"}
    assert not header["backbone_in_checkpoint"]


def test_cli_import_and_info_show_the_licence(authors_pt, tmp_path):
    out = tmp_path / "m.safetensors"
    done = subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "import-gtloc", str(authors_pt), "--out", str(out),
                           "--gallery", str(tmp_path / "g.csv")], capture_output=True, text=True)
    assert done.returncode == 2 and "place gallery" in done.stderr  # no such gallery file: one line, exit 2
    (tmp_path / "g.csv").write_text("LAT,LON\n48.85,2.35\n-33.9,151.2\n")
    done = subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "import-gtloc", str(authors_pt), "--out", str(out),
                           "--gallery", str(tmp_path / "g.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["licence"] == "CC BY-NC 4.0" and "CC BY-NC 4.0" in done.stderr
    info = subprocess.run([sys.executable, "-m", "gtloc_engine.cli", "info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0 and json.loads(info.stdout)["info"]["licence"] == "CC BY-NC 4.0"
    assert load_checkpoint(out, load_backbone=False).gallery_latlon_deg.shape == (2, 2)


# ---------------------------------------------------------------------------------------------- the backbone too


@pytest.fixture(scope="module")
def imported_with_backbone(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("with_backbone")
    torch.save(authors_state_dict(seed=0, backbone="tiny"), folder / "gtloc.pt")
    return import_authors_model(folder / "gtloc.pt", folder / "gtloc.safetensors")


def test_a_file_with_its_clip_backbone_predicts_offline_like_the_authors(imported_with_backbone, recorded):
    header = read_header(imported_with_backbone)
    assert header["backbone_in_checkpoint"] and header["model"]["backbone"]["pretrained"] is None
    model = load_checkpoint(imported_with_backbone)  # builds and loads the stored backbone: nothing to fetch
    pixels = torch.as_tensor(recorded["pixels"])
    with torch.no_grad():
        features = model.backbone(pixels)
        emb = model.embed_images(pixels)
    want = torch.as_tensor(recorded["backbone_features"])
    cos = torch.nn.functional.cosine_similarity(features, want, dim=1)
    assert float(1 - cos.min()) < 1e-4
    want_emb = torch.nn.functional.normalize(torch.as_tensor(recorded["image_embeddings"]), dim=1)
    assert float(1 - (emb * want_emb).sum(1).min()) < 1e-4
    from gtloc_engine.inference.predictor import Predictor

    predictor = Predictor(model, gallery_latlon_deg=recorded["gallery_places"], cache=False)
    assert predictor.location_posterior(emb.numpy()).argmax(1).tolist() == recorded["pixel_top1_place"].tolist()
    assert model.backbone.cfg.text_tower  # the tiny CLIP came with its text tower


# ---------------------------------------------------------------------------------------------- refused files


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(GtlocError, match="gdown"):
        read_authors_state(tmp_path / "gtloc.pt")


@pytest.mark.parametrize("make, message", [
    (lambda p, pt: p.write_bytes(b"\x00not a checkpoint" * 10), "cannot be read"),
    (lambda p, pt: p.write_bytes(pt.read_bytes()[: len(pt.read_bytes()) // 2]), "truncated"),
    (lambda p, pt: p.write_bytes(b""), "cannot be read"),
    (lambda p, pt: torch.save({"weights": [1, 2, 3]}, p), "not a state_dict"),
    (lambda p, pt: torch.save(torch.zeros(3), p), "not a state_dict"),
])
def test_corrupt_truncated_and_foreign_files_get_one_line(tmp_path, authors_pt, make, message):
    path = tmp_path / "gtloc.pt"
    make(path, authors_pt)
    with pytest.raises(GtlocError, match=message) as info:
        read_authors_state(path)
    assert "\n" not in str(info.value)


class _Payload:  # a pickled object: the safe loader must refuse it without running anything
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_a_pickle_with_code_is_refused(tmp_path, capsys):
    path = tmp_path / "gtloc.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(GtlocError, match="refused by the safe loader"):
        read_authors_state(path)
    assert "unpickled!" not in capsys.readouterr().out


def test_a_geoclip_state_dict_is_named_as_foreign():
    state = {"LocEnc0.capsule.0.b": torch.zeros(256, 2)}
    with pytest.raises(GtlocError, match="unexpected tensor LocEnc0.capsule.0.b"):
        authors_to_gtloc(state)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("time_encoder.TimeEnc2.head.0.weight"), "time_encoder.TimeEnc2.head.0.weight is missing"),
    (lambda s: s.pop("gt2i_logit_scale"), "gt2i_logit_scale is missing"),
    (lambda s: s.update({"image_encoder.mlp.4.weight": torch.zeros(3)}), "unexpected tensor image_encoder.mlp.4"),
    (lambda s: s.update({"time_encoder.TimeEnc0.capsule.3.weight": torch.zeros(3)}), "unexpected tensor"),
    (lambda s: s.update({"location_encoder.LocEnc1.capsule.3.weight": torch.zeros(1024, 512)}),
     r"LocEnc1.capsule.3.weight has shape \(1024, 512\), expected \(1024, 1024\)"),
    (lambda s: s["location_encoder.LocEnc0.capsule.0.b"].mul_(50.0), "Fourier scales"),
    (lambda s: s["image_encoder.mlp.0.bias"].fill_(float("nan")), "NaN"),
])
def test_missing_extra_or_wrong_tensors_are_named(edit, message):
    state = authors_state_dict(seed=0)
    edit(state)
    with pytest.raises(GtlocError, match=message) as info:
        authors_to_gtloc(state)
    assert "\n" not in str(info.value)
