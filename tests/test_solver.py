"""The paper's solver reproduces Caffe's SGD update exactly."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from paper_repro.solver import (
    CaffeSGD,
    LinearWarmup,
    epoch_schedule,
    paper_solver,
    step_schedule,
)


def caffe_sgd_numpy(params, grads_per_step, lrs, momentum=0.9, decay=0.0005):
    """Caffe's SGDSolver::ComputeUpdateValue by hand: weights lr_mult 1 decay_mult 1, biases 2/0."""
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    history = {k: np.zeros_like(v) for k, v in params.items()}
    for grads, lr in zip(grads_per_step, lrs, strict=True):
        for name, w in params.items():
            bias = name == "bias"
            local_lr = lr * (2.0 if bias else 1.0)
            g = grads[name] + (0.0 if bias else decay * w)
            history[name] = momentum * history[name] + local_lr * g
            params[name] = w - history[name]
    return params


def test_steps_equal_caffes_update_across_a_learning_rate_drop():
    rng = np.random.default_rng(0)
    layer = keras.layers.Dense(3)
    layer.build((None, 4))
    layer.set_weights([rng.normal(size=(4, 3)).astype(np.float32), np.ones(3, np.float32)])
    start = {"kernel": layer.kernel.numpy(), "bias": layer.bias.numpy()}
    grads = [{"kernel": rng.normal(size=(4, 3)), "bias": rng.normal(size=3)} for _ in range(4)]
    optimizer = CaffeSGD(step_schedule(0.1, drop_steps=[2]))
    for g in grads:
        optimizer.apply(
            [np.float32(g["kernel"]), np.float32(g["bias"])], [layer.kernel, layer.bias]
        )
    want = caffe_sgd_numpy(start, grads, lrs=[0.1, 0.1, 0.01, 0.01])
    np.testing.assert_allclose(layer.kernel.numpy(), want["kernel"], rtol=1e-5)
    np.testing.assert_allclose(layer.bias.numpy(), want["bias"], rtol=1e-5)


def test_keras_plain_sgd_differs_so_the_test_above_can_fail():
    layer = keras.layers.Dense(2)
    layer.build((None, 2))
    layer.set_weights([np.ones((2, 2), np.float32), np.ones(2, np.float32)])
    grads = [np.full((2, 2), 0.5, np.float32), np.full(2, 0.5, np.float32)]
    keras.optimizers.SGD(0.1, momentum=0.9).apply(grads, [layer.kernel, layer.bias])
    want = caffe_sgd_numpy(
        {"kernel": np.ones((2, 2)), "bias": np.ones(2)},
        [{"kernel": grads[0], "bias": grads[1]}],
        [0.1],
    )
    assert not np.allclose(layer.bias.numpy(), want["bias"])
    assert not np.allclose(layer.kernel.numpy(), want["kernel"])


@pytest.mark.parametrize(
    ("steps_per_epoch", "step", "lr"),
    [(10, 0, 1e-3), (10, 199, 1e-3), (10, 200, 1e-4), (10, 299, 1e-4), (3, 60, 1e-4)],
)
def test_paper_schedule_drops_after_epoch_20(steps_per_epoch, step, lr):
    schedule = epoch_schedule(0.001, steps_per_epoch)
    assert float(schedule(step)) == pytest.approx(lr)


def test_caffenet_pretraining_schedule_divides_every_100k_iterations():
    schedule = step_schedule(0.01, [100_000, 200_000, 300_000, 400_000])
    got = [float(schedule(s)) for s in (0, 99_999, 100_000, 250_000, 449_999)]
    assert got == pytest.approx([0.01, 0.01, 0.001, 0.0001, 0.000001])


def test_solver_survives_serialisation():
    solver = paper_solver(steps_per_epoch=5)
    clone = CaffeSGD.from_config(solver.get_config())
    assert clone.coupled_weight_decay == 0.0005 and clone.bias_lr_mult == 2.0
    assert float(clone.learning_rate) == pytest.approx(0.001)


def test_a_schedule_in_iterations_replaces_the_one_in_epochs():
    """BVLC's CaffeNet solver: drops at iterations 100k, 200k, ... whatever an epoch's length."""
    solver = paper_solver(5005, 0.01, drop_epochs=(20,), drop_iterations=(100_000, 200_000))
    lr = []
    for step in (99_999, 100_000, 100_099, 199_999, 200_000):
        solver.iterations.assign(step)
        lr.append(float(solver.learning_rate))
    assert lr == pytest.approx([0.01, 0.001, 0.001, 0.001, 0.0001])


def test_epoch_drops_fall_where_caffe_puts_them_when_the_batch_divides_the_data():
    """The paper's transfer runs: 80 divides MNIST's 60,000 and CIFAR's 50,000, so the drop after
    epoch 20 is Caffe's floor(iter / stepsize) with stepsize 20 * N / 80, to the iteration."""
    for examples in (60_000, 50_000):
        stepsize = 20 * examples // 80
        schedule = epoch_schedule(0.001, -(-examples // 80))
        for step in (stepsize - 1, stepsize, stepsize + 1):
            caffe = 0.001 * 0.1 ** (step // stepsize)
            assert float(schedule(step)) == pytest.approx(caffe)


def test_warm_up_ramps_linearly_into_the_step_schedule_and_survives_saving():
    """The study's lr-0.01 source: step s of a 10-step ramp trains at 0.01 * (s + 1) / 10, then
    the step policy as before (its drop at 20 included), also after a save and load."""
    solver = paper_solver(5, 0.01, drop_epochs=(4,), warmup_epochs=2)
    clone = CaffeSGD.from_config(solver.get_config())
    for optimizer in (solver, clone):
        lr = []
        for step in (0, 4, 9, 10, 19, 20):
            optimizer.iterations.assign(step)
            lr.append(float(optimizer.learning_rate))
        assert lr == pytest.approx([0.001, 0.005, 0.01, 0.01, 0.01, 0.001])


def test_no_warm_up_leaves_the_paper_schedule_as_it_was():
    assert not isinstance(paper_solver(5)._learning_rate, LinearWarmup)
    assert isinstance(paper_solver(5, warmup_epochs=0.5)._learning_rate, LinearWarmup)
    with pytest.raises(ValueError, match="at least 1"):
        LinearWarmup(step_schedule(0.1, []), 0)


def test_the_fused_update_is_keras_update_bit_for_bit(monkeypatch):
    """TensorFlow's fused momentum kernel against Keras' element-wise step, across a drop, on a
    layer large enough for Eigen to split the work between threads."""
    rng = np.random.default_rng(1)
    start = [
        rng.normal(size=(300, 200)).astype(np.float32),
        rng.normal(size=200).astype(np.float32),
    ]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in start] for _ in range(5)]
    calls = []
    fused = tf.raw_ops.ResourceApplyKerasMomentum
    monkeypatch.setattr(
        tf.raw_ops, "ResourceApplyKerasMomentum", lambda **kw: calls.append(1) or fused(**kw)
    )

    def train(fusable: bool) -> list[np.ndarray]:
        layer = keras.layers.Dense(200)
        layer.build((None, 300))
        layer.set_weights(start)
        optimizer = CaffeSGD(step_schedule(0.01, drop_steps=[3]))
        monkeypatch.setattr(optimizer, "_fusable", lambda variable: fusable)
        for g in grads:
            optimizer.apply(g, [layer.kernel, layer.bias])
        return [layer.kernel.numpy(), layer.bias.numpy()]

    keras_step = train(False)
    assert not calls
    for got, want in zip(train(True), keras_step, strict=True):
        np.testing.assert_array_equal(got, want)
    assert len(calls) == 2 * len(grads)
