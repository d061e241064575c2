"""The plugin side of the worker protocol: qgis_plugin.engine_client against the real engine worker."""

from __future__ import annotations

import os
import signal
import sqlite3

import pytest
from conftest import ENGINE_PYTHON

from qgis_plugin.drop import PHOTO_SUFFIXES
from qgis_plugin.engine_client import (
    PREDICT_STAGES,
    PROTOCOL_VERSION,
    STAGE_CONSTANTS,
    STAGE_LOADING_MODEL,
    STAGE_PHOTOS,
    STAGE_STARTING,
    EngineClient,
    EngineError,
    clean_environment,
    engine_command,
    find_engine,
)


def test_handshake_matches_the_clients_protocol_and_info_answers(client):
    hello = client.start()
    assert hello["protocol"] == PROTOCOL_VERSION and hello["pid"] == client.pid
    info = client.request("info")
    assert info["engine_version"] == hello["engine_version"]
    # The drop handler claims exactly the files the engine reads (so the formats a message lists are the same).
    assert sorted(PHOTO_SUFFIXES) == info["photo_suffixes"]


def test_engine_errors_are_raised_and_the_same_worker_answers_the_next_request(client, tmp_path):
    client.start()
    pid = client.pid
    with pytest.raises(EngineError) as err:
        client.request("teleport")
    assert err.value.code == "unknown_method"
    with pytest.raises(EngineError) as err:
        client.request("predict", {"model": str(tmp_path / "none.safetensors"), "photos": ["a.jpg"],
                                   "out_gpkg": str(tmp_path / "o.gpkg")})
    assert err.value.code == "bad_input" and "none.safetensors" in str(err.value)
    assert client.request("info")["protocol"] == PROTOCOL_VERSION
    assert client.pid == pid and client.starts == 1


@pytest.mark.slow
def test_a_worker_killed_mid_batch_is_reported_and_the_next_request_works(client, model_path, engine_files, tmp_path):
    photos = engine_files["toy_photos"][:40]
    killed = []

    def kill_on_first_progress(done, total):
        if not killed:
            killed.append(client.pid)
            os.kill(client.pid, signal.SIGKILL)

    with pytest.raises(EngineError) as err:
        client.request("predict", {"model": str(model_path), "photos": photos, "out_gpkg": str(tmp_path / "k.gpkg"),
                                   "batch_size": 1}, on_progress=kill_on_first_progress)
    assert err.value.code == "died" and "restarts" in str(err.value)
    assert killed and not client.running
    summary = client.request("predict", {"model": str(model_path), "photos": photos[:1],
                                         "out_gpkg": str(tmp_path / "k2.gpkg")})
    assert summary["n_done"] == 1 and client.starts == 2 and client.pid != killed[0]


def test_cancel_from_the_caller_stops_the_request(client, model_path, engine_files, tmp_path):
    progress = []
    summary = client.request("predict", {"model": str(model_path), "photos": engine_files["toy_photos"][:40],
                                         "out_gpkg": str(tmp_path / "c.gpkg"), "batch_size": 1},
                             on_progress=lambda done, total: progress.append(done), is_cancelled=lambda: bool(progress))
    assert summary["cancelled"] and summary["n_done"] < 40


def test_predict_reports_its_stages_from_the_engines_start_to_the_photos(client, model_path, engine_files, tmp_path):
    stages = []
    photos_progress = []
    client.predict(str(model_path), engine_files["toy_photos"][:2], str(tmp_path / "s.gpkg"),
                   cache_dir=str(tmp_path / "fresh"), on_progress=lambda done, total: photos_progress.append(done),
                   on_stage=lambda stage, done, total, eta_s: stages.append(stage))
    order = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert order == [STAGE_STARTING, *PREDICT_STAGES]  # a fresh constants cache: every stage runs
    assert photos_progress and photos_progress[-1] == 2  # on_progress hears the photos stage only
    stages.clear()
    client.predict(str(model_path), engine_files["toy_photos"][:1], str(tmp_path / "t.gpkg"),
                   cache_dir=str(tmp_path / "fresh"), on_stage=lambda stage, done, total, eta_s: stages.append(stage))
    assert stages[0] == STAGE_LOADING_MODEL and STAGE_STARTING not in stages and STAGE_CONSTANTS not in stages


def test_cancel_while_the_engine_starts_stops_the_half_started_worker(client, model_path, engine_files, tmp_path):
    with pytest.raises(EngineError) as err:
        client.predict(str(model_path), engine_files["toy_photos"][:1], str(tmp_path / "never.gpkg"),
                       is_cancelled=lambda: True)
    assert err.value.code == "cancelled" and "starting" in str(err.value)
    assert not client.running and not (tmp_path / "never.gpkg").exists()


def test_the_clients_stage_names_are_the_engines():
    import ast

    from conftest import REPO

    tree = ast.parse((REPO / "gtloc_engine" / "protocol.py").read_text(encoding="utf-8"))
    engine = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)):
            continue
        names = [t.id for t in node.targets[0].elts if isinstance(t, ast.Name)]
        if names and all(name.startswith("STAGE_") for name in names):
            engine.update({name: value.value for name, value in zip(names, node.value.elts)})
    assert engine == {"STAGE_LOADING_MODEL": STAGE_LOADING_MODEL, "STAGE_CONSTANTS": STAGE_CONSTANTS,
                      "STAGE_PHOTOS": STAGE_PHOTOS}
    assert PREDICT_STAGES == (STAGE_LOADING_MODEL, STAGE_CONSTANTS, STAGE_PHOTOS)


def _photo_rows(gpkg) -> list[tuple]:
    with sqlite3.connect(gpkg) as db:
        rows = db.execute("SELECT path, place_given, given_time_local, pred_lat_deg FROM photos").fetchall()
    db.close()
    return rows


def test_predict_given_a_known_time_writes_rows_that_say_so(client, model_path, engine_files, tmp_path):
    photo = engine_files["toy_photos"][3]
    progress = []
    summary = client.predict(str(model_path), [photo], str(tmp_path / "given.gpkg"), top_k=2,
                             time="2024:07:14 18:30:00", on_progress=lambda done, total: progress.append(done))
    assert summary["n_done"] == 1 and summary["n_failed"] == 0 and progress
    [(path, place_given, given_time, pred_lat_deg)] = _photo_rows(tmp_path / "given.gpkg")
    assert (path, place_given, given_time) == (photo, "image+time", "2024-07-14T18:30:00")  # EXIF form, read as ISO
    assert pred_lat_deg is not None
    # The same photo without a time: the place from the image alone, and the row says that too.
    client.predict(str(model_path), [photo], str(tmp_path / "image.gpkg"), top_k=2)
    [(path, place_given, given_time, _)] = _photo_rows(tmp_path / "image.gpkg")
    assert (path, place_given, given_time) == (photo, "image", None)


def test_a_bad_known_time_is_one_clear_engine_error_and_writes_nothing(client, model_path, engine_files, tmp_path):
    for bad, says in (("14/07/2024 18h30", "not a valid date and time"), ("2024-07-14", "no time of day")):
        out = tmp_path / "never.gpkg"
        with pytest.raises(EngineError) as err:
            client.predict(str(model_path), [engine_files["toy_photos"][0]], str(out), time=bad)
        message = str(err.value)
        assert err.value.code == "bad_input" and bad in message and says in message and "\n" not in message
        assert not out.exists()
    assert client.starts == 1  # the worker keeps serving after each refusal


def test_an_engine_that_ignores_the_known_time_is_not_trusted(tmp_path):
    """An engine from before `time` would answer with places from the image alone: the client refuses that."""
    script = tmp_path / "old_engine.py"
    script.write_text(
        "import json, sqlite3, sys\n"
        "print(json.dumps({'type': 'hello', 'protocol': 1, 'engine_version': '0.0.9', "
        "'methods': ['info', 'predict']}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    msg = json.loads(line)\n"
        "    if msg.get('method') != 'predict':\n"
        "        continue\n"
        "    db = sqlite3.connect(msg['params']['out_gpkg'])\n"
        "    db.execute('CREATE TABLE IF NOT EXISTS photos (path TEXT, place_given TEXT)')\n"
        "    db.commit()\n"
        "    db.close()\n"
        "    result = {'out_gpkg': msg['params']['out_gpkg'], 'n_done': 1, 'got_time': 'time' in msg['params']}\n"
        "    print(json.dumps({'id': msg['id'], 'type': 'result', 'result': result}), flush=True)\n")
    old = EngineClient([str(ENGINE_PYTHON), str(script)])
    try:
        assert old.predict("m.safetensors", ["a.jpg"], str(tmp_path / "a.gpkg"))["got_time"] is False
        with pytest.raises(EngineError) as err:
            old.predict("m.safetensors", ["a.jpg"], str(tmp_path / "b.gpkg"), time="2024-07-14T18:30:00")
        assert err.value.code == "protocol" and "0.0.9" in str(err.value) and "update the engine" in str(err.value)
    finally:
        old.stop(timeout_s=2)


def test_the_worker_starts_in_a_clean_environment_despite_a_poisoned_host(client, tmp_path, monkeypatch):
    # QGIS's own PYTHONPATH/PYTHONHOME would make the engine's Python import QGIS's packages (or fail to start).
    fake = tmp_path / "gtloc_engine"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the host PYTHONPATH leaked into the engine')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONHOME", str(tmp_path))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    env = clean_environment()
    assert not {"PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH"} & set(env)
    assert client.start()["protocol"] == PROTOCOL_VERSION


def test_a_worker_that_sends_no_hello_times_out(tmp_path):
    silent = EngineClient(["/bin/sleep", "30"], start_timeout_s=0.5)
    with pytest.raises(EngineError) as err:
        silent.start()
    assert err.value.code == "timeout" and not silent.running


@pytest.fixture
def hung_worker(tmp_path):
    """A worker that says hello and then never answers (a hang cannot be provoked in the real one on demand)."""
    script = tmp_path / "hung_engine.py"
    script.write_text('import json, sys, time\nprint(json.dumps({"type": "hello", "protocol": 1}), flush=True)\n'
                      'time.sleep(60)\n')
    client = EngineClient([str(ENGINE_PYTHON), str(script)], cancel_grace_s=0.5)
    yield client
    client.stop(timeout_s=1)


def test_a_request_that_goes_quiet_times_out_kills_the_worker_and_the_next_one_restarts_it(hung_worker):
    with pytest.raises(EngineError) as err:
        hung_worker.request("info", idle_timeout_s=0.5)
    assert err.value.code == "timeout" and not hung_worker.running
    with pytest.raises(EngineError):
        hung_worker.request("info", idle_timeout_s=0.5)
    assert hung_worker.starts == 2


def test_a_worker_that_ignores_cancel_is_stopped_after_the_grace_period(hung_worker):
    with pytest.raises(EngineError) as err:
        hung_worker.request("predict", {}, is_cancelled=lambda: True, idle_timeout_s=60)
    assert err.value.code == "timeout" and not hung_worker.running


def test_a_worker_of_another_protocol_is_refused(tmp_path):
    script = tmp_path / "old_engine.py"
    script.write_text('import json, sys, time\nprint(json.dumps({"type": "hello", "protocol": 99}), flush=True)\n'
                      'time.sleep(30)\n')
    other = EngineClient([str(ENGINE_PYTHON), str(script)])
    with pytest.raises(EngineError) as err:
        other.start()
    assert err.value.code == "protocol" and "99" in str(err.value) and not other.running


def test_a_worker_that_exits_at_start_says_why(tmp_path):
    crashing = EngineClient([str(ENGINE_PYTHON), "-c", "import sys; sys.exit('engine broken: no torch')"])
    with pytest.raises(EngineError) as err:
        crashing.start()
    assert err.value.code == "died" and "no torch" in str(err.value)


@pytest.mark.parametrize("configured, expected", [
    (str(ENGINE_PYTHON), [str(ENGINE_PYTHON), "-m", "gtloc_engine.cli", "serve", "--stdio", "--device", "auto"]),
    (str(ENGINE_PYTHON.parent / "gtloc"), [str(ENGINE_PYTHON.parent / "gtloc"), "serve", "--stdio", "--device",
                                           "auto"]),
])
def test_engine_command_for_a_python_or_a_gtloc_executable(configured, expected):
    assert engine_command(find_engine(configured)) == expected
    assert engine_command(find_engine(configured), "cpu")[-2:] == ["--device", "cpu"]


def test_the_engine_is_found_on_path_when_not_configured(monkeypatch):
    monkeypatch.setenv("PATH", f"{ENGINE_PYTHON.parent}:/usr/bin:/bin")
    assert find_engine("") == str(ENGINE_PYTHON.parent / "gtloc")


def test_a_missing_engine_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineError) as err:
        find_engine("")
    assert err.value.code == "not_configured" and "settings" in str(err.value)
    with pytest.raises(EngineError) as err:
        find_engine(str(tmp_path / "no-python"))
    assert "no-python" in str(err.value)


def test_info_is_a_typed_method_that_reports_the_models_heads_and_the_engines_parameters(client, model_path):
    info = client.info(str(model_path))
    assert info["model"]["path"] == str(model_path) and len(info["model"]["sha256"]) == 64
    assert info["model"]["header"]["heads_trained"]["location"] is True
    assert {"within_layer", "claimed_after", "claimed_before", "pooling", "point_source"} <= set(
        info["params"]["search"])
    assert client.info()["engine_version"] == info["engine_version"] and "model" not in client.info()
    with pytest.raises(EngineError) as err:
        client.info(str(model_path.parent / "gone.safetensors"))
    assert err.value.code == "bad_input" and "checkpoint" in str(err.value) and "photo" not in str(err.value)


@pytest.fixture
def listing_engine(tmp_path):
    """An engine whose hello lists search's parameters as an engine from before within_layer would; it answers every
    request with the parameters it got."""
    script = tmp_path / "listing_engine.py"
    script.write_text(
        "import json, sys\n"
        "print(json.dumps({'type': 'hello', 'protocol': 1, 'engine_version': '0.0.8', 'methods': ['search'], "
        "'params': {'search': ['gpkg', 'model', 'near', 'top_k']}}), flush=True)\n"
        "for line in sys.stdin:\n"
        "    msg = json.loads(line)\n"
        "    print(json.dumps({'id': msg['id'], 'type': 'result', 'result': msg.get('params')}), flush=True)\n")
    engine = EngineClient([str(ENGINE_PYTHON), str(script)])
    yield engine
    engine.stop(timeout_s=2)


def test_a_parameter_the_engine_does_not_take_is_refused_before_it_is_sent(listing_engine):
    sent = listing_engine.search("r.gpkg", "m.safetensors", near_latlon_deg=(48.85, 2.35), top_k=3)
    assert sent == {"gpkg": "r.gpkg", "model": "m.safetensors", "near": [48.85, 2.35], "top_k": 3}
    with pytest.raises(EngineError) as err:
        listing_engine.search("r.gpkg", "m.safetensors", near_latlon_deg=(48.85, 2.35), within="a.gpkg",
                              within_layer="areas")
    assert err.value.code == "protocol" and "within, within_layer" in str(err.value) and "0.0.8" in str(err.value)
    with pytest.raises(EngineError) as err:
        listing_engine.info()
    assert err.value.code == "unknown_method"
