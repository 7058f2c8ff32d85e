"""The network of the paper's Table II: a CaffeNet-layout AlexNet as a Keras functional model.

The model is three layers deep at the top, so that the paper's retraining freezes one block,
``features`` (conv1 .. pool5), and trains fc6 .. fc8 (``paper_repro.trainee.for_mode``):

- ``preprocess``: raw RGB pixels in 0..255 (uint8 or float) -> the network's input: optional
  RGB -> BGR and the mean subtraction. It lives in the model, not in the data pipeline, so an
  exported model takes raw images and a model imported from Caffe carries Caffe's BGR mean.
- ``features``: conv1 .. pool5, Caffe's layer names, pool before LRN as in BVLC CaffeNet.
- ``classifier``: flatten, fc6 .. fc8 and the softmax ``prob``.

Everything Caffe defines differently from Keras is written here and says so: the LRN (Caffe
divides alpha by the window size), the grouped convolution's fast path, Caffe's initialisation.

The module runs on any Keras 3 backend. TensorFlow is imported only when it is Keras' backend, and
two layers then call TensorFlow's fused kernels (the LRN, the grouped convolution) for speed; other
backends (JAX, for the GPU benchmark on a machine without TensorFlow) get portable ``keras.ops``
code with the same results.

Input sizes: the stack takes 67 + 32k pixels (227 for the paper, 67..195 for quick runs); those are
also the sizes at which Keras' floor-mode pooling equals Caffe's ceil mode.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from collections.abc import Mapping, Sequence

import keras
from keras import ops

from paper_repro import solver  # noqa: F401  (registers CaffeSGD, named by trained models)
from paper_repro.errors import UserError
from paper_repro.experiments import INITS

# TensorFlow only where Keras runs on it: the TF-only fast paths below are never reached otherwise.
TENSORFLOW_BACKEND = keras.backend.backend() == "tensorflow"
if TENSORFLOW_BACKEND:
    import tensorflow as tf

PAPER_IMAGE_SIZE = 227
MIN_IMAGE_SIZE = 67
IMAGE_SIZE_STEP = 32
DEFAULT_GROUPS = 2

# The blocks' and the output layer's names: contracts with the trainer (freezing, the cached
# classifier), the feature cache, the evaluation and the Caffe import.
MODEL_RECORD = "paper_repro.json"  # the member of a .keras file that ``save_model`` adds
PREPROCESS = "preprocess"
FEATURES = "features"
CLASSIFIER = "classifier"
FC8 = "fc8"
POOL5 = "pool5"
DROPOUT_DRAWS_PER_EPOCH = 2**20  # reserved per epoch by ``reseed_dropout``: one per layer and step

# (name, filters, kernel, stride, Caffe's padding, grouped, bias init) as in CaffeNet's
# train_val.prototxt: grouped conv2/4/5, bias 1 for conv2, conv4, conv5, fc6, fc7. Caffe's pad
# (k - 1) / 2 at stride 1 is exactly Keras' "same" padding.
_CONV_SPECS = (
    ("conv1", 96, 11, 4, 0, False, 0.0),
    ("conv2", 256, 5, 1, 2, True, 1.0),
    ("conv3", 384, 3, 1, 1, False, 0.0),
    ("conv4", 384, 3, 1, 1, True, 1.0),
    ("conv5", 256, 3, 1, 1, True, 1.0),
)
_FC_SPECS = (("fc6", 4096, 0.005, 1.0), ("fc7", 4096, 0.005, 1.0))
_CONV_STD = 0.01
_FC8_STD = 0.01
_CAFFE_NAMES = (*(spec[0] for spec in _CONV_SPECS), *(spec[0] for spec in _FC_SPECS), FC8)
_POOL_AFTER = {"conv1": "pool1", "conv2": "pool2", "conv5": POOL5}
_NORM_AFTER = {"conv1": "norm1", "conv2": "norm2"}


@keras.saving.register_keras_serializable(package="paper_repro")
class CaffePreprocessing(keras.layers.Layer):
    """Raw RGB pixels (0..255) to the network's input, as Caffe's data layer transforms them.

    ``(x[..., ::-1] if bgr else x) - mean`` then ``* scale``; ``mean`` is given in the network's
    channel order (BGR when ``bgr``). Caffe subtracts before it scales, so do we. The mean is a
    config constant rather than a weight: it is fixed by the pretraining data, never trained, and
    keeps the parameter count equal to Caffe's.

    ``mean_image=True`` subtracts, in addition, a per-pixel mean of the input's size: Caffe's TEST
    phase subtracts its 256x256 mean image cropped where the image was cropped (the centre), which
    ``caffe.import_caffenet(mean_image=...)`` stores here. It is a non-trainable weight (an image
    is too large for a config), zero until set, so it travels in the ``.keras`` file.
    """

    def __init__(
        self,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        bgr: bool = False,
        scale: float = 1.0,
        mean_image: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(mean) != 3:
            raise UserError(f"mean must have 3 values (one per channel), got {list(mean)}")
        self.mean = [float(m) for m in mean]
        self.bgr = bool(bgr)
        self.scale = float(scale)
        self.mean_image = bool(mean_image)

    def build(self, input_shape):
        if self.mean_image:
            self.mean_pixels = self.add_weight(
                shape=tuple(input_shape[1:]), initializer="zeros", trainable=False,
                name="mean_image",
            )  # fmt: skip

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.bgr:
            x = ops.flip(x, axis=-1)
        x = ops.subtract(x, ops.convert_to_tensor(self.mean, dtype=self.compute_dtype))
        if self.mean_image:
            x = ops.subtract(x, ops.cast(self.mean_pixels, self.compute_dtype))
        return ops.multiply(x, self.scale) if self.scale != 1.0 else x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "mean": self.mean,
            "bgr": self.bgr,
            "scale": self.scale,
            "mean_image": self.mean_image,
        }


@keras.saving.register_keras_serializable(package="paper_repro")
class LocalResponseNormalization(keras.layers.Layer):
    """Caffe's across-channel LRN: ``x / (k + alpha/size * sum_{size channels} x^2) ** beta``.

    Keras has no LRN layer, so there are two implementations of the same formula. On the
    TensorFlow backend ``call`` uses TensorFlow's fused LRN kernel (``tensorflow_lrn``), the fast
    one there; its op takes a half-width and does not divide alpha by the window, so Caffe's
    (size 5, alpha 1e-4) is ``depth_radius=2, alpha=2e-5`` there, converted here in one place.
    Other backends have no such kernel and use ``portable_lrn``, plain ``keras.ops`` that XLA fuses.
    Both compute in float32 (also under mixed precision) and return the input's dtype.
    """

    def __init__(
        self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0, **kwargs
    ):
        super().__init__(**kwargs)
        if size < 1 or size % 2 == 0:
            raise UserError(f"LRN size must be a positive odd number, got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def call(self, inputs):
        if TENSORFLOW_BACKEND:
            return self.tensorflow_lrn(inputs)
        return self.portable_lrn(inputs)

    def tensorflow_lrn(self, inputs):
        """TensorFlow's fused kernel (float32-only on CPU): the TF backend's fast path."""
        x = tf.cast(inputs, tf.float32)
        y = tf.nn.local_response_normalization(
            x,
            depth_radius=self.size // 2,
            bias=self.k,
            alpha=self.alpha / self.size,
            beta=self.beta,
        )
        return tf.cast(y, inputs.dtype)

    def portable_lrn(self, inputs):
        """Caffe's formula in ``keras.ops`` for any backend: channels zero-padded at the edges."""
        x = ops.cast(inputs, "float32")
        half, channels = self.size // 2, x.shape[-1]
        squared = ops.pad(ops.square(x), [(0, 0)] * (len(x.shape) - 1) + [(half, half)])
        window = squared[..., 0:channels]
        for i in range(1, self.size):
            window = window + squared[..., i : i + channels]
        scale = ops.power(self.k + (self.alpha / self.size) * window, self.beta)
        return ops.cast(x / scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "size": self.size,
            "alpha": self.alpha,
            "beta": self.beta,
            "k": self.k,
        }


@functools.cache
def grouped_convolution_is_native(dtype: str = "float32") -> bool:
    """Whether TensorFlow runs a grouped convolution and its gradients in ``dtype`` here.

    It does on GPUs and on CPUs with oneDNN (TensorFlow's default) in float32 and bfloat16; the
    CPU kernels without oneDNN (``TF_ENABLE_ONEDNN_OPTS=0``, and float16) refuse grouped
    convolutions or their gradients. Checked eagerly, once per dtype, also when first asked
    while a model is being traced. Never on backends other than TensorFlow.
    """
    if not TENSORFLOW_BACKEND:
        return False
    # The forward op and both gradient ops, 2 groups of 2 channels; the gradient ops by name
    # because init_scope (eager, also inside a trace) pauses gradient tapes.
    same = {"strides": [1, 1, 1, 1], "padding": "VALID"}
    with tf.init_scope():
        images, kernel = tf.zeros((1, 3, 3, 4), dtype), tf.zeros((1, 1, 2, 2), dtype)
        output_grad = tf.zeros((1, 3, 3, 2), dtype)
        try:
            tf.nn.convolution(images, kernel)
            tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(images), filter=kernel, out_backprop=output_grad, **same
            )
            tf.raw_ops.Conv2DBackpropFilter(
                input=images, filter_sizes=tf.shape(kernel), out_backprop=output_grad, **same
            )
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
            return False
    return True


@keras.saving.register_keras_serializable(package="paper_repro")
class GroupedConv2D(keras.layers.Conv2D):
    """Conv2D whose grouped convolution calls ``tf.nn.convolution`` directly on the TF backend.

    Keras routes every grouped convolution on the TF backend through an XLA-compiled function,
    about 4.5x slower for AlexNet training on a CPU than TensorFlow's own grouped kernel with the
    same weights and gradients. Where that kernel is missing, and on every other backend (JAX's
    convolution is grouped natively), this falls back to Keras' op, so the layer is always correct
    and fast where it can be. Kernel layout is Keras' (and Caffe's):
    output group ``g`` sees input channels ``g*C/G .. (g+1)*C/G``.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1 or not grouped_convolution_is_native(inputs.dtype.name):
            return super().convolution_op(inputs, kernel)
        return tf.nn.convolution(
            inputs,
            kernel,
            strides=list(self.strides),
            padding=self.padding.upper(),
            dilations=list(self.dilation_rate),
        )


def valid_image_sizes(up_to: int = PAPER_IMAGE_SIZE) -> list[int]:
    """Input sizes the Table II stack takes, up to ``up_to``: 67, 99, ..., 227."""
    return list(range(MIN_IMAGE_SIZE, up_to + 1, IMAGE_SIZE_STEP))


def check_image_size(image_size: int) -> None:
    """Refuse sizes whose pooling would be empty or differ from Caffe's ceil-mode pooling."""
    if image_size < MIN_IMAGE_SIZE or (image_size - MIN_IMAGE_SIZE) % IMAGE_SIZE_STEP:
        sizes = ", ".join(map(str, valid_image_sizes()))
        raise UserError(
            f"image size {image_size} does not fit the Table II layer stack: use 67 + 32k "
            f"pixels ({sizes}, ...); 227 is the paper's"
        )


def _check_build_args(num_classes: int, image_size: int, groups: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise UserError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    check_image_size(image_size)
    if groups < 1 or any(c % groups for c in (96, 256, 384)):
        raise UserError(f"groups must divide 96, 256 and 384 (CaffeNet uses 2), got {groups}")


def _seed(seed: int | None, offset: int) -> int | None:
    return None if seed is None else seed + offset


def _filler(init: str, std: float, seed: int | None) -> keras.initializers.Initializer:
    """Caffe's weight fillers: CaffeNet's ``gaussian`` (its std per layer) or ``xavier``.

    Caffe's xavier filler draws uniformly with variance 1 / fan_in: Keras' LeCun uniform.
    """
    if init == "xavier":
        return keras.initializers.LecunUniform(seed=seed)
    return keras.initializers.RandomNormal(stddev=std, seed=seed)


def _features_block(
    image_size: int, groups: int, init: str, seed: int | None, pool5: bool = True
) -> keras.Model:
    inputs = keras.Input((image_size, image_size, 3), name="data")
    x = inputs
    for i, (name, filters, kernel, stride, pad, grouped, bias) in enumerate(_CONV_SPECS):
        x = GroupedConv2D(
            filters,
            kernel,
            strides=stride,
            padding="same" if pad else "valid",
            groups=groups if grouped else 1,
            kernel_initializer=_filler(init, _CONV_STD, _seed(seed, i)),
            bias_initializer=keras.initializers.Constant(bias),
            name=name,
        )(x)
        x = keras.layers.ReLU(name=name.replace("conv", "relu"))(x)
        if name in _POOL_AFTER and (pool5 or _POOL_AFTER[name] != POOL5):
            x = keras.layers.MaxPooling2D(3, strides=2, name=_POOL_AFTER[name])(x)
        if name in _NORM_AFTER:
            x = LocalResponseNormalization(name=_NORM_AFTER[name])(x)
    return keras.Model(inputs, x, name=FEATURES)


def _classifier_block(
    feature_shape: tuple[int, ...], num_classes: int, dropout: float, init: str, seed: int | None
) -> keras.Model:
    inputs = keras.Input(feature_shape, name="pool5")
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i, (name, units, std, bias) in enumerate(_FC_SPECS):
        x = keras.layers.Dense(
            units,
            kernel_initializer=_filler(init, std, _seed(seed, 10 + i)),
            bias_initializer=keras.initializers.Constant(bias),
            name=name,
        )(x)
        x = keras.layers.ReLU(name=name.replace("fc", "relu"))(x)
        drop_name = name.replace("fc", "drop")
        x = keras.layers.Dropout(dropout, seed=_seed(seed, 20 + i), name=drop_name)(x)
    x = keras.layers.Dense(
        num_classes, kernel_initializer=_filler(init, _FC8_STD, _seed(seed, 12)), name=FC8
    )(x)
    # float32 softmax even under mixed precision: the probabilities feed the loss and 10-crop mean.
    outputs = keras.layers.Softmax(dtype="float32", name="prob")(x)
    return keras.Model(inputs, outputs, name=CLASSIFIER)


def build_alexnet(
    num_classes: int,
    image_size: int = PAPER_IMAGE_SIZE,
    groups: int = DEFAULT_GROUPS,
    *,
    mean: Sequence[float] = (0.0, 0.0, 0.0),
    bgr: bool = False,
    mean_image: bool = False,
    dropout: float = 0.5,
    init: str = "gaussian",
    seed: int | None = None,
    pool5: bool = True,
    name: str = "alexnet",
) -> keras.Model:
    """The Table II network with Caffe's initialisation, taking raw RGB images in 0..255.

    Args:
        num_classes: outputs of fc8 (1000 for ILSVRC-12).
        image_size: square input size, 67 + 32k (227 as in the paper).
        groups: 2 for CaffeNet's grouped conv2, conv4, conv5 (needed to import its weights);
            1 for the ungrouped variant (62.4M instead of 61.0M parameters).
        mean, bgr, mean_image: the preprocessing (see ``CaffePreprocessing``), from the
            pretraining data.
        dropout: rate of drop6 and drop7.
        init: ``gaussian`` (CaffeNet's: std 0.01, 0.005 for fc6/fc7) or ``xavier`` (Caffe's
            xavier filler); biases are CaffeNet's constants either way.
        seed: makes initial weights and dropout masks reproducible.
        pool5: false ends the features at relu5, so that the classifier reads conv5's spatial
            layout (3x3x256 at 67 pixels instead of pool5's 1x1x256); the weights are the same.
    """
    _check_build_args(num_classes, image_size, groups)
    if init not in INITS:
        raise UserError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    features = _features_block(image_size, groups, init, seed, pool5)
    classifier = _classifier_block(features.output.shape[1:], num_classes, dropout, init, seed)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = CaffePreprocessing(mean=mean, bgr=bgr, mean_image=mean_image, name=PREPROCESS)(inputs)
    outputs = classifier(features(x))
    return keras.Model(inputs, outputs, name=name)


def save_model(model: keras.Model, path: str | os.PathLike, record: Mapping | None = None) -> None:
    """``model.save`` as ``.keras``, with ``record`` (what the model was trained on) inside.

    A ``.keras`` file is a zip of Keras' config, metadata and weights; the record is one more
    member, ``MODEL_RECORD``, which Keras' loader leaves alone. So the model file alone says
    what its outputs mean (class names, dataset, geometry), without its run directory.
    """
    model.save(path)
    if record is not None:
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(MODEL_RECORD, json.dumps(record, indent=2) + "\n")


def model_record(path: str | os.PathLike) -> dict:
    """The record :func:`save_model` put in a ``.keras`` file; ``{}`` where it has none.

    A record that does not read as a JSON object is a damaged file, refused naming it: what the
    model's outputs mean would otherwise be guessed.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if MODEL_RECORD not in archive.namelist():
                return {}
            record = json.loads(archive.read(MODEL_RECORD))
    except (zipfile.BadZipFile, ValueError, RecursionError):  # JSON's errors are ValueErrors
        record = None
    if not isinstance(record, dict):
        raise UserError(
            f"{path}: its member {MODEL_RECORD} (what the model was trained on) is not a JSON "
            "object; the file is damaged: copy or export it again from its run directory"
        )
    return record


def load_model(path, *, compile: bool = False) -> keras.Model:
    """A saved model (``.keras``), in safe mode: the layers it may use are registered here."""
    try:
        return keras.saving.load_model(path, compile=compile, safe_mode=True)
    except Exception as error:  # any failure to read means the same to the user
        raise UserError(
            f"{path}: not a readable Keras model ({type(error).__name__}: {error})"
        ) from None


def caffe_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """The model's layers by Caffe name (conv1 .. fc8, norm1, pool5, ...), looking inside blocks."""
    layers = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            layers.update(caffe_layers(layer))
        else:
            layers[layer.name] = layer
    return layers


def scale_pool5(model: keras.Model, factor: float) -> None:
    """Multiply every pool5 value by ``factor`` > 0: conv5's kernel and bias scale by it, and
    relu5 and pool5 (a max) commute with a positive factor. The features stay the same function
    of the image, at another scale (the control at a source's, ``RunConfig.random_rms``)."""
    if not factor > 0:
        raise ValueError(
            f"factor must be > 0 (relu5 and pool5 commute with no other), got {factor!r}"
        )
    for weight in caffe_layers(model)["conv5"].weights:
        weight.assign(weight * factor)


def reseed_dropout(model: keras.Model, epoch: int) -> None:
    """Give every dropout layer of ``model`` epoch ``epoch``'s own range of random draws.

    So that a resumed epoch draws the masks an uninterrupted one would, without saving any random
    state. Keras' ``SeedGenerator.state`` holds ``[seed, draws so far]``: the layer's own seed
    (layers stay distinct) and a counter that each draw advances by one. Writing the counter is
    the one place this package relies on that layout; ``test_model`` checks it against the
    installed Keras. (A dropout of rate 0 has no generator.)
    """
    for layer in caffe_layers(model).values():
        generator = getattr(layer, "seed_generator", None)
        if isinstance(layer, keras.layers.Dropout) and generator is not None:
            layer_seed = generator.state.numpy()[0]
            generator.state.assign([layer_seed, epoch * DROPOUT_DRAWS_PER_EPOCH])


def alexnet_problem(model: keras.Model) -> str | None:
    """What makes ``model`` other than this package's whole Table II network, None if nothing.

    The whole network takes square RGB images and holds the blocks preprocess, features and
    classifier with Caffe's layers: what the trainer retrains from, and what evaluation and
    export cut image views for. A classifier block alone (an unfinished retraining on cached
    features checkpoints one: its input is pool5's features, not images) or any other Keras model
    would fail deep inside them, or give numbers that mean nothing.
    """
    names = sorted(layer.name for layer in model.layers)
    layers = caffe_layers(model)
    inputs = _input_shapes(model)
    if FEATURES not in names and FC8 in layers:
        return (
            f"it holds a classifier block alone, fc6 .. fc8 on pool5 features of shape "
            f"{', '.join(map(str, inputs))}, not the whole network"
        )
    if not {PREPROCESS, FEATURES, CLASSIFIER} <= set(names):
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "") or "none"
        return f"it needs the layers preprocess, features and classifier; it has {shown}"
    missing = [name for name in _CAFFE_NAMES if name not in layers]
    if missing:
        return f"it lacks the layers {', '.join(missing)}"
    size = inputs[0][0] if len(inputs) == 1 and len(inputs[0]) == 3 else None
    if inputs != [(size, size, 3)] or size not in valid_image_sizes(size or 0):
        return f"it takes inputs of shape {', '.join(map(str, inputs))}, not square RGB images"
    return None


def _input_shapes(model: keras.Model) -> list[tuple]:
    """The shapes of one example of each input; none for a Sequential model never built."""
    try:
        return [tuple(tensor.shape[1:]) for tensor in model.inputs]
    except AttributeError:  # Keras: "Sequential model ... has no defined inputs yet"
        return []


def describe(model: keras.Model) -> dict:
    """Arguments of ``build_alexnet`` that reproduce ``model``'s features and preprocessing.

    Raises ``UserError`` for a model that is not this package's AlexNet (``alexnet_problem``).
    """
    problem = alexnet_problem(model)
    if problem:
        raise UserError(f"model '{model.name}' is not a paper_repro AlexNet ({problem})")
    pre = model.get_layer(PREPROCESS)
    layers = caffe_layers(model)
    return {
        "image_size": int(model.input_shape[1]),
        "groups": int(layers["conv2"].groups),
        "mean": pre.mean,
        "bgr": pre.bgr,
        "mean_image": pre.mean_image,
        "dropout": float(layers["drop6"].rate),
        "pool5": any(layer.name == POOL5 for layer in model.get_layer(FEATURES).layers),
    }


def replace_classifier(
    model: keras.Model,
    num_classes: int,
    *,
    keep_fc67: bool = True,
    init: str = "gaussian",
    seed: int | None = None,
    dropout: float | None = None,
    mean: Sequence[float] | None = None,
    pool5: bool | None = None,
) -> keras.Model:
    """A new model with ``model``'s preprocessing and features and a classifier for N classes.

    Retraining starts from a pretrained network: conv1 .. conv5 (and, by default, fc6 and fc7)
    start from its values; fc8 is always fresh, sized for the new classes. The source model is
    left untouched (weights are copied, not shared); ``init`` fills the fresh layers.
    ``features`` comes back trainable; freezing it is the caller's decision. ``dropout`` sets
    the new classifier's rate (default: the source's); ``mean`` replaces the source's
    preprocessing mean (and its mean image, if any) with a per-channel mean of RGB images, such
    as the target's own (reversed here for a BGR network such as an imported CaffeNet).
    ``pool5`` false ends the new features at relu5 (``build_alexnet``; default: as the source's);
    fc6 then reads another layout than the source's, so ``keep_fc67`` must be false.
    """
    geometry = describe(model)
    if dropout is not None:
        geometry["dropout"] = dropout
    if pool5 is not None:
        geometry["pool5"] = pool5
    if mean is not None:
        mean = tuple(mean)[::-1] if geometry["bgr"] else tuple(mean)
        geometry.update(mean=mean, mean_image=False)
    new = build_alexnet(num_classes, **geometry, init=init, seed=seed, name=model.name)
    blocks = (FEATURES,) if mean is not None else (PREPROCESS, FEATURES)
    for block in blocks:
        new.get_layer(block).set_weights(model.get_layer(block).get_weights())
    if keep_fc67:
        old_layers, new_layers = caffe_layers(model), caffe_layers(new)
        for name in ("fc6", "fc7"):
            new_layers[name].set_weights(old_layers[name].get_weights())
    return new
