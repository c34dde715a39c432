#include "data/hf/added_vocabulary.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "data/hf/unicode.h"
#include "peft/core/status.h"

namespace peft::data::hf {
namespace {

// Ids beyond this are certainly corrupt (the largest vocabularies are ~256k).
constexpr int64_t kMaxAddedId = int64_t{1} << 24;

}  // namespace

void AddedVocabulary::Trie::insert(std::string_view key, int32_t token) {
  int32_t node = 0;
  for (size_t k = 0; k < key.size(); ++k) {
    const unsigned char b = static_cast<unsigned char>(key[k]);
    int32_t next = -1;
    if (node == 0) {
      next = root_child[b];
    } else {
      auto& ch = nodes[node].children;
      auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t{-1}));
      if (it != ch.end() && it->first == b) next = it->second;
    }
    if (next < 0) {
      next = static_cast<int32_t>(nodes.size());
      nodes.emplace_back();
      if (node == 0) {
        root_child[b] = next;
      } else {
        auto& ch = nodes[node].children;
        ch.insert(std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t{-1})), {b, next});
      }
    }
    node = next;
  }
  if (nodes[node].token < 0) nodes[node].token = token;  // the first spelling wins, as HF keeps it
}

int32_t AddedVocabulary::Trie::longest_at(std::string_view s, size_t i, size_t* end) const {
  int32_t node = root_child[static_cast<unsigned char>(s[i])];
  int32_t best = -1;
  size_t k = i + 1;
  while (node >= 0) {
    if (nodes[node].token >= 0) {
      best = nodes[node].token;
      *end = k;
    }
    if (k >= s.size()) break;
    const unsigned char b = static_cast<unsigned char>(s[k]);
    const auto& ch = nodes[node].children;
    auto it = std::lower_bound(ch.begin(), ch.end(), std::make_pair(b, int32_t{-1}));
    node = (it != ch.end() && it->first == b) ? it->second : -1;
    ++k;
  }
  return best;
}

absl::StatusOr<std::unique_ptr<AddedVocabulary>> AddedVocabulary::from_json(const json& list,
                                                                            const Normalizer* normalizer,
                                                                            const std::string& where) {
  auto v = std::make_unique<AddedVocabulary>();
  if (list.is_null()) return v;
  if (!list.is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ": \"added_tokens\" must be a list"));
  for (const json& entry : list) {
    Fields f(entry, where, "added_tokens entry " + entry.dump().substr(0, 120));
    const json* id = f.get("id");
    if (id == nullptr || !id->is_number_integer() || id->get<int64_t>() < 0 || id->get<int64_t>() >= kMaxAddedId) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": malformed added_tokens entry ", entry.dump()));
    }
    AddedToken t;
    t.id = static_cast<int32_t>(id->get<int64_t>());
    PEFT_ASSIGN_OR_RETURN(t.content, f.string("content"));
    if (t.content.empty()) return f.error("empty \"content\"");
    PEFT_ASSIGN_OR_RETURN(t.special, f.boolean("special", false));
    // HF: AddedToken's default for normalized is !special.
    PEFT_ASSIGN_OR_RETURN(t.normalized, f.boolean("normalized", !t.special));
    PEFT_ASSIGN_OR_RETURN(t.lstrip, f.boolean("lstrip", false));
    PEFT_ASSIGN_OR_RETURN(t.rstrip, f.boolean("rstrip", false));
    PEFT_ASSIGN_OR_RETURN(t.single_word, f.boolean("single_word", false));
    if (auto it = v->by_id_.find(t.id); it != v->by_id_.end()) {
      if (v->tokens_[it->second].content != t.content) {
        return absl::InvalidArgumentError(absl::StrCat(where, ": added token \"", t.content, "\" reuses id ", t.id,
                                                       " of \"", v->tokens_[it->second].content, "\""));
      }
      continue;  // a repeated entry
    }
    if (v->by_content_.count(t.content)) continue;  // HF keeps the first id of a content
    const int32_t index = static_cast<int32_t>(v->tokens_.size());
    v->by_id_[t.id] = index;
    v->by_content_[t.content] = index;
    v->tokens_.push_back(std::move(t));
  }
  // HF builds its matchers from the special tokens first, then the others;
  // with leftmost-longest matching the order only decides between equal
  // spellings, which are deduplicated above.
  for (size_t i = 0; i < v->tokens_.size(); ++i) {
    const AddedToken& t = v->tokens_[i];
    if (!t.normalized) {
      v->raw_trie_.insert(t.content, static_cast<int32_t>(i));
    } else {
      std::string spelled = t.content;
      if (normalizer != nullptr) normalizer->normalize(&spelled);
      if (!spelled.empty()) v->normalized_trie_.insert(spelled, static_cast<int32_t>(i));
    }
  }
  return v;
}

const AddedToken* AddedVocabulary::find(std::string_view content) const {
  auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::find(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

void AddedVocabulary::split(const Piece& piece, const Trie& trie, bool split_special_tokens,
                            std::vector<Piece>* out) const {
  const std::string_view s = piece.text;
  size_t start_offset = 0;  // end of the last accepted match
  auto emit_text = [&](size_t begin, size_t end) {
    Piece p;
    p.text = std::string(s.substr(begin, end - begin));
    p.at_start = piece.at_start && begin == 0;
    out->push_back(std::move(p));
  };
  size_t i = 0;
  while (i < s.size()) {
    size_t end = 0;
    const int32_t t = trie.root_child[static_cast<unsigned char>(s[i])] < 0 ? -1 : trie.longest_at(s, i, &end);
    if (t < 0) {
      ++i;
      continue;
    }
    const AddedToken& token = tokens_[t];
    // Like HF's find_iter, a match that is then rejected still consumes its
    // text: the search goes on after it.
    if (split_special_tokens && token.special) {
      i = end;
      continue;
    }
    if (token.single_word) {
      const bool start_ok = i == 0 || !is_word_char(prev_char(s, i).cp);
      const bool stop_ok = end == s.size() || !is_word_char(next_char(s, end).cp);
      if (!start_ok || !stop_ok) {
        i = end;
        continue;
      }
    }
    size_t start = i, stop = end;
    if (token.lstrip) {
      size_t b = start;
      while (b > 0) {
        const Utf8Char c = prev_char(s, b);
        if (!is_whitespace(c.cp)) break;
        b -= c.len;
      }
      start = std::max(b, start_offset);
    }
    if (token.rstrip) {
      while (stop < s.size()) {
        const Utf8Char c = next_char(s, stop);
        if (!is_whitespace(c.cp)) break;
        stop += c.len;
      }
    }
    if (start_offset < start) emit_text(start_offset, start);
    Piece p;
    p.id = token.id;
    out->push_back(std::move(p));
    start_offset = stop;
    i = stop;
  }
  if (start_offset < s.size()) emit_text(start_offset, s.size());
}

std::vector<Piece> AddedVocabulary::extract_and_normalize(std::string_view text, const Normalizer* normalizer,
                                                          bool split_special_tokens) const {
  std::vector<Piece> pieces;
  Piece whole;
  whole.text = std::string(text);
  whole.at_start = true;
  if (raw_trie_.empty()) {
    pieces.push_back(std::move(whole));
  } else {
    split(whole, raw_trie_, split_special_tokens, &pieces);
  }
  std::vector<Piece> out;
  out.reserve(pieces.size());
  for (Piece& p : pieces) {
    if (p.id >= 0) {
      out.push_back(std::move(p));
      continue;
    }
    if (normalizer != nullptr) normalizer->normalize(&p.text);
    if (p.text.empty()) continue;
    if (normalized_trie_.empty()) {
      out.push_back(std::move(p));
    } else {
      split(p, normalized_trie_, split_special_tokens, &out);
    }
  }
  return out;
}

}  // namespace peft::data::hf
