// Megatron's f and g over a Communicator; see tensor_parallel.h.
#include "parallel/tensor_parallel.h"

#include <algorithm>
#include <vector>

#include "parallel/context_parallel.h"

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

std::vector<int64_t> rows_of_ranks(int64_t total_rows, int size) {
  std::vector<int64_t> rows;
  for (int r = 0; r < size; ++r) rows.push_back(models::sequence_rows(total_rows, r, size).count);
  return rows;
}

// Sequence parallelism's g: every rank's partial sums of all rows -> this rank's rows of their sum,
// one reduce-scatter over blocks padded to the largest rank's rows; backward: the gradient's rows
// gathered from every rank.
class ScatterRows : public torch::autograd::Function<ScatterRows> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* context, const torch::Tensor& partial,
                               Communicator* group) {
    const int size = group->size();
    const int64_t total = partial.size(0);
    const std::vector<int64_t> rows = rows_of_ranks(total, size);
    const int64_t most = *std::max_element(rows.begin(), rows.end());
    std::vector<int64_t> padded_shape = partial.sizes().vec();
    padded_shape[0] = most * size;
    torch::Tensor padded = torch::zeros(padded_shape, partial.options());
    for (int r = 0; r < size; ++r) {
      const models::RowRange range = models::sequence_rows(total, r, size);
      padded.narrow(0, r * most, range.count).copy_(partial.narrow(0, range.begin, range.count));
    }
    context->saved_data["group"] = reinterpret_cast<int64_t>(group);
    context->saved_data["total"] = total;
    return group->reduce_scatter(padded, ReduceOp::kSum).narrow(0, 0, rows[static_cast<size_t>(group->rank())]).contiguous();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* context,
                                                 torch::autograd::variable_list gradients) {
    auto* group = reinterpret_cast<Communicator*>(context->saved_data["group"].toInt());
    const int64_t total = context->saved_data["total"].toInt();
    torch::NoGradGuard no_grad;
    return {all_gather_rows(gradients[0].contiguous(), *group, rows_of_ranks(total, group->size())), torch::Tensor()};
  }
};

}  // namespace

models::TensorParallel tensor_parallel_group(Communicator& group, bool sequence_parallel) {
  models::TensorParallel tp;
  tp.rank = group.rank();
  tp.size = group.size();
  Communicator* communicator = &group;
  tp.copy_to_group = [communicator](const torch::Tensor& x) { return CopyToGroup::apply(x, communicator); };
  tp.sum_over_group = [communicator](const torch::Tensor& x) { return SumOverGroup::apply(x, communicator); };
  tp.all_reduce_sum = [communicator](torch::Tensor& x) { communicator->all_reduce(x, ReduceOp::kSum); };
  tp.all_reduce_max = [communicator](torch::Tensor& x) { communicator->all_reduce(x, ReduceOp::kMax); };
  tp.sequence_parallel = sequence_parallel;
  if (sequence_parallel) {
    tp.gather_rows = [communicator](const torch::Tensor& x, int64_t total_rows) {
      return all_gather_rows(x, *communicator, rows_of_ranks(total_rows, communicator->size()));
    };
    tp.scatter_rows = [communicator](const torch::Tensor& x) { return ScatterRows::apply(x, communicator); };
  }
  return tp;
}

}  // namespace chunkflow::parallel
