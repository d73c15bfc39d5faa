// Fuzzes the config readers: the input's first line holds `--set` overrides (key=value separated
// by spaces), the rest is a JSON config read as each config kind in turn (a training config, the
// network, the MoE layer with and without backbone, the router, lingvo's shared softmax). A
// config that reads must write JSON that reads back to the same JSON.
#include <nlohmann/json.hpp>
#include <sstream>

#include "fuzz_common.h"
#include "sparsemoe/core/config_io.h"
#include "sparsemoe/lingvo/shared_embedding_softmax.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/train/train_config.h"

namespace {

using nlohmann::json;
using sparsemoe::fuzz::expect_typed_errors;

template <class Config>
void round_trip(const json& j) {
  expect_typed_errors([&] {
    const Config c = Config::from_json(j);
    const json out = c.to_json();
    if (Config::from_json(out).to_json() != out) __builtin_trap();  // write/read disagree
  });
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input = sparsemoe::fuzz::text(data, size);
  const size_t nl = input.find('\n');
  const std::string sets = input.substr(0, nl == std::string::npos ? 0 : nl);
  const std::string body = nl == std::string::npos ? input : input.substr(nl + 1);
  expect_typed_errors([&] {
    json j = sparsemoe::parse_json(body, "config");
    std::istringstream words(sets);
    for (std::string kv; words >> kv;) sparsemoe::apply_override(j, kv);
    // A model given by name is a preset (or a file): the fuzzer reads no files.
    if (j.is_object() && j.contains("model") && j["model"].is_string()) j.erase("model");
    round_trip<sparsemoe::TrainConfig>(j);
    round_trip<sparsemoe::SparseMixerConfig>(j);
    round_trip<sparsemoe::MoeLayerConfig>(j);
    round_trip<sparsemoe::MoeLayerWithBackboneConfig>(j);
    round_trip<sparsemoe::RouterConfig>(j);
    round_trip<sparsemoe::SharedEmbeddingSoftmaxConfig>(j);
    if (j.is_object() && j.contains("model") && j["model"].is_object())
      round_trip<sparsemoe::SparseMixerConfig>(j["model"]);
  });
  return 0;
}
