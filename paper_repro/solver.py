"""The paper's solver: Caffe's SGD update as a Keras optimizer, and its step learning rate.

Caffe updates every weight ``w`` with gradient ``g`` as::

    v <- momentum * v + lr * lr_mult * (g + weight_decay * decay_mult * w)
    w <- w - v

with ``lr_mult = 1, decay_mult = 1`` for weights and ``lr_mult = 2, decay_mult = 0`` for biases in
CaffeNet. Keras' SGD has the same momentum form (its velocity is Caffe's negated), but its
``weight_decay`` argument is decoupled (applied to ``w`` outside the momentum), so the coupled decay
and the bias learning-rate multiplier are added here, in ``update_step``, the one place Keras
leaves for a per-variable update rule. The decay is in the optimizer rather than in kernel
regularizers so that exported models carry no training-only terms and the reported loss is the
data loss, as Caffe reports it. On the CPU a weight's decay and momentum step run as one kernel
of the package's own (``fused_update``) or as TensorFlow's, whichever is faster on the machine
(``update_choice`` measures it), bit for bit the element-wise update either way (``_kernel``).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from paper_repro.experiments import RunConfig

if keras.backend.backend() == "tensorflow":  # the GPU checks run Keras on JAX, without TensorFlow
    import tensorflow as tf

    from paper_repro import fused_update

# The paper's solver, stated once: as RunConfig's defaults, which the experiments (a module
# without TensorFlow) declare. CaffeNet's bias multiplier is no run setting.
PAPER_BASE_LR = RunConfig.base_lr
PAPER_MOMENTUM = RunConfig.momentum
PAPER_WEIGHT_DECAY = RunConfig.weight_decay
PAPER_DROP_EPOCHS = RunConfig.drop_epochs
PAPER_GAMMA = RunConfig.gamma
BIAS_LR_MULT = 2.0


def is_bias(variable) -> bool:
    """Caffe's second blob of a layer: Keras names it ``bias``."""
    return variable.name == "bias"


@keras.saving.register_keras_serializable(package="paper_repro")
class CaffeSGD(keras.optimizers.SGD):
    """SGD with momentum, coupled weight decay on weights and a learning-rate multiplier on biases.

    Args:
        learning_rate: a float or a ``LearningRateSchedule`` (see ``step_schedule``).
        momentum: Caffe's momentum (0.9 in the paper).
        coupled_weight_decay: added to the gradient of every non-bias variable times its value.
        bias_lr_mult: biases learn this many times faster, without decay (2 in CaffeNet).
    """

    def __init__(
        self,
        learning_rate=PAPER_BASE_LR,
        momentum: float = PAPER_MOMENTUM,
        coupled_weight_decay: float = PAPER_WEIGHT_DECAY,
        bias_lr_mult: float = BIAS_LR_MULT,
        name: str = "caffe_sgd",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, momentum=momentum, name=name, **kwargs)
        self.coupled_weight_decay = float(coupled_weight_decay)
        self.bias_lr_mult = float(bias_lr_mult)
        # The kernel that updates decayed weights where more than one can (``kernels``): the
        # machine's, not the model's, so it is set per process (``update_choice.choose``) and
        # never saved with the optimizer. Until then, the package's own.
        self.update_kernel = "caffe"

    def build(self, variables):
        super().build(variables)
        # The TF backend hands update_step the raw tf.Variable ("fc6/bias:0"), so which variables
        # are biases is read once here from the Keras variables, by their index.
        self._is_bias = [is_bias(v) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        decay = self.coupled_weight_decay
        if self._is_bias[self._get_variable_index(variable)]:
            learning_rate = ops.multiply(learning_rate, self.bias_lr_mult)
            decay = 0.0
        kernel = self._kernel(variable)
        if kernel == "caffe" and decay:
            momentum = self.momentums[self._get_variable_index(variable)]
            fused_update.apply(variable, momentum, learning_rate, gradient, self.momentum, decay)
            return
        if decay:
            gradient = ops.add(gradient, ops.multiply(ops.cast(variable, gradient.dtype), decay))
        if kernel == "keras":
            super().update_step(gradient, variable, learning_rate)
        else:
            self._fused_momentum_step(gradient, variable, learning_rate)

    def kernels(self, variable) -> tuple[str, ...]:
        """The kernels that can update ``variable``, all with the same bits (tests/test_solver.py):

        - ``"caffe"``: this package's kernel, decay and momentum in one pass
          (``fused_update``), for a float32 variable on the CPU outside XLA;
        - ``"tensorflow"``: the decay as two element-wise ops, then TensorFlow's fused
          momentum kernel, for any other plain TensorFlow variable outside tf.distribute;
        - ``"keras"``: Keras' own element-wise step, for mirrored variables under
          tf.distribute (Keras' update handles them) and on other backends."""
        if not (
            keras.backend.backend() == "tensorflow"
            and isinstance(variable, tf.Variable)
            and self.momentum != 0
            and not self.nesterov
            and not tf.distribute.has_strategy()
        ):
            return ("keras",)
        return ("caffe", "tensorflow") if fused_update.usable(variable) else ("tensorflow",)

    def _kernel(self, variable) -> str:
        """The kernel that updates ``variable``: ``update_kernel`` where it can, else the one
        that can (inside XLA, say, the package's kernel cannot)."""
        kernels = self.kernels(variable)
        return self.update_kernel if self.update_kernel in kernels else kernels[0]

    def _all_reduce_sum_gradients(self, grads_and_vars):
        """The gradients summed over replicas: with one replica (no tf.distribute strategy), the
        gradients themselves, without TensorFlow's all-reduce.

        Keras' TensorFlow optimizer all-reduces the gradients in every traced step, even with one
        replica, and TensorFlow's all-reduce wraps them in a ``tf.custom_gradient``. In a traced
        function that registers a backward function in TensorFlow's global gradient registry,
        never removed, which holds the traced step and, through it, every weight and velocity of
        the model (TensorFlow issue 97697). Each run trained in a process then kept its model's
        memory after it ended: ``reproduce`` and the test suite grew by about the size of each
        model and its velocities (tests/test_solver.py). Under a strategy Keras' all-reduce runs:
        it sums across replicas there."""
        if tf.distribute.has_strategy():
            return super()._all_reduce_sum_gradients(grads_and_vars)
        return list(grads_and_vars)

    def _fused_momentum_step(self, gradient, variable, learning_rate) -> None:
        """Keras' momentum step (``v = momentum * v - lr * g; w += v``) as one TensorFlow kernel,
        ``ResourceApplyKerasMomentum``: one pass over the weight, velocity and gradient instead
        of four element-wise ops and two assignments, each a pass over memory. It computes the
        same float32 products and sums in the same order, and TensorFlow's CPU build fuses none
        of them into FMAs, so every step is bit for bit Keras' (tests/test_solver.py)."""
        momentum = self.momentums[self._get_variable_index(variable)]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=momentum.handle,
            lr=ops.cast(learning_rate, variable.dtype),
            grad=ops.cast(gradient, variable.dtype),
            momentum=ops.cast(self.momentum, variable.dtype),
            use_nesterov=self.nesterov,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "coupled_weight_decay": self.coupled_weight_decay,
            "bias_lr_mult": self.bias_lr_mult,
        }


def step_schedule(
    base_lr: float, drop_steps: Sequence[int], gamma: float = PAPER_GAMMA
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Caffe's "step" policy: ``base_lr * gamma ** (number of drop_steps <= iteration)``.

    Keras evaluates the schedule at the optimizer's iteration count *before* the step and keeps
    the first value while ``step <= boundary``, so each boundary is one less than Caffe's.
    """
    if not drop_steps:
        return keras.optimizers.schedules.PiecewiseConstantDecay([0], [base_lr, base_lr])
    boundaries = [int(step) - 1 for step in drop_steps]
    values = [base_lr * gamma**i for i in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def epoch_schedule(
    base_lr: float,
    steps_per_epoch: int,
    drop_epochs: Sequence[float] = PAPER_DROP_EPOCHS,
    gamma: float = PAPER_GAMMA,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The paper's schedule in epochs (0.001, divided by 10 after epoch 20), at any epoch scale.

    An epoch here is ``steps_per_epoch = ceil(N / batch)`` steps, the last batch partial, so the
    drop comes after exactly ``drop_epoch`` passes over the data. Caffe has no epochs: its data
    layer wraps around to full batches and its step policy counts iterations, so the same drop
    written as a Caffe ``stepsize`` would be ``drop_epoch * N / batch``. The two agree wherever
    the batch divides the training set (MNIST 60,000 and CIFAR 50,000 by 80: every paper transfer
    run); otherwise the drop comes up to ``drop_epoch`` steps later here
    (docs/caffe-differences.md).
    """
    return step_schedule(base_lr, [round(e * steps_per_epoch) for e in drop_epochs], gamma)


@keras.saving.register_keras_serializable(package="paper_repro")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule(step) * min(1, (step + 1) / warmup_steps)``: a linear ramp into any schedule.

    Not Caffe's nor the paper's: the transfer study (figures/study/PLAN.md) tries a source trained
    at lr 0.01, which diverges from Xavier weights at mini's scale without a ramp. Keras' only
    warm-up lives inside ``CosineDecay``, so this wraps the step policy instead. Its first step
    trains at ``schedule / warmup_steps``; from step ``warmup_steps - 1`` on it is the schedule.
    """

    def __init__(
        self, schedule: keras.optimizers.schedules.LearningRateSchedule, warmup_steps: int
    ):
        if warmup_steps < 1:
            raise ValueError(f"warmup_steps must be at least 1, got {warmup_steps}")
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        ramp = ops.divide(ops.cast(step, "float32") + 1.0, float(self.warmup_steps))
        return ops.multiply(self.schedule(step), ops.minimum(ramp, 1.0))

    def get_config(self):
        return {
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config):
        schedule = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(schedule, config["warmup_steps"])


def paper_solver(config: RunConfig, steps_per_epoch: int) -> CaffeSGD:
    """A run's solver: ``config``'s ``base_lr``, ``momentum``, ``weight_decay`` and step schedule
    (``gamma`` after each of ``drop_epochs``, an epoch being ``steps_per_epoch`` batches).

    ``drop_iterations`` (Caffe's ``stepsize`` multiples, as BVLC's CaffeNet solver gives them)
    replaces ``drop_epochs``: a schedule the source states in iterations is followed in
    iterations. ``warmup_epochs`` > 0 ramps the rate in linearly first (``LinearWarmup``).
    """
    if config.drop_iterations is not None:
        schedule = step_schedule(config.base_lr, config.drop_iterations, config.gamma)
    else:
        schedule = epoch_schedule(config.base_lr, steps_per_epoch, config.drop_epochs, config.gamma)
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    if warmup_steps:
        schedule = LinearWarmup(schedule, warmup_steps)
    return CaffeSGD(schedule, momentum=config.momentum, coupled_weight_decay=config.weight_decay)
