#include "peft/bone/bone.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "kernels/block_affine.h"
#include "peft/core/json_fields.h"
#include "peft/core/status.h"

namespace peft {
namespace {

using json = nlohmann::ordered_json;

// Both variants are written in current PEFT's MiSS layout (PEFT removed the
// BONE type; Bat is MiSS with init_weights "bat"): tensor `miss_block`,
// peft_type MISS. `bone_block`, the name of PEFT's old BONE files and of
// peft-cpp's Bat files before, is still read.
constexpr const char* kBlockKey = "miss_block";
constexpr const char* kLegacyBlockKey = "bone_block";

}  // namespace

// ----------------------------------------------------------------------------- BAT

BatLinearImpl::BatLinearImpl(const proto::BoneOptions& o, int64_t out, int64_t in) : options(o) {
  const int64_t r = o.r();
  TORCH_CHECK(r > 0 && out % r == 0 && in % r == 0, "bone (BAT): block size r = ", r,
              " must divide both dimensions of the weight [", out, ", ", in, "]");
  bone_block = register_parameter("bone_block", at::zeros({out / r, r, r}));
}

at::Tensor BatLinearImpl::adapted_weight(const at::Tensor& weight) const {
  return options.kernel() == proto::BoneOptions::REFERENCE ? kernels::block_affine_weight_ref(weight, bone_block)
                                                           : kernels::block_affine_weight(weight, bone_block);
}

at::Tensor BatLinearImpl::forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(x, adapted_weight(weight).to(x.scalar_type()), bias);
}

at::Tensor BatLinearImpl::forward_delta(const at::Tensor& x, const at::Tensor& weight) {
  const at::Tensor w2 = adapted_weight(weight);
  return at::linear(x, (w2 - weight.to(w2.scalar_type())).to(x.scalar_type()));
}

at::Tensor BatLinearImpl::merged_weight(const at::Tensor& weight) const {
  // fp64 then one rounding: the merged weight is as close to W' as fp32
  // allows, which keeps the later unmerge within ~1 ulp of W.
  const at::Tensor t = bone_block.detach().to(at::kDouble), w = weight.to(at::kDouble);
  const at::Tensor w2 = options.kernel() == proto::BoneOptions::REFERENCE ? kernels::block_affine_weight_ref(w, t)
                                                                          : kernels::block_affine_weight(w, t);
  return w2.to(at::kFloat);
}

at::Tensor BatLinearImpl::unmerged_weight(const at::Tensor& merged) const {
  const at::Tensor t = bone_block.detach();
  const at::Tensor w = options.kernel() == proto::BoneOptions::REFERENCE ? kernels::block_affine_unmerge_ref(merged, t)
                                                                         : kernels::block_affine_unmerge(merged, t);
  return w.to(at::kFloat);
}

std::vector<AdapterTensor> BatLinearImpl::state() { return {{kBlockKey, bone_block, kLegacyBlockKey}}; }

// ----------------------------------------------------------------------------- MISS

MissLinearImpl::MissLinearImpl(const proto::BoneOptions& o, int64_t out, int64_t in) : options(o), in_features(in) {
  TORCH_CHECK(o.r() > 0, "bone (MISS): r must be positive, got ", o.r());
  miss_block = register_parameter("miss_block", at::zeros({o.r(), out}));
}

at::Tensor MissLinearImpl::forward_delta(const at::Tensor& x, const at::Tensor& /*weight*/) {
  TORCH_CHECK(x.size(-1) == in_features, "bone (MISS): input has ", x.size(-1), " features, expected ", in_features);
  const int64_t r = options.r();
  at::Tensor h = x.to(miss_block.scalar_type());
  if (options.dropout() > 0 && is_training()) h = at::dropout(h, options.dropout(), /*train=*/true);
  if (const int64_t rem = in_features % r; rem != 0) h = at::constant_pad_nd(h, {0, r - rem});
  std::vector<int64_t> chunks = h.sizes().vec();  // [..., in_padded] -> [..., in_padded / r, r]
  chunks.back() = h.size(-1) / r;
  chunks.push_back(r);
  const at::Tensor summed = h.reshape(chunks).sum(-2);  // [..., r]
  return at::matmul(summed, miss_block).to(x.scalar_type());
}

at::Tensor MissLinearImpl::forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(x, weight, bias) + forward_delta(x, weight);
}

at::Tensor MissLinearImpl::delta_weight() const {
  const int64_t r = options.r(), reps = (in_features + r - 1) / r;
  return miss_block.detach().to(at::kFloat).t().repeat({1, reps}).narrow(1, 0, in_features);
}

at::Tensor MissLinearImpl::merged_weight(const at::Tensor& weight) const { return weight + delta_weight(); }

at::Tensor MissLinearImpl::unmerged_weight(const at::Tensor& merged) const { return merged - delta_weight(); }

std::vector<AdapterTensor> MissLinearImpl::state() { return {{kBlockKey, miss_block, kLegacyBlockKey}}; }

// ----------------------------------------------------------------------------- registry entry

AdapterMethod bone_method() {
  AdapterMethod m;
  m.name = "bone";
  m.method_case = proto::AdapterConfig::kBone;
  m.peft_type = [](const proto::AdapterConfig&) { return std::string("MISS"); };
  m.accepted_peft_types = {"BONE", "MISS"};
  m.validate = [](const proto::AdapterConfig& c) -> absl::Status {
    const proto::BoneOptions& o = c.bone();
    if (o.r() <= 0)
      return absl::InvalidArgumentError(absl::StrCat("bone.r (block size) must be positive, got ", o.r()));
    if (!(o.dropout() >= 0 && o.dropout() < 1)) {
      return absl::InvalidArgumentError(absl::StrCat("bone.dropout must be in [0, 1), got ", o.dropout()));
    }
    if (o.variant() == proto::BoneOptions::BAT && o.dropout() > 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("bone.dropout = ", o.dropout(), " applies to variant MISS only; BAT has no dropout"));
    }
    return absl::OkStatus();
  };
  m.check_target = [](const proto::AdapterConfig& c, const LinearTarget& t) -> absl::Status {
    const proto::BoneOptions& o = c.bone();
    const int64_t out = t.linear->options.out_features, in = t.linear->options.in_features, r = o.r();
    if (o.variant() == proto::BoneOptions::BAT && (out % r != 0 || in % r != 0)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bone (BAT): block size r = ", r, " must divide both dimensions of ", t.path, " [", out, ", ", in,
          "]; choose an r that divides every targeted projection, leave this module out, or use variant MISS"));
    }
    return absl::OkStatus();
  };
  m.make_linear = [](const proto::AdapterConfig& c, const LinearTarget& t,
                     uint64_t /*seed: zero init*/) -> absl::StatusOr<std::shared_ptr<LinearAdapter>> {
    const int64_t out = t.linear->options.out_features, in = t.linear->options.in_features;
    if (c.bone().variant() == proto::BoneOptions::BAT) return std::make_shared<BatLinearImpl>(c.bone(), out, in);
    return std::make_shared<MissLinearImpl>(c.bone(), out, in);
  };
  m.config_json = [](const proto::AdapterConfig& c, bool /*fan_in_fan_out: MiSS/Bone have none*/) {
    const proto::BoneOptions& o = c.bone();
    const bool bat = o.variant() == proto::BoneOptions::BAT;
    // Exactly the fields of PEFT's MissConfig; the core adds peft_type,
    // target_modules and the common keys.
    json j;
    j["r"] = o.r();
    j["miss_dropout"] = bat ? 0.0f : o.dropout();
    j["mini_r"] = 1;
    j["init_weights"] = bat ? json("bat") : json(true);
    j["bias"] = "none";
    j["exclude_modules"] = nullptr;  // MissConfig has had these since it was added
    j["layers_to_transform"] = nullptr;
    j["layers_pattern"] = nullptr;
    j["modules_to_save"] = nullptr;
    return j.dump();
  };
  m.parse_config_json = [](const std::string& text, proto::AdapterConfig* c) -> absl::Status {
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("adapter_config.json: not a JSON object");
    const std::string type =
        j.contains("peft_type") && j["peft_type"].is_string() ? j["peft_type"].get<std::string>() : "";
    if (type != "BONE" && type != "MISS") {
      return absl::InvalidArgumentError(
          absl::StrCat("adapter_config.json: peft_type '", type, "' is not a Bone/MiSS adapter"));
    }
    proto::BoneOptions* o = c->mutable_bone();
    const std::string src = "adapter_config.json";
    PEFT_ASSIGN_OR_RETURN(std::optional<int64_t> r, json_fields::integer(j, "r", src, 1, int64_t{1} << 16));
    if (r) o->set_r(static_cast<int32_t>(*r));
    o->set_variant(proto::BoneOptions::MISS);  // init_weights true (default) or false (random init, then loaded)
    if (j.contains("init_weights")) {
      const json& iw = j["init_weights"];
      if (iw.is_string()) {
        const std::string s = iw.get<std::string>();
        if (s == "bat") {
          o->set_variant(proto::BoneOptions::BAT);
        } else if (s == "mini") {
          return absl::UnimplementedError("adapter_config.json: MiSS init_weights 'mini' (mini_r) is not supported");
        } else {
          return absl::InvalidArgumentError(absl::StrCat("adapter_config.json: init_weights '", s, "'"));
        }
      } else if (!iw.is_boolean() && !iw.is_null()) {
        return absl::InvalidArgumentError("adapter_config.json: init_weights must be true, false, \"bat\" or \"mini\"");
      }
    }
    PEFT_ASSIGN_OR_RETURN(std::optional<double> dropout, json_fields::number(j, "miss_dropout", src, 0.0, 0.999999));
    if (o->variant() == proto::BoneOptions::MISS && dropout) o->set_dropout(static_cast<float>(*dropout));
    PEFT_ASSIGN_OR_RETURN(std::optional<std::string> bias, json_fields::string(j, "bias", src));
    if (bias && *bias != "none") {
      return absl::UnimplementedError(
          absl::StrCat("adapter_config.json: ", type, " bias '", *bias, "' is not supported (only \"none\")"));
    }
    return absl::OkStatus();
  };
  m.trainable_count = [](const proto::AdapterConfig& c, int64_t out, int64_t /*in*/) {
    // BAT: (out/r)·r·r; MISS: r·out.
    return static_cast<int64_t>(c.bone().r()) * out;
  };
  return m;
}

}  // namespace peft
