// Prints docs/configuration.md: the reference tables of every config, generated from the one
// declaration of each config's fields (core/config_io.h). The test config_doc_current compares the
// file with this output, so the docs cannot drift from the code; regenerate with
//   build/tests/sparsemoe_config_doc > docs/configuration.md
#include <iostream>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/lingvo/shared_embedding_softmax.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/train/train_config.h"

int main() {
  using namespace sparsemoe;
  TrainConfig train;
  train.model.vocab_size = 0;
  std::cout << R"(# Configuration reference

Generated from the code (`build/tests/sparsemoe_config_doc > docs/configuration.md`; the test
`config_doc_current` fails when this file and the code disagree). Each config declares its fields
once, in a `fields()` member: that one list gives the C++ struct's JSON writing, its strict
reading (unknown keys, wrong types and moved keys are errors that name the key), the checks below
("allowed") and these tables. Rules that involve two fields are in each config's `validate()` and
in the prose of [training](training.md) and [the Sparse Mixer](sparse_mixer.md).

## Training: `sparsemoe train --config FILE --set key=value`

Every key below can be set with `--set` (dotted paths). `model` may also be a preset name or a
model config file, expanded before the overrides apply; its `vocab_size` defaults to the
tokenizer's. Inside `model.moe`, the keys the network sets itself are refused: `name`,
`hidden_size`, `seed`, `experts.d_ff` (= `inner_dim`), `experts.activation` (=
`inner_activation`), `experts.output_dropout` (= `output_dropout`), `experts.kernel_init_stddev` and
`router.kernel_init_stddev` (= `initializer_range`), and `router.num_experts` (=
`experts.num_experts`). Moved keys are errors that give the new place: `model.num_experts` is now
`model.moe.experts.num_experts`; `train_capacity_factor`, `eval_capacity_factor`,
`examples_per_group`, `min_expert_capacity` and `router` moved into `model.moe`; the training's
`aux_loss_factor` and `z_loss_factor` are now `model.moe.router.load_balancing_loss_weight` and
`model.moe.router.router_z_loss_weight`.

)" << config_doc(train)
            << R"(
## The MoE layer alone: `MoeLayerConfig` (C++, or `MoeLayerConfig::from_json`)

`router.num_experts` is not a key: the router gets `experts.num_experts`.

)" << config_doc(MoeLayerConfig{})
            << R"(
## lingvo's shared embedding-softmax: `SharedEmbeddingSoftmaxConfig`

)" << config_doc(SharedEmbeddingSoftmaxConfig{});
  return 0;
}
