"""InAConfig: LoRA's options plus the gate; every problem reported at once."""

import json

import pytest

from ina import InAConfig, InAConfigError


def test_defaults_are_the_seeds_settings():
    config = InAConfig()
    assert (config.inhibition, config.activation, config.negative_slope) == (0.3, "leaky_relu", 0.01)
    assert config.peft_type == "INA"


def test_all_problems_are_listed_together():
    with pytest.raises(InAConfigError) as error:
        InAConfig(inhibition=1.5, r=0, activation="relu", lora_dropout=1.0, use_dora=True)
    message = str(error.value)
    for needle in [
        "`inhibition` must be a number in [0, 1); got 1.5",
        "`r` must be a positive integer; got 0",
        "`activation` must be one of ['leaky_relu', 'gelu', 'identity']; got 'relu'",
        "`lora_dropout` must be in [0, 1); got 1.0",
        "`use_dora` must be False",
    ]:
        assert needle in message
    assert len(error.value.problems) == 5


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"inhibition": -0.1}, "`inhibition`"),
        ({"inhibition": 1.0}, "`inhibition`"),
        ({"r": -4}, "`r`"),
        ({"rank_pattern": {"q_proj": 0}}, "`rank_pattern['q_proj']`"),
        ({"lora_dropout": -0.1}, "`lora_dropout`"),
        ({"negative_slope": -1}, "`negative_slope`"),
        ({"init_lora_weights": "pissa"}, "`init_lora_weights`"),
        ({"alora_invocation_tokens": [1, 2]}, "`alora_invocation_tokens` must be unset"),
        ({"target_parameters": ["w"]}, "`target_parameters`"),
    ],
)
def test_each_rule(kwargs, needle):
    with pytest.raises(InAConfigError, match=None) as error:
        InAConfig(**kwargs)
    assert needle in str(error.value)


def test_lora_options_are_kept(tmp_path):
    config = InAConfig(
        r=8,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules=["q_proj", "v_proj"],
        exclude_modules=["lm_head"],
        modules_to_save=["score"],
        layers_to_transform=[0],
        rank_pattern={"q_proj": 4},
        alpha_pattern={"q_proj": 8},
        use_rslora=True,
        bias="lora_only",
        task_type="CAUSAL_LM",
        inhibition=0.1,
        activation="gelu",
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "INA" and saved["inhibition"] == 0.1 and saved["activation"] == "gelu"
    loaded = InAConfig.from_pretrained(tmp_path)
    assert (
        loaded.rank_pattern == {"q_proj": 4}
        and loaded.use_rslora
        and loaded.target_modules == {"q_proj", "v_proj"}
    )


def test_linearity():
    assert InAConfig(inhibition=0).is_linear
    assert not InAConfig(inhibition=0.3, activation="identity").is_linear
