// K/V state store; see kv_state_store.h.
#include "trainer/kv_state_store.h"

#include "core/error.h"

namespace chunkflow::trainer {

KVStateStore::KVStateStore(int64_t layers, int64_t rows, int64_t kv_heads, int64_t head_dim,
                           torch::TensorOptions state_options, torch::TensorOptions gradient_options) {
  for (int64_t layer = 0; layer < layers; ++layer) {
    models::KVPrefix handle;
    // K/V rows are written before they are read; only the accumulators need zeros.
    handle.k_state = torch::empty({rows, kv_heads, head_dim}, state_options);
    handle.v_state = torch::empty({rows, kv_heads, head_dim}, state_options);
    handle.k_gradient = torch::zeros({rows, kv_heads, head_dim}, gradient_options);
    handle.v_gradient = torch::zeros({rows, kv_heads, head_dim}, gradient_options);
    layers_.push_back(std::move(handle));
  }
}

std::vector<models::KVPrefix> KVStateStore::prefix(int64_t prefix_rows) {
  std::vector<models::KVPrefix> handles = layers_;
  for (auto& handle : handles) {
    CF_ASSERT(prefix_rows >= 0 && prefix_rows <= handle.k_state.size(0), "prefix rows ", prefix_rows);
    handle.rows = prefix_rows;
  }
  return handles;
}

std::vector<models::LayerKV> KVStateStore::gradients(int64_t first_row, int64_t rows) {
  std::vector<models::LayerKV> views;
  for (const auto& handle : layers_) {
    views.push_back({handle.k_gradient.narrow(0, first_row, rows), handle.v_gradient.narrow(0, first_row, rows)});
  }
  return views;
}

int64_t KVStateStore::bytes() const {
  int64_t total = 0;
  for (const auto& handle : layers_) {
    total += static_cast<int64_t>(handle.k_state.nbytes() + handle.v_state.nbytes() + handle.k_gradient.nbytes() +
                                  handle.v_gradient.nbytes());
  }
  return total;
}

}  // namespace chunkflow::trainer
