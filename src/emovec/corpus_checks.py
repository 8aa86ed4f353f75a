"""Quality checks on a story corpus: emotion-word leakage and near-duplicate stories.

The bundled corpus and generate.py both rely on these, so a story that names its own emotion
or repeats another story's phrasing is caught the same way everywhere.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from itertools import combinations

_SUFFIXES = ("", "s", "es", "ed", "d", "ing", "ly", "ily", "ness", "iness", "er", "ier", "est", "iest",
             "ment", "ments", "ful", "fully", "less", "ity", "y", "edly", "ingly")

# Irregular relatives a suffix rule would miss (stem changes, shared roots).
_EXTRA_FORMS: dict[str, tuple[str, ...]] = {
    "afraid": (),
    "angry": ("anger", "angered", "angers", "angrily", "angrier", "angriest"),
    "anxious": ("anxiety", "anxieties", "anxiously"),
    "ashamed": ("shame", "shamed", "shameful"),
    "bored": ("bore", "boring", "boredom", "bores"),
    "calm": ("calmly", "calmness", "calmed", "calming"),
    "compassionate": ("compassion",),
    "contemptuous": ("contempt",),
    "content": ("contentment", "contented"),
    "defiant": ("defiance", "defy", "defied", "defying"),
    "dependent": ("depend", "depends", "dependence", "depended", "depending"),
    "depressed": ("depression", "depressing"),
    "desperate": ("desperation", "desperately"),
    "disdainful": ("disdain",),
    "disgusted": ("disgust", "disgusting"),
    "disoriented": ("disorientation", "disorienting"),
    "distressed": ("distress", "distressing"),
    "disturbed": ("disturb", "disturbing"),
    "eager": ("eagerly", "eagerness"),
    "ecstatic": ("ecstasy",),
    "elated": ("elation",),
    "embarrassed": ("embarrass", "embarrassing", "embarrassment"),
    "empathetic": ("empathy", "empathise", "empathize"),
    "energized": ("energy", "energise", "energize", "energised", "energetic"),
    "enraged": ("rage", "raged", "raging", "enrage"),
    "enthusiastic": ("enthusiasm", "enthusiastically"),
    "envious": ("envy", "envied"),
    "euphoric": ("euphoria",),
    "exasperated": ("exasperation", "exasperating"),
    "excited": ("excite", "excitement", "exciting"),
    "exuberant": ("exuberance",),
    "frightened": ("fright", "frighten", "frightening"),
    "frustrated": ("frustration", "frustrating"),
    "fulfilled": ("fulfil", "fulfill", "fulfilment", "fulfillment", "fulfilling"),
    "furious": ("fury", "furiously"),
    "gloomy": ("gloom",),
    "grateful": ("gratitude", "gratefully"),
    "greedy": ("greed",),
    "grief-stricken": ("grief", "grieve", "grieved", "grieving", "stricken"),
    "guilty": ("guilt",),
    "happy": ("happiness", "happily", "happier", "happiest"),
    "hateful": ("hate", "hated", "hatred", "hating"),
    "heartbroken": ("heartbreak", "heartbreaking"),
    "hope": ("hoped", "hoping", "hopes", "hopeful", "hopefully"),
    "hopeful": ("hope", "hoped", "hoping", "hopes", "hopefully"),
    "horrified": ("horror", "horrify", "horrifying"),
    "hostile": ("hostility",),
    "humiliated": ("humiliation", "humiliating"),
    "hysterical": ("hysteria", "hysterically"),
    "impatient": ("impatience", "impatiently"),
    "indifferent": ("indifference",),
    "indignant": ("indignation",),
    "infatuated": ("infatuation",),
    "inspired": ("inspire", "inspiration", "inspiring"),
    "insulted": ("insult", "insulting"),
    "invigorated": ("invigorate", "invigorating"),
    "irate": (),
    "irritated": ("irritate", "irritation", "irritating"),
    "jealous": ("jealousy",),
    "joyful": ("joy", "joys", "joyous"),
    "jubilant": ("jubilation",),
    "kind": ("kindness", "kindly"),
    "lazy": ("laziness", "lazily"),
    "lonely": ("loneliness", "alone"),
    "loving": ("love", "loved", "loves"),
    "mad": ("madness", "madly"),
    "melancholy": ("melancholic",),
    "miserable": ("misery",),
    "mortified": ("mortify", "mortifying"),
    "mystified": ("mystify", "mystifying", "mystery"),
    "nervous": ("nerves", "nervously", "nervousness"),
    "nostalgic": ("nostalgia",),
    "obstinate": ("obstinacy",),
    "offended": ("offend", "offence", "offense", "offensive"),
    "optimistic": ("optimism",),
    "outraged": ("outrage", "outrageous"),
    "overwhelmed": ("overwhelm", "overwhelming"),
    "panicked": ("panic", "panicking", "panics"),
    "paranoid": ("paranoia",),
    "patient": ("patience", "patiently"),
    "peaceful": ("peace",),
    "perplexed": ("perplex", "perplexing"),
    "playful": ("play", "played", "playing", "plays", "playfully"),
    "pleased": ("please", "pleasing", "pleasure"),
    "proud": ("pride", "proudly"),
    "puzzled": ("puzzle", "puzzling"),
    "reflective": ("reflect", "reflected", "reflecting", "reflection"),
    "refreshed": ("refresh", "refreshing"),
    "regretful": ("regret", "regrets", "regretted"),
    "rejuvenated": ("rejuvenate", "rejuvenating"),
    "relaxed": ("relax", "relaxing", "relaxation"),
    "relieved": ("relief", "relieve"),
    "remorseful": ("remorse",),
    "resentful": ("resent", "resentment", "resented"),
    "resigned": ("resign", "resignation"),
    "sad": ("sadness", "sadly", "sadder", "saddest"),
    "safe": ("safety", "safely"),
    "satisfied": ("satisfy", "satisfaction", "satisfying"),
    "scared": ("scare", "scary", "scaring"),
    "scornful": ("scorn",),
    "self-confident": ("confident", "confidence"),
    "self-conscious": ("conscious",),
    "self-critical": ("critical", "criticism"),
    "sensitive": ("sensitivity",),
    "sentimental": ("sentiment",),
    "serene": ("serenity",),
    "shaken": ("shake", "shook", "shaking"),
    "shocked": ("shock", "shocking"),
    "skeptical": ("sceptical", "skepticism", "scepticism", "skeptic"),
    "sleepy": ("sleep", "sleepily"),
    "sorry": ("sorrow",),
    "spiteful": ("spite",),
    "stimulated": ("stimulate", "stimulating", "stimulation"),
    "stressed": ("stress", "stressful"),
    "stubborn": ("stubbornly", "stubbornness"),
    "surprised": ("surprise", "surprising"),
    "suspicious": ("suspicion", "suspect"),
    "sympathetic": ("sympathy",),
    "tense": ("tension",),
    "terrified": ("terror", "terrify", "terrifying"),
    "thankful": ("thank", "thanks", "thanked"),
    "thrilled": ("thrill", "thrilling"),
    "tired": ("tire", "tiring", "tiredness"),
    "tormented": ("torment",),
    "trapped": ("trap", "traps"),
    "triumphant": ("triumph",),
    "troubled": ("trouble", "troubling"),
    "uneasy": ("unease",),
    "unhappy": ("unhappiness",),
    "unnerved": ("unnerve", "unnerving"),
    "unsettled": ("unsettle", "unsettling"),
    "upset": ("upsetting",),
    "valiant": ("valour", "valor"),
    "vengeful": ("vengeance", "revenge"),
    "vibrant": (),
    "vigilant": ("vigilance",),
    "vindictive": (),
    "vulnerable": ("vulnerability",),
    "weary": ("weariness", "wearily"),
    "worn out": (),
    "worried": ("worry", "worrying", "worries"),
    "worthless": ("worth",),
}


def forbidden_forms(emotion: str) -> set[str]:
    """Words a story about `emotion` must not contain: the word, its inflections and close relatives."""
    base = emotion.lower()
    forms: set[str] = {base}
    for word in re.split(r"[\s]+", base):
        stems = {word}
        if word.endswith("ed"):
            stems |= {word[:-1], word[:-2]}
        if word.endswith("y"):
            stems.add(word[:-1])
        if word.endswith("e"):
            stems.add(word[:-1])
        for stem in stems:
            if len(stem) >= 3:
                forms |= {stem + s for s in _SUFFIXES}
    forms |= set(_EXTRA_FORMS.get(base, ()))
    # Multi-word emotions ("at ease", "worn out") are forbidden as phrases only.
    if " " in base:
        forms = {base}
    forms.discard("")
    return forms


@functools.cache
def _emotion_pattern(emotion: str) -> re.Pattern[str]:
    # Longest forms first, so "happily" is reported rather than a shorter form inside it.
    forms = sorted(forbidden_forms(emotion), key=len, reverse=True)
    return re.compile(r"(?<![a-z])(" + "|".join(map(re.escape, forms)) + r")(?![a-z])")


def find_emotion_word(emotion: str, text: str) -> str | None:
    """The first forbidden form of `emotion` found in `text` as a whole word, or None."""
    match = _emotion_pattern(emotion.lower()).search(text.lower())
    return match.group(1) if match else None


def word_ngrams(text: str, n: int = 4) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z']+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def ngram_overlap(a: str, b: str, n: int = 4) -> float:
    """Shared word n-grams as a fraction of the smaller story's n-grams."""
    ga, gb = word_ngrams(a, n), word_ngrams(b, n)
    if not ga or not gb:
        return 0.0
    return len(ga & gb) / min(len(ga), len(gb))


def max_ngram_overlap(texts: Sequence[str], n: int = 4) -> tuple[float, int, int]:
    """The largest pairwise n-gram overlap in `texts`, with the indices of that pair."""
    grams = [word_ngrams(t, n) for t in texts]
    index: dict[tuple[str, ...], list[int]] = {}
    for i, g in enumerate(grams):
        for gram in g:
            index.setdefault(gram, []).append(i)
    shared: dict[tuple[int, int], int] = {}
    for owners in index.values():
        if 1 < len(owners) <= 200:
            for i, j in combinations(owners, 2):
                shared[(i, j)] = shared.get((i, j), 0) + 1
    best = (0.0, -1, -1)
    for (i, j), count in shared.items():
        frac = count / max(1, min(len(grams[i]), len(grams[j])))
        if frac > best[0]:
            best = (frac, i, j)
    return best


def word_count(text: str) -> int:
    return len(re.findall(r"\S+", text))


def check_stories(rows: Iterable[tuple[str, str]], min_words: int = 80, max_words: int = 220) -> list[str]:
    """Problems in (emotion, story) pairs: leaked emotion words and lengths out of range."""
    problems = []
    for k, (emotion, text) in enumerate(rows):
        leaked = find_emotion_word(emotion, text)
        if leaked:
            problems.append(f"story {k} ({emotion}): contains '{leaked}'")
        n = word_count(text)
        if not min_words <= n <= max_words:
            problems.append(f"story {k} ({emotion}): {n} words, outside {min_words}-{max_words}")
    return problems


if __name__ == "__main__":  # python -m emovec.corpus_checks FILE.jsonl [...]: report problems
    import json
    import sys

    rows, texts = [], []
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    obj = json.loads(line)
                    stories = obj.get("stories") or [obj["text"]]
                    for s in stories:
                        rows.append((obj["emotion"], s))
                        texts.append(s)
    for p in check_stories(rows):
        print(p)
    frac, i, j = max_ngram_overlap(texts)
    print(f"{len(rows)} stories; largest 4-gram overlap {frac:.3f} (stories {i} and {j})")
