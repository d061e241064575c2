"""One parameter table for the engine's methods (gtloc_engine/protocol.py PARAMS), held to its copies: every option of
`gtloc predict`, `gtloc search` and `gtloc info` (read from cli.build_parser()) carries a parameter of the table, the
tables of docs/protocol.md list exactly the table's names, and the QGIS plugin's client (read with ast: the plugin
cannot be imported without QGIS) sends only names the table knows, through its typed methods only."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from gtloc_engine import cli
from gtloc_engine.errors import GtlocError
from gtloc_engine.protocol import (
    PARAMS, InfoParams, ParamError, PredictParams, SearchParams, ShadowParams, read_params,
)

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_DOC = REPO / "docs" / "protocol.md"
CLIENT = REPO / "qgis_plugin" / "engine_client.py"
METHODS = ("info", "predict", "search", "shadow")
# What each method's CLI needs so that one more option can be parsed alone.
BASE_ARGV = {"info": ["info", "m.safetensors"], "predict": ["predict", "a.jpg", "--model", "m.safetensors"],
             "search": ["search", "r.gpkg", "--model", "m.safetensors"],
             "shadow": ["shadow", "--out", "locus", "--measurement", "elev_deg=30,time=2024-06-21T12:00Z"]}
# Option values argparse's types cannot make up (sample_argv): one more shadow measurement as KEY=VALUE pairs.
SAMPLE_VALUES = {"--measurement": "elev_deg=40,time=2024-06-21T12:00Z"}

# Options of the CLI that are no protocol parameter, and why.
DEVICE_IS_PER_PROCESS = ("where models compute is chosen once per process: the worker's is `serve --stdio --device`, "
                         "which the plugin's settings set (gtloc_engine/device.py)")
CLI_ONLY = {
    "predict": {
        "--quiet": "the CLI's progress bar; the worker sends progress lines instead",
        "--threads": "torch's CPU threads are per process; the worker's come from its environment (OMP_NUM_THREADS)",
        "--precision": "bf16 rounds the loaded backbone's weights for good; the worker keeps one fp32 model per "
                       "checkpoint for predict and search alike",
        "--cluster": "a Dask cluster run is the CLI's (gtloc_engine/cluster.py); the plugin's worker predicts in "
                     "its own process",
        "--device": DEVICE_IS_PER_PROCESS,
    },
    "search": {"--device": DEVICE_IS_PER_PROCESS},
    "info": {},
    "shadow": {"--device": DEVICE_IS_PER_PROCESS},
}
# predict's --out is also CLI-only when it does not name a GeoPackage (the JSON file); as X.gpkg it is out_gpkg.
# Engine parameters the plugin's client does not send, and why.
CLIENT_OMITS: dict[str, set[str]] = {"info": set(), "predict": set(), "search": set(), "shadow": set()}


def subparser(method: str) -> argparse.ArgumentParser:
    actions = [a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return actions[0].choices[method]


def sample_argv(action: argparse.Action) -> list[str]:
    """The option with a value its type accepts (no values are parsed beyond argparse's types here)."""
    flag = action.option_strings[0]
    if flag in SAMPLE_VALUES:
        return [flag, SAMPLE_VALUES[flag]]
    if action.nargs == 0:
        return [flag]
    if action.type is not None and action.type.__name__ == "_latlon":
        return [f"{flag}=1.5,2.5"]
    if action.choices:
        return [flag, sorted(action.choices, key=lambda c: c == action.default)[0]]  # a value other than the default
    return [flag, {int: "3", float: "2.5"}.get(action.type, "x.gpkg" if flag == "--out" else "some-value")]


@pytest.mark.parametrize("method", METHODS)
def test_every_cli_option_carries_a_protocol_parameter_or_is_listed_as_cli_only(method):
    names = {row.name for row in PARAMS[method]}
    parser = subparser(method)
    base = cli.request_params(parser.parse_args(BASE_ARGV[method][1:]), method)
    assert set(base) <= names and {row.name for row in PARAMS[method] if row.required} <= set(base) | {"out_gpkg"}
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    assert actions, f"no arguments read from gtloc {method}"
    options = [a for a in actions if a.option_strings]
    for action in actions:
        if not action.option_strings or action.option_strings[0] in BASE_ARGV[method]:
            # given in every call: a positional or required option must carry the parameter of its own name
            assert action.dest in base, f"gtloc {method} {action.dest} reaches no parameter of protocol.PARAMS"
            continue
        flag = action.option_strings[0]
        params = cli.request_params(parser.parse_args(BASE_ARGV[method][1:] + sample_argv(action)), method)
        changed = {name for name in set(params) | set(base) if params.get(name) != base.get(name)}
        if flag in CLI_ONLY[method]:
            assert not changed, f"{flag} is listed as CLI-only but sets {changed}"
        else:
            assert changed and changed <= names, (
                f"gtloc {method} {flag} sets {changed or 'no parameter'}: map it to a parameter of protocol.PARAMS "
                f"(its dest is the parameter's name) or list it in CLI_ONLY with the reason")
    unknown = set(CLI_ONLY[method]) - {a.option_strings[0] for a in options}
    assert not unknown, f"CLI_ONLY lists options gtloc {method} does not have: {unknown}"


@pytest.mark.parametrize("method", ["predict", "search"])
def test_the_cli_passes_no_default_of_its_own(method):
    """Defaults live in the table: an option left out is a parameter left out, so the worker's default applies."""
    args = subparser(method).parse_args(BASE_ARGV[method][1:])
    assert set(cli.request_params(args, method)) == {name for name in ("gpkg", "model", "photos")
                                                      if name in {row.name for row in PARAMS[method]}}


def doc_table_names(method: str) -> set[str]:
    """The names in the parameter table under '### `method`' in docs/protocol.md."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = text.split(f"### `{method}`", 1)[1].split("\n### ", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))


@pytest.mark.parametrize("method", METHODS)
def test_the_protocol_doc_lists_exactly_the_engines_parameters(method):
    assert doc_table_names(method) == {row.name for row in PARAMS[method]}


def test_the_cli_makes_shadow_measurements_of_the_tables_fields():
    """The flat options are one measurement, each --measurement one more, named and typed as MEASUREMENT_PARAMS."""
    from gtloc_engine.protocol import MEASUREMENT_PARAMS

    flat = [a for a in subparser("shadow")._actions if a.dest in {row.name for row in MEASUREMENT_PARAMS}]
    assert {a.dest for a in flat} == {row.name for row in MEASUREMENT_PARAMS}
    args = subparser("shadow").parse_args(["--height-m", "10", "--length-m", "4.5", "--time", "2024-06-21T14:05",
                                           "--measurement", "elev_deg=30, elev_sigma_deg=0.5,time=2024-06-21T17:00Z",
                                           "--out", "d"])
    assert cli.request_params(args, "shadow") == {"out_dir": "d", "measurements": [
        {"height_m": 10.0, "length_m": 4.5, "time": "2024-06-21T14:05"},
        {"elev_deg": 30.0, "elev_sigma_deg": 0.5, "time": "2024-06-21T17:00Z"}]}


@pytest.mark.parametrize("text, words", [("elev_deg=30,when=noon", "'when=noon'"), ("elev_deg=thirty", "thirty"),
                                         ("elev_deg", "'elev_deg'")])
def test_a_bad_measurement_option_is_one_line_naming_it(text, words):
    args = subparser("shadow").parse_args(["--measurement", text, "--out", "d"])
    with pytest.raises(GtlocError) as info:
        cli.request_params(args, "shadow")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_protocol_doc_lists_exactly_the_measurement_fields():
    from gtloc_engine.protocol import MEASUREMENT_PARAMS

    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    section = text.split("### Shadow measurements", 1)[1].split("\n### ", 1)[0]
    assert set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE)) == {row.name for row in MEASUREMENT_PARAMS}


def test_the_doc_table_reader_sees_tables():
    assert {"gpkg", "within_layer", "claimed_after"} <= doc_table_names("search")


def client_methods() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(CLIENT.read_text(encoding="utf-8"))
    [client] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "EngineClient"]
    return {f.name: f for f in client.body if isinstance(f, ast.FunctionDef)}


def sent_names(function: ast.FunctionDef) -> tuple[set[str], list[str]]:
    """The keyword names of the _params(...) calls in a typed method, and the method names it calls _call with."""
    names, called = set(), []
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_params":
            assert all(k.arg for k in node.keywords), f"{function.name}: _params(**...) hides the names it sends"
            names |= {k.arg for k in node.keywords}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("_call",
                                                                                                      "request"):
            called.append(node.args[0].value if isinstance(node.args[0], ast.Constant) else None)
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            raise AssertionError(f"{function.name} sets params[...] directly: send names through _params(...)")
    return names, called


@pytest.mark.parametrize("method", METHODS)
def test_the_plugin_clients_typed_method_sends_the_engines_names(method):
    function = client_methods()[method]
    names, called = sent_names(function)
    engine = {row.name for row in PARAMS[method]}
    assert called == [method], f"EngineClient.{method} calls {called}"
    assert names <= engine, f"EngineClient.{method} sends names the engine does not know: {names - engine}"
    missing = engine - CLIENT_OMITS[method] - names
    assert not missing, f"EngineClient.{method} lacks {missing}"


def test_the_plugin_talks_to_the_engine_only_through_the_typed_methods():
    """No raw request(method, params) outside engine_client.py: every parameter goes through a typed method."""
    raw = []
    for path in sorted((REPO / "qgis_plugin").rglob("*.py")):
        if path == CLIENT:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "request":
                raw.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not raw, f"raw engine requests: {raw}"


def test_the_plugins_pooling_and_point_source_values_are_the_engines():
    from gtloc_engine.inference.search import POINT_SOURCES, POOLINGS

    tree = ast.parse((REPO / "qgis_plugin" / "processing" / "algorithms.py").read_text(encoding="utf-8"))
    copies = {target.id: [pair.elts[0].value for pair in node.value.elts] for node in tree.body
              if isinstance(node, ast.Assign) for target in node.targets
              if isinstance(target, ast.Name) and target.id in ("POOLINGS", "POINT_SOURCES")}
    assert copies == {"POOLINGS": list(POOLINGS), "POINT_SOURCES": list(POINT_SOURCES)}


# ------------------------------------------------------------------------------------------- the parser itself


@pytest.mark.parametrize("method, params, words", [
    ("search", {"gpkg": "r.gpkg", "model": "m", "neer": [1, 2]}, "no parameter 'neer'"),
    ("search", {"gpkg": "r.gpkg"}, "needs 'model'"),
    ("search", {"gpkg": "r.gpkg", "model": "m", "near": [48.8]}, "'near'"),
    ("search", {"gpkg": "r.gpkg", "model": "m", "near": [48.8, True]}, "'near'"),
    ("search", {"gpkg": "r.gpkg", "model": "m", "radius_km": "5"}, "'radius_km'"),
    ("search", {"gpkg": "r.gpkg", "model": "m", "top_k": 0}, "'top_k'"),
    ("search", {"gpkg": "r.gpkg", "model": "m", "top_k": 2.0}, "'top_k'"),
    ("search", {"gpkg": "r.gpkg", "model": "m", "claimed_after": 20240101}, "'claimed_after'"),
    ("predict", {"model": "m", "photos": "one.jpg", "out_gpkg": "o.gpkg"}, "'photos'"),
    ("predict", {"model": "m", "photos": [], "out_gpkg": "o.gpkg"}, "'photos'"),
    ("predict", {"model": "m", "photos": ["a.jpg"]}, "needs 'out_gpkg'"),
    ("predict", {"model": "m", "photos": ["a.jpg"], "out_gpkg": "o.gpkg", "tencrop": "yes"}, "'tencrop'"),
    ("info", {"model": 3}, "'model'"),
    ("shadow", {"out_dir": "d"}, "needs 'measurements'"),
    ("shadow", {"out_dir": "d", "measurements": {"elev_deg": 30}}, "'measurements'"),
    ("shadow", {"out_dir": "d", "measurements": ["elev_deg=30"]}, "'measurements'"),
])
def test_a_parameter_of_the_wrong_type_or_name_is_one_line_naming_it(method, params, words):
    with pytest.raises(ParamError) as info:
        read_params(method, params)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_null_and_absent_parameters_take_the_tables_defaults():
    values = read_params("search", {"gpkg": "r.gpkg", "model": "m", "month": None, "like": ""})
    assert values["month"] is None and values["like"] is None and values["top_k"] == 10
    assert values["pooling"] == "max" and values["point_source"] == "point"


def test_the_request_classes_build_what_the_engine_runs():
    search = SearchParams.from_params({"gpkg": "r.gpkg", "model": "m.safetensors", "near": [48.85, 2.35],
                                       "month": "11-2", "claimed_before": "2024:07:01 00:00:00", "pooling": "mean",
                                       "point_source": "claim", "top_k": 3, "out": "hits.gpkg"})
    assert search.query.kind == "place+time" and search.query.near_latlon_deg == (48.85, 2.35)
    assert search.query.claimed_before.isoformat() == "2024-07-01T00:00:00" and search.query.top_k == 3
    assert (search.config.pooling, search.config.point_source) == ("mean", "claim") and search.out.name == "hits.gpkg"
    predict = PredictParams.from_params({"model": "m", "photos": ["a.jpg"], "out_gpkg": "o.gpkg", "res_deg": 1})
    assert predict.res_deg == 1.0 and predict.top_k == 5 and predict.batch_size == 16 and not predict.tencrop
    assert InfoParams.from_params({}).model is None


@pytest.mark.parametrize("item, words", [
    ({"elev_deg": 30}, "needs 'time'"),
    ({"elev_deg": "30", "time": "2024-06-21T12:00"}, "'elev_deg'"),
    ({"elev_deg": 30, "time": "2024-06-21T12:00", "azimuth": 3}, "no parameter 'azimuth'"),
    ({"elev_deg": 30, "time": 1718971200}, "'time'"),
])
def test_a_measurement_field_of_the_wrong_type_or_name_is_a_bad_request(item, words):
    with pytest.raises(ParamError) as info:
        ShadowParams.from_params({"out_dir": "d", "measurements": [item]})
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("items, words", [
    ([{"height_m": -2, "length_m": 3, "time": "2024-06-21T12:00"}], "height_m -2.0 must be positive"),
    ([{"height_m": 2, "time": "2024-06-21T12:00"}], "go together"),
    ([{"height_m": 2, "length_m": 3, "elev_deg": 30, "time": "2024-06-21T12:00"}], "not both"),
    ([{"elev_deg": 0, "time": "2024-06-21T12:00"}], "elev_deg 0.0 is out of range"),
    ([{"elev_deg": 91, "time": "2024-06-21T12:00"}], "elev_deg 91.0 is out of range"),
    ([{"elev_deg": 30, "time": "2024-06-21T25:00"}], "not a valid date and time"),
    ([{"elev_deg": 30, "time": "2024-06-21"}], "no time of day"),
    ([{"elev_deg": 30, "time": "2024-06-21T12:00", "bearing_sigma_deg": 3}], "goes with bearing_deg"),
    ([{"elev_deg": 30, "time": "2024-06-21T12:00", "time_sigma_min": -5}], "time_sigma_min -5.0 must not be"),
    ([{"elev_deg": 30, "time": "2024-06-21T12:00"}, {"elev_deg": 30, "time": "soon"}], "shadow measurement 2: "),
])
def test_a_bad_measurement_value_is_the_engines_one_line_refusal_naming_it(items, words):
    with pytest.raises(GtlocError) as info:
        ShadowParams.from_params({"out_dir": "d", "measurements": items})
    assert not isinstance(info.value, ParamError)  # the worker answers bad_input: the engine refused the value
    assert words in str(info.value) and "\n" not in str(info.value)


def test_shadow_params_pair_a_photo_with_its_model_and_keep_the_posterior_apart():
    base = {"out_dir": "d", "measurements": [{"elev_deg": 30, "time": "2024-06-21T12:00Z"}]}
    with pytest.raises(GtlocError, match="needs both photo and model"):
        ShadowParams.from_params({**base, "photo": "p.jpg"})
    with pytest.raises(GtlocError, match="not both"):
        ShadowParams.from_params({**base, "photo": "p.jpg", "model": "m", "posterior": "g.tif"})
    request = ShadowParams.from_params({**base, "posterior": "g.tif"})
    assert request.posterior.name == "g.tif" and request.res_deg == 0.25 and not request.res_deg_given
    assert request.measurements[0].instant_utc.isoformat() == "2024-06-21T12:00:00"


@pytest.mark.parametrize("params, words", [
    ({"gpkg": "r.gpkg", "model": "m", "near": [1, 2], "pooling": "median"}, "pooling 'median'"),
    ({"gpkg": "r.gpkg", "model": "m", "near": [1, 2], "point_source": "exif"}, "point_source 'exif'"),
    ({"gpkg": "r.gpkg", "model": "m", "near": [1, 2], "claimed_after": "2024-01-01"}, "no time of day"),
    ({"gpkg": "r.gpkg", "model": "m", "month": "13"}, "month '13'"),
    ({"gpkg": "r.gpkg", "model": "m"}, "exactly one query"),
])
def test_bad_values_are_the_engines_one_line_refusals(params, words):
    with pytest.raises(GtlocError) as info:
        SearchParams.from_params(params)
    assert not isinstance(info.value, ParamError)  # the worker answers bad_input: the engine refused the value
    assert words in str(info.value) and "\n" not in str(info.value)
