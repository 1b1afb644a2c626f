from pathlib import Path

import pytest
import yaml

from dae.pipeline.config import (
    Config,
    ConfigError,
    LevelRange,
    dump_config,
    load_config,
    parse_set,
    profiles,
)

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_default_config_is_the_built_in_default():
    assert load_config(ROOT / "configs" / "default.yaml").to_dict() == Config().to_dict()


def test_profiles_and_their_order():
    assert {"default", "smoke"} <= set(profiles())
    smoke = load_config(None, "smoke")
    assert smoke.data.max_train_examples == 800 and smoke.tune.tuner == "random"
    # --set wins over the profile, which wins over the file.
    cfg = load_config(None, "smoke", ["tune.tuner=bayesian", "noise.stddev=0.3"])
    assert cfg.tune.tuner == "bayesian" and cfg.noise.stddev == 0.3


def test_file_values_apply(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"dataset": "fashion_mnist"}, "seed": 7}))
    cfg = load_config(path)
    assert (cfg.data.dataset, cfg.seed, cfg.noise.kind) == ("fashion_mnist", 7, "gaussian")


def test_a_noise_level_is_a_number_a_list_or_a_range(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"noise": {"stddev": {"min": 0, "max": 0.9}}}))
    cfg = load_config(path, "default", ["noise.salt_pepper=[0.1, 0.4]", "noise.mask_fraction=1"])
    assert cfg.noise.stddev == LevelRange(min=0.0, max=0.9)
    assert (cfg.noise.salt_pepper, cfg.noise.mask_fraction) == ([0.1, 0.4], 1.0)
    noise = {"kind": "gaussian", "stddev": {"min": 0.0, "max": 0.9}, "salt_pepper": [0.1, 0.4]}
    assert cfg.to_dict()["noise"] == {**noise, "mask_fraction": 1.0}
    # A run's recorded config reads back the same: a range stays a range.
    dump_config(cfg, tmp_path / "run.yaml")
    assert load_config(tmp_path / "run.yaml").to_dict() == cfg.to_dict()
    assert (
        load_config(None, "default", ["noise.stddev={min: 0.2, max: 0.2}"]).noise.stddev.max == 0.2
    )


def test_set_values_are_yaml_typed():
    assert parse_set("beam.options=[--direct_num_workers=2]") == {
        "beam": {"options": ["--direct_num_workers=2"]}
    }
    assert parse_set("data.max_train_examples=null") == {"data": {"max_train_examples": None}}
    assert parse_set("validate.expected_mean=0.13") == {"validate": {"expected_mean": 0.13}}
    # The field's Python name means the same section, also beside a file's `validate:`.
    assert parse_set("validate_.expected_mean=0.2") == {"validate": {"expected_mean": 0.2}}


@pytest.mark.parametrize(
    "args, message",
    [
        ({"overrides": ["noise.sigma=0.3"]}, "unknown config key 'noise.sigma'"),
        ({"overrides": ["bogus=1"]}, "unknown config key 'bogus'"),
        ({"overrides": ["noise.stddev"]}, "malformed --set 'noise.stddev'"),
        ({"overrides": ["=3"]}, "malformed --set"),
        ({"overrides": ["noise.kind=speckle"]}, "invalid config value for 'noise.kind'"),
        ({"overrides": ["noise.stddev=-1"]}, "invalid config value for 'noise.stddev'"),
        # A level drawn from a list or a range: each bad form its own line.
        ({"overrides": ["noise.stddev={min: 0.3, max: 0.1}"]}, "min 0.3 is above max 0.1"),
        ({"overrides": ["noise.stddev={min: 0.1}"]}, "max: Field required"),
        ({"overrides": ["noise.stddev={min: 0, max: 1, mean: 0.5}"]}, "mean: Extra inputs"),
        ({"overrides": ["noise.stddev={min: -1, max: 1}"]}, "min: Input should be greater"),
        ({"overrides": ["noise.stddev={min: 0, max: .inf}"]}, "max: Input should be a finite"),
        ({"overrides": ["noise.stddev=[]"]}, "an empty list of levels"),
        ({"overrides": ["noise.stddev=[0.1, x]"]}, "expected a number, a list of numbers or"),
        ({"overrides": ["noise.stddev=[true]"]}, "expected a number, a list of numbers or"),
        ({"overrides": ["noise.stddev=[0.1, .nan]"]}, "invalid config value for 'noise.stddev"),
        ({"overrides": ["noise.salt_pepper=[0.1, 1.5]"]}, "level 1.5 is outside [0, 1]"),
        ({"overrides": ["noise.mask_fraction={min: 0, max: 2}"]}, "level 2 is outside [0, 1]"),
        # `psnr < nan` is never true: a NaN threshold would switch a blessing rule off.
        ({"overrides": ["evaluate.min_psnr_gain_db=.nan"]}, "'evaluate.min_psnr_gain_db'"),
        ({"overrides": ["evaluate.min_psnr_db=nan"]}, "'evaluate.min_psnr_db'"),
        ({"overrides": ["validate.expected_mean=.inf"]}, "'validate.expected_mean'"),
        ({"profile": "huge"}, "unknown profile 'huge' (known: default, smoke)"),
        ({"path": "/nonexistent/dae.yaml"}, "cannot read config file /nonexistent/dae.yaml"),
    ],
)
def test_bad_config_is_one_clear_line(args, message):
    with pytest.raises(ConfigError) as e:
        load_config(args.get("path"), args.get("profile", "default"), args.get("overrides", []))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_non_mapping_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)
