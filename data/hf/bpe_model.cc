#include "data/hf/bpe_model.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "data/hf/unicode.h"
#include "data/pair_merge.h"
#include "peft/core/status.h"

namespace peft::data::hf {
namespace {

// Ids may leave holes, but not arbitrarily large ones: a corrupt id must not
// make us allocate gigabytes.
constexpr int64_t kMaxIdSlack = 1 << 16;
// HF caches words shorter than this many bytes; longer ones are rare and
// would crowd out the useful entries.
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCachedWords = 1 << 16;
// Models a thread keeps caches for; the least recently created goes first.
constexpr size_t kMaxCachedModels = 4;
constexpr uint32_t kSmallChars = 2048;

// Splits on every `sep` (empty fields kept, like Python's str.split(sep)).
std::vector<std::string_view> split_on(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  for (size_t i = s.find(sep); i != std::string_view::npos; i = s.find(sep, start)) {
    parts.push_back(s.substr(start, i - start));
    start = i + 1;
  }
  parts.push_back(s.substr(start));
  return parts;
}

uint64_t pair_key(int32_t l, int32_t r) { return (static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(r); }

std::atomic<uint64_t> next_cache_key{1};

struct WordCache {
  uint64_t key = 0;
  std::unordered_map<std::string, std::vector<int32_t>> words;
};

// This thread's cache for the model `key`.
WordCache& thread_cache(uint64_t key) {
  thread_local std::vector<std::unique_ptr<WordCache>> caches;
  for (auto& c : caches) {
    if (c->key == key) return *c;
  }
  if (caches.size() >= kMaxCachedModels) caches.erase(caches.begin());
  caches.push_back(std::make_unique<WordCache>());
  caches.back()->key = key;
  return *caches.back();
}

const std::string& empty_string() {
  static const std::string* empty = new std::string();
  return *empty;
}

}  // namespace

absl::Status BpeModel::set_vocab(const json& vocab, const std::string& where) {
  if (!vocab.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": the vocabulary is not a JSON object of token -> id"));
  }
  if (vocab.empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": the vocabulary is empty"));
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": vocabulary entry \"", it.key(), "\" has a non-integer id"));
    }
    const int64_t id = it.value().get<int64_t>();
    if (id < 0 || id >= static_cast<int64_t>(vocab.size()) + kMaxIdSlack) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": vocabulary entry \"", it.key(), "\" has id ", id, " out of range"));
    }
    if (it.key().empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": empty vocabulary entry"));
    if (static_cast<size_t>(id) >= tokens_.size()) tokens_.resize(id + 1);
    if (!tokens_[id].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": id ", id, " is used by both \"", tokens_[id], "\" and \"", it.key(), "\""));
    }
    tokens_[id] = it.key();
  }
  ids_.reserve(tokens_.size());
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (!tokens_[id].empty()) ids_.emplace(tokens_[id], static_cast<int32_t>(id));
  }
  return absl::OkStatus();
}

absl::Status BpeModel::add_merge(std::string_view left, std::string_view right, int32_t rank,
                                 const std::string& where) {
  // HF spells the merged token without the right part's continuing-subword
  // prefix: "a" + "##b" -> "ab".
  std::string_view right_text = right;
  if (!prefix_.empty() && right_text.substr(0, prefix_.size()) == prefix_) right_text.remove_prefix(prefix_.size());
  std::string joined;
  joined.reserve(left.size() + right_text.size());
  joined.append(left).append(right_text);
  const int32_t l = token_to_id(left), r = token_to_id(right), m = token_to_id(joined);
  if (l < 0 || r < 0 || m < 0) {
    return absl::InvalidArgumentError(absl::StrCat(where, ": merge #", rank, " \"", std::string(left), " ",
                                                   std::string(right), "\" uses a token missing from the vocabulary"));
  }
  // Later duplicates win, as in encoder.py's dict and HF's HashMap.
  merges_[pair_key(l, r)] = Merge{rank, m};
  return absl::OkStatus();
}

absl::Status BpeModel::finish(const std::string& where) {
  cache_key_ = next_cache_key.fetch_add(1);
  byte_token_ids_.fill(-1);
  char name[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    byte_token_ids_[b] = token_to_id(name);
  }
  small_char_ids_.assign(kSmallChars, -1);
  for (uint32_t cp = 0; cp < kSmallChars; ++cp) {
    std::string ch;
    append_utf8(cp, &ch);
    small_char_ids_[cp] = token_to_id(ch);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::from_json(const json& model, const std::string& where) {
  const std::string type = component_type(model);
  // "object": files from before "type" was written.
  if (type != "BPE" && type != "object") {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": unsupported model \"", type, "\": only BPE is supported (model type is not BPE)"));
  }
  Fields f(model, where, "model BPE");
  std::unique_ptr<BpeModel> m(new BpeModel());
  const json* vocab = f.get("vocab");
  if (vocab == nullptr) return f.error("no \"vocab\"");
  PEFT_RETURN_IF_ERROR(m->set_vocab(*vocab, where));
  auto optional_string = [&](const char* key, std::string* out) -> absl::Status {
    const json* v = f.get(key);
    if (v == nullptr || v->is_null()) return absl::OkStatus();
    if (!v->is_string()) return f.error(absl::StrCat("\"", key, "\" must be a string or null"));
    *out = v->get<std::string>();
    return absl::OkStatus();
  };
  std::string unk;
  PEFT_RETURN_IF_ERROR(optional_string("unk_token", &unk));
  PEFT_RETURN_IF_ERROR(optional_string("continuing_subword_prefix", &m->prefix_));
  PEFT_RETURN_IF_ERROR(optional_string("end_of_word_suffix", &m->suffix_));
  PEFT_ASSIGN_OR_RETURN(const json* merges, f.array("merges"));
  m->merges_.reserve(merges->size());
  int32_t rank = 0;
  for (const json& item : *merges) {
    if (item.is_string()) {
      std::vector<std::string_view> parts = split_on(item.get_ref<const std::string&>(), ' ');
      if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
        return f.error(absl::StrCat("merge #", rank, " ", item.dump(), " is not \"a b\""));
      }
      PEFT_RETURN_IF_ERROR(m->add_merge(parts[0], parts[1], rank, where));
    } else if (item.is_array() && item.size() == 2 && item[0].is_string() && item[1].is_string()) {
      PEFT_RETURN_IF_ERROR(
          m->add_merge(item[0].get_ref<const std::string&>(), item[1].get_ref<const std::string&>(), rank, where));
    } else {
      return f.error(
          absl::StrCat("merge #", rank, " ", item.dump().substr(0, 80), " is neither \"a b\" nor [\"a\", \"b\"]"));
    }
    ++rank;
  }
  if (!unk.empty()) {
    m->unk_id_ = m->token_to_id(unk);
    if (m->unk_id_ < 0) return f.error(absl::StrCat("unk_token \"", unk, "\" is not in the vocabulary"));
  }
  PEFT_ASSIGN_OR_RETURN(m->fuse_unk_, f.boolean("fuse_unk", false));
  PEFT_ASSIGN_OR_RETURN(m->byte_fallback_, f.boolean("byte_fallback", false));
  PEFT_ASSIGN_OR_RETURN(m->ignore_merges_, f.boolean("ignore_merges", false));
  PEFT_RETURN_IF_ERROR(m->finish(where));
  return m;
}

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::from_vocab_and_merges(const json& vocab,
                                                                          const std::string& vocab_path,
                                                                          std::string_view merges,
                                                                          const std::string& merges_path) {
  std::unique_ptr<BpeModel> m(new BpeModel());
  PEFT_RETURN_IF_ERROR(m->set_vocab(vocab, vocab_path));
  int32_t rank = 0;
  bool first = true;
  for (std::string_view line : split_on(merges, '\n')) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (first && line.substr(0, 8) == "#version") {
      first = false;
      continue;
    }
    first = false;
    if (line.empty()) continue;
    std::vector<std::string_view> parts = split_on(line, ' ');
    if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(merges_path, ": merge line ", rank + 1, " is not \"a b\": \"",
                                                     std::string(line.substr(0, 80)), "\""));
    }
    PEFT_RETURN_IF_ERROR(m->add_merge(parts[0], parts[1], rank, merges_path));
    ++rank;
  }
  PEFT_RETURN_IF_ERROR(m->finish(vocab_path));
  return m;
}

int32_t BpeModel::token_to_id(std::string_view token) const {
  auto it = ids_.find(token);
  return it == ids_.end() ? -1 : it->second;
}

const std::string& BpeModel::id_to_token(int32_t id) const {
  return id >= 0 && id < size() ? tokens_[id] : empty_string();
}

std::vector<std::pair<std::string, std::string>> BpeModel::merges() const {
  std::vector<std::pair<int32_t, uint64_t>> ranked;
  ranked.reserve(merges_.size());
  for (const auto& [key, merge] : merges_) ranked.emplace_back(merge.rank, key);
  std::sort(ranked.begin(), ranked.end());
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(ranked.size());
  for (const auto& [rank, key] : ranked) {
    out.emplace_back(tokens_[static_cast<int32_t>(key >> 32)], tokens_[static_cast<int32_t>(key & 0xFFFFFFFFu)]);
  }
  return out;
}

int32_t BpeModel::char_id(std::string_view ch, uint32_t cp, bool first, bool last) const {
  const bool decorated = (!first && !prefix_.empty()) || (last && !suffix_.empty());
  if (!decorated && cp < kSmallChars) return small_char_ids_[cp];
  std::string key;
  if (!first) key += prefix_;
  key.append(ch);
  if (last) key += suffix_;
  return token_to_id(key);
}

void BpeModel::merge_word(std::string_view word, std::vector<int32_t>* ids) const {
  // HF BPE::merge_word: characters to symbols, with byte fallback and
  // (fused) unknowns, then merges by rank.
  int32_t pending_unk = -1;  // an unk not yet written (fuse_unk extends it)
  for (size_t i = 0; i < word.size();) {
    const Utf8Char c = next_char(word, i);
    const std::string_view ch = word.substr(i, c.len);
    const bool first = i == 0, last = i + c.len == word.size();
    i += c.len;
    const int32_t id = char_id(ch, c.cp, first, last);
    if (id >= 0) {
      if (pending_unk >= 0) ids->push_back(pending_unk);
      pending_unk = -1;
      ids->push_back(id);
      continue;
    }
    if (byte_fallback_) {
      std::string spelled;
      if (!first) spelled += prefix_;
      spelled.append(ch);
      if (last) spelled += suffix_;
      bool all = true;
      for (unsigned char b : spelled) all &= byte_token_ids_[b] >= 0;
      if (all) {
        // As in HF, a pending unk is not written before the byte tokens.
        for (unsigned char b : spelled) ids->push_back(byte_token_ids_[b]);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (pending_unk >= 0 && !fuse_unk_) ids->push_back(pending_unk);
      pending_unk = unk_id_;
    }
    // No unk_token: HF drops the character.
  }
  if (pending_unk >= 0) ids->push_back(pending_unk);
  internal::merge_pairs<int32_t>(ids, [this](int32_t l, int32_t r, int32_t* rank, int32_t* merged) {
    auto it = merges_.find(pair_key(l, r));
    if (it == merges_.end()) return false;
    *rank = it->second.rank;
    *merged = it->second.merged_id;
    return true;
  });
}

void BpeModel::tokenize(const std::string& word, std::vector<int32_t>* out) const {
  if (word.empty()) return;
  // The cache is consulted first, also for ignore_merges: a word's result
  // never changes, and the small cache is faster to probe than the vocabulary.
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  WordCache* cache = cacheable ? &thread_cache(cache_key_) : nullptr;
  if (cache != nullptr) {
    if (auto it = cache->words.find(word); it != cache->words.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  std::vector<int32_t> ids;
  auto vocab_hit = ignore_merges_ ? ids_.find(word) : ids_.end();
  if (vocab_hit != ids_.end()) {
    ids.push_back(vocab_hit->second);
  } else {
    ids.reserve(word.size());
    merge_word(word, &ids);
  }
  out->insert(out->end(), ids.begin(), ids.end());
  if (cache == nullptr) return;
  if (cache->words.size() >= kMaxCachedWords) cache->words.clear();
  cache->words.emplace(word, std::move(ids));
}

}  // namespace peft::data::hf
