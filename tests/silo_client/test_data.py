"""Local data validation: one test per bad-input kind, Parquet, fingerprint, speed."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silo_client.data import (
    Column,
    DataSchema,
    LocalDataset,
    fingerprints_agree,
    infer_schema,
    load_dataset,
    schema_fingerprint,
)
from xsilo.errors import ConfigError, DataValidationError

SCHEMA = DataSchema(
    features=(Column("age", "int"), Column("bmi", "float"),
              Column("site", "category", ("north", "south")), Column("smoker", "bool")),
    label="label",
    label_values=(0, 1),
)
HEADER = ["age", "bmi", "site", "smoker", "label"]
GOOD = [["50", "21.5", "north", "true", "1"], ["61", "30.25", "south", "no", "0"],
        ["44", "25.0", "south", "1", "1.0"]]


def write_csv(path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_good_csv_is_encoded(tmp_path: Path) -> None:
    ds = load_dataset(write_csv(tmp_path / "d.csv", GOOD), SCHEMA)
    assert isinstance(ds, LocalDataset) and ds.X.dtype == np.float32 and ds.X.shape == (3, 5)
    np.testing.assert_array_equal(ds.X[0], [50, 21.5, 1, 0, 1])
    np.testing.assert_array_equal(ds.X[1], [61, 30.25, 0, 1, 0])
    assert ds.y.tolist() == [1, 0, 1] and ds.y.dtype == np.int64
    assert SCHEMA.feature_names == ("age", "bmi", "site=north", "site=south", "smoker")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"nope\.csv: data file not found"):
        load_dataset(tmp_path / "nope.csv", SCHEMA)


@pytest.mark.parametrize("content", ["", "age,bmi,site,smoker,label\n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "e.csv").write_text(content)
    with pytest.raises(DataValidationError, match=r"e\.csv: the file (is empty|has a header but no data)"):
        load_dataset(tmp_path / "e.csv", SCHEMA)


def test_missing_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", [r[:1] + r[2:] for r in GOOD], [h for h in HEADER if h != "bmi"])
    with pytest.raises(DataValidationError, match=r"d\.csv: column 'bmi': column is missing"):
        load_dataset(path, SCHEMA)


@pytest.mark.parametrize(("col", "value", "what"), [
    (1, "heavy", "is not a number"), (0, "50.5", "is not an integer"),
    (2, "east", "category 'east' is not one of"), (3, "maybe", "is not one of"),
    (1, "inf", "is not finite"),
])
def test_wrong_dtype_names_row(tmp_path: Path, col: int, value: str, what: str) -> None:
    rows = [list(r) for r in GOOD]
    rows[2][col] = value
    path = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(DataValidationError) as err:
        load_dataset(path, SCHEMA)
    msg = str(err.value)
    assert f"column {HEADER[col]!r}" in msg and "row 3 (line 4)" in msg and what in msg
    assert "d.csv" in msg


def test_ragged_row(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", GOOD[:1] + [GOOD[1][:3]])
    with pytest.raises(DataValidationError, match="row 2 .* has 3 fields, header has 5"):
        load_dataset(path, SCHEMA)


def test_not_a_text_csv(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_bytes(b"age,bmi\n\xff\xfe\x00,1\n")
    with pytest.raises(DataValidationError, match=r"b\.csv: not a readable UTF-8 CSV"):
        load_dataset(tmp_path / "b.csv", SCHEMA)


def test_unknown_label(tmp_path: Path) -> None:
    rows = [list(r) for r in GOOD]
    rows[1][4] = "2"
    with pytest.raises(DataValidationError, match=r"column 'label', row 2 .*label '2' is not one of"):
        load_dataset(write_csv(tmp_path / "d.csv", rows), SCHEMA)


def _with_gap(tmp_path: Path, col: int, token: str = "") -> Path:
    rows = [list(r) for r in GOOD]
    rows[1][col] = token
    return write_csv(tmp_path / "d.csv", rows)


@pytest.mark.parametrize("token", ["", "NA", "nan"])
def test_missing_values_error_policy(tmp_path: Path, token: str) -> None:
    with pytest.raises(DataValidationError, match=r"column 'bmi', row 2 .*missing value .*drop"):
        load_dataset(_with_gap(tmp_path, 1, token), SCHEMA)


def test_missing_values_drop_policy(tmp_path: Path) -> None:
    schema = DataSchema(SCHEMA.features, "label", (0, 1), missing="drop")
    ds = load_dataset(_with_gap(tmp_path, 2), schema)
    assert len(ds) == 2 and ds.y.tolist() == [1, 1]


def test_missing_values_mean_policy(tmp_path: Path) -> None:
    schema = DataSchema(SCHEMA.features, "label", (0, 1), missing="mean")
    ds = load_dataset(_with_gap(tmp_path, 1), schema)
    assert ds.X[1, 1] == pytest.approx((21.5 + 25.0) / 2)
    ds = load_dataset(_with_gap(tmp_path, 2), schema)  # one-hot imputed by level frequency
    np.testing.assert_allclose(ds.X[1, 2:4], [0.5, 0.5])
    with pytest.raises(DataValidationError, match="missing label cannot be imputed"):
        load_dataset(_with_gap(tmp_path, 4), schema)


def test_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"age": [50, 61, 44], "bmi": [21.5, 30.25, 25.0],
                      "site": ["north", "south", "south"], "smoker": [True, False, True],
                      "label": [1, 0, 1]})
    pq.write_table(table, tmp_path / "d.parquet")
    from_parquet = load_dataset(tmp_path / "d.parquet", SCHEMA)
    from_csv = load_dataset(write_csv(tmp_path / "d.csv", GOOD), SCHEMA)
    np.testing.assert_array_equal(from_parquet.X, from_csv.X)
    np.testing.assert_array_equal(from_parquet.y, from_csv.y)
    pq.write_table(table.set_column(1, "bmi", pa.array([1.0, None, 2.0])), tmp_path / "n.parquet")
    with pytest.raises(DataValidationError, match=r"n\.parquet: column 'bmi', row 2"):
        load_dataset(tmp_path / "n.parquet", SCHEMA)


def test_parquet_without_pyarrow_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    code = ("import sys; sys.modules['pyarrow'] = None; from silo_client.data import *\n"
            "from xsilo.errors import DataValidationError\n"
            f"s = DataSchema((Column('a','float'),), 'label', (0, 1))\n"
            f"try: load_dataset({str(tmp_path / 'd.parquet')!r}, s)\n"
            "except DataValidationError as e: print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'xsilo[parquet]'" in out.stdout


def test_schema_from_mapping_round_trip_and_bad_keys() -> None:
    assert DataSchema.from_mapping(SCHEMA.to_mapping()) == SCHEMA
    table = {"label": "y", "label_values": ["a", "b"], "features": {"x1": "float", "x2": "int"}}
    schema = DataSchema.from_mapping(table)
    assert [c.name for c in schema.features] == ["x1", "x2"] and schema.missing == "error"
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lable'\]"):
        DataSchema.from_mapping({**table, "lable": "y"})
    with pytest.raises(ConfigError, match="dtype 'text'"):
        DataSchema.from_mapping({**table, "features": {"x": "text"}})
    with pytest.raises(ConfigError, match="label_values must list"):
        DataSchema.from_mapping({"label": "y", "features": {"x": "float"}})
    with pytest.raises(ConfigError, match="declare `values"):
        DataSchema.from_mapping({**table, "features": [{"name": "x", "dtype": "category"}]})


def test_infer_schema(tmp_path: Path) -> None:
    schema = infer_schema(write_csv(tmp_path / "d.csv", GOOD), label="label")
    assert schema.label_values == (0, 1)
    assert [(c.name, c.dtype) for c in schema.features] == [
        ("age", "float"), ("bmi", "float"), ("site", "category"), ("smoker", "category")]
    assert schema.features[2].values == ("north", "south")


def test_fingerprint_has_no_values_and_ignores_size() -> None:
    small, large = schema_fingerprint(SCHEMA, 150), schema_fingerprint(SCHEMA, 12_345)
    assert small["rows"] == "100-999" and large["rows"] == "10000-99999"
    assert small["digest"] == large["digest"] and len(small["digest"]) == 64
    assert set(small) == {"columns", "label", "label_values", "task", "rows", "digest"}
    other = DataSchema(SCHEMA.features[:3] + (Column("smoker", "float"),), "label", (0, 1))
    fps = {"hospital-a": small, "hospital-b": large, "hospital-c": schema_fingerprint(other, 40)}
    with pytest.raises(ConfigError, match=r"silo 'hospital-c' disagrees .* on columns.*smoker"):
        fingerprints_agree(fps)
    fingerprints_agree({"a": small, "b": large})


def test_100k_rows_validate_quickly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "big.csv"
    values = rng.normal(size=(100_000, 30)).round(5)
    labels = rng.integers(0, 2, size=100_000)
    header = ",".join([f"f{i}" for i in range(30)] + ["label"])
    body = np.column_stack([values, labels]).astype(object)
    np.savetxt(path, body, delimiter=",", header=header, comments="", fmt="%s")
    schema = DataSchema(tuple(Column(f"f{i}", "float") for i in range(30)), "label", (0, 1))
    start = time.perf_counter()
    ds = load_dataset(path, schema)
    assert time.perf_counter() - start < 10.0
    assert ds.X.shape == (100_000, 30)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=3, max_size=3),
                min_size=1, max_size=20),
       st.lists(st.sampled_from(["0", "1"]), min_size=20, max_size=20))
def test_csv_values_round_trip(tmp_path_factory, rows: list[list[float]], labels: list[str]) -> None:
    path = tmp_path_factory.mktemp("h") / "h.csv"
    schema = DataSchema(tuple(Column(f"x{i}", "float") for i in range(3)), "label", (0, 1))
    write_csv(path, [[repr(v) for v in r] + [labels[i]] for i, r in enumerate(rows)], ["x0", "x1", "x2", "label"])
    ds = load_dataset(path, schema)
    np.testing.assert_array_equal(ds.X, np.array(rows, dtype=np.float32))
    assert ds.y.tolist() == [int(v) for v in labels[: len(rows)]]


def test_public_api_is_pinned() -> None:
    import silo_client.data as data

    assert sorted(data.__all__) == ["Column", "DataSchema", "LocalDataset", "fingerprints_agree",
                                    "infer_schema", "load_dataset", "schema_fingerprint"]
