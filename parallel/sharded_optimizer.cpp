// ZeRO-1 sharded AdamW; see sharded_optimizer.h.
#include "parallel/sharded_optimizer.h"

#include <algorithm>

#include "core/error.h"

namespace chunkflow::parallel {

ShardedAdamW::ShardedAdamW(const std::vector<torch::optim::OptimizerParamGroup>& groups, Communicator& group,
                           const MakeAdamW& make_adamw, int64_t bucket_bytes)
    : group_(group) {
  CF_CHECK(bucket_bytes > 0, "sharded optimizer: bucket size must be positive, got ", bucket_bytes);
  const int64_t ranks = group_.size();
  std::vector<torch::optim::OptimizerParamGroup> slice_groups;
  for (size_t group_index = 0; group_index < groups.size(); ++group_index) {
    std::vector<torch::Tensor> slices;
    Bucket bucket;
    const auto close_bucket = [&] {
      if (bucket.parameters.empty()) return;
      bucket.padded_numel = (bucket.padded_numel + ranks - 1) / ranks * ranks;
      const torch::Tensor& first = parameters_[bucket.parameters.front()];
      bucket.slice = torch::zeros({bucket.padded_numel / ranks}, first.options()).requires_grad_(true);
      slices.push_back(bucket.slice);
      buckets_.push_back(std::move(bucket));
      bucket = Bucket{};
    };
    for (const torch::Tensor& parameter : groups[group_index].params()) {
      CF_CHECK(parameter.scalar_type() == torch::kFloat && parameter.is_contiguous(),
               "sharded optimizer: parameters must be contiguous float32 (the master weights), got ",
               parameter.scalar_type(), parameter.is_contiguous() ? "" : " (not contiguous)");
      CF_CHECK(parameters_.empty() || parameter.device() == parameters_.front().device(),
               "sharded optimizer: parameters on ", parameter.device(), " and ", parameters_.front().device());
      const int64_t bytes = parameter.numel() * static_cast<int64_t>(sizeof(float));
      if (!bucket.parameters.empty() && (bucket.padded_numel * static_cast<int64_t>(sizeof(float)) + bytes) > bucket_bytes) {
        close_bucket();
      }
      bucket.group = group_index;
      bucket.parameters.push_back(parameters_.size());
      bucket.offsets.push_back(bucket.padded_numel);
      bucket.padded_numel += parameter.numel();
      parameters_.push_back(parameter);
    }
    close_bucket();
    slice_groups.emplace_back(slices, groups[group_index].has_options() ? groups[group_index].options().clone() : nullptr);
  }
  adamw_ = make_adamw(std::move(slice_groups));
  refresh_slices();
}

void ShardedAdamW::for_each_piece(const Bucket& bucket,
                                  const std::function<void(size_t, int64_t, int64_t, int64_t)>& visit) const {
  const int64_t slice_begin = bucket.slice.numel() * group_.rank();
  const int64_t slice_end = slice_begin + bucket.slice.numel();
  for (size_t i = 0; i < bucket.parameters.size(); ++i) {
    const size_t parameter = bucket.parameters[i];
    const int64_t begin = std::max(bucket.offsets[i], slice_begin);
    const int64_t end = std::min(bucket.offsets[i] + parameters_[parameter].numel(), slice_end);
    if (begin < end) visit(parameter, begin - bucket.offsets[i], begin - slice_begin, end - begin);
  }
}

// The slices hold the master weights AdamW updates; they are refilled from the parameters before
// every step, so a checkpoint load or any other write to the parameters is never overwritten.
void ShardedAdamW::refresh_slices() {
  torch::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) {
    for_each_piece(bucket, [&](size_t parameter, int64_t parameter_begin, int64_t slice_begin, int64_t count) {
      bucket.slice.narrow(0, slice_begin, count).copy_(parameters_[parameter].view(-1).narrow(0, parameter_begin, count));
    });
  }
}

void ShardedAdamW::reduce_scatter_gradients() {
  torch::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) {
    torch::Tensor flat = torch::zeros({bucket.padded_numel}, bucket.slice.options().requires_grad(false));
    for (size_t i = 0; i < bucket.parameters.size(); ++i) {
      const torch::Tensor& gradient = parameters_[bucket.parameters[i]].grad();
      if (gradient.defined()) flat.narrow(0, bucket.offsets[i], gradient.numel()).copy_(gradient.reshape(-1));
    }
    bucket.slice.mutable_grad() = group_.size() > 1 ? group_.reduce_scatter(flat, ReduceOp::kSum) : flat;
  }
}

double ShardedAdamW::gradient_square_sum(const std::function<bool(size_t)>& counted) const {
  double squares = 0.0;
  for (const Bucket& bucket : buckets_) {
    const torch::Tensor& gradient = bucket.slice.grad();
    if (!gradient.defined()) continue;
    for_each_piece(bucket, [&](size_t parameter, int64_t, int64_t slice_begin, int64_t count) {
      if (counted && !counted(parameter)) return;
      squares += gradient.narrow(0, slice_begin, count).to(torch::kFloat64).square().sum().item<double>();
    });
  }
  return squares;
}

void ShardedAdamW::scale_gradients(double factor) {
  torch::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) {
    if (bucket.slice.grad().defined()) bucket.slice.mutable_grad().mul_(factor);
  }
}

void ShardedAdamW::step() {
  refresh_slices();
  adamw_->step();
  torch::NoGradGuard no_grad;
  for (Bucket& bucket : buckets_) {
    const torch::Tensor whole = group_.size() > 1 ? group_.all_gather(bucket.slice.detach()) : bucket.slice.detach();
    for (size_t i = 0; i < bucket.parameters.size(); ++i) {
      torch::Tensor& parameter = parameters_[bucket.parameters[i]];
      parameter.view(-1).copy_(whole.narrow(0, bucket.offsets[i], parameter.numel()));
    }
  }
}

ShardedAdamW::FullState ShardedAdamW::gather_state(bool keep) const {
  FullState state;
  const auto& slice_state = adamw_->state();
  if (buckets_.empty() || slice_state.find(buckets_.front().slice.unsafeGetTensorImpl()) == slice_state.end()) {
    return state;  // no step taken yet (every rank steps together, so all agree)
  }
  for (const Bucket& bucket : buckets_) {
    const auto& moments =
        static_cast<const torch::optim::AdamWParamState&>(*slice_state.at(bucket.slice.unsafeGetTensorImpl()));
    CF_CHECK(!moments.max_exp_avg_sq().defined(), "sharded optimizer: amsgrad state cannot be sharded");
    const auto whole = [&](const torch::Tensor& slice) { return group_.size() > 1 ? group_.all_gather(slice) : slice; };
    const torch::Tensor exp_avg = whole(moments.exp_avg()), exp_avg_sq = whole(moments.exp_avg_sq());
    if (!keep) continue;
    for (size_t i = 0; i < bucket.parameters.size(); ++i) {
      const torch::Tensor& parameter = parameters_[bucket.parameters[i]];
      auto parameter_state = std::make_unique<torch::optim::AdamWParamState>();
      parameter_state->step(moments.step());
      parameter_state->exp_avg(exp_avg.narrow(0, bucket.offsets[i], parameter.numel()).view(parameter.sizes()).clone());
      parameter_state->exp_avg_sq(
          exp_avg_sq.narrow(0, bucket.offsets[i], parameter.numel()).view(parameter.sizes()).clone());
      state[parameter.unsafeGetTensorImpl()] = std::move(parameter_state);
    }
  }
  return state;
}

void ShardedAdamW::load_state(const FullState& state) {
  auto& slice_state = adamw_->state();
  slice_state.clear();
  if (state.empty()) return;
  torch::NoGradGuard no_grad;
  for (const Bucket& bucket : buckets_) {
    auto moments = std::make_unique<torch::optim::AdamWParamState>();
    moments->exp_avg(torch::zeros_like(bucket.slice, bucket.slice.options().requires_grad(false)));
    moments->exp_avg_sq(torch::zeros_like(bucket.slice, bucket.slice.options().requires_grad(false)));
    bool stepped = false;
    for_each_piece(bucket, [&](size_t parameter, int64_t parameter_begin, int64_t slice_begin, int64_t count) {
      const auto found = state.find(parameters_[parameter].unsafeGetTensorImpl());
      CF_CHECK(found != state.end(), "sharded optimizer: the AdamW state to load has no entry for parameter ",
               parameter, " of ", parameters_.size(), " (every parameter's or none)");
      const auto& whole = static_cast<const torch::optim::AdamWParamState&>(*found->second);
      CF_CHECK(!whole.max_exp_avg_sq().defined(), "sharded optimizer: amsgrad state cannot be sharded");
      CF_CHECK(!stepped || whole.step() == moments->step(), "sharded optimizer: AdamW states of one bucket at steps ",
               moments->step(), " and ", whole.step());
      moments->step(whole.step());
      stepped = true;
      moments->exp_avg().narrow(0, slice_begin, count).copy_(whole.exp_avg().reshape(-1).narrow(0, parameter_begin, count));
      moments->exp_avg_sq().narrow(0, slice_begin, count).copy_(
          whole.exp_avg_sq().reshape(-1).narrow(0, parameter_begin, count));
    });
    if (!stepped) {  // this rank's slice is padding only: any parameter of the state gives the step
      moments->step(static_cast<const torch::optim::AdamWParamState&>(*state.begin()->second).step());
    }
    slice_state[bucket.slice.unsafeGetTensorImpl()] = std::move(moments);
  }
}

}  // namespace chunkflow::parallel
