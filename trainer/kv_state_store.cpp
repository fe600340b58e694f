// K/V state store; see kv_state_store.h.
#include "trainer/kv_state_store.h"

#include "core/error.h"

namespace chunkflow::trainer {

void KVStateStore::append(const std::vector<models::LayerKV>& own_kv) {
  CF_ASSERT(static_cast<int64_t>(own_kv.size()) == layers_, "expected ", layers_, " layers");
  std::vector<models::LayerKV> stored, zeros;
  for (const auto& layer : own_kv) {
    stored.push_back({layer.k.detach(), layer.v.detach()});
    zeros.push_back({torch::zeros_like(layer.k), torch::zeros_like(layer.v)});
  }
  rows_.push_back(own_kv.front().k.size(0));
  kv_.push_back(std::move(stored));
  gradients_.push_back(std::move(zeros));
}

std::vector<models::LayerKV> KVStateStore::prefix_leaves(int64_t piece) const {
  CF_ASSERT(piece >= 0 && piece <= pieces(), "piece ", piece, " of ", pieces());
  std::vector<models::LayerKV> leaves;
  if (piece == 0) return leaves;
  for (int64_t layer = 0; layer < layers_; ++layer) {
    std::vector<torch::Tensor> keys, values;
    for (int64_t p = 0; p < piece; ++p) {
      keys.push_back(kv_[static_cast<size_t>(p)][static_cast<size_t>(layer)].k);
      values.push_back(kv_[static_cast<size_t>(p)][static_cast<size_t>(layer)].v);
    }
    leaves.push_back({torch::cat(keys, 0).requires_grad_(true), torch::cat(values, 0).requires_grad_(true)});
  }
  return leaves;
}

void KVStateStore::add_prefix_gradients(int64_t piece, const std::vector<models::LayerKV>& leaves) {
  if (piece == 0) return;
  CF_ASSERT(static_cast<int64_t>(leaves.size()) == layers_, "leaves for ", leaves.size(), " layers");
  torch::NoGradGuard no_grad;
  for (int64_t layer = 0; layer < layers_; ++layer) {
    const auto& leaf = leaves[static_cast<size_t>(layer)];
    // A prefix that did not influence the loss (no labelled token after it) has no gradient.
    if (!leaf.k.grad().defined() && !leaf.v.grad().defined()) continue;
    int64_t row = 0;
    for (int64_t p = 0; p < piece; ++p) {
      const int64_t rows = rows_[static_cast<size_t>(p)];
      auto& accumulator = gradients_[static_cast<size_t>(p)][static_cast<size_t>(layer)];
      if (leaf.k.grad().defined()) accumulator.k.add_(leaf.k.grad().narrow(0, row, rows));
      if (leaf.v.grad().defined()) accumulator.v.add_(leaf.v.grad().narrow(0, row, rows));
      row += rows;
    }
  }
}

const std::vector<models::LayerKV>& KVStateStore::gradients(int64_t piece) const {
  CF_ASSERT(piece >= 0 && piece < pieces(), "piece ", piece, " of ", pieces());
  return gradients_[static_cast<size_t>(piece)];
}

int64_t KVStateStore::bytes() const {
  int64_t total = 0;
  for (size_t p = 0; p < kv_.size(); ++p) {
    for (size_t layer = 0; layer < kv_[p].size(); ++layer) {
      for (const auto* tensors : {&kv_[p][layer], &gradients_[p][layer]}) {
        total += static_cast<int64_t>(tensors->k.nbytes() + tensors->v.nbytes());
      }
    }
  }
  return total;
}

void KVStateStore::clear() {
  rows_.clear();
  kv_.clear();
  gradients_.clear();
}

}  // namespace chunkflow::trainer
