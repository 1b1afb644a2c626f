"""One typed config for the whole pipeline: YAML file, then a named profile, then `--set`.

Every section forbids unknown keys, so a typo in a YAML file or a `--set` fails loudly
instead of silently running with a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dae.components.models import BASELINES, FAMILIES

PROFILES_DIR = Path(__file__).parent / "profiles"


class ConfigError(ValueError):
    """A config problem the user can fix; its message is one line."""


class _Section(BaseModel):
    # No NaN or infinity anywhere: `x < nan` is always False, so a NaN threshold would
    # switch a blessing rule off without a word.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    dataset: str = "mnist"
    data_dir: str = "~/tensorflow_datasets"
    # TFDS's own convention; each dataset reads `<manual_dir>/<dataset>/`.
    manual_dir: str = "~/tensorflow_datasets/downloads/manual"
    image_key: str = "image"
    label_key: str | None = "label"  # null: unlabelled images
    validation_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    # Caps for quick runs; null means the whole split.
    max_train_examples: int | None = Field(None, ge=1)
    max_test_examples: int | None = Field(None, ge=1)


class ValidateConfig(_Section):
    min_examples_per_split: int = Field(1, ge=1)
    # Reference mean of the training pixels in [0,1]; null skips the drift check.
    expected_mean: float | None = None
    mean_tolerance: float = Field(0.05, ge=0.0)


class LevelRange(_Section):
    """A noise level drawn uniformly from [min, max] for each example: training a denoiser
    blind to the level, as its users are."""

    min: float = Field(ge=0.0)
    max: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min > self.max:
            raise ValueError(f"min {self.min:g} is above max {self.max:g}")
        return self


# One level for every example, a list to draw one of for each example, or a range.
Level = float | list[float] | LevelRange


class NoiseConfig(_Section):
    kind: Literal["gaussian", "salt_pepper", "mask"] = "gaussian"
    stddev: Level = 0.5
    salt_pepper: Level = 0.2  # a fraction of pixels
    mask_fraction: Level = 0.3  # a fraction of pixels

    @field_validator("stddev", "salt_pepper", "mask_fraction", mode="before")
    @classmethod
    def _range(cls, level):
        """One clear error, not one per member of the union."""
        if isinstance(level, dict):
            try:
                return LevelRange(**level)
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                msg = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"{where + ': ' if where else ''}{msg}") from None
        values = level if isinstance(level, list) else [level]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise ValueError("expected a number, a list of numbers or {min: a, max: b}")
        return level

    @field_validator("stddev", "salt_pepper", "mask_fraction")
    @classmethod
    def _in_bounds(cls, level, info):
        top = None if info.field_name == "stddev" else 1.0
        values = [level.min, level.max] if isinstance(level, LevelRange) else level
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ValueError("an empty list of levels")
        for v in values:
            if v < 0.0 or (top is not None and v > top):
                raise ValueError(
                    f"level {v:g} is outside [0, {top:g}]" if top else f"level {v:g} is negative"
                )
        return level


class BeamConfig(_Section):
    runner: str = "DirectRunner"
    options: list[str] = Field(default_factory=list)
    num_shards: int = Field(4, ge=1)


Family = Literal[FAMILIES]  # dense, conv, vae, conv_vae


class ArchitectureConfig(_Section):
    family: Family = "conv"
    # A seed article's fixed architecture instead of a tuned family (the search is skipped).
    baseline: Literal[BASELINES] | None = None
    # KL weight of the VAE families (1: the loss is the negative ELBO); null: tuned (0.1-1).
    beta: float | None = Field(1.0, gt=0.0)
    # Tuning and training arithmetic: bfloat16 compute with float32 weights where the CPU
    # has bf16 instructions (auto); the saved and served model computes in float32 always.
    precision: Literal["auto", "float32", "mixed_bfloat16"] = "auto"


class TuneConfig(_Section):
    tuner: Literal["hyperband", "random", "bayesian"] = "hyperband"
    max_trials: int = Field(6, ge=1)  # random / bayesian
    max_epochs: int = Field(3, ge=1)  # hyperband's top rung; epochs per trial otherwise
    hyperband_factor: int = Field(3, ge=2)
    # Families one search spans (the family becomes a hyperparameter); null: model.family.
    families: list[Family] | None = Field(None, min_length=1)
    batch_size: int = Field(128, ge=1)
    # Trials search on a subset: layer sizes rank the same on a few thousand images.
    train_examples: int | None = Field(6000, ge=1)
    eval_examples: int | None = Field(2000, ge=1)


class TrainConfig(_Section):
    # 7 epochs of 64 beat 10 of 128 in test PSNR for 0.8x the time (README, Speed).
    epochs: int = Field(7, ge=1)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(3, ge=1)
    # Corrupt the clean training images anew each epoch (the noise section's kind and
    # level) rather than reuse transform's one draw, which a denoiser learns by heart.
    fresh_noise: bool = True


class SweepSpec(_Section):
    kind: Literal["gaussian", "salt_pepper", "mask"]
    levels: list[float] = Field(min_length=1)

    @field_validator("levels")
    @classmethod
    def _fractions(cls, levels: list[float]) -> list[float]:
        bad = [v for v in levels if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"level {bad[0]:g} is outside [0, 1]")
        return levels


def _default_sweep() -> list[SweepSpec]:
    return [
        SweepSpec(kind="gaussian", levels=[0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9]),
        SweepSpec(kind="salt_pepper", levels=[0.05, 0.1, 0.2, 0.4]),
        SweepSpec(kind="mask", levels=[0.1, 0.3, 0.5]),
    ]


class EvaluateConfig(_Section):
    # Blessed only if denoising gains at least this much PSNR over the noisy input ...
    min_psnr_gain_db: float = 3.0
    # ... reaches this absolute PSNR (null: no floor) ...
    min_psnr_db: float | None = None
    # ... and is not worse than the served version by more than this, on the same test set.
    max_regression_db: float = Field(0.5, ge=0.0)
    batch_size: int = Field(512, ge=1)
    # The sweep: each corruption at each level, made from (the first sweep_examples of) the
    # clean test images, scored for the noisy input, the model and a 3x3 median filter.
    sweep: list[SweepSpec] = Field(default_factory=_default_sweep)
    sweep_examples: int | None = Field(1000, ge=1)
    # Blessed only if, at every level of the sweep, the model's PSNR is at least this far
    # above the noisy input's (null: no such rule; negative: a tolerated loss) ...
    min_sweep_gain_db: float | None = None
    # ... and its SSIM is not below the noisy input's.
    sweep_ssim_floor: bool = False


class PushConfig(_Section):
    model_name: str = Field("denoiser", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class Config(_Section):
    pipeline_name: str = "dae"
    seed: int = Field(42, ge=0)
    # Skip a stage whose inputs, parameters and code match an earlier successful execution.
    cache: bool = True
    # Metadata store: a SQLAlchemy URL without a password (a run's config is written to its
    # folder); null: $DAE_METADATA_URL (from a Secret), else sqlite:///<root>/metadata.sqlite.
    metadata_url: str | None = None
    data: DataConfig = Field(default_factory=DataConfig)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    beam: BeamConfig = Field(default_factory=BeamConfig)
    model: ArchitectureConfig = Field(default_factory=ArchitectureConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    push: PushConfig = Field(default_factory=PushConfig)

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, populate_by_name=True, allow_inf_nan=False
    )

    @field_validator("metadata_url")
    @classmethod
    def _no_password(cls, url: str | None) -> str | None:
        import sqlalchemy as sa

        try:
            parsed = sa.engine.make_url(url) if url else None
        except sa.exc.ArgumentError:
            raise ValueError("not a database URL (e.g. postgresql+psycopg://host/db)") from None
        if parsed is not None and parsed.password:
            raise ValueError("holds a password; set DAE_METADATA_URL (from a Secret) instead")
        return url

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}".splitlines()[0]) from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(item: str) -> dict[str, Any]:
    """`a.b=value` -> {"a": {"b": value}}; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"malformed --set {item!r}: expected key=value, e.g. noise.stddev=0.3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed --set {item!r}: value is not valid YAML") from e
    parts = key.split(".")
    if parts[0] == "validate_":  # the field's Python name; YAML files and messages say validate
        parts[0] = "validate"
    for part in reversed(parts):
        value = {part: value}
    return value


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]).replace("validate_", "validate")
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{where}'"
    return f"invalid config value for '{where}': {first['msg']}"


def load_config(
    path: str | Path | None = None, profile: str = "default", overrides: list[str] = ()
) -> Config:
    """Defaults, then the YAML file, then the profile, then each `--set`, in that order."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_yaml(Path(path))
    profile_path = PROFILES_DIR / f"{profile}.yaml"
    if not profile_path.is_file():
        raise ConfigError(f"unknown profile '{profile}' (known: {', '.join(profiles())})")
    return _validated(_merge(data, _read_yaml(profile_path)), overrides)


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """`--set` on top of an existing config (say, a run's recorded one)."""
    return _validated(config.to_dict(), overrides)


def _validated(data: dict[str, Any], overrides) -> Config:
    for item in overrides:
        data = _merge(data, parse_set(item))
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e)) from e


def dump_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
