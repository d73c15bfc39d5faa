// Named model configurations shipped with the library (presets/*.json, compiled in at build
// time so the binary needs no data files): sparse_mixer_base (the reference sources' defaults),
// fast_sparse_mixer (capacity factors 0.5), bert_base (768/12/12/3072, all attention, no MoE),
// fnet_base (all Fourier, no MoE) and tiny (for tests and quick runs).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sparsemoe/models/sparse_mixer.h"

namespace sparsemoe {

std::vector<std::string> preset_names();
// The preset's JSON; throws InvalidArgument listing the known names when `name` is unknown.
nlohmann::json preset_json(const std::string& name);
// A preset name, or the path of a JSON file holding a SparseMixerConfig (strictly parsed).
SparseMixerConfig load_model_config(const std::string& name_or_path);

}  // namespace sparsemoe
