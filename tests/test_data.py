"""The bundled data: every story checked, the corpus format, neutral texts."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from emovec.corpus_checks import find_emotion_word, max_ngram_overlap, word_count
from emovec.data import bundled_path, load_corpus, read_neutral, read_stories
from emovec.errors import EmovecError
from emovec.norms import load_emotions

STORIES = read_stories(bundled_path("stories.jsonl"))
TOPICS = set(bundled_path("topics.txt").read_text().splitlines())


# The bundled design (src/emovec/data/CORPUS.md): every emotion in the same six situations,
# each with a fixed person and amount of quoted speech, written in two passes.
SITUATIONS = {
    "a long train journey": ("first", False),
    "a family meal at home": ("third", True),
    "a phone call in the evening": ("first", True),
    "a walk through the neighbourhood": ("third", False),
    "a morning at work": ("first", False),
    "an afternoon at the market": ("third", True),
}


def test_every_emotion_has_one_story_per_situation_in_each_pass():
    emotions = load_emotions()
    assert len(emotions) == 171
    cells = Counter((s.emotion, s.topic, s.meta["pass"]) for s in STORIES)
    expected = {(e, t, p) for e in emotions for t in SITUATIONS for p in (1, 2)}
    assert set(cells) == expected
    assert set(cells.values()) == {1}
    assert len(STORIES) == 2052


def test_each_situation_keeps_its_person_and_speech():
    for s in STORIES:
        person, speech = SITUATIONS[s.topic]
        assert s.meta["person"] == person, s.text[:60]
        quotes = len(re.findall(r'["\u201c\u201d]', s.text))
        assert (2 <= quotes <= 4) if speech else quotes == 0, s.text[:60]
        assert "!" not in s.text, s.text[:60]


def test_story_lengths():
    lengths = [word_count(s.text) for s in STORIES]
    assert min(lengths) >= 120 and max(lengths) <= 165


def test_no_story_names_its_own_emotion():
    leaks = [(s.emotion, find_emotion_word(s.emotion, s.text)) for s in STORIES]
    assert [leak for leak in leaks if leak[1]] == []


def test_the_checker_catches_inflections():
    assert find_emotion_word("happy", "She smiled happily.") == "happily"
    assert find_emotion_word("worn out", "I was worn out.") == "worn out"
    assert find_emotion_word("calm", "The sea was calmer.") == "calmer"
    assert find_emotion_word("calm", "The sea was still.") is None


def test_no_two_stories_share_more_than_a_small_fraction_of_4grams():
    frac, i, j = max_ngram_overlap([s.text for s in STORIES])
    assert frac < 0.08, (STORIES[i].text, STORIES[j].text)


def test_neutral_texts():
    rows = [json.loads(line) for line in bundled_path("neutral.jsonl").read_text().splitlines() if line.strip()]
    kinds = Counter(r["kind"] for r in rows)
    # Dialogues and factual paragraphs as the papers' baselines; flat narratives on the 111
    # generation topics, so denoising removes narrative and topic variation too.
    assert kinds["dialogue"] + kinds["paragraph"] >= 120
    assert abs(kinds["dialogue"] - kinds["paragraph"]) <= 0.1 * (kinds["dialogue"] + kinds["paragraph"])
    assert kinds["narrative"] >= 200
    assert {r["topic"] for r in rows if r["kind"] == "narrative"} == TOPICS
    texts = [r["text"] for r in rows]
    assert max_ngram_overlap(texts)[0] < 0.08
    emotions = load_emotions()
    assert [(t[:40], e) for t in texts for e in emotions if find_emotion_word(e, t)] == []
    assert len(read_neutral(bundled_path("neutral.jsonl"))) == len(rows)


def test_published_format_both_shapes_and_metadata(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"emotion": "Happy ", "stories": ["a b c", "d e f"], "topic": "t1"}) + "\n\n"
                    + json.dumps({"emotion": "sad", "text": "g h i", "model": "m"}) + "\n")
    stories = read_stories(path)
    assert [(s.emotion, s.text) for s in stories] == [("happy", "a b c"), ("happy", "d e f"), ("sad", "g h i")]
    assert stories[0].topic == "t1" and stories[2].meta["model"] == "m"


@pytest.mark.parametrize(("line", "message"), [
    ('{"emotion": "sad"', "not valid JSON"),
    ('["sad", "text"]', "expected a JSON object"),
    ('{"text": "x"}', "missing the 'emotion' key"),
    ('{"emotion": "sad"}', "needs 'stories'"),
    ('{"emotion": "sad", "stories": "x"}', "'stories' must be a list"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"emotion": "sad", "text": "fine"}) + "\n" + line + "\n")
    with pytest.raises(EmovecError, match=rf"{path}:2: .*{message}"):
        read_stories(path)


def test_subset_and_cap():
    stories = load_corpus({"emotions": ["happy", "sad"], "max_stories_per_emotion": 2})
    assert Counter(s.emotion for s in stories) == {"happy": 2, "sad": 2}
    with pytest.raises(EmovecError, match="no story .*: zesty"):
        load_corpus({"emotions": ["zesty"]})
