// File: data/pair_merge.h (internal to //data)
//
// The greedy pair-merge loop shared by GPT-2 BPE (lowest merge rank first) and
// llama2.c's encode (highest vocab score first). The references rescan every
// adjacent pair after each merge (encoder.py, run.c: O(n^2) per text); this
// keeps candidates in a heap with lazy invalidation (O(n log n)), which gives
// the same result: among equal keys the leftmost pair merges first, exactly
// like the references' left-to-right scans.
#ifndef PEFT_DATA_PAIR_MERGE_H_
#define PEFT_DATA_PAIR_MERGE_H_

#include <cstdint>
#include <queue>
#include <vector>

namespace peft::data::internal {

/// Merges adjacent symbols of `ids` in place until no pair can merge.
/// `pair_fn(left_id, right_id, &key, &merged_id)` returns whether the pair can
/// merge, its priority key (smaller merges first) and the merged symbol's id.
/// The key must depend only on the two ids.
template <typename Key, typename PairFn>
void merge_pairs(std::vector<int32_t>* ids, PairFn&& pair_fn) {
  const int n = static_cast<int>(ids->size());
  if (n < 2) return;
  std::vector<int32_t> sym = *ids;
  std::vector<int> prev(n), next(n);
  std::vector<char> alive(n, 1);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    Key key;
    int left, right;  // node indices; node order == text order
    int32_t left_id, right_id, merged_id;
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    if (a.key < b.key || b.key < a.key) return b.key < a.key;
    return b.left < a.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> heap(worse);
  auto push = [&](int l, int r) {
    Key key{};
    int32_t merged = -1;
    if (pair_fn(sym[l], sym[r], &key, &merged)) heap.push({key, l, r, sym[l], sym[r], merged});
  };
  for (int i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    // Stale when either side died, changed id (merged with something else),
    // or stopped being adjacent.
    if (!alive[c.left] || !alive[c.right] || next[c.left] != c.right || sym[c.left] != c.left_id ||
        sym[c.right] != c.right_id) {
      continue;
    }
    sym[c.left] = c.merged_id;
    alive[c.right] = 0;
    next[c.left] = next[c.right];
    if (next[c.right] >= 0) prev[next[c.right]] = c.left;
    if (prev[c.left] >= 0) push(prev[c.left], c.left);
    if (next[c.left] >= 0) push(c.left, next[c.left]);
  }
  ids->clear();
  for (int i = 0; i >= 0; i = next[i]) ids->push_back(sym[i]);  // node 0 never dies
}

}  // namespace peft::data::internal

#endif  // PEFT_DATA_PAIR_MERGE_H_
