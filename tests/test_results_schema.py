"""One schema contract for the results GeoPackage: the file the writer produces (read back with sqlite3 and
pyogrio), docs/geopackage.md's tables, the engine's schema module and the QGIS plugin's module all agree."""

from __future__ import annotations

import ast
import importlib.util
import re
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import shapely

from gtloc_engine.inference import claims
from gtloc_engine.inference.pipeline import PipelineConfig
from gtloc_engine.io import geopackage
from gtloc_engine.io import results_schema as schema
from gtloc_engine.io.geopackage import ResultsStore

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "geopackage.md"
PLUGIN_SCHEMA = REPO / "qgis_plugin" / "results_schema.py"
PLUGIN_SCHEMA_READERS = tuple(REPO / "qgis_plugin" / name for name in (
    "layers.py", "photo_form.py", "surface_view.py", "ui/time_dock.py"))


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """A file the store wrote, one row in every table."""
    out = tmp_path_factory.mktemp("schema") / "r.gpkg"
    with ResultsStore.open(out) as store:
        row = {"sha256": "a" * 64, "model_sha256": "m" * 64, "verdict": schema.NO_CLAIM,
               "geometry": shapely.Point(1, 2)}
        store.set_results("/p/a.jpg", row, [{"rank": 1, "geometry": shapely.Point(1, 2)}],
                          [{"level": 0.9, "geometry": shapely.box(0, 0, 1, 1)}])
        store.set_failure("/p/b.jpg", "bad")
        store.set_embedding("a" * 64, "m" * 64, np.zeros(4))
    return out


@pytest.fixture(scope="module")
def plugin_schema():
    """qgis_plugin/results_schema.py loaded by path, without importing qgis_plugin (whose __init__ needs QGIS)."""
    spec = importlib.util.spec_from_file_location("gtloc_plugin_results_schema", PLUGIN_SCHEMA)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not any(m == "qgis" or m.startswith("qgis.") for m in sys.modules)  # it imported no QGIS
    return module


def _docs_tables() -> dict[str, list[dict]]:
    """docs/geopackage.md: "### `name`" sections -> their table rows (field, type, unit, allowed values)."""
    tables: dict[str, list[dict]] = {}
    current = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        heading = re.fullmatch(r"### `(\w+)`", line.strip())
        if heading:
            current = tables.setdefault(heading.group(1), [])
        elif current is not None and line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            current.append({"name": cells[0].strip("`"), "type": cells[1], "unit": cells[2],
                            "allowed": tuple(re.findall(r"`([^`]+)`", cells[3]))})
        elif line.startswith("## "):
            current = None
    return tables


def _expected_columns(table: schema.Table) -> list[tuple[str, str, bool]]:
    """(name, SQL type, NOT NULL) of every column, in order: fid, geom for layers, then the fields."""
    columns = [("fid", "INTEGER", True)]
    if table.geometry_type:
        columns.append(("geom", table.geometry_type, False))
    return columns + [(f.name, f.sql_type, f.required) for f in table.fields]


# ------------------------------------------------------------------------------------------- the written file


def test_the_written_file_has_exactly_the_schemas_tables_and_columns(written):
    with sqlite3.connect(written) as db:
        contents = {name: (kind, srs) for name, kind, srs in
                    db.execute("SELECT table_name, data_type, srs_id FROM gpkg_contents").fetchall()}
        geometry_columns = {t: (c, g, s) for t, c, g, s in db.execute(
            "SELECT table_name, column_name, geometry_type_name, srs_id FROM gpkg_geometry_columns").fetchall()}
        columns = {t.name: [(name, sql_type, bool(notnull) or bool(pk))
                            for _, name, sql_type, notnull, _, pk in db.execute(f"PRAGMA table_info({t.name})")]
                   for t in schema.TABLES}
        indexes = {name: (table, unique) for _, name, table, unique in db.execute(
            "SELECT type, name, tbl_name, sql LIKE 'CREATE UNIQUE%' FROM sqlite_master WHERE type = 'index' "
            "AND sql IS NOT NULL")}
        info = dict(db.execute("SELECT key, value FROM gtloc_info").fetchall())
    db.close()
    assert contents == {t.name: (t.data_type, schema.SRS_ID if t.geometry_type else None) for t in schema.TABLES}
    assert geometry_columns == {t.name: ("geom", t.geometry_type, schema.SRS_ID) for t in schema.LAYERS}
    for table in schema.TABLES:
        assert columns[table.name] == _expected_columns(table), table.name
    assert indexes == {name: (table, int(unique)) for name, table, _, unique in schema.INDEXES}
    assert set(info) == set(schema.INFO_KEYS) and info["format"] == schema.FORMAT
    assert info["format_version"] == str(schema.FORMAT_VERSION)


def test_gdal_reads_the_fields_with_the_schemas_kinds(written):
    ogr_kind = {"str": "object", "float": "float64", "int": "int64", "bool": "bool", "datetime": "datetime64[ms]"}
    for table in schema.LAYERS + (schema.FAILURES,):
        info = pyogrio.read_info(written, layer=table.name)
        assert list(info["fields"]) == list(table.field_names), table.name
        assert info["geometry_type"] == {"POINT": "Point", "MULTIPOLYGON": "MultiPolygon", None: None}[
            table.geometry_type]
        for name, dtype in zip(info["fields"], info["dtypes"]):
            assert dtype == ogr_kind[table.field(name).kind], (table.name, name, dtype)


def test_the_writer_refuses_values_outside_the_schemas_allowed_sets(tmp_path):
    with ResultsStore.open(tmp_path / "r.gpkg") as store:
        for table in (schema.PHOTOS,):
            for f in table.fields:
                if f.allowed:
                    for value in f.allowed:  # every allowed value is taken
                        store.set_results("/p/x.jpg", {f.name: value}, [], [])
                    with pytest.raises(ValueError, match=f.name):
                        store.set_results("/p/x.jpg", {f.name: f.allowed[0].upper() + "?"}, [], [])


# ------------------------------------------------------------------------------------------- the docs


def test_the_docs_describe_every_table_field_type_unit_and_allowed_value():
    docs = _docs_tables()
    assert set(docs) == {t.name for t in schema.TABLES}
    for table in schema.TABLES:
        rows = docs[table.name]
        expected = [(name, sql_type + (" NOT NULL" if required and name != "fid" else ""))
                    for name, sql_type, required in _expected_columns(table)]
        assert [(r["name"], r["type"]) for r in rows] == expected, table.name
        units = {r["name"]: r["unit"] for r in rows}
        allowed = {r["name"]: r["allowed"] for r in rows}
        for f in table.fields:
            assert units[f.name] == f.unit, (table.name, f.name)
            assert allowed[f.name] == f.allowed, (table.name, f.name)


def test_the_docs_state_the_current_format_version_and_every_unit():
    text = DOCS.read_text(encoding="utf-8")
    assert re.search(r"Current format version: \*\*(\d+)\*\*", text).group(1) == str(schema.FORMAT_VERSION)
    assert f"# The results GeoPackage (format version {schema.FORMAT_VERSION})" in text
    for unit in filter(None, schema.UNITS):
        assert f"`{unit}`" in text.split("## Layers and tables")[0], unit  # explained before the tables
    for name, *_ in schema.INDEXES:
        assert f"`{name}`" in text


# ------------------------------------------------------------------------------------------- engine and plugin


def test_the_claim_check_uses_the_schemas_verdict_strings():
    assert (claims.CONSISTENT, claims.DOUBTFUL, claims.INCONSISTENT, claims.INCONCLUSIVE,
            claims.NO_CLAIM) == schema.VERDICTS
    assert set(claims.SEVERITY) == set(schema.PART_VERDICTS)  # every part verdict has its place in the order
    assert (claims.TIME_GIVEN_PLACE, claims.TIME_GIVEN_IMAGE) == schema.TIME_GIVEN_VALUES
    thresholds = claims.VerdictThresholds()
    given = {thresholds.part_verdict(level, evidence, share)[0]
             for level, evidence, share in ((0.0, 10, 0.1), (0.95, 0.1, 0.1), (0.999, 0.1, 0.1), (0.0, 10, 0.9))}
    assert given == set(schema.PART_VERDICTS)
    assert geopackage.PHOTO_FIELDS is schema.PHOTO_FIELDS and geopackage.FORMAT_VERSION == schema.FORMAT_VERSION
    assert PipelineConfig().credible_levels == schema.DEFAULT_CREDIBLE_LEVELS


def test_the_plugins_schema_module_agrees_with_the_engines(plugin_schema):
    p = plugin_schema
    assert (p.FORMAT, p.FORMAT_VERSION) == (schema.FORMAT, schema.FORMAT_VERSION)
    assert p.VERDICTS == schema.VERDICTS
    assert (p.CONSISTENT, p.DOUBTFUL, p.INCONSISTENT, p.INCONCLUSIVE, p.NO_CLAIM) == schema.VERDICTS
    assert p.DEFAULT_CREDIBLE_LEVELS == schema.DEFAULT_CREDIBLE_LEVELS
    assert (p.PHOTOS_LAYER, p.CANDIDATES_LAYER, p.REGIONS_LAYER, p.FAILURES_TABLE) == (
        schema.PHOTOS.name, schema.CANDIDATES.name, schema.REGIONS.name, schema.FAILURES.name)
    for layer, names in p.FIELDS_READ.items():
        missing = set(names) - set(schema.table(layer).field_names)
        assert not missing, f"the plugin reads {layer} fields the engine does not write: {missing}"
    # every field constant of the plugin's module is one of FIELDS_READ, so none escapes the check above
    constants = {v for k, v in vars(p).items() if k.isupper() and isinstance(v, str)}
    names = {n for fields in p.FIELDS_READ.values() for n in fields}
    layer_names = {t.name for t in schema.TABLES}
    # and every other string constant is a value some field may take (e.g. time_given's 'claimed place')
    allowed = {v for t in schema.TABLES for f in t.fields for v in f.allowed}
    assert constants - names - layer_names - set(p.VERDICTS) - {p.FORMAT} - allowed == set()


@pytest.mark.parametrize("module", PLUGIN_SCHEMA_READERS, ids=lambda path: path.name)
def test_the_plugins_geopackage_readers_repeat_no_schema_string(module):
    """The plugin modules that read the GeoPackage take verdicts and field names from results_schema instead of
    string literals (the engine's protocol replies may use the same words; the modules that read them are not
    listed)."""
    tree = ast.parse(module.read_text(encoding="utf-8"))
    literals = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    schema_strings = set(schema.VERDICTS) | {f.name for t in schema.LAYERS for f in t.fields}
    assert literals & schema_strings == set()
    assert "import results_schema" in module.read_text(encoding="utf-8")
