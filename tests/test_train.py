"""Training is reproducible from the seed, and the cache returns what training produced."""

import torch

from edgefab.data import load_dataset, normalization
from edgefab.factory.presets import simple_classifier
from edgefab.factory.train import TrainConfig, train_classifier


def _small():
    data = load_dataset("mnist")
    data = data.subset(list(range(512)))
    return data, normalization(data), simple_classifier(data.input_shape, data.num_classes).scaled(0.5)


def test_same_seed_same_weights_and_cache_round_trip():
    data, prep, spec = _small()
    config = TrainConfig(epochs=1)
    first = train_classifier(spec, data, prep, config, use_cache=False).model.state_dict()
    torch.rand(100)  # disturb the global generator: the seed alone must decide
    second = train_classifier(spec, data, prep, config, use_cache=False).model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    stored = train_classifier(spec, data, prep, config)
    loaded = train_classifier(spec, data, prep, config)
    assert not stored.cached and loaded.cached and loaded.cache_key == stored.cache_key
    assert all(torch.equal(first[k], loaded.model.state_dict()[k]) for k in first)
    other = train_classifier(
        spec, data, prep, TrainConfig(epochs=1, seed=1), use_cache=False
    ).model.state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_shifted_training_is_seeded_and_keyed_apart():
    data, prep, spec = _small()
    plain = train_classifier(spec, data, prep, TrainConfig(epochs=1), use_cache=False)
    shifted = [
        train_classifier(spec, data, prep, TrainConfig(epochs=1, shift=2), use_cache=False) for _ in range(2)
    ]
    weights = [result.model.state_dict() for result in (plain, *shifted)]
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])  # the seed decides
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert shifted[0].cache_key != plain.cache_key  # a cached unshifted model is not returned
