"""The paper's solver reproduces Caffe's SGD update exactly."""

import gc
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from paper_repro import fused_update
from paper_repro.experiments import RunConfig
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
    solver = paper_solver(RunConfig("mnist", "full"), steps_per_epoch=5)
    clone = CaffeSGD.from_config(solver.get_config())
    assert clone.coupled_weight_decay == 0.0005 and clone.bias_lr_mult == 2.0
    assert float(clone.learning_rate) == pytest.approx(0.001)


def test_a_schedule_in_iterations_replaces_the_one_in_epochs():
    """BVLC's CaffeNet solver: drops at iterations 100k, 200k, ... whatever an epoch's length."""
    config = RunConfig(
        "imagenet2012", "pretrain", base_lr=0.01, drop_epochs=(), drop_iterations=(100_000, 200_000)
    )
    solver = paper_solver(config, 5005)
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
    config = RunConfig("mnist", "full", base_lr=0.01, drop_epochs=(4,), warmup_epochs=2)
    solver = paper_solver(config, 5)
    clone = CaffeSGD.from_config(solver.get_config())
    for optimizer in (solver, clone):
        lr = []
        for step in (0, 4, 9, 10, 19, 20):
            optimizer.iterations.assign(step)
            lr.append(float(optimizer.learning_rate))
        assert lr == pytest.approx([0.001, 0.005, 0.01, 0.01, 0.01, 0.001])


def test_no_warm_up_leaves_the_paper_schedule_as_it_was():
    paper, warm = RunConfig("mnist", "full"), RunConfig("mnist", "full", warmup_epochs=0.5)
    assert not isinstance(paper_solver(paper, 5)._learning_rate, LinearWarmup)
    assert isinstance(paper_solver(warm, 5)._learning_rate, LinearWarmup)
    with pytest.raises(ValueError, match="at least 1"):
        LinearWarmup(step_schedule(0.1, []), 0)


def _train_dense(kernel: str | None, monkeypatch, steps: int = 5, function: str = "eager"):
    """A Dense layer large enough for the kernels to split the work between threads, trained
    ``steps`` steps across a learning-rate drop with ``kernel``'s update (None: the one
    ``CaffeSGD`` chooses), ``function`` ``"eager"``, ``"graph"`` or ``"xla"``; its weights."""
    rng = np.random.default_rng(1)
    start = [
        rng.normal(size=(300, 200)).astype(np.float32),
        rng.normal(size=200).astype(np.float32),
    ]
    grads = [[rng.normal(size=w.shape).astype(np.float32) for w in start] for _ in range(steps)]
    layer = keras.layers.Dense(200)
    layer.build((None, 300))
    layer.set_weights(start)
    optimizer = CaffeSGD(step_schedule(0.01, drop_steps=[3]))
    if kernel:
        monkeypatch.setattr(optimizer, "_kernel", lambda variable: kernel)
    variables = [layer.kernel, layer.bias]
    step = None
    if function != "eager":
        step = tf.function(lambda g: optimizer.apply(g, variables), jit_compile=function == "xla")
    for g in grads:
        step(g) if step else optimizer.apply(g, variables)
    return [layer.kernel.numpy(), layer.bias.numpy()]


def _fused_kernel_or_skip():
    if fused_update.kernel() is None:
        pytest.skip("the fused Caffe update could not be built here (no C++ compiler?)")


@pytest.mark.parametrize("kernel", ["tensorflow", "caffe"])
@pytest.mark.parametrize("function", ["eager", "graph"])
def test_the_fused_updates_are_keras_update_bit_for_bit(kernel, function, monkeypatch):
    """TensorFlow's fused momentum kernel, and this package's kernel with the decay folded in,
    against Keras' element-wise step: the same bits after every step, across the drop."""
    if kernel == "caffe":
        _fused_kernel_or_skip()
    calls = []
    momentum_op = tf.raw_ops.ResourceApplyKerasMomentum
    monkeypatch.setattr(
        tf.raw_ops,
        "ResourceApplyKerasMomentum",
        lambda **kw: calls.append("ResourceApplyKerasMomentum") or momentum_op(**kw),
    )
    caffe_op = fused_update.kernel
    monkeypatch.setattr(
        fused_update, "kernel", lambda: lambda **kw: calls.append("caffe") or caffe_op()(**kw)
    )
    keras_step = _train_dense("keras", monkeypatch, function=function)
    assert not calls
    for got, want in zip(
        _train_dense(kernel, monkeypatch, function=function), keras_step, strict=True
    ):
        np.testing.assert_array_equal(got, want)
    # Called at every step eagerly, at every trace in a graph. The bias always takes
    # TensorFlow's kernel: it has no decay to fold in.
    per_step = {"tensorflow": ["ResourceApplyKerasMomentum"] * 2,
                "caffe": ["caffe", "ResourceApplyKerasMomentum"]}[kernel]  # fmt: skip
    traces = 5 if function == "eager" else len(calls) // len(per_step)
    assert traces and calls == per_step * traces


def test_the_caffe_kernel_serves_float32_variables_on_the_cpu_outside_xla():
    _fused_kernel_or_skip()
    weight = tf.Variable(tf.zeros((3, 2)))
    seen = {}

    def probe(name):
        seen[name] = fused_update.usable(weight)

    probe("eager")
    tf.function(lambda: probe("graph"))()
    tf.function(lambda: probe("xla"), jit_compile=True)()
    seen["bfloat16"] = fused_update.usable(tf.Variable(tf.zeros(2, tf.bfloat16)))
    assert seen == {"eager": True, "graph": True, "xla": False, "bfloat16": False}


def test_the_chosen_kernel_updates_where_it_can_and_the_other_where_it_cannot():
    """``update_kernel`` (``update_choice``'s choice) picks between the kernels with the same
    bits; inside XLA, where the package's cannot run, TensorFlow's serves whatever the choice."""
    _fused_kernel_or_skip()
    weight = tf.Variable(tf.zeros((3, 2)))
    optimizer = CaffeSGD(0.01)
    assert optimizer.kernels(weight) == ("caffe", "tensorflow")
    seen = {}

    def probe(name):
        seen[name] = optimizer._kernel(weight)

    for choice in ("caffe", "tensorflow"):
        optimizer.update_kernel = choice
        probe(f"{choice}, eager")
        tf.function(lambda c=choice: probe(f"{c}, xla"), jit_compile=True)()
    assert seen == {"caffe, eager": "caffe", "caffe, xla": "tensorflow",
                    "tensorflow, eager": "tensorflow", "tensorflow, xla": "tensorflow"}  # fmt: skip


def test_under_xla_the_update_takes_tensorflows_kernels_and_is_the_same_to_rounding(monkeypatch):
    """XLA has no kernel of this package's: a step compiled with XLA takes TensorFlow's
    (forced, the package's kernel fails to compile there), and XLA's fusions leave the same
    update to float32 rounding."""
    _fused_kernel_or_skip()
    with pytest.raises(tf.errors.InvalidArgumentError, match="PaperReproCaffeMomentum"):
        _train_dense("caffe", monkeypatch, steps=1, function="xla")
    xla = _train_dense(None, monkeypatch, function="xla")
    for got, want in zip(xla, _train_dense("keras", monkeypatch), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_without_a_compiler_the_update_says_so_once_and_gives_the_same_bits(
    monkeypatch, tmp_path, caplog
):
    """No C++ compiler: one logged line naming the fix, TensorFlow's kernels chosen, and the
    weights of Keras' own update."""
    want = _train_dense("keras", monkeypatch)
    monkeypatch.setenv("PAPER_REPRO_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    fused_update.kernel.cache_clear()
    try:
        got = _train_dense(None, monkeypatch)
        optimizer = CaffeSGD(0.01)
        variable = tf.Variable(tf.zeros(2))
        optimizer.build([variable])
        assert optimizer._kernel(variable) == "tensorflow"
    finally:
        fused_update.kernel.cache_clear()
    said = [r.getMessage() for r in caplog.records if "fused Caffe update" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0]
    assert "no-such-compiler" in said[0] and "Set CXX" in said[0]
    assert not list(tmp_path.glob("*.so"))
    for got_weights, want_weights in zip(got, want, strict=True):
        np.testing.assert_array_equal(got_weights, want_weights)


def _fit_and_drop(make_optimizer) -> weakref.ref:
    """A weakref to the weight buffer (the handle a traced step captures) of a model fitted for
    one step with ``make_optimizer()`` and then dropped, its optimizer with it."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(make_optimizer(), "mse")
    model.fit(np.ones((4, 4)), np.ones((4, 3)), batch_size=4, verbose=0)
    handle = weakref.ref(model.layers[0].kernel.value.handle)
    del model
    gc.collect()
    return handle


def test_a_trained_model_is_freed_when_dropped():
    """Keras' SGD keeps every fitted model's weights alive (TensorFlow's all-reduce registers a
    gradient that holds the traced step), so a process that trains run after run grows by each
    model; CaffeSGD, with one replica, does not."""
    assert _fit_and_drop(lambda: keras.optimizers.SGD(0.01, momentum=0.9))() is not None
    assert _fit_and_drop(lambda: CaffeSGD(0.01))() is None
