"""Config loading: presets load, numbers given as text convert, wrong kinds are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from drn.config import load_config
from drn.errors import InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_preset_loads(preset: str) -> None:
    config = load_config(CONFIGS / preset)
    assert config.model.num_segments % 4 == 0


def test_override_numbers_given_as_text_are_converted() -> None:
    config = load_config(CONFIGS / "synthetic.yaml", ["train.stage2.lr=1e-3", "train.batch_size=8"])
    assert config.train.stage2.lr == pytest.approx(1e-3) and isinstance(config.train.stage2.lr, float)
    assert config.train.batch_size == 8


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.stage2.lr=fast", "'train.stage2.lr' must be a number"),
        ("train.batch_size=2.5", "'train.batch_size' must be a number"),
        ("model.use_location_embedding=maybe", "'model.use_location_embedding' must be true or false"),
        ("train.nope=1", "unknown config key 'train.nope'"),
    ],
)
def test_wrong_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_config(CONFIGS / "synthetic.yaml", [override])


def test_retired_key_with_its_inert_value_loads_and_any_other_is_refused() -> None:
    """Checkpoints written while ``model.video_relevance`` existed (always false by default) still load."""
    from drn.config import DRNConfig

    data = load_config(CONFIGS / "synthetic.yaml").to_dict()
    data["model"]["video_relevance"] = False
    assert DRNConfig.from_dict(data).model == load_config(CONFIGS / "synthetic.yaml").model
    data["model"]["video_relevance"] = True
    with pytest.raises(InputError, match="model.video_relevance is no longer supported"):
        DRNConfig.from_dict(data, source="old.pt")


def test_a_stage_of_zero_epochs_is_refused_by_name() -> None:
    for n in (1, 2, 3):
        with pytest.raises(InputError, match=f"train.stage{n}.epochs must be at least 1, not 0"):
            load_config(None, [f"train.stage{n}.epochs=0"])
    with pytest.raises(InputError, match="guard_min_score must be in"):
        load_config(None, ["train.negatives.guard_min_score=1.0"])
