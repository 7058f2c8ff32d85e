"""paper_repro.data: loading, Caffe's augmentation (host and device), views, subsets, errors."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from paper_repro import augment, data
from paper_repro.augment import AUGMENT_LAYER, AugmentConfig
from paper_repro.data import reader_tfds
from paper_repro.data.pipelines import IN_MEMORY_BYTES
from paper_repro.errors import UserError
from paper_repro.evaluate import evaluate
from paper_repro.experiments import resolve

PAPER = AugmentConfig()
QUICK = AugmentConfig(76, 67)
# Caffe's oversample at 256 -> 227, (row, column): four corners, then the centre.
CAFFE_256_227 = [(0, 0), (0, 29), (29, 0), (29, 29), (14, 14)]


def rng_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def split_of(images: np.ndarray, labels=None) -> tf.data.Dataset:
    """A dataset shaped like load_split's output (dict elements, known cardinality)."""
    n = len(images)
    labels = np.arange(n) % 3 if labels is None else labels
    return tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.asarray(labels, np.int64), "index": np.arange(n)}
    )


def epochs_as_arrays(dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(dataset.as_numpy_iterator())
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def numpy_view(image: np.ndarray, row: int, col: int, crop: int, mirrored: bool) -> np.ndarray:
    view = image[row : row + crop, col : col + crop]
    return view[:, ::-1] if mirrored else view


# ------------------------------------------------------------------ augmentation and views


def test_augment_config_rejects_a_crop_larger_than_the_resize():
    with pytest.raises(UserError, match="crop 80 is larger than resize 76"):
        AugmentConfig(76, 80)
    with pytest.raises(UserError, match="resize must be a positive integer"):
        AugmentConfig(0, 0)


def test_training_crops_equal_numpy_slices_at_the_paper_size():
    images = rng_images(16, 256)
    keys = augment.example_keys(7, 0, tf.range(16))
    crops = augment.caffe_augment(images, keys, PAPER).numpy()
    rows, cols, mirror = (t.numpy() for t in augment.crop_parameters(keys, PAPER))
    assert crops.shape == (16, 227, 227, 3) and crops.dtype == np.uint8
    assert 0 < mirror.sum() < 16, "the batch should hold mirrored and plain crops"
    for i in range(16):
        assert np.array_equal(crops[i], numpy_view(images[i], rows[i], cols[i], 227, mirror[i]))


def test_crop_offsets_cover_caffes_inclusive_range_uniformly():
    keys = augment.example_keys(0, 0, tf.range(30_000))
    rows, cols, mirror = (t.numpy() for t in augment.crop_parameters(keys, PAPER))
    for offsets in (rows, cols):
        counts = np.bincount(offsets)
        assert len(counts) == 30 and counts.min() > 850, "offsets 0..29, each ~1000 times"
    assert 0.47 < mirror.mean() < 0.53
    _, _, never = augment.crop_parameters(keys, AugmentConfig(mirror=False))
    assert not never.numpy().any()


def test_test_views_equal_numpy_slices_with_caffes_oversample_offsets():
    images = rng_images(2, 256)
    views = [v.numpy() for v in augment.crop_views(images, PAPER, 10)]
    expected = [(r, c, False) for r, c in CAFFE_256_227] + [(r, c, True) for r, c in CAFFE_256_227]
    assert len(views) == 10
    for view, (row, col, mirrored) in zip(views, expected, strict=True):
        for i in range(2):
            assert np.array_equal(view[i], numpy_view(images[i], row, col, 227, mirrored))
    five = [v.numpy() for v in augment.crop_views(images, PAPER, 5)]
    assert all(np.array_equal(a, b) for a, b in zip(five, views[:5], strict=True))
    (centre,) = augment.crop_views(images, PAPER, 1)
    assert np.array_equal(centre.numpy(), images[:, 14:241, 14:241])


def test_views_at_the_quick_size_use_floor_centre():
    images = rng_images(1, 76)
    offsets = [(r, c) for r, c, _ in augment.view_offsets(QUICK, 5)]
    assert offsets == [(0, 0), (0, 9), (9, 0), (9, 9), (4, 4)]
    (centre,) = augment.crop_views(images, QUICK, 1)
    assert np.array_equal(centre.numpy()[0], images[0, 4:71, 4:71])


def test_resize_is_half_pixel_bilinear_rounded_to_uint8_like_opencv():
    # cv2.resize(INTER_LINEAR) of the row [0, 100] to 4 pixels gives [0, 25, 75, 100].
    row = np.array([[0, 100], [0, 100]], np.uint8)[None, :, :, None].repeat(3, axis=-1)
    resized = augment.resize_uint8(row, 4).numpy()
    assert resized.dtype == np.uint8
    assert resized[0, 0, :, 0].tolist() == [0, 25, 75, 100]
    ones = np.array([[0, 1], [0, 1]], np.uint8)[None, :, :, None].repeat(3, axis=-1)
    assert augment.resize_uint8(ones, 4).numpy()[0, 0, :, 0].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("native", [28, 32])
def test_fused_resize_and_crop_equals_resize_then_slicing_at_the_paper_size(native):
    images = rng_images(6, native, seed=native)
    keys = augment.example_keys(1, 0, tf.range(6))
    crops = augment.caffe_augment(images, keys, PAPER).numpy()
    resized = augment.resize_uint8(images, 256).numpy()
    rows, cols, mirror = (t.numpy() for t in augment.crop_parameters(keys, PAPER))
    for i in range(6):
        assert np.array_equal(crops[i], numpy_view(resized[i], rows[i], cols[i], 227, mirror[i]))


def test_fused_resize_and_crop_is_within_one_level_at_other_ratios():
    images = rng_images(20, 32)
    keys = augment.example_keys(1, 0, tf.range(20))
    crops = augment.caffe_augment(images, keys, QUICK).numpy().astype(int)
    resized = augment.resize_uint8(images, 76).numpy()
    rows, cols, mirror = (t.numpy() for t in augment.crop_parameters(keys, QUICK))
    expected = np.stack(
        [numpy_view(resized[i], rows[i], cols[i], 67, mirror[i]) for i in range(20)]
    ).astype(int)
    assert np.abs(crops - expected).max() <= 1 and np.mean(crops != expected) < 1e-3


def test_crops_differ_between_images_of_one_batch():
    gradient = np.arange(76 * 76 * 3, dtype=np.int64).reshape(1, 76, 76, 3) % 251
    same = np.repeat(gradient.astype(np.uint8), 8, axis=0)
    pipeline = data.train_dataset(split_of(same), QUICK, batch_size=8, placement="host")
    crops, _ = next(pipeline.as_numpy_iterator())
    distinct = {c.tobytes() for c in crops}
    assert len(distinct) >= 6, f"only {len(distinct)} different crops of one image in a batch"


@pytest.mark.parametrize("in_memory_bytes", [IN_MEMORY_BYTES, 0], ids=["memory", "stream"])
def test_same_seed_same_pixels_and_a_resumed_epoch_equals_the_uninterrupted_one(in_memory_bytes):
    source = split_of(rng_images(10, 32))

    def run(seed, first_epoch=0, num_epochs=2):
        return epochs_as_arrays(
            data.train_dataset(
                source, QUICK, batch_size=4, seed=seed, first_epoch=first_epoch,
                num_epochs=num_epochs, placement="host", in_memory_bytes=in_memory_bytes,
            )
        )  # fmt: skip

    images, labels = run(3)
    assert images.shape == (20, 67, 67, 3)
    again_images, again_labels = run(3)
    assert np.array_equal(images, again_images) and np.array_equal(labels, again_labels)
    resumed, resumed_labels = run(3, first_epoch=1, num_epochs=1)
    assert np.array_equal(resumed, images[10:]) and np.array_equal(resumed_labels, labels[10:])
    assert not np.array_equal(images[:10], images[10:]), "epochs 0 and 1 must differ"
    assert not np.array_equal(run(4)[0], images), "seeds 3 and 4 must differ"


def test_an_epoch_visits_every_example_once_in_a_seeded_order():
    source = split_of(rng_images(10, 32), labels=np.arange(10))
    pipeline = data.train_dataset(source, QUICK, batch_size=4, seed=0, num_epochs=2)
    _, labels = epochs_as_arrays(pipeline)
    assert sorted(labels[:10]) == list(range(10)) and sorted(labels[10:]) == list(range(10))
    assert labels[:10].tolist() != labels[10:].tolist(), "each epoch is shuffled anew"


@pytest.mark.parametrize("size", [32, 76])
def test_host_and_device_augmentation_give_identical_pixels(size):
    source = split_of(rng_images(12, size))
    settings = dict(batch_size=5, seed=9, first_epoch=2, num_epochs=1)
    host = list(data.train_dataset(source, QUICK, placement="host", **settings))
    device = list(data.train_dataset(source, QUICK, placement="device", **settings))
    inputs = keras.Input((67, 67, 3))
    identity = augment.with_device_augmentation(keras.Model(inputs, inputs), QUICK)
    for (crops, labels), (features, device_labels) in zip(host, device, strict=True):
        assert features["image"].shape[1:] == (size, size, 3), "native uint8 crosses"
        assert features["image"].dtype == tf.uint8
        on_device = identity(features, training=True).numpy()
        assert np.array_equal(on_device, crops.numpy().astype(np.float32))
        assert np.array_equal(labels, device_labels)


def test_device_layer_centre_crops_outside_training_and_round_trips_through_a_keras_file(
    tmp_path,
):
    images = rng_images(3, 76)
    inputs = keras.Input((67, 67, 3))
    wrapped = augment.with_device_augmentation(keras.Model(inputs, inputs), QUICK)
    features = {"image": images, "key": np.arange(3, dtype=np.int64)}
    assert np.array_equal(wrapped(features, training=False).numpy(), images[:, 4:71, 4:71])
    wrapped.save(tmp_path / "wrapped.keras")
    loaded = keras.saving.load_model(tmp_path / "wrapped.keras")
    layer = loaded.get_layer(AUGMENT_LAYER)
    assert isinstance(layer, augment.CaffeAugment) and layer.augment == QUICK
    assert np.array_equal(loaded(features, training=True), wrapped(features, training=True))


def test_eval_dataset_gives_centre_crops_in_order():
    images = rng_images(7, 38)
    pairs = data.eval_dataset(split_of(images), QUICK, batch_size=4, placement="host")
    crops, labels = epochs_as_arrays(pairs)
    resized = augment.resize_uint8(images, 76).numpy()
    assert np.array_equal(crops, resized[:, 4:71, 4:71])
    assert labels.tolist() == (np.arange(7) % 3).tolist()


def test_default_placement_follows_gpu_visibility():
    expected = "device" if tf.config.list_physical_devices("GPU") else "host"
    assert data.default_placement() == expected == data.resolve_placement("auto")
    assert data.resolve_placement("host") == "host"
    with pytest.raises(UserError, match="placement must be one of auto, host, device"):
        data.resolve_placement("gpu")


def test_pipeline_arguments_are_checked():
    source = split_of(rng_images(4, 32))
    with pytest.raises(UserError, match="batch_size must be a positive integer"):
        data.train_dataset(source, QUICK, batch_size=0)
    with pytest.raises(UserError, match="seed must be a non-negative integer"):
        data.train_dataset(source, QUICK, batch_size=2, seed=-1)
    with pytest.raises(UserError, match="known"):
        data.eval_dataset(source.filter(lambda ex: True), QUICK, batch_size=2)


# ------------------------------------------------------------------------- image folders


def test_folder_of_grey_and_colour_images_of_varied_sizes(image_folder):
    rng = np.random.default_rng(1)
    grey = [rng.integers(0, 256, (20 + i, 30, 1)) for i in range(3)]
    colour = [rng.integers(0, 256, (25, 18 + i, 3)) for i in range(4)]
    root = image_folder({"cats": grey, "dogs": colour})
    dataset, info = data.load_split(str(root), "train")
    assert info.class_names == ("cats", "dogs") and info.num_examples == 7
    assert info.image_shape is None and info.num_classes == 2
    examples = list(dataset.as_numpy_iterator())
    assert [e["label"] for e in examples] == [0, 0, 0, 1, 1, 1, 1]
    assert [e["index"] for e in examples] == list(range(7))
    first = examples[0]["image"]
    assert first.shape == (20, 30, 3) and np.array_equal(first, np.repeat(grey[0], 3, axis=-1))
    batches = data.train_dataset(dataset, QUICK, batch_size=4, placement="device")
    features, _ = next(batches.as_numpy_iterator())
    assert features["image"].shape == (4, 76, 76, 3), "varied sizes are resized before batching"


def test_folder_subset_is_balanced_stable_and_nested(image_folder):
    blank = [np.zeros((4, 4, 3))] * 6
    root = image_folder({name: blank for name in "abc"})

    def chosen(size, seed=0):
        dataset, info = data.load_split(str(root), "train", subset_size=size, seed=seed)
        examples = list(dataset.as_numpy_iterator())
        assert info.num_examples == len(examples) == size
        return {int(e["index"]) for e in examples}, [int(e["label"]) for e in examples]

    six, labels = chosen(6)
    assert np.bincount(labels).tolist() == [2, 2, 2]
    assert chosen(6)[0] == six
    assert chosen(3)[0] < six, "a smaller subset is part of a larger one"
    assert any(chosen(6, seed=s)[0] != six for s in (1, 2, 3))
    assert np.bincount(chosen(7)[1]).tolist() == [3, 2, 2]


def test_a_folder_of_every_size_and_mode_loads_as_rgb_at_native_size(mixed_image_folder):
    root, sizes = mixed_image_folder
    dataset, info = data.load_split(str(root), "train")
    images = [example["image"] for example in dataset.as_numpy_iterator()]
    assert [image.shape[:2] for image in images] == sizes and info.num_examples == len(sizes)
    assert all(image.dtype == np.uint8 and image.shape[2] == 3 for image in images)
    pixels = np.concatenate([image.reshape(-1, 3) for image in images])
    np.testing.assert_allclose(data.channel_mean(dataset), pixels.mean(axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("truncated.jpg", lambda jpeg, png: jpeg[: len(jpeg) // 2]),
        ("truncated.png", lambda jpeg, png: png[: len(png) // 2]),
        ("empty.png", lambda jpeg, png: b""),
        ("notes.jpg", lambda jpeg, png: b"a text file named like an image\n"),
        ("png-named.gif", lambda jpeg, png: png[:-20]),
    ],
)
def test_an_unreadable_image_is_named_in_one_line(image_folder, name, content):
    image = np.random.default_rng(2).integers(0, 256, (30, 30, 3), np.uint8)
    root = image_folder({"a": [image] * 3, "b": [image] * 3})
    jpeg, png = tf.io.encode_jpeg(image).numpy(), tf.io.encode_png(image).numpy()
    bad = root / "train" / "b" / name
    bad.write_bytes(content(jpeg, png))
    with pytest.raises(UserError, match=rf"^{bad} is not a readable image .*: replace or remove"):
        data.load_split(str(root), "train")


def test_every_unreadable_image_is_counted(image_folder):
    root = image_folder({"a": [np.zeros((4, 4, 3))] * 2, "b": [np.zeros((4, 4, 3))] * 2})
    for name in ("x.png", "y.jpg", "z.bmp"):
        (root / "train" / "a" / name).write_bytes(b"")
    with pytest.raises(UserError, match=r"x\.png is not .* \(and 2 more unreadable files\)"):
        data.load_split(str(root), "train")


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        ({}, "0 class sub-folder"),
        ({"only": [np.zeros((4, 4, 3))]}, "needs at least 2"),
        ({"a": [np.zeros((4, 4, 3))], "b": []}, "holds no images"),
    ],
)
def test_bad_folders_are_explained(image_folder, classes, message):
    root = image_folder(classes)
    with pytest.raises(UserError, match=message):
        data.load_split(str(root), "train")


def test_missing_folder_is_explained():
    with pytest.raises(UserError, match=r"image folder \./no-such-folder does not exist"):
        data.load_split("./no-such-folder", "train")


# ---------------------------------------------------------------------------- real data


def test_real_mnist_is_grey_copied_to_three_channels(tfds_dir):
    dataset, info = data.load_split("mnist", "test")
    assert info.num_examples == 10_000 and info.image_shape == (28, 28, 3)
    assert info.class_names == tuple("0123456789")
    example = next(dataset.as_numpy_iterator())
    image = example["image"]
    assert image.dtype == np.uint8 and image.shape == (28, 28, 3) and image.max() > 0
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(
        image[..., 0], image[..., 2]
    )
    again = next(data.load_split("mnist", "test")[0].as_numpy_iterator())
    assert example["index"] == 0 and example["label"] == again["label"], "a stable order"
    assert np.array_equal(image, again["image"])


@pytest.mark.slow
def test_real_mnist_subset_is_class_balanced_and_stable(tfds_dir):
    def indices(size, seed):
        dataset, info = data.load_split("mnist", "test", subset_size=size, seed=seed)
        labels = dataset.map(lambda ex: (ex["index"], ex["label"])).as_numpy_iterator()
        index, label = map(np.array, zip(*labels, strict=True))
        assert info.num_examples == len(index) == size
        assert np.bincount(label, minlength=10).tolist() == [size // 10] * 10
        return set(index.tolist())

    chosen = indices(50, seed=0)
    assert indices(50, seed=0) == chosen
    assert indices(50, seed=1) != chosen


def test_real_mnist_channel_mean(tfds_dir):
    dataset, _ = data.load_split("mnist", "test")
    mean = data.channel_mean(dataset)
    assert mean[0] == mean[1] == mean[2]
    assert 33.0 < mean[0] < 34.5  # MNIST's mean intensity is 0.13 * 255


def test_real_cifar10_class_subset_is_relabelled_in_the_given_order(tfds_dir):
    dataset, info = data.load_split("cifar10", "test", class_subset=[5, 3])
    assert info.class_names == ("dog", "cat") and info.num_classes == 2
    assert info.num_examples == 2000
    full, _ = data.load_split("cifar10", "test")
    original = np.array([e["label"] for e in full.take(300).as_numpy_iterator()])
    kept = [(e["index"], e["label"]) for e in dataset.take(40).as_numpy_iterator()]
    assert {label for _, label in kept} == {0, 1}
    for index, label in kept:
        if index < 300:
            assert original[index] == (5, 3)[label]


def test_real_cifar10_pipelines(tfds_dir):
    dataset, info = data.load_split("cifar10", "test", subset_size=40)
    assert info.class_names[0] == "airplane"
    crops, labels = next(
        data.train_dataset(dataset, QUICK, batch_size=16, placement="host").as_numpy_iterator()
    )
    assert crops.shape == (16, 67, 67, 3) and labels.shape == (16,)
    crops, _ = next(
        data.eval_dataset(dataset, QUICK, batch_size=16, placement="host").as_numpy_iterator()
    )
    assert crops.shape == (16, 67, 67, 3)


def test_experiment_data_from_a_run_config(tfds_dir):
    config = types.SimpleNamespace(
        dataset="mnist", train_split="test", test_split="test[:20]", classes=None,
        train_subset=30, test_subset=None, resize=76, crop=67, mirror=False, batch_size=8,
        augment_on="host",
    )  # fmt: skip
    splits = data.load_experiment_data(config)
    assert splits.num_classes == 10 and splits.train_examples == 30
    assert splits.augment == AugmentConfig(76, 67, mirror=False)
    train = list(splits.train_batches(1, 3).as_numpy_iterator())
    assert len(train) == 2 * data.steps_per_epoch(30, 8) and train[0][0].shape == (8, 67, 67, 3)
    assert sum(len(y) for _, y in splits.validation_batches().as_numpy_iterator()) == 20
    model = keras.Sequential([keras.Input((67, 67, 3))])
    assert splits.training_model(model) is model


@pytest.mark.slow
def test_a_validation_split_carved_from_training_is_disjoint_from_what_trains(tfds_dir):
    """The selection rule's split (experiments.py): train[:90%] trains, train[90%:] validates."""
    config = resolve("full-cifar10", "mini", ["train_split=train[:90%]",
                     "test_split=train[90%:]", "train_subset=500", "test_subset=500"])  # fmt: skip
    splits = data.load_experiment_data(config)
    assert (splits.train_info.split, splits.test_info.split) == ("train[:90%]", "train[90%:]")
    assert splits.train_examples == splits.test_info.num_examples == 500

    def examples(dataset):
        return {(e["image"].tobytes(), int(e["label"])) for e in dataset.as_numpy_iterator()}

    trains, validates = examples(splits.train), examples(splits.test)
    assert len(trains) == 500 and len(validates) == 500 and not trains & validates
    labels = [label for _, label in trains]
    assert np.bincount(labels).tolist() == [100] * 5  # balanced within the slice, relabelled

    def count(split):
        return data.load_split("cifar10", split)[1].num_examples

    assert (count("train[:90%]"), count("train[90%:]")) == (45_000, 5_000)


def test_a_sliced_split_of_an_image_folder_is_refused(image_folder):
    root = image_folder({"a": [np.zeros((4, 4, 3))], "b": [np.ones((4, 4, 3))]})
    with pytest.raises(UserError, match=r"slices a tfds split.*name the split validation"):
        data.load_split(str(root), "train[:90%]")


def test_unknown_split_and_bad_class_subsets_are_explained(tfds_dir):
    with pytest.raises(UserError, match="Unknown split 'trian'"):
        data.load_split("mnist", "trian")
    with pytest.raises(UserError, match=r"class numbers in 0\.\.9"):
        data.load_split("mnist", "test", class_subset=[3, 10])
    with pytest.raises(UserError, match="at least 2 different classes"):
        data.load_split("mnist", "test", class_subset=[3, 3])
    with pytest.raises(UserError, match="at least the number of classes"):
        data.load_split("mnist", "test[:100]", subset_size=5)
    with pytest.raises(UserError, match="lower subset_size"):
        data.load_split("mnist", "test[:100]", subset_size=100)


# --------------------------------------------------------------------------- mocked tfds


def test_mocked_cifar100(mock_tfds):
    with mock_tfds(num_examples=10):
        dataset, info = data.load_split("cifar100", "train")
        assert info.num_classes == len(info.class_names) == 100
        assert info.image_shape == (32, 32, 3) and info.num_examples == 10
        crops, _ = next(data.train_dataset(dataset, QUICK, batch_size=4).as_numpy_iterator())
        assert crops.shape == (4, 67, 67, 3) and crops.dtype == np.uint8


def test_mocked_imagenet2012_has_varied_sizes_resized_per_image(mock_tfds):
    with mock_tfds(num_examples=6):
        _, info = data.load_split("imagenet2012", "validation", class_subset=[0, 1, 2])
        assert info.num_classes == 3 and info.image_shape is None
        full, full_info = data.load_split("imagenet2012", "validation")
        sizes = {e["image"].shape for e in full.as_numpy_iterator()}
        assert full_info.num_classes == 1000 and len(sizes) > 1
        features, _ = next(
            data.train_dataset(full, QUICK, batch_size=3, placement="device").as_numpy_iterator()
        )
        assert features["image"].shape == (3, 76, 76, 3) and features["key"].shape == (3,)
        inputs = keras.Input((67, 67, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1000, activation="softmax")(pooled))
        scores = evaluate(model, full, crops=10, augment=QUICK, batch_size=4, verbose=0)
        assert scores["num_examples"] == 6


# ------------------------------------------------------------------------ tfds mistakes


def test_unknown_dataset_lists_close_names():
    with pytest.raises(UserError, match=r"unknown dataset 'mnits'.*close names: .*mnist"):
        data.load_split("mnits", "train")


def test_unprepared_dataset_names_dataset_directory_and_how_to_prepare(tmp_path):
    with pytest.raises(UserError) as error:
        data.load_split("cifar100", "train", data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "cifar100 is not prepared" in message and str(tmp_path / "cifar100") in message
    assert f"tfds build cifar100 --data_dir {tmp_path}" in message


def test_unprepared_dataset_honours_tfds_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match=str(tmp_path)):
        data.load_split("cifar100", "test")


@pytest.mark.parametrize("download", [False, True])
def test_imagenet_without_manual_files_says_what_to_download_and_where(tmp_path, download):
    with pytest.raises(UserError) as error:
        data.load_split("imagenet2012", "train", data_dir=str(tmp_path), download=download)
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message and "\n" not in message


def test_download_with_the_data_prepared_fetches_nothing(tfds_dir, monkeypatch):
    """The README's one line (``TFDS_DATA_DIR=DIR ... --download``) works offline: a dataset DIR
    holds is read from it, and tfds is never asked to prepare (fetch) anything."""

    def fetch(builder, data_dir):
        raise AssertionError(f"asked to prepare {builder.name} in {data_dir}")

    monkeypatch.setattr(reader_tfds, "_prepare", fetch)
    _, info = data.load_split("mnist", "test[:8]", data_dir=tfds_dir, download=True)
    assert info.num_examples == 8


def test_non_image_dataset_is_refused(tmp_path):
    with pytest.raises(UserError, match="'imdb_reviews' is not an image classification dataset"):
        data.load_split("imdb_reviews", "train", data_dir=str(tmp_path))


def test_a_dataset_prepared_again_has_its_labels_read_again(tmp_path, monkeypatch):
    """A split's labels are read once per process, not once per run: the files they came from
    vouch for them, so a dataset prepared again from other images is read again."""
    import shutil

    from fake_datasets import register_cifar100_checksum, write_fake_cifar100

    manual = tmp_path / "downloads" / "manual"

    def prepared_labels(fine: tuple[int, ...]) -> list[int]:
        truth = write_fake_cifar100(manual, fine=fine, train=2, test=1)
        register_cifar100_checksum(monkeypatch, manual / "cifar-100-binary.tar.gz")
        dataset, info = data.load_split(
            "cifar100", "train", data_dir=str(tmp_path), download=True, class_subset=fine
        )
        assert info.num_examples == 2 * len(fine)
        found = []
        for example in dataset.as_numpy_iterator():
            fine_label = truth[example["image"].tobytes()][1]
            assert example["label"] == fine.index(fine_label)
            found.append(fine_label)
        return sorted(set(found))

    assert prepared_labels((3, 42)) == [3, 42]
    shutil.rmtree(tmp_path / "cifar100")
    shutil.rmtree(tmp_path / "downloads" / "extracted")  # tfds' own, which it would reuse
    assert prepared_labels((5, 7, 9)) == [5, 7, 9]
