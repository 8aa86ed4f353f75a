"""Write a story corpus (or neutral dialogues) with a chat model, resumably.

The work is split into units, one prompt each: (emotion, topic, repeat) for stories, (None, topic,
repeat) for neutral dialogues. A unit's rows are appended to the output in one write followed by
fsync, each row carrying its unit key and the unit's row count; a marker line then goes to a
sidecar file (`<output>.units`) so units whose stories were all filtered out also count as done.
On restart the output is read back, a unit cut short by an interruption is trimmed from the
tail, and only the units not yet done are generated.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from emovec.corpus_checks import find_emotion_word, ngram_overlap, word_count
from emovec.errors import EmovecError

log = logging.getLogger(__name__)

KINDS = ("stories", "neutral")
HEADERS = {"stories": "story", "neutral": "dialogue"}
TEMPLATES = {"stories": "story_prompt.txt", "neutral": "neutral_prompt.txt"}

UnitKey = tuple[str | None, str, int]


@dataclass(frozen=True)
class GenerationSettings:
    """The `generate` config node, checked."""

    output: Path
    kind: str = "stories"
    emotions: tuple[str, ...] | None = None
    topics_per_emotion: int = 3
    neutral_topics: int | None = None
    repeats: int = 1
    per_prompt: int = 3
    batch_size: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 1024
    min_words: int = 40
    max_overlap: float = 0.5
    seed: int = 42

    @classmethod
    def from_config(cls, node: Mapping[str, Any], seed: int, output: str | Path) -> GenerationSettings:
        known = set(cls.__dataclass_fields__) - {"output", "seed"}
        unknown = sorted(set(node) - known - {"output"})
        if unknown:
            raise EmovecError(f"unknown generate setting(s): {', '.join(unknown)}")
        values = {k: node[k] for k in known if k in node and node[k] is not None}
        if "emotions" in values:
            emotions = values["emotions"]
            values["emotions"] = (emotions,) if isinstance(emotions, str) else tuple(str(e) for e in emotions)
        settings = cls(output=Path(output), seed=int(seed), **values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.kind not in KINDS:
            raise EmovecError(f"generate.kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        for name in ("topics_per_emotion", "repeats", "per_prompt", "batch_size", "max_new_tokens"):
            if int(getattr(self, name)) < 1:
                raise EmovecError(f"generate.{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise EmovecError(f"generate.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EmovecError(f"generate.top_p must be in (0, 1], got {self.top_p}")
        if not 0 < self.max_overlap <= 1:
            raise EmovecError(f"generate.max_overlap must be in (0, 1], got {self.max_overlap}")
        if self.emotions is not None and not self.emotions:
            raise EmovecError("generate.emotions is empty: leave it null for all emotions")

    @property
    def sampling(self) -> dict[str, Any]:
        return {"do_sample": self.temperature > 0, "temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "per_prompt": self.per_prompt}


@dataclass(frozen=True)
class Unit:
    emotion: str | None
    topic: str
    repeat: int
    prompt: str

    @property
    def key(self) -> UnitKey:
        return (self.emotion, self.topic, self.repeat)


@dataclass
class GenerationReport:
    output: Path
    units_total: int = 0
    units_skipped: int = 0
    units_run: int = 0
    rows_written: int = 0
    rows_trimmed: int = 0
    dropped: Counter = field(default_factory=Counter)


# ---- inputs ----------------------------------------------------------------------------------

def _data_file(name: str) -> Path:
    return Path(str(files("emovec") / "data" / name))


def load_topics(path: str | Path | None = None) -> list[str]:
    """Everyday situations, one a line; blank lines and '#' comments are skipped."""
    file = Path(path) if path else _data_file("topics.txt")
    if not file.is_file():
        raise EmovecError(f"topics file not found: {file}")
    lines = [ln.strip() for ln in file.read_text(encoding="utf-8").splitlines()]
    topics = [ln for ln in lines if ln and not ln.startswith("#")]
    if not topics:
        raise EmovecError(f"{file}: no topics")
    return topics


def load_template(kind: str, path: str | Path | None = None) -> str:
    """The prompt template for `kind`; it must use {n} and {topic} (and {emotion} for stories)."""
    file = Path(path) if path else _data_file(TEMPLATES[kind])
    if not file.is_file():
        raise EmovecError(f"prompt template not found: {file}")
    text = file.read_text(encoding="utf-8").strip()
    needed = {"n", "topic"} | ({"emotion"} if kind == "stories" else set())
    present = set(re.findall(r"{(\w+)}", text))
    if not needed <= present or present - {"n", "topic", "emotion"}:
        raise EmovecError(f"{file}: the template must use exactly the fields "
                          f"{', '.join(sorted(needed))}; it uses {', '.join(sorted(present)) or 'none'}")
    return text


def sample_topics(emotion: str, topics: Sequence[str], k: int, seed: int) -> list[str]:
    """`k` distinct topics for `emotion`; seeded per emotion, so the list of emotions run doesn't matter."""
    if k > len(topics):
        raise EmovecError(f"generate.topics_per_emotion={k} but only {len(topics)} topics exist")
    return random.Random(f"{seed}:{emotion}").sample(list(topics), k)


def plan_units(settings: GenerationSettings, emotions: Sequence[str] | None, topics: Sequence[str],
               template: str) -> list[Unit]:
    """Every unit of the run, in a fixed order."""
    n = settings.per_prompt
    if settings.kind == "neutral":
        count = settings.neutral_topics or len(topics)
        chosen = random.Random(f"{settings.seed}:neutral").sample(list(topics), min(count, len(topics)))
        return [Unit(None, t, r, template.format(n=n, topic=t)) for t in chosen for r in range(settings.repeats)]
    return [Unit(e, t, r, template.format(n=n, topic=t, emotion=e))
            for e in emotions or ()
            for t in sample_topics(e, topics, settings.topics_per_emotion, settings.seed)
            for r in range(settings.repeats)]


# ---- parsing and filtering -------------------------------------------------------------------

def parse_numbered(text: str, header: str = "story") -> list[str]:
    """Split a reply on "[story k]" headers (any case, markdown emphasis tolerated).

    Small models often drop the brackets, so "Story k" opening a line counts as a header too.
    Text before the first header is a preamble and dropped; a reply without any header is taken
    as one piece, which the filters then judge like any other.
    """
    word = re.escape(header)
    pattern = re.compile(rf"[*#_>]*\[\s*{word}\s*\d+\s*\][ \t*_:.]*"
                         rf"|^[ \t*#_>]*{word}\s+\d+\b[ \t*_:.)-]*", re.IGNORECASE | re.MULTILINE)
    starts = list(pattern.finditer(text))
    if not starts:
        pieces = [text]
    else:
        ends = [m.start() for m in starts[1:]] + [len(text)]
        pieces = [text[m.end():end] for m, end in zip(starts, ends)]
    return [p for p in (_tidy(piece, header) for piece in pieces) if p]


def _tidy(piece: str, header: str) -> str:
    lines = [ln.strip() for ln in piece.strip().strip("*_#").splitlines()]
    lines = [ln for ln in lines if ln and not re.fullmatch(r"[-*_=#]{3,}", ln)]
    # A story is one paragraph; a dialogue keeps one turn a line.
    return "\n".join(lines) if header == "dialogue" else " ".join(" ".join(lines).split())


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def filter_texts(candidates: Iterable[str], earlier: list[str], emotion: str | None, min_words: int,
                 max_overlap: float) -> tuple[list[str], list[tuple[str, str]]]:
    """Keep the candidates that don't name `emotion`, are long enough and repeat no earlier text.

    `earlier` holds the texts already kept for the same emotion (or all neutral texts); kept
    candidates are appended to it, so the candidates are also checked against each other.
    Returns (kept, [(reason, text)] for the dropped).
    """
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    seen = {_normal(t) for t in earlier}
    for text in candidates:
        words = word_count(text)
        if emotion is not None and (form := find_emotion_word(emotion, text)):
            dropped.append((f"names the emotion ('{form}')", text))
        elif words < min_words:
            dropped.append((f"too short ({words} < {min_words} words)", text))
        elif _normal(text) in seen:
            dropped.append(("duplicate", text))
        elif any(ngram_overlap(text, e) >= max_overlap for e in earlier):
            dropped.append(("near-duplicate", text))
        else:
            kept.append(text)
            earlier.append(text)
            seen.add(_normal(text))
    return kept, dropped


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


# ---- the output file ---------------------------------------------------------------------------

def units_path(output: Path) -> Path:
    return output.with_name(output.name + ".units")


@dataclass
class Progress:
    """What an output file already holds."""

    done: set[UnitKey] = field(default_factory=set)
    texts: dict[str | None, list[str]] = field(default_factory=dict)
    rows: int = 0
    trimmed: int = 0


def _key(raw: Any, where: str) -> UnitKey:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[1], str) and isinstance(raw[2], int)):
        raise EmovecError(f"{where}: no valid unit key; is this file written by generate.py?")
    return (raw[0], raw[1], raw[2])


def _read_lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, bytes) of each line."""
    offset = 0
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            yield number, offset, line
            offset += len(line)


def read_progress(output: Path) -> Progress:
    """Read back a partly written output, trimming a unit an interruption cut short.

    Only the file's tail can be incomplete (each unit is one append), so a torn last line or a
    last unit with fewer rows than it declares is cut off; anything else malformed is an error.
    """
    progress = Progress()
    markers = units_path(output)
    if not output.exists() and markers.exists():
        # The output was deleted to start over: its markers describe rows that are gone.
        log.warning("%s is gone; discarding its stale unit markers %s", output, markers)
        markers.unlink()
    if output.exists():
        rows: list[tuple[int, UnitKey, int, str]] = []  # (offset, key, unit_rows, text)
        end = 0
        for number, offset, raw in _read_lines(output):
            if not raw.endswith(b"\n"):
                break  # a last line cut short mid-write, even if what is left parses
            end = offset + len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                key = _key(row.get("unit"), f"{output}, line {number}")
                rows.append((offset, key, int(row["unit_rows"]), str(row["text"])))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                raise EmovecError(f"{output}, line {number}: not a row written by generate.py") from None
        cut = _torn_tail(rows)
        cut = min(cut, end) if cut is not None else end
        size = output.stat().st_size
        if cut < size:
            progress.trimmed = sum(1 for r in rows if r[0] >= cut) + (1 if end < size else 0)
            log.warning("%s: trimming %d row(s) of a unit an interruption cut short", output, progress.trimmed)
            with output.open("r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
        for offset, key, _, text in rows:
            if offset < cut:
                progress.done.add(key)
                progress.texts.setdefault(key[0], []).append(text)
                progress.rows += 1
    progress.done |= _read_markers(markers)
    return progress


def _torn_tail(rows: list[tuple[int, UnitKey, int, str]]) -> int | None:
    """The offset where an incomplete last unit starts, or None when the last unit is whole."""
    if not rows:
        return None
    last_key = rows[-1][1]
    start = len(rows)
    while start > 0 and rows[start - 1][1] == last_key:
        start -= 1
    return rows[start][0] if len(rows) - start < rows[-1][2] else None


def _read_markers(path: Path) -> set[UnitKey]:
    done: set[UnitKey] = set()
    if not path.exists():
        return done
    for number, offset, raw in _read_lines(path):
        if not raw.endswith(b"\n"):
            # Cut short mid-write: that unit's rows, if any, are in the output and count there.
            # Trimmed, so the next marker starts on a line of its own.
            with path.open("r+b") as fh:
                fh.truncate(offset)
            break
        if not raw.strip():
            continue
        try:
            done.add(_key(json.loads(raw)["unit"], f"{path}, line {number}"))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise EmovecError(f"{path}, line {number}: not a unit marker written by generate.py") from None
    return done


def append_durably(path: Path, lines: Sequence[str]) -> None:
    """Append whole lines in one write and make them durable before going on."""
    if not lines:
        return
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    with path.open("ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def make_rows(unit: Unit, texts: Sequence[str], settings: GenerationSettings, model_name: str) -> list[dict]:
    """Output rows in the published format, plus the unit bookkeeping resuming needs."""
    if settings.kind == "neutral":
        base = {"kind": "dialogue", "topic": unit.topic}
    else:
        base = {"emotion": unit.emotion, "topic": unit.topic}
    extra = {"prompt": unit.prompt, "model": model_name, "sampling": settings.sampling, "seed": settings.seed,
             "unit": list(unit.key), "unit_rows": len(texts)}
    return [{**base, "text": text, **extra} for text in texts]


# ---- the model -------------------------------------------------------------------------------

def resolve_device(accelerator: str | None) -> torch.device:
    """`trainer.accelerator` as a torch device: gpu/cuda, cpu, mps, or auto (cuda when present)."""
    choice = str(accelerator or "auto").lower()
    if choice in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise EmovecError("trainer.accelerator=gpu but no CUDA device is visible; "
                              "use trainer.accelerator=cpu or auto")
        return torch.device("cuda")
    if choice == "mps":
        return torch.device("mps")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise EmovecError(f"trainer.accelerator must be cpu, gpu or auto, got '{accelerator}'")


def chat_text(tokenizer: Any, prompt: str) -> str:
    """The prompt as the model's chat template lays out a user turn awaiting the reply."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             tokenize=False, add_generation_prompt=True)
    # A base model has no template; a plain prompt then an empty line is the best it can get.
    return prompt + "\n\n"


def _batch_seed(seed: int, units: Sequence[Unit]) -> int:
    digest = hashlib.sha256(repr((seed, [u.key for u in units])).encode()).digest()
    return int.from_bytes(digest[:4], "little")


@torch.no_grad()
def sample_replies(model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings,
                   seed: int) -> list[str]:
    """One sampled reply per prompt, generated as one left-padded batch."""
    texts = [chat_text(tokenizer, p) for p in prompts]
    # The chat template already holds any BOS token; plain prompts get the tokenizer's usual ones.
    add_special = not getattr(tokenizer, "chat_template", None)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # so every prompt ends where generation begins
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special)
    finally:
        tokenizer.padding_side = side
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None)
    if getattr(model.generation_config, "eos_token_id", None) is None and tokenizer.eos_token_id is not None:
        kwargs["eos_token_id"] = tokenizer.eos_token_id
    out = model.generate(**batch, **kwargs)
    new = out[:, batch["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new, skip_special_tokens=True)


def prepare_tokenizer(tokenizer: Any) -> None:
    """Batched generation needs a pad token; the EOS token serves where none is defined."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise EmovecError("the tokenizer has neither a pad nor an EOS token; cannot batch prompts")
        tokenizer.pad_token = tokenizer.eos_token


# ---- the run ---------------------------------------------------------------------------------

def _batches(items: Sequence[Unit], size: int) -> Iterator[list[Unit]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def generate_corpus(loaded: Any, settings: GenerationSettings, emotions: Sequence[str] | None = None,
                    topics: Sequence[str] | None = None, template: str | None = None,
                    show_progress: bool = True) -> GenerationReport:
    """Generate every unit of the run not yet in `settings.output`, appending as it goes.

    `loaded` is an `emovec.models.LoadedModel` (`.model`, `.tokenizer`, `.name`) already on its device.
    """
    from tqdm.auto import tqdm

    if settings.kind == "stories" and not emotions:
        raise EmovecError("no emotions to generate stories for")
    topics = list(topics) if topics is not None else load_topics()
    template = template if template is not None else load_template(settings.kind)
    units = plan_units(settings, emotions, topics, template)
    output = settings.output
    output.parent.mkdir(parents=True, exist_ok=True)
    progress = read_progress(output)
    output.touch()  # so markers of units that kept nothing are never taken for stale ones
    pending = [u for u in units if u.key not in progress.done]
    report = GenerationReport(output=output, units_total=len(units), units_skipped=len(units) - len(pending),
                              rows_trimmed=progress.trimmed)
    if report.units_skipped:
        log.info("%s: %d of %d units already done; resuming", output, report.units_skipped, len(units))

    tokenizer, model = loaded.tokenizer, loaded.model
    prepare_tokenizer(tokenizer)
    header = HEADERS[settings.kind]
    bar = tqdm(total=len(pending), desc=f"generating {settings.kind}", unit="prompt", disable=not show_progress)
    for batch in _batches(pending, settings.batch_size):
        replies = sample_replies(model, tokenizer, [u.prompt for u in batch], settings,
                                 _batch_seed(settings.seed, batch))
        for unit, reply in zip(batch, replies):
            earlier = progress.texts.setdefault(unit.emotion, [])
            kept, dropped = filter_texts(parse_numbered(reply, header), earlier, unit.emotion,
                                         settings.min_words, settings.max_overlap)
            rows = make_rows(unit, kept, settings, loaded.name)
            append_durably(output, [json.dumps(r, ensure_ascii=False) for r in rows])
            marker = {"unit": list(unit.key), "kept": len(kept),
                      "dropped": dict(Counter(_reason_kind(r) for r, _ in dropped))}
            append_durably(units_path(output), [json.dumps(marker, ensure_ascii=False)])
            report.units_run += 1
            report.rows_written += len(rows)
            report.dropped.update(_reason_kind(r) for r, _ in dropped)
        bar.update(len(batch))
        bar.set_postfix(kept=report.rows_written, dropped=sum(report.dropped.values()))
    bar.close()
    log.info("%s: %d unit(s) run, %d written, dropped: %s", output, report.units_run, report.rows_written,
             dict(report.dropped) or "none")
    return report


def run(cfg: Mapping[str, Any]) -> GenerationReport:
    """The generate.py entry: load the model from `cfg.model`, place it, and generate."""
    from hydra.utils import to_absolute_path

    from emovec.models import load_model
    from emovec.norms import load_emotions

    node = cfg["generate"]
    output = to_absolute_path(str(node["output"])) if node.get("output") else None
    if output is None:
        raise EmovecError("generate.output is not set: give the JSONL file to write")
    settings = GenerationSettings.from_config(node, seed=cfg.get("seed", 42), output=output)
    emotions = None
    if settings.kind == "stories":
        known = load_emotions()
        emotions = list(settings.emotions) if settings.emotions else known
        unknown = [e for e in emotions if e not in known]
        if unknown:
            log.warning("not among the %d bundled emotions (generating anyway): %s", len(known), ", ".join(unknown))
    accelerator = (cfg.get("trainer") or {}).get("accelerator")
    device = resolve_device(accelerator)
    loaded = load_model(cfg["model"], accelerator=device.type)
    if not getattr(loaded.model, "hf_device_map", None):
        loaded.model.to(device)
    loaded.model.eval()
    return generate_corpus(loaded, settings, emotions=emotions)
