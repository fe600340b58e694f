// A parallel scan of the .bin; see token_check.h.
#include "data/token_check.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <optional>
#include <thread>
#include <vector>

#include "core/progress.h"

namespace chunkflow::data {
namespace {

// The largest id a file of `dtype` can hold; above it a vocabulary check cannot fail.
int64_t largest_storable_id(TokenDType dtype) {
  switch (dtype) {
    case TokenDType::kUInt8: return 255;
    case TokenDType::kUInt16: return 65535;
    default: return INT64_MAX;
  }
}

// The first offending id in sequences [first, last), or nullopt.
std::optional<TokenOutsideVocabulary> scan(const IndexedDataset& dataset, int64_t vocab_size, int64_t first,
                                           int64_t last, std::atomic<int64_t>& tokens_done) {
  std::vector<int32_t> ids;
  for (int64_t sequence = first; sequence < last; ++sequence) {
    ids.resize(static_cast<size_t>(dataset.length(sequence)));
    dataset.read(sequence, 0, static_cast<int64_t>(ids.size()), ids.data());
    for (size_t position = 0; position < ids.size(); ++position) {
      if (ids[position] < 0 || ids[position] >= vocab_size) {
        return TokenOutsideVocabulary{sequence, static_cast<int64_t>(position), ids[position]};
      }
    }
    tokens_done.fetch_add(static_cast<int64_t>(ids.size()), std::memory_order_relaxed);
  }
  return std::nullopt;
}

}  // namespace

std::optional<TokenOutsideVocabulary> first_token_outside_vocabulary(const IndexedDataset& dataset, int64_t vocab_size) {
  if (largest_storable_id(dataset.dtype()) < vocab_size) return std::nullopt;
  const int64_t sequences = dataset.size();
  const int64_t workers = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, std::max<int64_t>(sequences, 1));
  std::vector<std::optional<TokenOutsideVocabulary>> found(static_cast<size_t>(workers));
  std::vector<std::exception_ptr> failures(static_cast<size_t>(workers));  // a read's core::Error
  std::atomic<int64_t> tokens_done{0};
  std::atomic<int> running{static_cast<int>(workers)};
  std::vector<std::thread> threads;
  for (int64_t worker = 0; worker < workers; ++worker) {
    // Contiguous ranges: the lowest offending sequence is the first worker's find that has one.
    const int64_t first = sequences * worker / workers, last = sequences * (worker + 1) / workers;
    threads.emplace_back([&, worker, first, last] {
      try {
        found[static_cast<size_t>(worker)] = scan(dataset, vocab_size, first, last, tokens_done);
      } catch (...) {
        failures[static_cast<size_t>(worker)] = std::current_exception();
      }
      running.fetch_sub(1);
    });
  }
  constexpr int64_t kProgressFrom = 100'000'000;
  if (dataset.total_tokens() > kProgressFrom) {
    core::Progress progress("checking token ids against the vocabulary", dataset.total_tokens(), "tokens");
    while (running.load() > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      progress.update(tokens_done.load(std::memory_order_relaxed));
    }
    progress.finish();
  }
  for (auto& thread : threads) thread.join();
  for (const auto& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
  for (const auto& result : found) {
    if (result) return result;
  }
  return std::nullopt;
}

}  // namespace chunkflow::data
