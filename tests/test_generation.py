"""generate.py's machinery: prompts, parsing, filtering, the resumable output, and real sampling."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch import nn

from emovec import generation as gen
from emovec.errors import EmovecError
from emovec.generation import (
    GenerationSettings,
    filter_texts,
    generate_corpus,
    load_template,
    load_topics,
    parse_numbered,
    read_progress,
    units_path,
)
from emovec.models import build_tiny_model, build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
STORY_KEYS = {"emotion", "text", "topic", "prompt", "model", "sampling", "seed", "unit", "unit_rows"}
NEUTRAL_KEYS = {"kind", "topic", "text", "prompt", "model", "sampling", "seed", "unit", "unit_rows"}
TOPICS = ["a walk to the bakery", "fixing a bicycle tyre", "a quiz night at the pub", "moving to a new flat"]


def settings(tmp_path: Path, **over) -> GenerationSettings:
    base = {"output": tmp_path / "out.jsonl", "topics_per_emotion": 2, "per_prompt": 3, "batch_size": 3,
            "temperature": 0.8, "max_new_tokens": 8, "min_words": 1, "max_overlap": 0.5, "seed": 7}
    base.update(over)
    s = GenerationSettings(**base)
    s.check()
    return s


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def invented_words(seed: str, n: int) -> str:
    rng = random.Random(seed)
    return " ".join("".join(rng.choice("bcdfgklmnprstvz") + rng.choice("aeiou") for _ in range(3)) for _ in range(n))


# ---- parsing and filtering with fixed strings ---------------------------------------------------

def test_parse_numbered_splits_on_headers_and_drops_the_preamble():
    reply = ("Sure! Here are three stories.\n\n[story 1]\nShe set the cup down.\nThen she left.\n\n"
             "**[Story 2]**\nHe waited by the door.\n---\n[ story 3 ]: Rain fell. [story 4] Last one.")
    assert parse_numbered(reply) == ["She set the cup down. Then she left.", "He waited by the door.",
                                     "Rain fell.", "Last one."]


def test_parse_numbered_accepts_unbracketed_headers_opening_a_line():
    reply = "Story 1\nIn a small town a woman grew beans.\n\n**Story 2:** A man fixed the roof. The story 3 ended."
    assert parse_numbered(reply) == ["In a small town a woman grew beans.", "A man fixed the roof. The story 3 ended."]


def test_parse_numbered_without_headers_keeps_the_whole_reply_and_dialogues_keep_their_lines():
    assert parse_numbered("  Just one   story here.\n") == ["Just one story here."]
    assert parse_numbered("", "story") == []
    reply = "[dialogue 1]\nUser: How long do eggs boil?\nAssistant: About nine minutes.\n[dialogue 2]\nUser: Hi\n"
    assert parse_numbered(reply, "dialogue") == ["User: How long do eggs boil?\nAssistant: About nine minutes.",
                                                 "User: Hi"]


def test_filter_drops_leaks_short_exact_and_near_duplicates():
    base = invented_words("a", 40)
    near = base.rsplit(" ", 1)[0] + " zzzz"  # one word of forty changed: 36 of 37 4-grams shared
    other = invented_words("b", 40)
    earlier = [base]
    kept, dropped = filter_texts(
        [f"She was so happy that {other}", "Too short.", base.upper() + "!", near, other, other + " again"],
        earlier, "happy", min_words=10, max_overlap=0.5)
    assert kept == [other]
    assert [reason for reason, _ in dropped] == ["names the emotion ('happy')", "too short (2 < 10 words)",
                                                 "duplicate", "near-duplicate", "near-duplicate"]
    assert earlier == [base, other]


def test_filter_catches_inflections_and_lets_neutral_texts_through():
    kept, dropped = filter_texts(["Her happiness showed in every step she took home that day."], [], "happy", 1, 0.5)
    assert kept == [] and dropped[0][0] == "names the emotion ('happiness')"
    kept, _ = filter_texts(["User: happy to ask. Assistant: sure."], [], None, 1, 0.5)
    assert len(kept) == 1


# ---- prompts and plans ----------------------------------------------------------------------------

def test_templates_and_topics_ship_with_the_package():
    story = load_template("stories")
    assert {"{n}", "{emotion}", "{topic}"} <= set(story.replace("{", " {").replace("}", "} ").split())
    assert "[story 1]" in story and "[dialogue 1]" in load_template("neutral")
    assert len(load_topics()) >= 100


def test_a_template_with_an_unknown_field_is_rejected(tmp_path):
    bad = tmp_path / "t.txt"
    bad.write_text("Write {n} stories about {topic} with {mood}")
    with pytest.raises(EmovecError, match="exactly the fields emotion, n, topic"):
        load_template("stories", bad)


def test_plan_is_seeded_per_emotion_and_covers_each_topic_repeat(tmp_path):
    s = settings(tmp_path, repeats=2)
    plan = gen.plan_units(s, ["happy", "sad"], TOPICS, "{n} {emotion} {topic}")
    alone = gen.plan_units(s, ["sad"], TOPICS, "{n} {emotion} {topic}")
    assert [u.key for u in plan if u.emotion == "sad"] == [u.key for u in alone]
    assert len(plan) == 2 * 2 * 2 and len({u.key for u in plan}) == 8
    assert all(u.prompt == f"3 {u.emotion} {u.topic}" for u in plan)
    with pytest.raises(EmovecError, match="only 4 topics"):
        gen.plan_units(settings(tmp_path, topics_per_emotion=5), ["sad"], TOPICS, "{n} {emotion} {topic}")


@pytest.mark.parametrize("over, message", [
    ({"kind": "poems"}, "generate.kind"), ({"top_p": 0}, "top_p"), ({"batch_size": 0}, "batch_size"),
    ({"emotions": []}, "empty"), ({"colour": "red"}, "unknown generate setting"),
])
def test_bad_settings_are_reported(tmp_path, over, message):
    with pytest.raises(EmovecError, match=message):
        GenerationSettings.from_config({"kind": "stories", **over}, seed=1, output=tmp_path / "o.jsonl")


def test_devices_follow_the_trainer_accelerator():
    assert gen.resolve_device("cpu") == torch.device("cpu")
    assert gen.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(EmovecError, match="accelerator"):
        gen.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EmovecError, match="no CUDA device"):
            gen.resolve_device("gpu")


# ---- a real tiny model -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model("llama", hidden=64, layers=2, seed=0)


def test_batched_left_padded_prompts_sample_like_single_ones(tiny, tmp_path):
    s = settings(tmp_path, temperature=0.0, max_new_tokens=6)
    prompts = ["hi", "a much longer prompt about the station and the late train", "the fox"]
    batched = gen.sample_replies(tiny.model, tiny.tokenizer, prompts, s, seed=0)
    single = [gen.sample_replies(tiny.model, tiny.tokenizer, [p], s, seed=0)[0] for p in prompts]
    assert batched == single
    assert all(r for r in batched)
    assert tiny.tokenizer.padding_side == "right"  # restored


def test_generation_on_a_tiny_model_writes_rows_in_the_published_format(tiny, tmp_path):
    s = settings(tmp_path, per_prompt=1, max_new_tokens=10)
    report = generate_corpus(tiny, s, emotions=["happy", "sad"], topics=TOPICS, show_progress=False)
    assert report.units_total == 4 and report.units_run == 4
    markers = read_rows(units_path(s.output))
    assert Counter(m["unit"][0] for m in markers) == {"happy": 2, "sad": 2}
    rows = read_rows(s.output)
    assert len(rows) == report.rows_written == sum(m["kept"] for m in markers)
    assert rows, "a random model's replies are kept when min_words=1"
    for row in rows:
        assert set(row) == STORY_KEYS
        emotion, topic, repeat = row["unit"]
        assert (row["emotion"], row["topic"]) == (emotion, topic) and repeat == 0
        assert topic in TOPICS and emotion in row["prompt"] and topic in row["prompt"]
        assert row["model"] == "tiny-llama" and row["seed"] == 7
        assert row["sampling"] == {"do_sample": True, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 10,
                                   "per_prompt": 1}
        assert isinstance(row["text"], str) and row["text"].strip()
    # The same settings again: everything is done, nothing is generated or written.
    again = generate_corpus(tiny, s, emotions=["happy", "sad"], topics=TOPICS, show_progress=False)
    assert (again.units_run, again.units_skipped) == (0, 4) and read_rows(s.output) == rows


# ---- resuming, with a scripted model whose replies are known ----------------------------------------

class ScriptedModel(nn.Module):
    """Replies to each prompt with fixed stories derived from the prompt; can fail on a given call."""

    def __init__(self, tokenizer, reply_for, fail_on_call: int | None = None):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.tokenizer, self.reply_for, self.fail_on_call = tokenizer, reply_for, fail_on_call
        self.generation_config = type("GC", (), {"eos_token_id": tokenizer.eos_token_id})()
        self.calls = 0

    def generate(self, input_ids, attention_mask, **_):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise KeyboardInterrupt("simulated interruption")
        prompts = [self.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(input_ids, attention_mask)]
        replies = [self.tokenizer.encode(self.reply_for(p), add_special_tokens=False) for p in prompts]
        width = max(len(r) for r in replies)
        pad = self.tokenizer.pad_token_id
        new = torch.tensor([r + [pad] * (width - len(r)) for r in replies])
        return torch.cat([input_ids, new], dim=1)


class Loaded:
    def __init__(self, model, tokenizer):
        self.model, self.tokenizer, self.name = model, tokenizer, "scripted"


def story_reply(prompt: str) -> str:
    # Three distinct stories per prompt; the third of every prompt about "quiz" repeats the first.
    a, b = invented_words(prompt + "a", 12), invented_words(prompt + "b", 12)
    third = a if "quiz" in prompt else invented_words(prompt + "c", 12)
    return f"Here you go.\n[story 1]\n{a}\n[story 2]\n{b}\n[story 3]\n{third}"


def rows_as_set(path: Path) -> Counter:
    return Counter(json.dumps(r, sort_keys=True) for r in read_rows(path))


def test_resume_after_interruption_writes_no_duplicate_and_loses_nothing(tmp_path):
    tok = build_tiny_tokenizer()
    emotions = ["happy", "sad", "calm"]
    full = settings(tmp_path, output=tmp_path / "full.jsonl", topics_per_emotion=3, batch_size=2)
    generate_corpus(Loaded(ScriptedModel(tok, story_reply), tok), full, emotions, TOPICS, show_progress=False)
    expected = rows_as_set(full.output)
    units = gen.plan_units(full, emotions, TOPICS, load_template("stories"))
    assert len(units) == 9 and sum(expected.values()) > 9  # several stories a unit

    part = settings(tmp_path, output=tmp_path / "part.jsonl", topics_per_emotion=3, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(Loaded(ScriptedModel(tok, story_reply, fail_on_call=3), tok), part, emotions, TOPICS,
                        show_progress=False)
    done = read_progress(part.output).done
    assert len(done) == 4  # two batches of two
    # A crash in the middle of the next unit's append: one whole row, then half of another.
    next_unit = next(u for u in units if u.key not in done)
    torn = [line for line in full.output.read_text().splitlines() if json.loads(line)["unit"] == list(next_unit.key)]
    assert len(torn) >= 2
    with part.output.open("a") as fh:
        fh.write(torn[0] + "\n" + torn[1][: len(torn[1]) // 2])
    with units_path(part.output).open("a") as fh:
        fh.write('{"unit": ["happy", ')  # the marker file can be cut short too

    model = ScriptedModel(tok, story_reply)
    report = generate_corpus(Loaded(model, tok), part, emotions, TOPICS, show_progress=False)
    assert report.units_skipped == 4 and report.units_run == 5 and report.rows_trimmed == 2
    assert model.calls == 3  # five units in batches of two
    assert rows_as_set(part.output) == expected
    assert max(rows_as_set(part.output).values()) == 1
    assert read_rows(units_path(part.output)) == read_rows(units_path(full.output))
    # Duplicated third stories were dropped, and counted.
    assert report.dropped["duplicate"] >= 1


def test_units_that_kept_nothing_are_not_generated_again(tmp_path):
    tok = build_tiny_tokenizer()
    s = settings(tmp_path, min_words=50)
    first = ScriptedModel(tok, story_reply)
    r1 = generate_corpus(Loaded(first, tok), s, ["happy"], TOPICS, show_progress=False)
    assert r1.rows_written == 0 and r1.dropped["too short"] == 6
    second = ScriptedModel(tok, story_reply)
    r2 = generate_corpus(Loaded(second, tok), s, ["happy"], TOPICS, show_progress=False)
    assert second.calls == 0 and r2.units_skipped == 2
    # Deleting the output starts over, even though the markers remain.
    s.output.unlink()
    third = ScriptedModel(tok, story_reply)
    generate_corpus(Loaded(third, tok), s, ["happy"], TOPICS, show_progress=False)
    assert third.calls == 1


def test_near_duplicates_of_earlier_runs_stories_are_dropped_on_resume(tmp_path):
    tok = build_tiny_tokenizer()
    s = settings(tmp_path, per_prompt=1, topics_per_emotion=2, batch_size=1)
    same = invented_words("same", 30)
    with pytest.raises(KeyboardInterrupt):
        generate_corpus(Loaded(ScriptedModel(tok, lambda p: same, fail_on_call=2), tok), s, ["sad"], TOPICS,
                        show_progress=False)
    report = generate_corpus(Loaded(ScriptedModel(tok, lambda p: same + " tail"), tok), s, ["sad"], TOPICS,
                             show_progress=False)
    assert [r["text"] for r in read_rows(s.output)] == [same]
    assert report.dropped == Counter({"near-duplicate": 1})


def test_a_corrupt_line_in_the_middle_is_an_error_naming_it(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"emotion": "sad", "text": "x", "unit": ["sad", "t", 0], "unit_rows": 1}\nnot json\n'
                   '{"emotion": "sad", "text": "y", "unit": ["sad", "u", 0], "unit_rows": 1}\n')
    with pytest.raises(EmovecError, match="o.jsonl, line 2"):
        read_progress(out)


def test_neutral_mode_writes_dialogues_in_the_neutral_format(tmp_path):
    tok = build_tiny_tokenizer()

    def dialogues(prompt: str) -> str:
        return "\n".join(f"[dialogue {k}]\nUser: {invented_words(prompt + str(k), 5)}?\n"
                         f"Assistant: {invented_words(prompt + str(k) + 'x', 8)}." for k in (1, 2))

    s = settings(tmp_path, kind="neutral", neutral_topics=3, per_prompt=2)
    report = generate_corpus(Loaded(ScriptedModel(tok, dialogues), tok), s, None, TOPICS, show_progress=False)
    rows = read_rows(s.output)
    assert report.units_run == 3 and len(rows) == 6
    for row in rows:
        assert set(row) == NEUTRAL_KEYS and row["kind"] == "dialogue" and row["unit"][0] is None
        lines = row["text"].split("\n")
        assert [ln.split(":")[0] for ln in lines] == ["User", "Assistant"]
        assert row["topic"] in TOPICS and row["topic"] in row["prompt"]


# ---- through Hydra ---------------------------------------------------------------------------------

def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="generate", overrides=overrides)


def test_generate_config_composes_with_the_documented_defaults():
    cfg = compose([])
    assert cfg.model.name == "smollm2" and cfg.trainer.accelerator == "cpu"
    assert cfg.generate.output == "generated/smollm2_stories.jsonl"
    s = GenerationSettings.from_config(cfg.generate, seed=cfg.seed, output="x.jsonl")
    assert (s.kind, s.per_prompt, s.temperature, s.top_p) == ("stories", 3, 0.8, 0.95)


def test_run_through_the_config_on_the_tiny_model(tmp_path):
    out = tmp_path / "tiny.jsonl"
    cfg = compose(["model=tiny", "model.layers=2", f"generate.output={out}", "generate.emotions=[afraid,calm]",
                   "generate.topics_per_emotion=1", "generate.per_prompt=1", "generate.max_new_tokens=6",
                   "generate.min_words=1"])
    report = gen.run(cfg)
    assert report.units_run == 2
    assert {m["unit"][0] for m in read_rows(units_path(out))} == {"afraid", "calm"}
    assert all(set(r) == STORY_KEYS for r in read_rows(out))


@pytest.mark.slow
def test_embedded_smollm2_generates_for_two_emotions(tmp_path):
    out = tmp_path / "smol.jsonl"
    cfg = compose(["model=smollm2", f"generate.output={out}", "generate.emotions=[happy,afraid]",
                   "generate.topics_per_emotion=1", "generate.max_new_tokens=48", "generate.min_words=5",
                   "generate.batch_size=2"])
    report = gen.run(cfg)
    assert report.units_run == 2
    assert {m["unit"][0] for m in read_rows(units_path(out))} == {"happy", "afraid"}
    for row in read_rows(out):
        assert set(row) == STORY_KEYS and row["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert gen.find_emotion_word(row["emotion"], row["text"]) is None
        assert len(row["text"].split()) >= 5
