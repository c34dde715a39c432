//
// Implementation of the C ABI in spm_shim.h over sentencepiece 0.1.97. Every
// entry point catches all exceptions: nothing may unwind across the C ABI.
#include "third_party/sentencepiece_shim/spm_shim.h"

#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <sentencepiece_processor.h>

struct PeftSpmModel {
  sentencepiece::SentencePieceProcessor processor;
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
    std::vector<int> out;
    sentencepiece::util::Status status = model->processor.Encode(std::string_view(text, text_len), &out);
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
  } catch (const std::exception& e) {
    set_error(error, std::string("sentencepiece encode failed: ") + e.what());
  } catch (...) {
    set_error(error, "sentencepiece encode failed: unknown exception");
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
