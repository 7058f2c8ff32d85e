"""The network set up to train in a mode: what is frozen, which model is fitted, how it compiles.

One recipe for the trainer and for every benchmark, so that a benchmark times the step a run
takes: ``full`` trains the whole network; ``retrain`` freezes its features (conv1 .. pool5) and
trains fc6 .. fc8 on images; ``cached`` trains the classifier block alone, on cached pool5 values
(``--cache-features``). The loss is the paper's (Caffe's softmax loss); the optimizer is the
caller's, the paper's ``solver.CaffeSGD`` in the trainer and the benchmarks.

Like ``paper_repro.model``, this runs on any Keras backend: the GPU benchmark builds its models
here under JAX, on a machine without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras

from paper_repro.model import CLASSIFIER, FEATURES

CACHED = "cached"  # the mode of retraining on cached pool5 values: the classifier block alone
FROZEN_FEATURES = ("retrain", CACHED)  # the modes that train on frozen features
LOSS = "sparse_categorical_crossentropy"  # Caffe's SoftmaxWithLoss, on integer labels


def for_mode(
    network: keras.Model,
    mode: str,
    optimizer: keras.optimizers.Optimizer | None = None,
    *,
    jit_compile: bool = False,
    metrics: Sequence[str] | None = None,
    wrap: Callable[[keras.Model], keras.Model] | None = None,
) -> keras.Model:
    """The model that trains ``network`` in ``mode``, compiled when an ``optimizer`` is given.

    ``retrain`` and ``cached`` freeze the network's features in place, so that the network
    itself (saved once trained, or cached from) says what was trained; ``cached`` then returns
    its classifier block, any other mode the network, behind ``wrap`` where given (what runs in
    the step before the network: device augmentation). Other modes leave the network's layers as
    they are (a pretrained network fine-tuned whole keeps its own). Without an optimizer nothing
    is compiled: the trainer freezes a network so as soon as it is assembled, also the network of
    a resumed cached run, whose classifier comes from its checkpoint.
    """
    if mode in FROZEN_FEATURES:
        network.get_layer(FEATURES).trainable = False
    if mode == CACHED:
        model = network.get_layer(CLASSIFIER)
    elif wrap:
        model = wrap(network)
    else:
        model = network
    if optimizer is not None:
        model.compile(optimizer=optimizer, loss=LOSS, metrics=metrics, jit_compile=jit_compile)
    return model
