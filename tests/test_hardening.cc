// Regression tests of issue 12's defects at the library level: strict JSON (integers, duplicate
// keys, messages without the JSON library's tags), checked sizes and memory limits, the thread
// bound, capacities that would overflow, the run-directory lock, temporaries left by a kill,
// appends, reading a directory, and the training's memory estimate and warm-up rule.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>

#include "sparsemoe/core/config_io.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"
#include "sparsemoe/core/parallel.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/train/train_config.h"
#include "sparsemoe/train/trainer.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

namespace fs = std::filesystem;
using test::error_of;

TEST(StrictJson, IntegersMustBeIntegralAndInRange) {
  const auto router = [](const char* text) {
    return RouterConfig::from_json(nlohmann::json::parse(text));
  };
  EXPECT_EQ(router(R"({"type": "tokens_choose", "num_experts": 4, "num_selected_experts": 2.0})")
                .num_selected_experts,
            2);  // an integral float is an integer
  EXPECT_EQ(error_of([&] { router(R"({"num_experts": 4, "num_selected_experts": 1.5})"); }),
            "RouterConfig: num_selected_experts: expected an integer, got 1.5");
  EXPECT_EQ(error_of([&] { router(R"({"num_experts": "4"})"); }),
            "RouterConfig: num_experts: expected an integer, got string");
  EXPECT_EQ(error_of([&] { router(R"({"num_experts": 1e300})"); }),
            "RouterConfig: num_experts: expected an integer in [-2^63, 2^63-1], got 1e+300");
  EXPECT_EQ(error_of([&] { router(R"({"use_bias": 1})"); }),
            "RouterConfig: use_bias: expected true or false, got number");
  EXPECT_EQ(error_of([&] { router(R"({"type": "top2", "expert_padding_idx": [1, 0.5]})"); }),
            "RouterConfig: expert_padding_idx[1]: expected an integer, got 0.5");
  MoeLayerConfig m;
  EXPECT_EQ(error_of([&] { config_read(nlohmann::json::parse(R"({"seed": -1})"), "M", m); }),
            "M: seed: expected an integer in [0, 2^64-1], got -1");
  config_read(nlohmann::json::parse(R"({"seed": 18446744073709551615})"), "M", m);
  EXPECT_EQ(m.seed, std::numeric_limits<uint64_t>::max());
}

TEST(StrictJson, DuplicateKeysAndSyntaxErrorsAreNamedWithoutLibraryTags) {
  EXPECT_EQ(error_of([] { parse_json(R"({"a": 1, "b": {"c": 1, "c": 2}})", "cfg"); }),
            "cfg: duplicate key 'c'");
  // The same key in two different objects is fine.
  EXPECT_EQ(parse_json(R"({"a": {"x": 1}, "b": {"x": 2}})", "cfg")["b"]["x"], 2);
  const std::string e = error_of([] { parse_json("{\"a\": tru}", "cfg"); });
  EXPECT_EQ(e.rfind("cfg: invalid JSON: parse error at line 1, column", 0), 0u) << e;
  EXPECT_EQ(e.find("json.exception"), std::string::npos) << e;
}

TEST(Limits, CheckedProductsAndAllocations) {
  EXPECT_EQ(checked_product({3, 4, 5}, "x"), 60);
  EXPECT_EQ(error_of([] { checked_mul(int64_t{1} << 62, 4, "route: [G, T, E, C]"); }),
            "route: [G, T, E, C]: 4611686018427387904 x 4 overflows 64-bit sizes");
  EXPECT_THROW(checked_mul(-1, 4, "x"), InvalidArgument);
  Tensor t;
  EXPECT_EQ(error_of([&] {
              t.resize({int64_t{1} << 40, int64_t{1} << 40});
            }),
            "Tensor: shape [1099511627776, 1099511627776] has more elements than 64-bit sizes "
            "hold");
  const std::string e = error_of([&] { t.resize({int64_t{1} << 50}); });
  EXPECT_NE(e.find("Tensor [1125899906842624]: 4.5e+15 bytes needed, more than this machine's "
                   "memory"),
            std::string::npos)
      << e;
  EXPECT_THROW(t.resize({int64_t{1} << 50}), ResourceError);
  EXPECT_EQ(t.numel(), 0);  // nothing changed
  EXPECT_GT(physical_memory_bytes(), 0u);
  EXPECT_LE(available_memory_bytes(), physical_memory_bytes());
  EXPECT_EQ(format_bytes(1.5 * 1024 * 1024 * 1024), "1.5 GiB");
}

TEST(Limits, ThreadCountIsBounded) {
  const int before = num_threads();
  EXPECT_EQ(error_of([] { set_num_threads(100000); }),
            "threads: expected 1 to 1024 (0: the default), got 100000");
  EXPECT_THROW(set_num_threads(-1), InvalidArgument);
  EXPECT_EQ(num_threads(), before);  // a refused value changes nothing
}

TEST(Limits, CapacitiesThatWouldOverflowAreRefused) {
  EXPECT_EQ(error_of([] { expert_capacity(1e300, 4, 4); }),
            "capacity_factor: 1e+300 gives an expert capacity of 1e+300 for 4 tokens and 4 "
            "experts; expected at most 2147483644");
  EXPECT_THROW(expert_capacity(INFINITY, 4, 4), InvalidArgument);
  EXPECT_THROW(lingvo_expert_capacity(0, 1e300, 4, 4), InvalidArgument);
  EXPECT_EQ(expert_capacity(2147483644.0, 4, 4), 2147483644);
  EXPECT_EQ(lingvo_expert_capacity(0, 2147483644.0, 4, 4), 2147483644);
  MoeLayerConfig m;
  m.hidden_size = 4;
  m.expert_capacity_dim = int64_t{1} << 40;
  EXPECT_NE(
      error_of([&] { m.validate(); }).find("expert_capacity_dim: expected in [0, 2147483644]"),
      std::string::npos);
}

TEST(Limits, NetworksTooLargeForTheMachineAreRefusedBeforeAllocating) {
  SparseMixerConfig c;
  c.vocab_size = 1000;
  c.inner_dim = int64_t{1} << 62;
  const std::string e = error_of([&] { SparseMixer net(c); });
  EXPECT_NE(e.find("inner_dim 4611686018427387904"), std::string::npos) << e;
  EXPECT_NE(e.find("needed, more than this machine's memory"), std::string::npos) << e;
  EXPECT_THROW(SparseMixer{c}, ResourceError);
}

TEST(TrainingLimits, MemoryEstimateAndWarmupRule) {
  TrainConfig c;
  const double small = estimate_training_memory(c);
  EXPECT_GT(small, 4.0 * 4 * c.model.float_count());  // weights, gradients, two moments at least
  c.batch_size *= 4;
  EXPECT_GT(estimate_training_memory(c), small);
  c.model.hidden_size = 1000000000;  // finite: computed in double, no overflow
  EXPECT_TRUE(std::isfinite(estimate_training_memory(c)));
  TrainConfig w;
  w.model.vocab_size = 1000;
  w.pretrain.steps = 20;
  w.pretrain.optimizer.warmup_steps = 30;
  EXPECT_EQ(error_of([&] { w.validate(); }),
            "TrainConfig: pretrain.optimizer.warmup_steps: expected <= the phase's 20 steps, got "
            "30");
}

TEST(RunDirectory, LockIsExclusiveAndReleasedWithItsHolder) {
  const std::string dir = testing::TempDir() + "/lock";
  fs::create_directories(dir);
  {
    FileLock first(dir + "/.lock");
    const std::string e = error_of([&] { FileLock second(dir + "/.lock"); });
    EXPECT_NE(e.find("is held by another process (pid "), std::string::npos) << e;
    EXPECT_THROW(FileLock(dir + "/.lock"), LockedError);
  }
  FileLock again(dir + "/.lock");  // released when the first was destroyed
  EXPECT_THROW(FileLock(dir + "/missing/.lock"), IoError);
}

TEST(RunDirectory, StaleTemporariesAppendsAndDirectories) {
  const std::string dir = testing::TempDir() + "/stale";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/.checkpoint.safetensors.tmpAbC123") << "torn";
  std::ofstream(dir + "/.config.json.tmpXyZ789") << "torn";
  std::ofstream(dir + "/.tmp") << "not ours";
  std::ofstream(dir + "/notes.tmpAbC123") << "not ours";
  EXPECT_EQ(remove_stale_temporaries(dir), 2);
  EXPECT_TRUE(fs::exists(dir + "/.tmp"));
  EXPECT_TRUE(fs::exists(dir + "/notes.tmpAbC123"));
  append_file(dir + "/m.jsonl", "a\n");
  append_file(dir + "/m.jsonl", "b\n");
  sync_file(dir + "/m.jsonl");
  EXPECT_EQ(read_file(dir + "/m.jsonl"), "a\nb\n");
  EXPECT_EQ(error_of([&] { read_file(dir); }),
            "cannot read '" + dir + "': it is a directory, expected a file");
}

}  // namespace
}  // namespace sparsemoe
