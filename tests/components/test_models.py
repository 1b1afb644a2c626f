import numpy as np
import pytest

from components import models


@pytest.mark.parametrize("family", models.FAMILIES)
@pytest.mark.parametrize("shape", [(28, 28, 1), (30, 22, 3)])
def test_families_map_images_to_images(family, shape):
    hp = models.hyperparameters()
    model = models.build_model(hp, family, shape, mean=0.3, std=0.2)
    x = np.random.default_rng(0).random((2, *shape)).astype(np.float32)
    y = model.predict(x, verbose=0)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert "learning_rate" in hp.values and "latent_dim" in hp.values


def test_hyperparameters_round_trip_rebuilds_the_same_architecture():
    hp = models.hyperparameters()
    hp.Fixed("filters_1", 16)
    a = models.build_model(hp, "conv", (28, 28, 1), 0.1, 0.3)
    b = models.build_model(models.hyperparameters(hp.get_config()), "conv", (28, 28, 1), 0.1, 0.3)
    assert a.count_params() == b.count_params()
    assert [layer.__class__ for layer in a.layers] == [layer.__class__ for layer in b.layers]


def test_standardization_is_inside_the_model():
    model = models.build_model(models.hyperparameters(), "dense", (28, 28, 1), 0.25, 0.5)
    layer = model.get_layer("standardize")
    out = layer(np.full((1, 28, 28, 1), 0.75, np.float32))
    assert float(np.asarray(out).mean()) == pytest.approx(1.0, abs=1e-5)


def test_unknown_family_is_refused():
    with pytest.raises(ValueError, match="unknown model family 'gan'"):
        models.build_model(models.hyperparameters(), "gan", (28, 28, 1), 0.1, 0.3)
