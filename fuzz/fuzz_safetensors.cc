// Fuzzes the safetensors reader and the checkpoint loader: the input is a file's bytes, decoded,
// its checkpoint metadata validated and its tensors loaded into a tiny model and its optimizer.
// SPARSEMOE_FUZZ_WRITE_SEED=PATH writes that model's own checkpoint to PATH and exits (the seed
// corpus's valid checkpoint comes from it).
#include <cstdlib>
#include <memory>

#include "fuzz_common.h"
#include "sparsemoe/io/safetensors.h"
#include "sparsemoe/train/checkpoint.h"
#include "sparsemoe/train/task_model.h"
#include "sparsemoe/train/train_config.h"

namespace {

struct Tiny {
  sparsemoe::TrainConfig config;
  std::unique_ptr<sparsemoe::TaskModel> model;
  std::unique_ptr<sparsemoe::AdamW> optimizer;
  Tiny() {
    auto& m = config.model;
    m.vocab_size = 16, m.hidden_size = 4, m.num_layers = 2, m.moe_layers = {1};
    m.attention_layers = {}, m.num_attention_heads = 1, m.max_sequence_length = 4;
    m.inner_dim = 4, m.type_vocab_size = 2;
    m.moe.experts.num_experts = 2;
    model = std::make_unique<sparsemoe::TaskModel>(config, 2);
    optimizer = std::make_unique<sparsemoe::AdamW>(config.optimizer_for(config.pretrain),
                                                   model->pretrain_params());
  }
};

Tiny& tiny() {
  static Tiny t;
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seed = std::getenv("SPARSEMOE_FUZZ_WRITE_SEED")) {
    sparsemoe::CheckpointState s;
    s.phase = "pretrain";
    s.config_hash = "0123456789abcdef";
    sparsemoe::save_checkpoint(seed, *tiny().model, tiny().optimizer.get(), s);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sparsemoe::fuzz::expect_typed_errors([&] {
    const sparsemoe::SafetensorsFile f =
        sparsemoe::decode_safetensors(sparsemoe::fuzz::text(data, size), "input");
    sparsemoe::checkpoint_state(f);
    sparsemoe::load_checkpoint(f, *tiny().model, tiny().optimizer.get());
  });
  return 0;
}
