"""Shared fixtures: W&B offline in tmp folders, a private feature cache, tiny corpora on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

# Eight emotions spread over the valence/arousal plane, two short stories each.
TINY_STORIES = {
    "happy": ["She laughed as the kite rose over the hill, and she ran after it with her arms wide open.",
              "The letter said yes. He read it three times and then danced around the small kitchen."],
    "sad": ["The house was quiet after the funeral, and she sat by the window without turning on the light.",
            "He packed his father's coat into a box and could not bring himself to close the lid."],
    "afraid": ["Footsteps followed her down the dark street, and her hands shook as she searched for her keys.",
               "The ice cracked under his boots, far from the shore, and he froze, barely breathing at all."],
    "calm": ["The lake was still at dawn. She sipped her tea slowly and watched the mist lift off the water.",
             "He lay in the hammock, listening to the leaves, his breathing slow and even in the warm air."],
    "angry": ["He slammed the door so hard the frame shook, and shouted that he would never come back here.",
              "She tore the unfair ticket in half and stormed to the counter, her face hot and her jaw tight."],
    "excited": ["Tomorrow was the launch. He could not sit still and kept checking the countdown on his phone.",
                "The crowd roared as the band walked on stage, and she jumped up and down, screaming along."],
    "bored": ["The lecture dragged on. He counted the ceiling tiles for the fourth time and sighed again.",
              "Rain again. She scrolled through the same three apps and stared at the clock on the wall."],
    "proud": ["Her daughter crossed the stage in cap and gown, and she stood up clapping, beaming at everyone.",
              "He stepped back to look at the bookshelf he had built himself, straight and solid, and smiled."],
}

NEUTRAL = [
    "The water cycle moves water between the oceans, the air and the land through evaporation and rain.",
    "A spreadsheet cell can hold a number, a text value or a formula that refers to other cells.",
    "Paper is made from wood fibres that are pulped, pressed into sheets and dried on heated rollers.",
    "User: How many grams are in a kilogram?\nAssistant: There are one thousand grams in a kilogram.",
    "The train to the airport leaves every twenty minutes from platform four during the day.",
    "A leaf has veins that carry water in and sugars out, and pores that let gases pass through.",
]


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline in tmp, and a cache of our own so tests never share or reuse features by accident."""
    root = tmp_path_factory.mktemp("env")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(root / "wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("EMOVEC_CACHE", str(root / "cache"))
    # The embedded models are converted once per machine; reuse that conversion across tests.
    shared = Path(os.environ.get("EMOVEC_TEST_MODEL_CACHE", Path.home() / ".cache" / "emovec"))
    monkeypatch.setenv("EMOVEC_MODEL_CACHE", str(shared))
    return root


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> dict[str, Path]:
    stories = tmp_path / "stories.jsonl"
    with stories.open("w") as fh:
        for emotion, texts in TINY_STORIES.items():
            fh.write(json.dumps({"emotion": emotion, "stories": texts, "topic": f"topic-{emotion}"}) + "\n")
    neutral = tmp_path / "neutral.jsonl"
    neutral.write_text("".join(json.dumps({"text": t}) + "\n" for t in NEUTRAL))
    return {"stories": stories, "neutral": neutral}


def tiny_overrides(corpus: dict[str, Path], *extra: str) -> list[str]:
    return ["model=tiny", "dataset=jsonl", f"dataset.path={corpus['stories']}",
            f"dataset.neutral_path={corpus['neutral']}", "extract.token_offset=4", "extract.max_length=64",
            "extract.batch_tokens=256", *extra]


def compose(overrides: list[str], config: str = "train"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=config, overrides=overrides)


def run_cli(script: str, overrides: list[str], env: dict[str, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
