"""Passage and figure columns are derived from the dataclasses (manualrag.schema): one declaration each."""

from __future__ import annotations

import sqlite3
from dataclasses import fields

import pytest

from manualrag.manifest import FigureRow
from manualrag.models import Figure, Passage
from manualrag.retriever.search import HIT_FIGURE_FIELDS, Hit
from manualrag.schema import FIGURES, PASSAGES, create_statements


def _figure() -> Figure:
    return Figure(
        digest="ab" * 32,
        kind="vector",
        pages=[3, 4],
        bbox=(1.0, 2.5, 30.0, 40.0),
        width=120,
        height=80,
        dpi=144.0,
        caption="Figure 2: wiring",
        labels=["L1", "N"],
        ocr_text="PE",
        boilerplate=True,
        quality="low-res",
        crop_path="crops/x.png",
    )


def test_every_stored_field_has_one_column_and_the_row_type_follows():
    assert [c.attr for c in PASSAGES.columns] == [f.name for f in fields(Passage)]
    figure_fields = [f.name for f in fields(Figure) if f.name != "png"]
    assert [c.attr for c in FIGURES.columns] == ["figure_id", "doc_path", *figure_fields]
    assert {f.name for f in fields(FigureRow)} == {c.attr for c in FIGURES.columns} | {"png"}


def test_rows_round_trip_through_sqlite():
    db = sqlite3.connect(":memory:")
    db.row_factory = sqlite3.Row
    for stmt in create_statements():
        db.execute(stmt)
    fig = _figure()
    db.execute(FIGURES.insert, FIGURES.values(fig, figure_id="d:f:ab", doc_path="a.pdf"))
    row = FigureRow(**FIGURES.decode(db.execute("SELECT * FROM figures").fetchone()))
    assert (row.id, row.doc_path, row.page) == ("d:f:ab", "a.pdf", 3)
    assert row.to_figure() == fig
    p = Passage("d:p1:0", "a.pdf", 1, (0.0, 1.0, 2.0, 3.0), "1 Intro", "text", suspect="white", ocr=True)
    db.execute(PASSAGES.insert, PASSAGES.values(p))
    assert Passage(**PASSAGES.decode(db.execute("SELECT * FROM passages").fetchone())) == p


def test_defaults_reach_the_sql_and_empty_values_take_them():
    cols = {c.name: c for c in FIGURES.columns}
    assert cols["quality"].sql == "TEXT NOT NULL DEFAULT 'ok'" and cols["quality"].encode("") == "ok"
    assert cols["labels"].sql == "TEXT NOT NULL DEFAULT '[]'"
    assert cols["crop_path"].sql == "TEXT" and cols["crop_path"].encode(None) is None
    assert cols["boilerplate"].sql == "INTEGER NOT NULL DEFAULT 0"
    with pytest.raises(KeyError):
        FIGURES.column("png")


def test_image_hits_carry_figure_fields_that_exist_on_both_sides():
    hit_fields = {f.name for f in fields(Hit)}
    figure_fields = {f.name for f in fields(Figure)}
    for hit_name, figure_name in HIT_FIGURE_FIELDS.items():
        assert hit_name in hit_fields, f"Hit lacks {hit_name}"
        assert figure_name in figure_fields, f"Figure lacks {figure_name}"
