#include "data/dataset.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <utility>

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "peft/core/status.h"
#include "peft/io/read_file.h"

namespace peft::data {
namespace {

using Format = DataOptions::Format;

// Salts keep the split and the epoch shuffles independent for one seed.
constexpr uint64_t kSplitSalt = 0x9b1c3a4e2f0d5c71ULL;
constexpr uint64_t kShuffleSalt = 0x2545f4914f6cdd1dULL;

// SplitMix64 (Steele et al. 2014): fully specified, so orders agree on every
// platform, unlike std::shuffle with std::uniform_int_distribution.
uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    const uint64_t z = state_;
    state_ += 0x9e3779b97f4a7c15ULL;
    return mix64(z);  // == the reference next(): finalise(state += golden)
  }
  // Uniform in [0, n), n >= 1, by rejection (no modulo bias).
  uint64_t below(uint64_t n) {
    const uint64_t limit = std::numeric_limits<uint64_t>::max() - std::numeric_limits<uint64_t>::max() % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }

 private:
  uint64_t state_;
};
// True for the documents held out: the n_val smallest keys hash(seed, content).
std::vector<bool> choose_validation(const std::vector<Document>& docs, const DataOptions& opts) {
  const int64_t n = static_cast<int64_t>(docs.size());
  std::vector<bool> val(n, false);
  if (opts.validation_fraction <= 0.0 || n < 2) return val;
  const int64_t n_val = std::clamp<int64_t>(std::llround(opts.validation_fraction * n), 1, n - 1);
  const uint64_t salt = mix64(opts.seed ^ kSplitSalt);
  std::vector<std::pair<uint64_t, int64_t>> keys(n);
  for (int64_t i = 0; i < n; ++i) keys[i] = {mix64(salt ^ docs[i].content_hash), i};
  std::nth_element(keys.begin(), keys.begin() + n_val, keys.end());
  for (int64_t i = 0; i < n_val; ++i) val[keys[i].second] = true;
  return val;
}

// Packs documents into windows of seq_len + 1 with stride seq_len.
std::vector<Example> pack(const std::vector<const Document*>& docs, int64_t seq_len, int64_t* dropped) {
  std::vector<int32_t> stream;
  std::vector<uint8_t> targets;
  for (const Document* d : docs) {
    stream.insert(stream.end(), d->tokens.begin(), d->tokens.end());
    targets.insert(targets.end(), d->targets.begin(), d->targets.end());
  }
  const int64_t s = static_cast<int64_t>(stream.size());
  const int64_t windows = s >= seq_len + 1 ? (s - 1) / seq_len : 0;
  *dropped += windows > 0 ? s - (windows * seq_len + 1) : s;
  std::vector<Example> out(windows);
  for (int64_t k = 0; k < windows; ++k) {
    const int64_t b = k * seq_len, e = b + seq_len + 1;
    out[k].tokens.assign(stream.begin() + b, stream.begin() + e);
    out[k].targets.assign(targets.begin() + b, targets.begin() + e);
  }
  return out;
}

std::vector<Example> one_per_document(const std::vector<const Document*>& docs) {
  std::vector<Example> out;
  out.reserve(docs.size());
  for (const Document* d : docs) out.push_back({d->tokens, d->targets});
  return out;
}

bool mul_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
bool add_overflows(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }
}  // namespace

// ---------------------------------------------------------------------------
// Dataset

struct Dataset::Storage {
  std::vector<Example> examples;
  std::vector<int64_t> labels;  // [N] targets after the first token of each example
};

struct Dataset::OrderCache {
  std::mutex mu;
  int64_t epoch = -1;
  std::shared_ptr<const std::vector<int64_t>> order;
};

absl::StatusOr<Dataset> Dataset::create(std::vector<Example> examples, int64_t seq_len, int32_t pad_id, uint64_t seed,
                                        Order order) {
  if (seq_len < 1 || seq_len > DataOptions::kMaxSeqLen) {
    return absl::InvalidArgumentError(
        absl::StrCat("Dataset: seq_len = ", seq_len, " must be in [1, ", DataOptions::kMaxSeqLen, "]"));
  }
  if (pad_id < 0) return absl::InvalidArgumentError(absl::StrCat("Dataset: pad_id = ", pad_id, " must be >= 0"));
  auto storage = std::make_shared<Storage>();
  storage->labels.reserve(examples.size());
  for (size_t i = 0; i < examples.size(); ++i) {
    const Example& e = examples[i];
    const int64_t len = static_cast<int64_t>(e.tokens.size());
    if (len < 2 || len > seq_len + 1 || e.targets.size() != e.tokens.size()) {
      return absl::InvalidArgumentError(absl::StrCat("Dataset: example ", i, " has ", len, " tokens and ",
                                                     e.targets.size(), " targets; need 2..", seq_len + 1, " of each"));
    }
    for (int64_t t = 0; t < len; ++t) {
      if (e.tokens[t] < 0 || e.targets[t] > 1) {
        return absl::InvalidArgumentError(absl::StrCat("Dataset: example ", i, " position ", t, ": token ", e.tokens[t],
                                                       ", target ", int{e.targets[t]}));
      }
    }
    storage->labels.push_back(std::count(e.targets.begin() + 1, e.targets.end(), uint8_t{1}));
  }
  storage->examples = std::move(examples);
  Dataset d;
  d.storage_ = std::move(storage);
  d.seq_len_ = seq_len;
  d.pad_id_ = pad_id;
  d.seed_ = seed;
  d.order_ = order;
  d.cache_ = std::make_shared<OrderCache>();
  return d;
}

int64_t Dataset::size() const { return storage_ ? static_cast<int64_t>(storage_->examples.size()) : 0; }

const Example& Dataset::example(int64_t i) const {
  TORCH_CHECK(i >= 0 && i < size(), "Dataset::example(", i, "): size is ", size());
  return storage_->examples[i];
}

std::shared_ptr<const std::vector<int64_t>> Dataset::order_of(int64_t epoch) const {
  std::lock_guard<std::mutex> lock(cache_->mu);
  if (cache_->epoch == epoch && cache_->order) return cache_->order;
  const int64_t n = size();
  auto order = std::make_shared<std::vector<int64_t>>(n);
  for (int64_t i = 0; i < n; ++i) (*order)[i] = i;
  if (order_ == Order::kShuffled) {
    SplitMix64 rng(mix64(mix64(seed_ ^ kShuffleSalt) ^ static_cast<uint64_t>(epoch)));
    for (int64_t i = n - 1; i > 0; --i) std::swap((*order)[i], (*order)[rng.below(static_cast<uint64_t>(i) + 1)]);
  }
  cache_->epoch = epoch;
  cache_->order = order;
  return order;
}

std::vector<int64_t> Dataset::epoch_order(int64_t epoch) const {
  if (size() == 0) return {};
  return *order_of(epoch);
}

absl::StatusOr<DataPosition> Dataset::advance(const DataPosition& pos, int64_t count) const {
  const int64_t n = size();
  if (n == 0) return absl::InvalidArgumentError("Dataset: empty");
  if (pos.epoch < 0 || pos.index < 0 || pos.index >= n) {
    return absl::InvalidArgumentError(
        absl::StrCat("Dataset: position (epoch ", pos.epoch, ", index ", pos.index, ") outside [0, ", n, ")"));
  }
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("Dataset: cannot advance by ", count));
  int64_t index = 0, epoch = 0;
  if (add_overflows(pos.index, count, &index) || add_overflows(pos.epoch, index / n, &epoch)) {
    return absl::InvalidArgumentError("Dataset: position overflows int64");
  }
  return DataPosition{epoch, index % n};
}

absl::StatusOr<DataPosition> Dataset::position_at_step(int64_t step, int64_t batch_size) const {
  int64_t count = 0;
  if (step < 0 || batch_size < 1 || mul_overflows(step, batch_size, &count)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Dataset: step ", step, " x batch_size ", batch_size, " is not a valid sample count"));
  }
  return advance(DataPosition{}, count);
}

absl::StatusOr<Batch> Dataset::batch_at(const DataPosition& start, int64_t batch_size, int64_t rank,
                                        int64_t world_size) const {
  if (size() == 0) return absl::InvalidArgumentError("Dataset::batch: the dataset is empty");
  if (batch_size < 1 || world_size < 1 || rank < 0 || rank >= world_size || batch_size % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Dataset::batch: batch_size ", batch_size, ", rank ", rank,
                                                   ", world_size ", world_size,
                                                   ": need batch_size >= 1 divisible by world_size and 0 <= rank < "
                                                   "world_size"));
  }
  // The last row's position must exist too, so the iterator can always advance.
  PEFT_RETURN_IF_ERROR(advance(start, batch_size).status());
  const int64_t local = batch_size / world_size;
  std::vector<int64_t> global_rows(batch_size);
  DataPosition pos = start;
  std::shared_ptr<const std::vector<int64_t>> order = order_of(pos.epoch);
  int64_t global_tokens = 0;
  for (int64_t j = 0; j < batch_size; ++j) {
    global_rows[j] = (*order)[pos.index];
    global_tokens += storage_->labels[global_rows[j]];
    if (++pos.index == size()) {
      pos = {pos.epoch + 1, 0};
      order = order_of(pos.epoch);
    }
  }
  PEFT_ASSIGN_OR_RETURN(Batch b, collate(std::vector<int64_t>(global_rows.begin() + rank * local,
                                                              global_rows.begin() + (rank + 1) * local)));
  b.global_tokens = global_tokens;
  return b;
}

absl::StatusOr<Batch> Dataset::batch(int64_t step, int64_t batch_size, int64_t rank, int64_t world_size) const {
  PEFT_ASSIGN_OR_RETURN(DataPosition start, position_at_step(step, batch_size));
  return batch_at(start, batch_size, rank, world_size);
}

absl::StatusOr<Batch> Dataset::collate(const std::vector<int64_t>& indices) const {
  const int64_t b = static_cast<int64_t>(indices.size()), t = seq_len_;
  for (int64_t i : indices) {
    if (i < 0 || i >= size()) {
      return absl::InvalidArgumentError(absl::StrCat("Dataset::collate: index ", i, " outside [0, ", size(), ")"));
    }
  }
  Batch out;
  out.input_ids = at::empty({b, t}, at::kLong);       // [B, T]
  out.labels = at::empty({b, t}, at::kLong);          // [B, T]
  out.attention_mask = at::empty({b, t}, at::kLong);  // [B, T]
  int64_t* ids = out.input_ids.data_ptr<int64_t>();
  int64_t* labels = out.labels.data_ptr<int64_t>();
  int64_t* mask = out.attention_mask.data_ptr<int64_t>();
  for (int64_t r = 0; r < b; ++r) {
    const Example& e = storage_->examples[indices[r]];
    const int64_t n = static_cast<int64_t>(e.tokens.size()) - 1;  // real input positions
    for (int64_t p = 0; p < t; ++p) {
      const int64_t k = r * t + p;
      const bool real = p < n;
      ids[k] = real ? e.tokens[p] : pad_id_;
      labels[k] = real && e.targets[p + 1] ? e.tokens[p + 1] : kIgnoreIndex;
      mask[k] = real ? 1 : 0;
    }
    out.tokens += storage_->labels[indices[r]];
  }
  out.global_tokens = out.tokens;
  out.example_indices = indices;
  return out;
}

// ---------------------------------------------------------------------------
// BatchIterator

BatchIterator::BatchIterator(Dataset dataset, int64_t batch_size, int64_t rank, int64_t world_size)
    : dataset_(std::move(dataset)), batch_size_(batch_size), rank_(rank), world_size_(world_size) {}

absl::StatusOr<Batch> BatchIterator::next() {
  PEFT_ASSIGN_OR_RETURN(Batch b, dataset_.batch_at(position_, batch_size_, rank_, world_size_));
  PEFT_ASSIGN_OR_RETURN(position_, dataset_.advance(position_, batch_size_));
  return b;
}

absl::Status BatchIterator::restore(const DataPosition& pos) {
  PEFT_RETURN_IF_ERROR(dataset_.advance(pos, 0).status());
  position_ = pos;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------
// Loading

absl::StatusOr<DataSplits> load_dataset_from_memory(std::string_view content, const std::string& name,
                                                    const Tokenizer& tokenizer, const DataOptions& options) {
  DataSplits out;
  DataStats& stats = out.stats;
  PEFT_ASSIGN_OR_RETURN(std::vector<Document> docs, read_documents(content, name, tokenizer, options, &stats));

  const std::vector<bool> is_val = choose_validation(docs, options);
  std::vector<const Document*> train_docs, val_docs;
  for (size_t i = 0; i < docs.size(); ++i) {
    (is_val[i] ? val_docs : train_docs).push_back(&docs[i]);
    (is_val[i] ? stats.validation_tokens : stats.train_tokens) += static_cast<int64_t>(docs[i].tokens.size());
  }
  stats.train_documents = static_cast<int64_t>(train_docs.size());
  stats.validation_documents = static_cast<int64_t>(val_docs.size());

  std::vector<Example> train_examples, val_examples;
  if (options.pack) {
    train_examples = pack(train_docs, options.seq_len, &stats.dropped_tail_tokens);
    val_examples = pack(val_docs, options.seq_len, &stats.dropped_tail_tokens);
  } else {
    train_examples = one_per_document(train_docs);
    val_examples = one_per_document(val_docs);
  }
  if (train_examples.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the training documents hold ", stats.train_tokens,
                                                   " tokens, fewer than seq_len + 1 = ", options.seq_len + 1,
                                                   " needed for one packed example"));
  }
  stats.train_examples = static_cast<int64_t>(train_examples.size());
  stats.validation_examples = static_cast<int64_t>(val_examples.size());
  docs.clear();

  const int32_t pad = tokenizer.pad_id() >= 0 ? tokenizer.pad_id() : std::max(tokenizer.eos_id(), 0);
  PEFT_ASSIGN_OR_RETURN(out.train, Dataset::create(std::move(train_examples), options.seq_len, pad, options.seed,
                                                   Dataset::Order::kShuffled));
  PEFT_ASSIGN_OR_RETURN(out.validation, Dataset::create(std::move(val_examples), options.seq_len, pad, options.seed,
                                                        Dataset::Order::kSequential));
  return out;
}

absl::StatusOr<DataSplits> load_dataset(const std::string& path, const Tokenizer& tokenizer,
                                        const DataOptions& options) {
  PEFT_RETURN_IF_ERROR(options.validate());
  PEFT_ASSIGN_OR_RETURN(std::string content, io::read_file(path));
  return load_dataset_from_memory(content, path, tokenizer, options);
}

}  // namespace peft::data
