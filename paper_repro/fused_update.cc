// Caffe's update of a decayed weight in one pass over memory (see fused_update.py):
//
//   v <- momentum * v - lr * (g + decay * w)
//   w <- w + v
//
// with Keras' sign of the velocity (Caffe's negated), each product and sum rounded to float32
// in the order of the three TensorFlow kernels it replaces: Mul (decay * w), AddV2 (g + that)
// and ResourceApplyKerasMomentum (accum * momentum - grad * lr; var += accum). Compiled with
// -ffp-contract=off, so no product and sum are fused into an FMA and every bit is theirs.
#define EIGEN_USE_THREADS
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/kernels/training_op_helpers.h"

namespace tensorflow {

REGISTER_OP("PaperReproCaffeMomentum")
    .Input("var: resource")
    .Input("accum: resource")
    .Input("lr: float")
    .Input("grad: float")
    .Input("momentum: float")
    .Input("decay: float")
    .SetShapeFn(shape_inference::NoOutputs);

namespace {

using CPU = Eigen::ThreadPoolDevice;

void Update(float* __restrict w, float* __restrict v, const float* __restrict g, float lr,
            float momentum, float decay, Eigen::Index first, Eigen::Index last) {
  for (Eigen::Index i = first; i < last; ++i) {
    const float decayed = g[i] + w[i] * decay;
    const float step = v[i] * momentum - decayed * lr;
    v[i] = step;
    w[i] = w[i] + step;
  }
}

class CaffeMomentumOp : public OpKernel {
 public:
  explicit CaffeMomentumOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    auto locks = MaybeLockVariableInputMutexesInOrder<CPU, float>(context, /*do_lock=*/true,
                                                                  /*sparse=*/false, {0, 1});
    Tensor var, accum;
    OP_REQUIRES_OK(context, GetInputTensorFromVariable<CPU, float>(context, 0, true, false, &var));
    OP_REQUIRES_OK(context,
                   GetInputTensorFromVariable<CPU, float>(context, 1, true, false, &accum));
    const Tensor& grad = context->input(3);
    OP_REQUIRES(context,
                var.shape().IsSameSize(accum.shape()) && var.shape().IsSameSize(grad.shape()),
                errors::InvalidArgument("var, accum and grad differ in shape: ",
                                        var.shape().DebugString(), ", ",
                                        accum.shape().DebugString(), ", ",
                                        grad.shape().DebugString()));
    float* w = var.flat<float>().data();
    float* v = accum.flat<float>().data();
    const float* g = grad.flat<float>().data();
    const float lr = context->input(2).scalar<float>()();
    const float momentum = context->input(4).scalar<float>()();
    const float decay = context->input(5).scalar<float>()();
    // Per element: three floats read, two written, six float operations.
    context->eigen_device<CPU>().parallelFor(
        var.NumElements(), Eigen::TensorOpCost(12, 8, 6),
        [=](Eigen::Index first, Eigen::Index last) {
          Update(w, v, g, lr, momentum, decay, first, last);
        });
  }
};

}  // namespace

REGISTER_KERNEL_BUILDER(Name("PaperReproCaffeMomentum").Device(DEVICE_CPU), CaffeMomentumOp);

}  // namespace tensorflow
