#include "peft/lora/lora.h"

#include <cmath>
#include <functional>
#include <regex>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "peft/core/autocast.h"
#include "peft/core/json_fields.h"
#include "peft/core/status.h"

namespace peft {

bool residual_init(const proto::LoraOptions& o) {
  return o.init() == proto::LoraOptions::PISSA || o.init() == proto::LoraOptions::OLORA;
}

double lora_scaling(double alpha, int64_t r, bool use_rslora) {
  return use_rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
}

namespace {

// Why a rank_pattern/alpha_pattern key is refused before it is compiled, or
// "" when it is fine. std::regex (libstdc++) backtracks recursively, so a
// repetition of a repetition ("a**", "(a+)*") can take exponential time on a
// module name: a hostile adapter_config.json would hang the process. Python's
// re, which PEFT uses, refuses the first form too ("multiple repeat");
// module-name patterns never need either.
std::string pattern_problem(const std::string& key) {
  if (key.size() > 512) return "is longer than 512 characters";
  auto quantifier_at = [&](size_t i) -> size_t {  // length of a quantifier starting at i, 0 if none
    if (i >= key.size()) return 0;
    if (key[i] == '*' || key[i] == '+' || key[i] == '?') return 1;
    if (key[i] == '{') {
      const size_t close = key.find('}', i);
      if (close != std::string::npos && key.find_first_not_of("0123456789,", i + 1) == close) return close - i + 1;
    }
    return 0;
  };
  std::vector<bool> group_repeats;  // per open group: holds a repetition
  bool last_repeated = false;       // the previous atom carried a quantifier
  for (size_t i = 0; i < key.size();) {
    if (const size_t q = quantifier_at(i)) {
      if (last_repeated) return "repeats a repetition (e.g. \"a**\" or \"(a+)*\")";
      if (!group_repeats.empty()) group_repeats.back() = true;
      last_repeated = true;
      i += q;
      if (i < key.size() && key[i] == '?') ++i;  // lazy
      continue;
    }
    last_repeated = false;
    if (key[i] == '\\') {
      i += 2;
    } else if (key[i] == '[') {
      size_t j = i + 1;
      if (j < key.size() && key[j] == '^') ++j;
      if (j < key.size() && key[j] == ']') ++j;
      while (j < key.size() && key[j] != ']') j += key[j] == '\\' ? 2 : 1;
      i = j + 1;
    } else if (key[i] == '(') {
      group_repeats.push_back(false);
      ++i;
    } else if (key[i] == ')') {
      const bool inner = !group_repeats.empty() && group_repeats.back();
      if (!group_repeats.empty()) group_repeats.pop_back();
      ++i;
      if (inner && quantifier_at(i)) return "repeats a group that holds a repetition (e.g. \"(a+)*\")";
      if (inner && !group_repeats.empty()) group_repeats.back() = true;
    } else {
      ++i;
    }
  }
  return "";
}

// PEFT's get_pattern_key (utils/other.py): the first key k, in the order the
// config lists them, for which re.match(rf"(.*\.)?({k})$", name) holds.
// regex_match must cover the whole name, as re.match plus "$" does.
template <typename Entry>
const Entry* first_match(const google::protobuf::RepeatedPtrField<Entry>& entries, const std::string& path) {
  for (const Entry& e : entries) {
    if (!pattern_problem(e.key()).empty()) continue;  // validate() refuses it
    try {
      if (std::regex_match(path, std::regex("(.*\\.)?(" + e.key() + ")"))) return &e;
    } catch (const std::regex_error&) {
      // validate() rejects such keys before any module is built.
    }
  }
  return nullptr;
}

}  // namespace

proto::LoraOptions lora_options_for(const proto::LoraOptions& options, const std::string& path) {
  proto::LoraOptions o = options;
  if (const auto* e = first_match(options.rank_pattern(), path)) o.set_r(e->value());
  if (const auto* e = first_match(options.alpha_pattern(), path)) o.set_alpha(e->value());
  return o;
}

LoraLinearImpl::LoraLinearImpl(const proto::LoraOptions& o, at::Tensor& weight, uint64_t seed)
    : options(o), scaling(lora_scaling(o.alpha(), o.r(), o.use_rslora())) {
  const int64_t out = weight.size(0), in = weight.size(1), r = o.r();
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  at::Tensor a = at::empty({r, in}), b = at::zeros({out, r});
  torch::NoGradGuard no_grad;
  switch (o.init()) {
    case proto::LoraOptions::DEFAULT: {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));  // kaiming_uniform(a=sqrt(5))
      a.uniform_(-bound, bound, gen);
      break;
    }
    case proto::LoraOptions::GAUSSIAN: a.normal_(0.0, 1.0 / static_cast<double>(r), gen); break;
    case proto::LoraOptions::PISSA: {
      // W = U S Vᵀ; A = sqrt(S_r/s) V_rᵀ, B = U_r sqrt(S_r/s), so s·B A = U_r S_r V_rᵀ.
      at::Tensor w = weight.to(at::kFloat);
      auto [u, sv, vh] = at::linalg_svd(w, /*full_matrices=*/false);
      at::Tensor sq = (sv.narrow(0, 0, r) / scaling).sqrt();
      a = sq.unsqueeze(1) * vh.narrow(0, 0, r);
      b = u.narrow(1, 0, r) * sq.unsqueeze(0);
      weight.copy_(w - scaling * at::matmul(b, a));
      break;
    }
    case proto::LoraOptions::OLORA: {
      // W = Q R; B = Q[:, :r], A = R[:r, :]; the residual stays in W.
      at::Tensor w = weight.to(at::kFloat);
      auto [q, rr] = at::linalg_qr(w);
      b = q.narrow(1, 0, r).contiguous();
      a = rr.narrow(0, 0, r).contiguous();
      weight.copy_(w - scaling * at::matmul(b, a));
      break;
    }
    default: TORCH_CHECK(false, "unknown LoRA init ", static_cast<int>(o.init()));
  }
  if (residual_init(o)) {
    // Copies: register_parameter keeps (and trains) the tensors it is given.
    lora_A0 = a.detach().clone().contiguous();
    lora_B0 = b.detach().clone().contiguous();
  }
  lora_A = register_parameter("lora_A", a.contiguous());
  lora_B = register_parameter("lora_B", b.contiguous());
}

at::Tensor LoraLinearImpl::forward_delta(const at::Tensor& x, const at::Tensor& /*weight*/) {
  // Without autocast the adapter computes in its own (fp32) dtype whatever
  // the base's; under autocast the products run in the autocast dtype.
  const bool ac = autocast_dtype_for(x).has_value();
  at::Tensor h = ac ? x : x.to(lora_A.scalar_type());
  if (options.dropout() > 0 && is_training()) h = at::dropout(h, options.dropout(), /*train=*/true);
  const at::Tensor y = at::linear(at::linear(h, lora_A) * scaling, lora_B);  // scaled on the rank-r side
  return ac ? y : y.to(x.scalar_type());
}

at::Tensor LoraLinearImpl::forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return at::linear(x, weight, bias) + forward_delta(x, weight);
}

at::Tensor LoraLinearImpl::delta_weight() const {
  return at::matmul(lora_B.to(at::kFloat), lora_A.to(at::kFloat)) * scaling;
}

at::Tensor LoraLinearImpl::merged_weight(const at::Tensor& weight) const { return weight + delta_weight(); }

at::Tensor LoraLinearImpl::unmerged_weight(const at::Tensor& merged) const { return merged - delta_weight(); }

std::vector<AdapterTensor> LoraLinearImpl::state() { return {{"lora_A.weight", lora_A}, {"lora_B.weight", lora_B}}; }

std::vector<AdapterTensor> LoraLinearImpl::plain_lora_state() const {
  TORCH_CHECK(lora_A0.defined() && lora_B0.defined(),
              "a plain-LoRA export needs a PiSSA or OLoRA adapter (its initial factors)");
  const at::Tensor a = lora_A.detach(), b = lora_B.detach();
  const at::Tensor a0 = lora_A0.to(a.device(), a.scalar_type()), b0 = lora_B0.to(b.device(), b.scalar_type());
  return {{"lora_A.weight", at::cat({a, a0}, 0)}, {"lora_B.weight", at::cat({b, b0.neg()}, 1)}};
}

namespace {

using ordered_json = nlohmann::ordered_json;

// Keys non-empty and valid regular expressions, values positive.
template <typename Entry>
absl::Status check_patterns(const google::protobuf::RepeatedPtrField<Entry>& entries, const char* field,
                            const char* what) {
  for (const Entry& e : entries) {
    if (e.key().empty()) return absl::InvalidArgumentError(absl::StrCat("lora.", field, ": an entry has an empty key"));
    if (!(e.value() > 0)) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora.", field, "['", e.key(), "'] must be a positive ", what, ", got ", e.value()));
    }
    if (const std::string why = pattern_problem(e.key()); !why.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora.", field, " key '", e.key().substr(0, 80), e.key().size() > 80 ? "...'" : "'", " ", why));
    }
    try {
      std::regex re(e.key());
    } catch (const std::regex_error& err) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora.", field, " key '", e.key(), "' is not a valid regular expression: ", err.what()));
    }
  }
  return absl::OkStatus();
}

const char* init_name(proto::LoraOptions::Init i) {
  switch (i) {
    case proto::LoraOptions::GAUSSIAN: return "gaussian";
    case proto::LoraOptions::PISSA: return "pissa";
    case proto::LoraOptions::OLORA: return "olora";
    default: return nullptr;  // true
  }
}

const char* bias_name(proto::LoraOptions::Bias b) {
  switch (b) {
    case proto::LoraOptions::ALL: return "all";
    case proto::LoraOptions::LORA_ONLY: return "lora_only";
    default: return "none";
  }
}

// PEFT's {pattern: value} map `name` (rank_pattern: integers, alpha_pattern:
// numbers), passed to `add` in file order (the first match wins).
// The largest rank read from a file (larger ones are corrupt, not useful).
constexpr int64_t kMaxRank = int64_t{1} << 16;

absl::Status read_pattern(const ordered_json& j, const char* name, bool integer,
                          const std::function<void(const std::string&, const ordered_json&)>& add) {
  if (!j.contains(name) || j[name].is_null()) return absl::OkStatus();
  const ordered_json& p = j[name];
  if (!p.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat("adapter_config.json: '", name,
                                                   "' must be an object {pattern: ", integer ? "rank" : "alpha", "}"));
  }
  for (const auto& item : p.items()) {
    const ordered_json& v = item.value();
    const bool ok = integer ? v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > kMaxRank) &&
                                  v.get<int64_t>() >= 1 && v.get<int64_t>() <= kMaxRank
                            : v.is_number() && std::isfinite(v.get<double>());
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "adapter_config.json: ", name, "['", item.key(), "'] must be ",
          integer ? absl::StrCat("an integer rank in [1, ", kMaxRank, "]") : std::string("a finite number"), ", got ",
          v.dump()));
    }
    add(item.key(), item.value());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<proto::LoraOptions> lora_plain_options(const proto::LoraOptions& options) {
  if (!residual_init(options)) {
    return absl::FailedPreconditionError(
        absl::StrCat("only a LoRA adapter with init PISSA or OLORA can be saved as a plain LoRA (this one's init is ",
                     proto::LoraOptions::Init_Name(options.init()), ": it already is one)"));
  }
  if (options.use_rslora() && (options.rank_pattern_size() > 0 || options.alpha_pattern_size() > 0)) {
    // Doubling r and alpha keeps alpha / sqrt(r) only with alpha · √2, which
    // the per-module alpha_pattern cannot say for modules it does not list.
    return absl::FailedPreconditionError(
        "a PiSSA/OLoRA adapter with use_rslora and rank_pattern or alpha_pattern cannot be saved as a plain LoRA "
        "(PEFT refuses this combination too)");
  }
  proto::LoraOptions o = options;
  o.clear_init();
  o.set_r(2 * options.r());
  o.set_alpha(options.use_rslora() ? options.alpha() * std::sqrt(2.0) : 2 * options.alpha());
  for (auto& e : *o.mutable_rank_pattern()) e.set_value(2 * e.value());
  for (auto& e : *o.mutable_alpha_pattern()) e.set_value(2 * e.value());
  return o;
}

AdapterMethod lora_method() {
  AdapterMethod m;
  m.name = "lora";
  m.method_case = proto::AdapterConfig::kLora;
  m.peft_type = [](const proto::AdapterConfig&) { return std::string("LORA"); };
  m.accepted_peft_types = {"LORA"};
  m.validate = [](const proto::AdapterConfig& c) -> absl::Status {
    const proto::LoraOptions& o = c.lora();
    if (o.r() <= 0) return absl::InvalidArgumentError(absl::StrCat("lora.r must be positive, got ", o.r()));
    if (!(o.alpha() > 0))
      return absl::InvalidArgumentError(absl::StrCat("lora.alpha must be positive, got ", o.alpha()));
    if (!(o.dropout() >= 0 && o.dropout() < 1)) {
      return absl::InvalidArgumentError(absl::StrCat("lora.dropout must be in [0, 1), got ", o.dropout()));
    }
    PEFT_RETURN_IF_ERROR(check_patterns(o.rank_pattern(), "rank_pattern", "rank"));
    return check_patterns(o.alpha_pattern(), "alpha_pattern", "alpha");
  };
  m.check_target = [](const proto::AdapterConfig& c, const LinearTarget& t) -> absl::Status {
    const int64_t out = t.linear->options.out_features, in = t.linear->options.in_features;
    const int64_t r = lora_options_for(c.lora(), t.path).r();
    if (r > std::min(out, in)) {
      const bool patterned = r != c.lora().r();
      return absl::InvalidArgumentError(absl::StrCat("lora.r = ", r, patterned ? " (from rank_pattern)" : "",
                                                     " is larger than the dimension of ", t.path, " [", out, ", ", in,
                                                     "]"));
    }
    return absl::OkStatus();
  };
  m.rewrites_base = [](const proto::AdapterConfig& c) { return residual_init(c.lora()); };
  m.plain_lora_config = [](const proto::AdapterConfig& c) -> absl::StatusOr<proto::AdapterConfig> {
    PEFT_ASSIGN_OR_RETURN(proto::LoraOptions plain, lora_plain_options(c.lora()));
    proto::AdapterConfig out = c;
    *out.mutable_lora() = std::move(plain);
    return out;
  };
  // make_linear built every adapter of this method, so the cast is exact.
  m.plain_lora_state = [](LinearAdapter& a) { return static_cast<LoraLinearImpl&>(a).plain_lora_state(); };
  m.make_linear = [](const proto::AdapterConfig& c, const LinearTarget& t,
                     uint64_t seed) -> absl::StatusOr<std::shared_ptr<LinearAdapter>> {
    return std::make_shared<LoraLinearImpl>(lora_options_for(c.lora(), t.path), t.linear->weight, seed);
  };
  m.trains_base_param = [](const proto::AdapterConfig& c, const std::string& param,
                           const std::vector<LinearTarget>& targets) {
    const bool is_bias = param.size() > 5 && param.compare(param.size() - 5, 5, ".bias") == 0;
    if (!is_bias || c.lora().bias() == proto::LoraOptions::NONE) return false;
    if (c.lora().bias() == proto::LoraOptions::ALL) return true;
    for (const LinearTarget& t : targets) {
      if (param == t.path + ".bias") return true;
    }
    return false;
  };
  m.config_json = [](const proto::AdapterConfig& c, bool fan_in_fan_out) {
    const proto::LoraOptions& o = c.lora();
    // Ordered: PEFT takes the first pattern that matches.
    ordered_json j;
    j["r"] = o.r();
    j["lora_alpha"] = o.alpha();
    j["lora_dropout"] = o.dropout();
    j["use_rslora"] = o.use_rslora();
    const char* init = init_name(o.init());
    j["init_lora_weights"] = init ? nlohmann::json(init) : nlohmann::json(true);
    j["bias"] = bias_name(o.bias());
    j["fan_in_fan_out"] = fan_in_fan_out;
    if (o.rank_pattern_size() > 0) {
      j["rank_pattern"] = ordered_json::object();
      for (const auto& e : o.rank_pattern()) j["rank_pattern"][e.key()] = e.value();
    }
    if (o.alpha_pattern_size() > 0) {
      j["alpha_pattern"] = ordered_json::object();
      for (const auto& e : o.alpha_pattern()) j["alpha_pattern"][e.key()] = e.value();
    }
    return j.dump();
  };
  m.parse_config_json = [](const std::string& text, proto::AdapterConfig* c) -> absl::Status {
    // Ordered, so that the patterns keep the file's order (first match wins).
    ordered_json j = ordered_json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("adapter_config.json: not a JSON object");
    proto::LoraOptions* o = c->mutable_lora();
    const std::string src = "adapter_config.json";
    // Every key strictly: a wrong type is an error, never the default (a
    // "lora_alpha": "x" read as 8 would merge at the wrong strength).
    PEFT_ASSIGN_OR_RETURN(std::optional<int64_t> r, json_fields::integer(j, "r", src, 1, kMaxRank));
    if (r) o->set_r(static_cast<int32_t>(*r));
    PEFT_ASSIGN_OR_RETURN(std::optional<double> alpha, json_fields::number(j, "lora_alpha", src));
    if (alpha) o->set_alpha(static_cast<float>(*alpha));
    PEFT_ASSIGN_OR_RETURN(std::optional<double> dropout, json_fields::number(j, "lora_dropout", src, 0.0, 0.999999));
    if (dropout) o->set_dropout(static_cast<float>(*dropout));
    PEFT_ASSIGN_OR_RETURN(std::optional<bool> rslora, json_fields::boolean(j, "use_rslora", src));
    if (rslora) o->set_use_rslora(*rslora);
    if (j.contains("init_lora_weights") && !j["init_lora_weights"].is_null()) {
      const ordered_json& i = j["init_lora_weights"];
      if (i.is_string()) {
        const std::string s = i.get<std::string>();
        if (s == "gaussian")
          o->set_init(proto::LoraOptions::GAUSSIAN);
        else if (s == "pissa")
          o->set_init(proto::LoraOptions::PISSA);
        else if (s == "olora")
          o->set_init(proto::LoraOptions::OLORA);
        else
          return absl::UnimplementedError(
              absl::StrCat("adapter_config.json: init_lora_weights '", s, "' is not supported"));
      } else if (!i.is_boolean()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "adapter_config.json: \"init_lora_weights\" must be true, false or a string, got ", i.type_name()));
      }
    }
    PEFT_ASSIGN_OR_RETURN(std::optional<std::string> bias, json_fields::string(j, "bias", src));
    if (bias) {
      const std::string& b = *bias;
      if (b == "all")
        o->set_bias(proto::LoraOptions::ALL);
      else if (b == "lora_only")
        o->set_bias(proto::LoraOptions::LORA_ONLY);
      else if (b != "none")
        return absl::InvalidArgumentError(absl::StrCat("adapter_config.json: bias '", b, "'"));
    }
    PEFT_RETURN_IF_ERROR(
        read_pattern(j, "rank_pattern", /*integer=*/true, [&](const std::string& k, const ordered_json& v) {
          auto* e = o->add_rank_pattern();
          e->set_key(k);
          e->set_value(v.get<int>());
        }));
    PEFT_RETURN_IF_ERROR(
        read_pattern(j, "alpha_pattern", /*integer=*/false, [&](const std::string& k, const ordered_json& v) {
          auto* e = o->add_alpha_pattern();
          e->set_key(k);
          e->set_value(v.get<float>());
        }));
    PEFT_ASSIGN_OR_RETURN(std::optional<bool> dora, json_fields::boolean(j, "use_dora", "adapter_config.json"));
    if (dora.value_or(false)) return absl::UnimplementedError("adapter_config.json: DoRA is not supported");
    return absl::OkStatus();
  };
  m.trainable_count = [](const proto::AdapterConfig& c, int64_t out, int64_t in) { return c.lora().r() * (in + out); };
  m.config_for_module = [](const proto::AdapterConfig& c, const std::string& path) {
    proto::AdapterConfig out = c;
    *out.mutable_lora() = lora_options_for(c.lora(), path);
    return out;
  };
  return m;
}

}  // namespace peft
