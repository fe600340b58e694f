// Megatron's f and g over a Communicator; see tensor_parallel.h.
#include "parallel/tensor_parallel.h"

namespace chunkflow::parallel {
namespace {

torch::Tensor summed_over(Communicator& group, const torch::Tensor& tensor) {
  torch::Tensor sum = tensor.contiguous().clone();
  group.all_reduce(sum, ReduceOp::kSum);
  return sum;
}

// f: the identity forward (autograd records the input returned as is); the gradient summed over
// the group backward, since every rank's column-parallel slice contributed part of it.
class CopyToGroup : public torch::autograd::Function<CopyToGroup> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& x, Communicator* group) {
    context->saved_data["group"] = reinterpret_cast<int64_t>(group);
    return x;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list gradients) {
    auto* group = reinterpret_cast<Communicator*>(context->saved_data["group"].toInt());
    return {gradients[0].defined() ? summed_over(*group, gradients[0]) : torch::Tensor(), torch::Tensor()};
  }
};

// g: the sum of every rank's partial result forward; the identity backward (each rank's partial
// result fed the whole sum).
class SumOverGroup : public torch::autograd::Function<SumOverGroup> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x, Communicator* group) {
    return summed_over(*group, x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list gradients) {
    return {gradients[0], torch::Tensor()};
  }
};

}  // namespace

models::TensorParallel tensor_parallel_group(Communicator& group) {
  models::TensorParallel tp;
  tp.rank = group.rank();
  tp.size = group.size();
  Communicator* communicator = &group;
  tp.copy_to_group = [communicator](const torch::Tensor& x) { return CopyToGroup::apply(x, communicator); };
  tp.sum_over_group = [communicator](const torch::Tensor& x) { return SumOverGroup::apply(x, communicator); };
  tp.all_reduce_sum = [communicator](torch::Tensor& x) { communicator->all_reduce(x, ReduceOp::kSum); };
  tp.all_reduce_max = [communicator](torch::Tensor& x) { communicator->all_reduce(x, ReduceOp::kMax); };
  return tp;
}

}  // namespace chunkflow::parallel
