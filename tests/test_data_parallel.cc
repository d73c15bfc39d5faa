// Data-parallel units in one process (train/data_parallel.h): the gradient tree is tree_sum's
// tree, batch slices, how unit metrics combine, the config's checks, and a training with units
// that matches the whole-batch training up to rounding (the batch's normaliser, dropout keyed by
// global position). Across processes: tests/mpi/test_train_mpi.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "sparsemoe/core/rng.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/train/data_parallel.h"
#include "sparsemoe/train/trainer.h"
#include "test_util.h"
#include "train_fixtures.h"

namespace sparsemoe {
namespace {

namespace fs = std::filesystem;
using test::error_of;

TEST(GradientTree, AddsUnitsAsTreeSumsTreeNotInSequence) {
  Tensor a({2}), b({3}), ga({2}), gb({3});
  const std::vector<ParamRef> params = {{"a", &a, &ga}, {"b", &b, &gb}};
  // Element 0: 1e8, 1, -1e8, 1 sums to 0 as (1e8 + 1) + (-1e8 + 1) in float, to 1 in sequence.
  const float first[4] = {1e8f, 1.f, -1e8f, 1.f};
  std::vector<std::vector<float>> parts(4, std::vector<float>(5));
  GradientTree tree;
  for (int u = 0; u < 4; ++u) {
    for (int i = 0; i < 5; ++i) parts[u][i] = i == 0 ? first[u] : 3.f * uniform01(u, i) - 1.f;
    std::copy_n(parts[u].data(), 2, ga.data());
    std::copy_n(parts[u].data() + 2, 3, gb.data());
    tree.add_unit(params);
  }
  tree.finish(params, single_process());
  std::vector<const float*> p;
  for (const auto& v : parts) p.push_back(v.data());
  std::vector<float> want(5);
  tree_sum(p, 5, want.data());
  EXPECT_EQ(ga[0], 0.f);  // not the sequential 1
  for (int i = 0; i < 5; ++i) EXPECT_EQ(i < 2 ? ga[i] : gb[i - 2], want[i]) << i;
  // Three units are no balanced tree.
  for (int u = 0; u < 3; ++u) tree.add_unit(params);
  EXPECT_NE(error_of([&] { tree.finish(params, single_process()); }).find("power of two"),
            std::string::npos);
}

TEST(DataParallel, SliceBatchTakesWholeSequences) {
  Batch b;
  b.ids = Tensor({4, 3});
  b.mask = Tensor({4, 3});
  b.positions = Tensor({4, 2});
  for (int64_t i = 0; i < 12; ++i) b.ids[i] = static_cast<float>(i), b.mask[i] = i % 3 != 2;
  for (int64_t i = 0; i < 8; ++i) {
    b.positions[i] = static_cast<float>(i % 3);
    b.mlm_labels.push_back(100 + i);
    b.mlm_weights.push_back(static_cast<float>(i % 2));
  }
  b.labels = {7, 8, 9, 10};
  Batch s;
  slice_batch(b, 1, 2, s);
  EXPECT_EQ(s.ids.shape(), (Shape{2, 3}));
  EXPECT_EQ(s.ids[0], 3.f);
  EXPECT_EQ(s.ids[5], 8.f);
  EXPECT_EQ(s.positions.shape(), (Shape{2, 2}));
  EXPECT_EQ(s.positions[0], b.positions[2]);
  EXPECT_EQ(s.mlm_labels, (std::vector<int64_t>{102, 103, 104, 105}));
  EXPECT_EQ(s.mlm_weights, (std::vector<float>{0, 1, 0, 1}));
  EXPECT_EQ(s.labels, (std::vector<int64_t>{8, 9}));
  EXPECT_EQ(s.real_tokens, 4);
  EXPECT_NE(error_of([&] { slice_batch(b, 3, 2, s); }).find("not within the batch of 4"),
            std::string::npos);
}

TEST(DataParallel, UnitMetricsSumSharesAndAverageRatios) {
  std::vector<SparseMixerMetrics> units(2);
  for (int u = 0; u < 2; ++u) {
    SparseMixerMetrics& m = units[u];
    m.loss = 0.25 * (u + 1);
    m.load_balancing_loss = 1.0 + u;
    m.router_confidence = 0.5 + 0.25 * u;
    MoeMetrics l;
    l.loss = m.loss;
    l.expert_usage = 0.2 * (u + 1);
    l.tokens_per_expert = {3 + u, 5};
    l.num_groups = 2;
    l.tokens_per_group = 12;
    l.expert_capacity = 4 + u;
    m.per_layer.push_back(l);
    m.moe_layer_index.push_back(1);
  }
  const SparseMixerMetrics m = combine_unit_metrics(units, 2, single_process());
  EXPECT_EQ(m.loss, 0.75);
  EXPECT_EQ(m.load_balancing_loss, 3.0);
  EXPECT_EQ(m.router_confidence, 0.625);
  ASSERT_EQ(m.per_layer.size(), 1u);
  EXPECT_DOUBLE_EQ(m.per_layer[0].expert_usage, 0.3);
  EXPECT_EQ(m.per_layer[0].tokens_per_expert, (std::vector<int64_t>{7, 10}));
  EXPECT_EQ(m.per_layer[0].num_groups, 4);
  EXPECT_EQ(m.per_layer[0].tokens_per_group, 12);
  EXPECT_EQ(m.per_layer[0].expert_capacity, 5);
}

std::string fresh_dir(const std::string& name) {
  const std::string dir = testing::TempDir() + "/dp_" + name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(DataParallel, ConfigNamesUnitsWhenTheyCannotSplitTheBatch) {
  const std::string dir = fresh_dir("config");
  TrainConfig c = test::tiny_train_config(dir);
  for (int64_t units : {3, 16}) {
    c.units = units;
    const std::string e = error_of([&] { c.validate(); });
    EXPECT_NE(e.find("units: expected a power of two dividing batch_size=8, got " +
                     std::to_string(units)),
              std::string::npos)
        << e;
  }
  c.units = 8;  // one sequence per unit: whole routing groups of one example
  EXPECT_NO_THROW(c.validate());
  c.model.moe.examples_per_group = 2;
  EXPECT_NE(error_of([&] { c.validate(); }).find("units: each unit of 1 sequences"),
            std::string::npos);
}

TEST(DataParallel, ProcessCountsThatDoNotDivideTheUnitsAreRefusedTogetherBeforeAnyWrite) {
  // Three processes that all see this config: they agree on the error (AgreedError, with the
  // lowest failing rank's message) before rank 0 creates the run directory.
  const std::string dir = fresh_dir("procs");
  TrainConfig c = test::tiny_train_config(dir);
  c.units = 4;
  test::MirrorRanks comm(3);
  try {
    Trainer(c, dir + "/run", {.comm = &comm});
    ADD_FAILURE() << "expected AgreedError";
  } catch (const AgreedError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0: units: the 3 processes must each take the same "
                                         "number of the step's units=4"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(comm.collectives, 3);  // the agreement (who failed; the message's length, bytes) only
  EXPECT_FALSE(fs::exists(dir + "/run"));
}

// The first training record of each phase.
std::vector<nlohmann::json> first_records(const std::string& run) {
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line;
  std::vector<nlohmann::json> out;
  while (std::getline(in, line)) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j["event"] == "train" && (out.empty() || out.back()["phase"] != j["phase"]))
      out.push_back(j);
  }
  return out;
}

TEST(DataParallel, UnitsTrainLikeTheWholeBatchUpToRounding) {
  // The same step as four units: each unit's loss and gradient are its share of the batch's
  // (the batch's normaliser), and dropout and jitter draw by global position, so the step's
  // loss, MoE loss and gradient norm equal the whole batch's up to float rounding.
  const std::string dir = fresh_dir("units");
  TrainConfig c = test::tiny_train_config(dir, 2, 2);
  c.log_every = 1;
  c.model.moe.experts.inner_dropout = 0.1;
  c.model.moe.router.jitter_noise = 0.02;
  Trainer(c, dir + "/whole", {}).run();
  c.units = 4;
  Trainer(c, dir + "/units", {}).run();
  const auto a = first_records(dir + "/whole"), b = first_records(dir + "/units");
  ASSERT_EQ(a.size(), 2u);
  ASSERT_EQ(b.size(), 2u);
  for (size_t p = 0; p < 2; ++p) {
    for (const char* key : {"loss", "task_loss", "z_loss", "load_balancing_loss", "grad_norm"}) {
      const double x = a[p][key], y = b[p][key];
      EXPECT_NEAR(y, x, 2e-5 * std::abs(x)) << a[p]["phase"] << " " << key;
    }
    const double x = a[p]["moe"]["total"]["router_confidence"],
                 y = b[p]["moe"]["total"]["router_confidence"];
    EXPECT_NEAR(y, x, 1e-5) << a[p]["phase"];
  }
}

}  // namespace
}  // namespace sparsemoe
