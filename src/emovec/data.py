"""Read story corpora and neutral texts in the published JSONL format.

A corpus file holds one JSON object a line with `emotion` and either `stories` (a list of
strings) or `text` (one story); any other key (topic, person, prompt...) is kept as metadata.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from emovec.errors import EmovecError


@dataclass(frozen=True)
class Story:
    emotion: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def topic(self) -> str | None:
        topic = self.meta.get("topic")
        return str(topic) if topic is not None else None


def bundled_path(name: str) -> Path:
    """A file of the package data (src/emovec/data)."""
    return Path(str(files("emovec").joinpath("data", name)))


def _json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise EmovecError(f"{path}: file not found")
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise EmovecError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise EmovecError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_stories(path: str | Path) -> list[Story]:
    """Every story of a corpus file, in file order."""
    path = Path(path)
    stories: list[Story] = []
    for lineno, obj in _json_lines(path):
        emotion = obj.get("emotion")
        if not isinstance(emotion, str) or not emotion.strip():
            raise EmovecError(f"{path}:{lineno}: missing the 'emotion' key (a non-empty string)")
        if "stories" in obj:
            texts = obj["stories"]
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise EmovecError(f"{path}:{lineno}: 'stories' must be a list of strings")
        elif isinstance(obj.get("text"), str):
            texts = [obj["text"]]
        else:
            raise EmovecError(f"{path}:{lineno}: needs 'stories' (a list of strings) or 'text' (a string)")
        meta = {k: v for k, v in obj.items() if k not in ("emotion", "stories", "text")}
        meta["source_line"] = lineno
        stories += [Story(emotion.strip().lower(), t, meta) for t in texts if t.strip()]
    if not stories:
        raise EmovecError(f"{path}: holds no story")
    return stories


def read_neutral(path: str | Path) -> list[str]:
    """The neutral texts (one JSON object a line with `text`) used for denoising."""
    path = Path(path)
    texts = []
    for lineno, obj in _json_lines(path):
        if not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise EmovecError(f"{path}:{lineno}: a neutral text needs a non-empty 'text' string")
        texts.append(obj["text"])
    return texts


def load_corpus(cfg: Mapping[str, Any]) -> list[Story]:
    """The stories a `dataset` config node names, optionally cut to some emotions or a per-emotion cap."""
    path = cfg.get("path") or bundled_path("stories.jsonl")
    stories = read_stories(path)
    wanted: Sequence[str] | None = cfg.get("emotions")
    if wanted:
        wanted_set = {w.lower() for w in wanted}
        unknown = sorted(wanted_set - {s.emotion for s in stories})
        if unknown:
            raise EmovecError(f"dataset.emotions names emotions with no story in {path}: {', '.join(unknown)}")
        stories = [s for s in stories if s.emotion in wanted_set]
    cap = cfg.get("max_stories_per_emotion")
    if cap:
        seen: dict[str, int] = {}
        kept = []
        for s in stories:
            seen[s.emotion] = seen.get(s.emotion, 0) + 1
            if seen[s.emotion] <= int(cap):
                kept.append(s)
        stories = kept
    return stories


def load_neutral_texts(cfg: Mapping[str, Any]) -> list[str]:
    path = cfg.get("neutral_path") or bundled_path("neutral.jsonl")
    texts = read_neutral(path)
    cap = cfg.get("max_neutral")
    return texts[: int(cap)] if cap else texts


def emotions_in_order(stories: Sequence[Story], order: Sequence[str] | None = None) -> list[str]:
    """The corpus's emotions, in `order` (the norms' list) where given, else first appearance."""
    present = dict.fromkeys(s.emotion for s in stories)
    if order is None:
        return list(present)
    ranked = [e for e in order if e in present]
    return ranked + [e for e in present if e not in set(ranked)]
