/*
 * File: third_party/sentencepiece_shim/spm_shim.h
 *
 * C ABI of libpeft_spm_shim.so, a thin wrapper around Debian's
 * libsentencepiece.
 *
 * Why a separate shared library: libsentencepiece.so embeds and exports its
 * own protobuf (3.14) while libtorch loads libprotobuf.so.32 (3.21); a process
 * that links both crashes during static initialisation. The shim is the only
 * object that links sentencepiece, and it is dlopen'ed with
 * RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND (see spm_loader.h), so its protobuf
 * references bind inside itself. Nothing C++ crosses this boundary: plain C
 * types, buffers allocated by the shim and released with peft_spm_free_buffer.
 *
 * Error convention: functions that can fail return NULL or a non-zero int and
 * store a malloc'ed, NUL-terminated message in *error (when error != NULL);
 * release it with peft_spm_free_buffer.
 */
#ifndef PEFT_THIRD_PARTY_SENTENCEPIECE_SHIM_SPM_SHIM_H_
#define PEFT_THIRD_PARTY_SENTENCEPIECE_SHIM_SPM_SHIM_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of the functions below. */
#define PEFT_SPM_SHIM_ABI_VERSION 3

/* Opaque model handle (a sentencepiece::SentencePieceProcessor). */
typedef struct PeftSpmModel PeftSpmModel;

/* Returns PEFT_SPM_SHIM_ABI_VERSION of the compiled shim. */
int peft_spm_abi_version(void);

/* Loads a serialized ModelProto from a file. NULL on failure. */
PeftSpmModel* peft_spm_load(const char* path, char** error);

/* Loads a serialized ModelProto from memory. NULL on failure. */
PeftSpmModel* peft_spm_load_from_bytes(const char* data, size_t size, char** error);

/* Releases a model (NULL is allowed). */
void peft_spm_free_model(PeftSpmModel* model);

/* Releases a buffer returned through an out-parameter (NULL is allowed). */
void peft_spm_free_buffer(void* buffer);

/* Encodes text[0, text_len) to ids (no BOS/EOS). On success returns 0 and
 * sets *ids (malloc'ed, may be NULL when *num_ids == 0) and *num_ids. */
int peft_spm_encode(const PeftSpmModel* model, const char* text, size_t text_len, int32_t** ids, size_t* num_ids,
                    char** error);

/* peft_spm_encode with the dummy-prefix "▁" forced on (add_dummy_prefix = 1)
 * or off (0), whatever the model's own normalizer says. Lets a caller encode a
 * long text in pieces: a piece that does not start the text is encoded
 * without the prefix the whole text got once. */
int peft_spm_encode_with_prefix(const PeftSpmModel* model, const char* text, size_t text_len, int add_dummy_prefix,
                                int32_t** ids, size_t* num_ids, char** error);

/* What the model's normalizer and trainer spec say, read from its ModelProto
 * (unset fields take the proto defaults). */
typedef struct PeftSpmModelInfo {
  int identity_normalizer;        /* 1 when the normalizer has no precompiled charsmap (rule "identity") */
  int add_dummy_prefix;           /* NormalizerSpec.add_dummy_prefix */
  int remove_extra_whitespaces;   /* NormalizerSpec.remove_extra_whitespaces */
  int escape_whitespaces;         /* NormalizerSpec.escape_whitespaces */
  int model_type;                 /* TrainerSpec.model_type: 1 unigram, 2 BPE, 3 word, 4 char */
  int treat_whitespace_as_suffix; /* TrainerSpec.treat_whitespace_as_suffix */
  int byte_fallback;              /* TrainerSpec.byte_fallback */
} PeftSpmModelInfo;

/* Fills *info; returns 0, or non-zero with *error when the model's
 * serialized proto cannot be read. */
int peft_spm_model_info(const PeftSpmModel* model, PeftSpmModelInfo* info, char** error);

/* Decodes ids to text. Every id must be in [0, piece_size). On success
 * returns 0 and sets *text (malloc'ed, NUL-terminated) and *text_len. */
int peft_spm_decode(const PeftSpmModel* model, const int32_t* ids, size_t num_ids, char** text, size_t* text_len,
                    char** error);

/* Number of pieces (the vocabulary size). */
int32_t peft_spm_piece_size(const PeftSpmModel* model);

/* The piece of `id`, borrowed: valid while the model lives. NULL (and
 * *len = 0) when id is out of range. */
const char* peft_spm_id_to_piece(const PeftSpmModel* model, int32_t id, size_t* len);

/* Special ids; -1 when the model has none. */
int32_t peft_spm_bos_id(const PeftSpmModel* model);
int32_t peft_spm_eos_id(const PeftSpmModel* model);
int32_t peft_spm_pad_id(const PeftSpmModel* model);
int32_t peft_spm_unk_id(const PeftSpmModel* model);

/* 1 when `id` is a control piece (<s>, </s>, ...), else 0 (also when out of range). */
int peft_spm_is_control(const PeftSpmModel* model, int32_t id);

/* The score of `id` (0 when out of range). */
float peft_spm_score(const PeftSpmModel* model, int32_t id);

/* The piece type of `id` as sentencepiece's ModelProto numbers it: 1 normal,
 * 2 unknown, 3 control, 5 unused, 6 byte (user-defined pieces read as 1);
 * 0 when out of range. */
int peft_spm_piece_type(const PeftSpmModel* model, int32_t id);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PEFT_THIRD_PARTY_SENTENCEPIECE_SHIM_SPM_SHIM_H_ */
