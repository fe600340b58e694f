// DP balancing and gradient all-reduce; see data_parallel.h.
#include "parallel/data_parallel.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace chunkflow::parallel {

double GroupCostModel::cost(const data::ChunkGroup& group) const {
  return per_token * static_cast<double>(group.tokens) + per_attention_entry * static_cast<double>(group.attention_entries);
}

double GroupCostModel::chunk_cost(const data::ChunkPlan& plan, int32_t chunk) const {
  const data::Chunk& planned = plan.chunks().at(static_cast<size_t>(chunk));
  int64_t entries = 0;
  for (int32_t s = 0; s < planned.segment_count; ++s) {
    const data::Segment& segment = plan.segments()[static_cast<size_t>(planned.first_segment + s)];
    entries += data::attention_entries(segment.padded_length(), segment.prefix_len);
  }
  return per_token * static_cast<double>(planned.tokens) + per_attention_entry * static_cast<double>(entries);
}

CostCalibration::CostCalibration(GroupCostModel prior, double forgetting) : prior_(prior), forgetting_(forgetting) {
  CF_ASSERT(forgetting_ > 0 && forgetting_ <= 1, "forgetting factor ", forgetting_);
}

torch::Tensor CostCalibration::observation(double tokens, double attention_entries, double seconds) {
  return torch::tensor({tokens * tokens, tokens * attention_entries, attention_entries * attention_entries,
                        tokens * seconds, attention_entries * seconds, 1.0},
                       torch::kFloat64);
}

void CostCalibration::add_step(const torch::Tensor& statistics) {
  CF_ASSERT(statistics.numel() == 6, "cost statistics have ", statistics.numel(), " values");
  const torch::Tensor values = statistics.to(torch::kFloat64).contiguous();
  const double* v = values.data_ptr<double>();
  double* sums[] = {&tt_, &te_, &ee_, &ty_, &ey_, &weight_};
  for (int i = 0; i < 6; ++i) *sums[i] = *sums[i] * forgetting_ + v[i];
}

bool CostCalibration::calibrated() const {
  // The 2x2 normal equations are well conditioned only if the observations mix tokens and
  // attention entries in different proportions.
  const double determinant = tt_ * ee_ - te_ * te_;
  if (weight_ <= 0 || determinant <= 1e-6 * tt_ * ee_) return false;
  const double per_token = (ty_ * ee_ - ey_ * te_) / determinant;
  const double per_entry = (ey_ * tt_ - ty_ * te_) / determinant;
  return per_token > 0 && per_entry > 0;
}

GroupCostModel CostCalibration::model() const {
  if (weight_ <= 0) return prior_;
  if (calibrated()) {
    const double determinant = tt_ * ee_ - te_ * te_;
    return {(ty_ * ee_ - ey_ * te_) / determinant, (ey_ * tt_ - ty_ * te_) / determinant};
  }
  // Scale only: y ~ s x (prior cost), s = sum(c y) / sum(c c).
  const double a = prior_.per_token, b = prior_.per_attention_entry;
  const double cy = a * ty_ + b * ey_;
  const double cc = a * a * tt_ + 2 * a * b * te_ + b * b * ee_;
  if (cc <= 0 || cy <= 0) return prior_;
  return {a * cy / cc, b * cy / cc};
}

double DpAssignment::max_cost() const {
  return cost_of_rank.empty() ? 0.0 : *std::max_element(cost_of_rank.begin(), cost_of_rank.end());
}

double DpAssignment::mean_cost() const {
  if (cost_of_rank.empty()) return 0.0;
  return std::accumulate(cost_of_rank.begin(), cost_of_rank.end(), 0.0) / static_cast<double>(cost_of_rank.size());
}

double DpAssignment::imbalance() const {
  const double mean = mean_cost();
  return mean > 0 ? max_cost() / mean : 1.0;
}

DpAssignment balance_chunk_groups(const data::ChunkPlan& plan, int dp, const GroupCostModel& cost_model) {
  CF_CHECK(dp >= 1, "parallel.dp must be >= 1, got ", dp);
  const auto& groups = plan.groups();
  std::vector<int32_t> order(groups.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<double> costs(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) costs[g] = cost_model.cost(groups[g]);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return costs[static_cast<size_t>(a)] > costs[static_cast<size_t>(b)];
  });
  DpAssignment assignment;
  assignment.groups_of_rank.resize(static_cast<size_t>(dp));
  assignment.cost_of_rank.assign(static_cast<size_t>(dp), 0.0);
  for (const int32_t group : order) {
    const auto lightest = std::min_element(assignment.cost_of_rank.begin(), assignment.cost_of_rank.end());
    const auto rank = static_cast<size_t>(lightest - assignment.cost_of_rank.begin());
    assignment.groups_of_rank[rank].push_back(group);
    *lightest += costs[static_cast<size_t>(group)];
  }
  for (auto& mine : assignment.groups_of_rank) std::sort(mine.begin(), mine.end());
  return assignment;
}

void all_reduce_gradients(const std::vector<torch::Tensor>& parameters, Communicator& group, int64_t bucket_bytes) {
  if (group.size() == 1) return;
  GradientReducer(parameters, group, bucket_bytes, /*with_hooks=*/false).finish();
}

GradientReducer::GradientReducer(std::vector<torch::Tensor> parameters, Communicator& group, int64_t bucket_bytes,
                                 bool with_hooks)
    : parameters_(std::move(parameters)), group_(group) {
  CF_ASSERT(bucket_bytes > 0, "bucket_bytes ", bucket_bytes);
  place_.resize(parameters_.size());
  // Reverse order: the backward reaches the last layers first.
  int64_t bucket_filled_bytes = 0, bucket_numel = 0;
  for (size_t i = parameters_.size(); i-- > 0;) {
    const int64_t bytes = static_cast<int64_t>(parameters_[i].nbytes());
    if (buckets_.empty() || (bucket_filled_bytes > 0 && bucket_filled_bytes + bytes > bucket_bytes)) {
      buckets_.emplace_back();
      bucket_filled_bytes = 0;
      bucket_numel = 0;
    }
    Bucket& bucket = buckets_.back();
    place_[i] = {buckets_.size() - 1, bucket.parameters.size()};
    bucket.parameters.push_back(i);
    bucket.offsets.push_back(bucket_numel);
    bucket_filled_bytes += bytes;
    bucket_numel += parameters_[i].numel();
  }
  for (Bucket& bucket : buckets_) {
    const int64_t numel = bucket.offsets.back() + parameters_[bucket.parameters.back()].numel();
    bucket.flat = torch::zeros({numel}, parameters_[bucket.parameters.front()].options().requires_grad(false));
  }
  if (!with_hooks) return;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    hooks_.push_back(parameters_[i].register_hook([this, i](const torch::Tensor& gradient) { on_gradient(i, gradient); }));
  }
}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < hooks_.size(); ++i) parameters_[i].remove_hook(hooks_[i]);
}

void GradientReducer::arm() {
  CF_ASSERT(!hooks_.empty() || parameters_.empty(), "GradientReducer built without hooks cannot be armed");
  armed_ = true;
  overlapped_buckets_ = 0;
}

void GradientReducer::on_gradient(size_t parameter, const torch::Tensor& gradient) {
  // An undefined gradient adds nothing: .grad stays as it is and finish() reads it then.
  if (!armed_ || !gradient.defined()) return;
  torch::NoGradGuard no_grad;
  const auto [bucket_index, slot] = place_[parameter];
  Bucket& bucket = buckets_[bucket_index];
  if (bucket.request) return;  // already started (a parameter reached twice): cannot happen for leaves
  // The hook runs before autograd adds `gradient` into .grad: the final value is the sum.
  torch::Tensor destination = bucket.flat.narrow(0, bucket.offsets[slot], parameters_[parameter].numel());
  const torch::Tensor& accumulated = parameters_[parameter].grad();
  if (accumulated.defined()) {
    torch::add_out(destination, accumulated.reshape({-1}), gradient.reshape({-1}));
  } else {
    destination.copy_(gradient.reshape({-1}));
  }
  ++bucket.final_gradients;
  start_ready_buckets();
  // Non-blocking collectives progress only inside MPI calls: poke the ones in flight.
  for (size_t b = 0; b < next_bucket_; ++b) buckets_[b].request->done();
}

void GradientReducer::start(Bucket& bucket) {
  bucket.request = group_.iall_reduce(bucket.flat, ReduceOp::kSum);
}

void GradientReducer::start_ready_buckets() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].final_gradients == buckets_[next_bucket_].parameters.size()) {
    start(buckets_[next_bucket_++]);
    ++overlapped_buckets_;
  }
}

void GradientReducer::finish() {
  torch::NoGradGuard no_grad;
  armed_ = false;
  for (; next_bucket_ < buckets_.size(); ++next_bucket_) {
    Bucket& bucket = buckets_[next_bucket_];
    // Gradients not seen by an armed backward: take .grad as it is now (zeros if none).
    for (size_t slot = 0; slot < bucket.parameters.size(); ++slot) {
      const torch::Tensor& parameter = parameters_[bucket.parameters[slot]];
      torch::Tensor destination = bucket.flat.narrow(0, bucket.offsets[slot], parameter.numel());
      if (parameter.grad().defined()) {
        destination.copy_(parameter.grad().reshape({-1}));
      } else {
        destination.zero_();
      }
    }
    start(bucket);
  }
  for (Bucket& bucket : buckets_) {
    bucket.request->wait();
    bucket.request.reset();
    bucket.final_gradients = 0;
    for (size_t slot = 0; slot < bucket.parameters.size(); ++slot) {
      torch::Tensor& parameter = parameters_[bucket.parameters[slot]];
      if (!parameter.grad().defined()) parameter.mutable_grad() = torch::zeros_like(parameter);
      parameter.mutable_grad().copy_(bucket.flat.narrow(0, bucket.offsets[slot], parameter.numel()).view_as(parameter));
    }
  }
  next_bucket_ = 0;
  overlapped_in_last_finish_ = overlapped_buckets_;
  overlapped_buckets_ = 0;
}

}  // namespace chunkflow::parallel
