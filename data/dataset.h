//
// The training data pipeline: a file of records -> token documents ->
// fixed-length examples -> deterministic, rank-sharded, resumable batches.
//
//   peft::data::DataOptions opts;
//   opts.seq_len = 256;
//   opts.seed = 1234;
//   PEFT_ASSIGN_OR_RETURN(peft::data::DataSplits data,
//                         peft::data::load_dataset("train.jsonl", *tokenizer, opts));
//   peft::data::BatchIterator it(data.train, /*batch_size=*/32, rank, world_size);
//   it.restore(saved_position);               // optional: resume a run exactly
//   PEFT_ASSIGN_OR_RETURN(peft::data::Batch batch, it.next());
//   // loss = cross_entropy(logits.view({-1, V}), batch.labels.view(-1),
//   //                      ignore_index = kIgnoreIndex, reduction = sum) / batch.global_tokens
//
// Record formats, BOS/EOS and bad-record handling: data/records.h.
//
// Examples (pack = true): the documents of a split, in file order, are
// concatenated into one stream and cut into windows of seq_len + 1 tokens with
// stride seq_len, so consecutive windows share one token and every stream token
// but the first is a label exactly once; the tail shorter than a window is
// dropped (DataStats::dropped_tail_tokens). Attention crosses document
// boundaries inside a window (GPT-2/llm.c pretraining style); target masks
// travel with the tokens, so instruction masks stay aligned. Examples
// (pack = false): one document per example, right-padded to seq_len; a
// document longer than seq_len + 1 tokens is a bad record (kTooLong), never
// silently truncated.
//
// Split: validation_fraction of the documents (rounded, at least one and at
// most all but one when the fraction is > 0 and there are >= 2 documents) go to
// validation, chosen by a hash of (seed, document tokens): the choice depends
// only on the seed and the content, so it is stable across runs and seq_len
// changes, and duplicated documents land on the same side.
//
// Order: the training set is read in a permutation of its examples that
// depends only on (seed, epoch) (Fisher-Yates over SplitMix64, no
// implementation-defined std:: distributions, so every platform agrees); the
// validation set is read in order. Global sample position p (counted from the
// start of training) is example order(p / N)[p % N]; global batch `step` covers
// positions [step * B, (step + 1) * B), so a batch may straddle two epochs and
// nothing is dropped. Rank r of W gets rows [r * B / W, (r + 1) * B / W) of
// each global batch: ranks are disjoint and together cover the global batch.
// The position (epoch, index) is two plain integers; restoring it resumes the
// exact sequence, even with a different batch size.
//
#ifndef PEFT_DATA_DATASET_H_
#define PEFT_DATA_DATASET_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data/records.h"
#include "data/tokenizer.h"

namespace peft::data {

/// Label value of positions that carry no loss (PyTorch's ignore_index default).
inline constexpr int64_t kIgnoreIndex = -100;

/// One example: tokens[0..L) with L <= seq_len + 1. targets[i] == 1 when
/// tokens[i] is predicted, i.e. the label at input position i - 1 is
/// tokens[i]; targets[0] is never used.
struct Example {
  std::vector<int32_t> tokens;   // [L]
  std::vector<uint8_t> targets;  // [L], 0 or 1
};

/// Where a reader stands: the next example is position `index` of epoch
/// `epoch`'s order. Plain integers, to be saved in a training checkpoint.
struct DataPosition {
  int64_t epoch = 0;
  int64_t index = 0;

  bool operator==(const DataPosition& o) const { return epoch == o.epoch && index == o.index; }
  bool operator!=(const DataPosition& o) const { return !(*this == o); }
};

/// One rank's share of a global batch. B is the local batch size
/// (batch_size / world_size), T is seq_len.
struct Batch {
  at::Tensor input_ids;                  // [B, T] int64; pad id after an example's end
  at::Tensor labels;                     // [B, T] int64; kIgnoreIndex where no loss
  at::Tensor attention_mask;             // [B, T] int64; 1 = real token, 0 = padding
  int64_t tokens = 0;                    // labels != kIgnoreIndex in these B rows
  int64_t global_tokens = 0;             // the same over the whole global batch (all ranks),
                                         // to normalise a summed loss without an all-reduce
  std::vector<int64_t> example_indices;  // [B] dataset index of each row
};

/// Fixed-length examples plus the order they are read in. Copies are cheap
/// (examples are shared, immutable) and all methods are const and thread-safe.
class Dataset final {
 public:
  enum class Order { kShuffled, kSequential };

  /// An empty dataset: batch() fails on it.
  Dataset() = default;

  /// Checks seq_len >= 1, pad_id >= 0 and every example (2 <= L <= seq_len +
  /// 1, targets.size() == L, ids >= 0, targets 0/1) and returns
  /// InvalidArgumentError naming the first bad one. `examples` may be empty.
  /// `pad_id` fills input positions after an example's end.
  static absl::StatusOr<Dataset> create(std::vector<Example> examples, int64_t seq_len, int32_t pad_id, uint64_t seed,
                                        Order order);

  int64_t size() const;
  int64_t seq_len() const { return seq_len_; }
  int32_t pad_id() const { return pad_id_; }
  Order order() const { return order_; }
  /// Example `i` in [0, size()); out of range is a programming error (TORCH_CHECK).
  const Example& example(int64_t i) const;

  /// The dataset indices read in epoch `epoch` ([size()]); identity for kSequential.
  std::vector<int64_t> epoch_order(int64_t epoch) const;

  /// The position after reading `count` >= 0 more examples from `pos`.
  /// InvalidArgumentError for an empty dataset, a position outside
  /// [0, size()), a negative count or int64 overflow.
  absl::StatusOr<DataPosition> advance(const DataPosition& pos, int64_t count) const;
  /// The position of global batch `step` >= 0 of `batch_size` examples,
  /// counted from the start of training; errors as advance().
  absl::StatusOr<DataPosition> position_at_step(int64_t step, int64_t batch_size) const;

  /// Rank `rank`'s rows of the global batch of `batch_size` examples starting
  /// at `start`. InvalidArgumentError for an empty dataset, batch_size < 1,
  /// world_size < 1, rank outside [0, world_size), batch_size not divisible
  /// by world_size, or a position outside [0, size()) / overflowing int64.
  absl::StatusOr<Batch> batch_at(const DataPosition& start, int64_t batch_size, int64_t rank, int64_t world_size) const;
  /// batch_at(position_at_step(step, batch_size), ...): global batch `step`.
  absl::StatusOr<Batch> batch(int64_t step, int64_t batch_size, int64_t rank, int64_t world_size) const;

  /// A batch of exactly these examples, in this order (evaluation, tests);
  /// global_tokens == tokens. InvalidArgumentError for an index out of range.
  absl::StatusOr<Batch> collate(const std::vector<int64_t>& indices) const;

 private:
  struct Storage;     // the examples and their label counts
  struct OrderCache;  // the last epoch's permutation

  std::shared_ptr<const std::vector<int64_t>> order_of(int64_t epoch) const;

  std::shared_ptr<const Storage> storage_;
  int64_t seq_len_ = 0;
  int32_t pad_id_ = 0;
  uint64_t seed_ = 0;
  Order order_ = Order::kSequential;
  std::shared_ptr<OrderCache> cache_;  // shared by copies, which read the same orders
};

/// Reads global batches one after another for one rank, keeping the position.
///
///   BatchIterator it(train, 32, rank, world);
///   ...save it.position().epoch / .index in the checkpoint...
///   PEFT_RETURN_IF_ERROR(it.restore({epoch, index}));  // on resume
class BatchIterator final {
 public:
  /// Keeps a copy of `dataset` (cheap); arguments are checked by next().
  BatchIterator(Dataset dataset, int64_t batch_size, int64_t rank, int64_t world_size);

  /// This rank's share of the next global batch; advances by batch_size.
  absl::StatusOr<Batch> next();
  /// The position of the next global batch.
  DataPosition position() const { return position_; }
  /// Continues from `pos` (from position()); InvalidArgumentError when epoch
  /// < 0 or index outside [0, size()).
  absl::Status restore(const DataPosition& pos);

 private:
  Dataset dataset_;
  int64_t batch_size_;
  int64_t rank_;
  int64_t world_size_;
  DataPosition position_;
};

/// The result of load_dataset(): train is shuffled per epoch, validation is
/// read in order (and may be empty).
struct DataSplits {
  Dataset train;
  Dataset validation;
  DataStats stats;
};

/// Reads `path` (see the file comment for formats, errors and the split).
/// NotFoundError when the file is missing; InvalidArgumentError "path:line:
/// what" for bad data and "path: what" for an empty file, no usable records or
/// too little data for one training example.
absl::StatusOr<DataSplits> load_dataset(const std::string& path, const Tokenizer& tokenizer,
                                        const DataOptions& options);

/// load_dataset() on `content` already in memory; `name` stands for the path in
/// messages and in kAuto's extension check.
absl::StatusOr<DataSplits> load_dataset_from_memory(std::string_view content, const std::string& name,
                                                    const Tokenizer& tokenizer, const DataOptions& options);

}  // namespace peft::data

#endif  // PEFT_DATA_DATASET_H_
