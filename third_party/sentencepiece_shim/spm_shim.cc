//
// Implementation of the C ABI in spm_shim.h over sentencepiece 0.1.97. Every
// entry point catches all exceptions: nothing may unwind across the C ABI.
#include "third_party/sentencepiece_shim/spm_shim.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <sentencepiece_processor.h>

struct PeftSpmModel {
  sentencepiece::SentencePieceProcessor processor;
  // The same model with the opposite add_dummy_prefix, built on first use
  // (peft_spm_encode_with_prefix).
  mutable std::once_flag other_once;
  mutable std::unique_ptr<sentencepiece::SentencePieceProcessor> other;
  mutable std::string other_error;
  int own_prefix = 1;  // the model's own add_dummy_prefix
};

namespace {

char* copy_string(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  if (out == nullptr) return nullptr;
  std::memcpy(out, s.data(), s.size());
  out[s.size()] = '\0';
  return out;
}

void set_error(char** error, const std::string& message) {
  if (error != nullptr) *error = copy_string(message);
}

bool in_range(const PeftSpmModel* model, int32_t id) {
  return model != nullptr && id >= 0 && id < model->processor.GetPieceSize();
}

// A minimal reader of the protobuf wire format, enough for the few scalar
// fields of ModelProto that peft_spm_model_info reports (the Debian package
// ships no generated sentencepiece_model.pb.h).
class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}
  bool done() const { return pos_ >= data_.size(); }
  bool varint(uint64_t* out) {
    *out = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos_ >= data_.size()) return false;
      const uint8_t b = static_cast<uint8_t>(data_[pos_++]);
      *out |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }
  // Reads one field: its number, wire type, and either its varint value or
  // its length-delimited bytes. False on malformed input or a group.
  bool field(uint32_t* number, uint64_t* value, std::string_view* bytes) {
    uint64_t key = 0;
    if (!varint(&key)) return false;
    *number = static_cast<uint32_t>(key >> 3);
    switch (key & 7) {
      case 0: return varint(value);
      case 1: return skip(8);
      case 5: return skip(4);
      case 2: {
        uint64_t len = 0;
        if (!varint(&len) || len > data_.size() - pos_) return false;
        *bytes = data_.substr(pos_, len);
        pos_ += len;
        return true;
      }
      default: return false;
    }
  }

 private:
  bool skip(size_t n) {
    if (n > data_.size() - pos_) return false;
    pos_ += n;
    return true;
  }
  std::string_view data_;
  size_t pos_ = 0;
};

// Field numbers from sentencepiece_model.proto.
constexpr uint32_t kModelTrainerSpec = 2, kModelNormalizerSpec = 3;
constexpr uint32_t kTrainerModelType = 3, kTrainerWhitespaceAsSuffix = 24, kTrainerByteFallback = 35;
constexpr uint32_t kNormCharsmap = 2, kNormDummyPrefix = 3, kNormExtraWhitespaces = 4, kNormEscapeWhitespaces = 5;

// Repeated embedded messages merge and the last scalar wins, as protobuf
// parsing does.
bool read_model_info(std::string_view proto, PeftSpmModelInfo* info) {
  *info = PeftSpmModelInfo{1, 1, 1, 1, 1, 0, 0};  // the proto defaults
  WireReader top(proto);
  while (!top.done()) {
    uint32_t number = 0;
    uint64_t value = 0;
    std::string_view bytes;
    if (!top.field(&number, &value, &bytes)) return false;
    if (number != kModelTrainerSpec && number != kModelNormalizerSpec) continue;
    WireReader sub(bytes);
    while (!sub.done()) {
      uint32_t n = 0;
      uint64_t v = 0;
      std::string_view b;
      if (!sub.field(&n, &v, &b)) return false;
      const int flag = v != 0 ? 1 : 0;
      if (number == kModelTrainerSpec) {
        if (n == kTrainerModelType) info->model_type = static_cast<int>(v);
        if (n == kTrainerWhitespaceAsSuffix) info->treat_whitespace_as_suffix = flag;
        if (n == kTrainerByteFallback) info->byte_fallback = flag;
      } else {
        if (n == kNormCharsmap) info->identity_normalizer = b.empty() ? 1 : 0;
        if (n == kNormDummyPrefix) info->add_dummy_prefix = flag;
        if (n == kNormExtraWhitespaces) info->remove_extra_whitespaces = flag;
        if (n == kNormEscapeWhitespaces) info->escape_whitespaces = flag;
      }
    }
  }
  return true;
}

// The processor that encodes with `add_dummy_prefix`: the model's own, or a
// copy loaded from its proto with one more normalizer_spec appended, which
// protobuf merges into the first (add_dummy_prefix = the other value).
const sentencepiece::SentencePieceProcessor* processor_with_prefix(const PeftSpmModel* model, int add_dummy_prefix,
                                                                   std::string* error) {
  if ((add_dummy_prefix != 0) == (model->own_prefix != 0)) return &model->processor;
  const PeftSpmModel* m = model;
  std::call_once(m->other_once, [m] {
    std::string proto = m->processor.serialized_model_proto();
    const char patch[4] = {static_cast<char>(kModelNormalizerSpec << 3 | 2), 2,
                           static_cast<char>(kNormDummyPrefix << 3 | 0), static_cast<char>(m->own_prefix ? 0 : 1)};
    proto.append(patch, sizeof(patch));
    auto other = std::make_unique<sentencepiece::SentencePieceProcessor>();
    sentencepiece::util::Status status = other->LoadFromSerializedProto(proto);
    if (status.ok()) {
      m->other = std::move(other);
    } else {
      m->other_error = status.ToString();
    }
  });
  if (m->other == nullptr) *error = "cannot reload the model without its dummy prefix: " + m->other_error;
  return m->other.get();
}

int encode_with(const sentencepiece::SentencePieceProcessor& processor, const char* text, size_t text_len,
                int32_t** ids, size_t* num_ids, char** error) {
  std::vector<int> out;
  sentencepiece::util::Status status = processor.Encode(std::string_view(text, text_len), &out);
  if (!status.ok()) {
    set_error(error, status.ToString());
    return 1;
  }
  if (out.empty()) return 0;
  auto* buffer = static_cast<int32_t*>(std::malloc(out.size() * sizeof(int32_t)));
  if (buffer == nullptr) {
    set_error(error, "out of memory");
    return 1;
  }
  for (size_t i = 0; i < out.size(); ++i) buffer[i] = static_cast<int32_t>(out[i]);
  *ids = buffer;
  *num_ids = out.size();
  return 0;
}

PeftSpmModel* finish_load(std::unique_ptr<PeftSpmModel> model, const sentencepiece::util::Status& status,
                          char** error) {
  if (!status.ok()) {
    set_error(error, status.ToString());
    return nullptr;
  }
  if (model->processor.GetPieceSize() <= 0) {
    set_error(error, "sentencepiece model has no pieces");
    return nullptr;
  }
  PeftSpmModelInfo info;
  if (!read_model_info(model->processor.serialized_model_proto(), &info)) {
    set_error(error, "sentencepiece model proto cannot be read back");
    return nullptr;
  }
  model->own_prefix = info.add_dummy_prefix;
  return model.release();
}

}  // namespace

extern "C" {

int peft_spm_abi_version(void) { return PEFT_SPM_SHIM_ABI_VERSION; }

PeftSpmModel* peft_spm_load(const char* path, char** error) {
  try {
    auto model = std::make_unique<PeftSpmModel>();
    sentencepiece::util::Status status = model->processor.Load(path);
    return finish_load(std::move(model), status, error);
  } catch (const std::exception& e) {
    set_error(error, std::string("sentencepiece load failed: ") + e.what());
  } catch (...) {
    set_error(error, "sentencepiece load failed: unknown exception");
  }
  return nullptr;
}

PeftSpmModel* peft_spm_load_from_bytes(const char* data, size_t size, char** error) {
  try {
    auto model = std::make_unique<PeftSpmModel>();
    sentencepiece::util::Status status = model->processor.LoadFromSerializedProto(std::string_view(data, size));
    return finish_load(std::move(model), status, error);
  } catch (const std::exception& e) {
    set_error(error, std::string("sentencepiece load failed: ") + e.what());
  } catch (...) {
    set_error(error, "sentencepiece load failed: unknown exception");
  }
  return nullptr;
}

void peft_spm_free_model(PeftSpmModel* model) { delete model; }

void peft_spm_free_buffer(void* buffer) { std::free(buffer); }

int peft_spm_encode(const PeftSpmModel* model, const char* text, size_t text_len, int32_t** ids, size_t* num_ids,
                    char** error) {
  *ids = nullptr;
  *num_ids = 0;
  try {
    return encode_with(model->processor, text, text_len, ids, num_ids, error);
  } catch (const std::exception& e) {
    set_error(error, std::string("sentencepiece encode failed: ") + e.what());
  } catch (...) {
    set_error(error, "sentencepiece encode failed: unknown exception");
  }
  return 1;
}

int peft_spm_encode_with_prefix(const PeftSpmModel* model, const char* text, size_t text_len, int add_dummy_prefix,
                                int32_t** ids, size_t* num_ids, char** error) {
  *ids = nullptr;
  *num_ids = 0;
  try {
    std::string why;
    const sentencepiece::SentencePieceProcessor* processor = processor_with_prefix(model, add_dummy_prefix, &why);
    if (processor == nullptr) {
      set_error(error, why);
      return 1;
    }
    return encode_with(*processor, text, text_len, ids, num_ids, error);
  } catch (const std::exception& e) {
    set_error(error, std::string("sentencepiece encode failed: ") + e.what());
  } catch (...) {
    set_error(error, "sentencepiece encode failed: unknown exception");
  }
  return 1;
}

int peft_spm_model_info(const PeftSpmModel* model, PeftSpmModelInfo* info, char** error) {
  try {
    if (read_model_info(model->processor.serialized_model_proto(), info)) return 0;
    set_error(error, "sentencepiece model proto cannot be read back");
  } catch (const std::exception& e) {
    set_error(error, std::string("sentencepiece model info failed: ") + e.what());
  } catch (...) {
    set_error(error, "sentencepiece model info failed: unknown exception");
  }
  return 1;
}

int peft_spm_decode(const PeftSpmModel* model, const int32_t* ids, size_t num_ids, char** text, size_t* text_len,
                    char** error) {
  *text = nullptr;
  *text_len = 0;
  try {
    std::vector<int> in(num_ids);
    for (size_t i = 0; i < num_ids; ++i) {
      if (!in_range(model, ids[i])) {
        set_error(error, "id out of range: " + std::to_string(ids[i]));
        return 1;
      }
      in[i] = ids[i];
    }
    std::string out;
    sentencepiece::util::Status status = model->processor.Decode(in, &out);
    if (!status.ok()) {
      set_error(error, status.ToString());
      return 1;
    }
    *text = copy_string(out);
    if (*text == nullptr) {
      set_error(error, "out of memory");
      return 1;
    }
    *text_len = out.size();
    return 0;
  } catch (const std::exception& e) {
    set_error(error, std::string("sentencepiece decode failed: ") + e.what());
  } catch (...) {
    set_error(error, "sentencepiece decode failed: unknown exception");
  }
  return 1;
}

int32_t peft_spm_piece_size(const PeftSpmModel* model) { return model->processor.GetPieceSize(); }

const char* peft_spm_id_to_piece(const PeftSpmModel* model, int32_t id, size_t* len) {
  *len = 0;
  if (!in_range(model, id)) return nullptr;
  const std::string& piece = model->processor.IdToPiece(id);
  *len = piece.size();
  return piece.c_str();
}

int32_t peft_spm_bos_id(const PeftSpmModel* model) { return model->processor.bos_id(); }
int32_t peft_spm_eos_id(const PeftSpmModel* model) { return model->processor.eos_id(); }
int32_t peft_spm_pad_id(const PeftSpmModel* model) { return model->processor.pad_id(); }
int32_t peft_spm_unk_id(const PeftSpmModel* model) { return model->processor.unk_id(); }

int peft_spm_is_control(const PeftSpmModel* model, int32_t id) {
  return in_range(model, id) && model->processor.IsControl(id) ? 1 : 0;
}

float peft_spm_score(const PeftSpmModel* model, int32_t id) {
  return in_range(model, id) ? model->processor.GetScore(id) : 0.0f;
}

int peft_spm_piece_type(const PeftSpmModel* model, int32_t id) {
  if (!in_range(model, id)) return 0;
  const sentencepiece::SentencePieceProcessor& p = model->processor;
  // 0.1.97 has no IsUserDefined: such pieces read as normal.
  if (p.IsUnknown(id)) return 2;
  if (p.IsControl(id)) return 3;
  if (p.IsUnused(id)) return 5;
  if (p.IsByte(id)) return 6;
  return 1;
}

}  // extern "C"
