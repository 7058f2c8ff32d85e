"""Every custom layer survives its config, as Keras' own ``run_layer_test`` checks its layers.

For each layer: ``from_config(get_config())`` gives the same config, Keras' serialization
(registered name included) rebuilds it, the rebuilt layer computes the same outputs, and
``compute_output_shape`` agrees with what ``call`` returns.
"""

import keras
import numpy as np
import pytest

from paper_repro.augment import CaffeAugment
from paper_repro.model import CaffePreprocessing, GroupedConv2D, LocalResponseNormalization

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (2, 12, 12, 3)).astype(np.float32)
KEYS = np.array([3, 1_000_003], np.int64)

CASES = {
    "lrn": (LocalResponseNormalization(size=3, alpha=2e-4, beta=0.5, k=2.0), (IMAGES,)),
    "grouped_conv": (
        GroupedConv2D(4, 3, groups=2, kernel_initializer=keras.initializers.RandomNormal(seed=1)),
        (RNG.random((2, 8, 8, 4)).astype(np.float32),),
    ),
    "preprocess": (CaffePreprocessing(mean=(1.0, 2.0, 3.0), bgr=True, scale=0.5), (IMAGES,)),
    "caffe_augment": (
        CaffeAugment(resize=10, crop=8, mirror=False),
        (IMAGES.astype(np.uint8), KEYS),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_config_round_trip_rebuilds_a_layer_that_computes_the_same(name):
    layer, inputs = CASES[name]
    outputs = keras.ops.convert_to_numpy(layer(*inputs))
    config = layer.get_config()

    rebuilt = type(layer).from_config(config)
    assert rebuilt.get_config() == config

    revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(revived) is type(layer) and revived.get_config() == config
    revived(*inputs)  # builds the weights
    revived.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(revived(*inputs)), outputs)

    shapes = [tuple(x.shape) for x in inputs]
    assert tuple(layer.compute_output_shape(*shapes)) == outputs.shape
