// Training over processes against one process, under mpirun (2 and 4 ranks): the same config
// with units = 4 is trained by rank 0 alone (the single-process communicator) and by every rank
// together (world()); the checkpoints must be byte-identical, and so must metrics.jsonl (less its
// timing fields) and results.json. Dropout, attention dropout, router jitter and inner expert
// dropout are on, so every random stream must be keyed by global position. A run stopped on P
// processes and resumed on one, and one stopped on one process and resumed on P, end the same.
// With expert parallelism (the default) each MoE layer's experts are split over the ranks; without,
// every rank runs every expert: the same bytes.
// Comparisons never return early: a rank leaving a test while the others sit in a collective
// would hang the job.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>

#include "../test_util.h"
#include "../train_fixtures.h"
#include "sparsemoe/core/rng.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/io/file_io.h"
#include "sparsemoe/moe/dispatch.h"
#include "sparsemoe/train/adamw.h"
#include "sparsemoe/train/checkpoint.h"
#include "sparsemoe/train/trainer.h"

namespace sparsemoe {
namespace {

namespace fs = std::filesystem;

// One directory for the job: rank 0 names it, every rank gets the name.
std::string job_dir(const std::string& name) {
  Communicator& w = world();
  std::string dir;
  if (w.rank() == 0) {
    dir = testing::TempDir() + "/train_mpi_" + name + "_" + std::to_string(getpid());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  broadcast_bytes(w, dir, 0);
  return dir;
}

std::set<std::string> file_names(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

std::string metrics_without_timing(const std::string& run) {
  std::istringstream in(read_file(run + "/metrics.jsonl"));
  std::string line, out;
  while (std::getline(in, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    j.erase("tokens_per_s");
    j.erase("seconds");
    out += j.dump() + "\n";
  }
  return out;
}

// The test's config: the training fixture's, with every random stream switched on, written by
// rank 0 (its corpus file included) before the others read it.
TrainConfig job_config(const std::string& dir, bool dropless, bool expert_parallel) {
  Communicator& w = world();
  auto make = [&] {
    TrainConfig c = test::tiny_train_config(dir, 6, 6);
    c.units = 4;
    c.model.output_dropout = 0.1;
    c.model.attention_dropout = 0.1;
    c.model.moe.experts.inner_dropout = 0.1;
    c.model.moe.router.jitter_noise = 0.02;
    c.model.moe.dropless = dropless;
    c.expert_parallel = expert_parallel;
    c.validate();
    return c;
  };
  TrainConfig c;
  if (w.rank() == 0) c = make();
  w.barrier();
  if (w.rank() != 0) c = make();  // the same corpus bytes, renamed into place atomically
  w.barrier();
  return c;
}

void expect_same_run(const std::string& a, const std::string& b, const std::string& what) {
  if (world().rank() != 0) return;
  EXPECT_TRUE(read_file(a + "/checkpoint.safetensors") == read_file(b + "/checkpoint.safetensors"))
      << what << ": the checkpoints differ";
  EXPECT_EQ(metrics_without_timing(a), metrics_without_timing(b)) << what;
  EXPECT_EQ(read_file(a + "/results.json"), read_file(b + "/results.json")) << what;
}

struct Variant {
  bool dropless, expert_parallel;
};
class TrainMpi : public testing::TestWithParam<Variant> {};

TEST_P(TrainMpi, ByteIdenticalToOneProcessAndResumesAtAnotherProcessCount) {
  Communicator& w = world();
  const Variant v = GetParam();
  const std::string dir =
      job_dir(std::string(v.dropless ? "dropless" : "capacity") + (v.expert_parallel ? "_ep" : ""));
  const TrainConfig c = job_config(dir, v.dropless, v.expert_parallel);
  const std::string one = dir + "/one", many = dir + "/many";
  if (w.rank() == 0) {
    const TrainResult r = Trainer(c, one, {.comm = &single_process()}).run();
    EXPECT_EQ(r.outcome, TrainOutcome::kFinished);
  }
  w.barrier();
  {
    Trainer t(c, many, {.comm = &w});
    // With expert parallelism a rank holds its own experts only (sharded storage); without, all.
    int64_t expert_tensors = 0, wrong = 0;
    for (const ParamRef& p : t.model().all_params()) {
      if (p.experts == 0) continue;
      ++expert_tensors;
      const ExpertShard sh = expert_shard(p.experts, w.rank(), w.size());
      wrong += v.expert_parallel
                   ? !p.sharded || p.expert0 != sh.first || p.value->dim(0) != sh.count
                   : p.sharded || p.value->dim(0) != p.experts;
    }
    EXPECT_GT(expert_tensors, 0);
    EXPECT_EQ(wrong, 0) << "rank " << w.rank() << ": expert storage not as configured";
    const TrainResult r = t.run();
    EXPECT_EQ(r.outcome, TrainOutcome::kFinished);
    EXPECT_EQ(r.step, 12);
  }
  w.barrier();
  expect_same_run(many, one, std::to_string(w.size()) + " processes against one");
  // Only rank 0 writes: the run directory holds the files of a one-process run, no others.
  if (w.rank() == 0) {
    EXPECT_EQ(file_names(many), file_names(one));
  }

  // Stopped on P processes (mid-pretraining, between checkpoints), resumed on one.
  const std::string split = dir + "/split";
  {
    const TrainResult r = Trainer(c, split, {.stop_after_step = 5, .comm = &w}).run();
    EXPECT_EQ(r.outcome, TrainOutcome::kStopped);
    EXPECT_EQ(r.step, 5);
  }
  w.barrier();
  if (w.rank() == 0) {
    const TrainResult r = Trainer::resume(split, {.comm = &single_process()})->run();
    EXPECT_EQ(r.outcome, TrainOutcome::kFinished);
    EXPECT_TRUE(read_file(split + "/checkpoint.safetensors") ==
                read_file(one + "/checkpoint.safetensors"))
        << "stopped on " << w.size() << " processes, resumed on one";
  }
  // Stopped on one process (in fine-tuning), resumed on P.
  const std::string split2 = dir + "/split2";
  if (w.rank() == 0) {
    const TrainResult r =
        Trainer(c, split2, {.stop_after_step = 8, .comm = &single_process()}).run();
    EXPECT_EQ(r.outcome, TrainOutcome::kStopped);
  }
  w.barrier();
  {
    const TrainResult r = Trainer::resume(split2, {.comm = &w})->run();
    EXPECT_EQ(r.outcome, TrainOutcome::kFinished);
  }
  w.barrier();
  if (w.rank() == 0) {
    EXPECT_TRUE(read_file(split2 + "/checkpoint.safetensors") ==
                read_file(one + "/checkpoint.safetensors"))
        << "stopped on one process, resumed on " << w.size();
  }
  w.barrier();
  if (w.rank() == 0) fs::remove_all(dir);
}

TEST(AdamWMpi, ShardedStateEqualsOneProcessAndShrinksWithTheRanks) {
  // ZeRO-1: each rank keeps and updates a run of the parameters; the weights after three steps
  // equal one process's bit for bit on every rank, and each rank keeps about 1/P of the moments.
  Communicator& w = world();
  const int P = w.size();
  const std::vector<Shape> shapes = {{64, 32}, {32}, {128, 16}, {16}, {48, 48}, {8}};
  auto make = [&](std::vector<Tensor>& values, std::vector<Tensor>& grads) {
    std::vector<ParamRef> refs;
    values.clear(), grads.clear();
    values.reserve(shapes.size()), grads.reserve(shapes.size());
    for (size_t k = 0; k < shapes.size(); ++k) {
      values.emplace_back(shapes[k]), grads.emplace_back(shapes[k]);
      for (int64_t i = 0; i < values[k].numel(); ++i) values[k][i] = uniform01(k, i) - 0.5f;
      std::string name = k % 2 ? "bias" : "kernel";  // biases get no weight decay
      name += std::to_string(k);
      refs.push_back({name, &values[k], &grads[k]});
    }
    return refs;
  };
  std::vector<Tensor> v1, g1, vp, gp;
  const std::vector<ParamRef> one = make(v1, g1), many = make(vp, gp);
  AdamWConfig c;
  c.learning_rate = 1e-2;
  c.clip_norm = 0.5;
  AdamW a1(c, one), ap(c, many, &w);
  for (int step = 0; step < 3; ++step) {
    for (size_t k = 0; k < shapes.size(); ++k)
      for (int64_t i = 0; i < g1[k].numel(); ++i)
        g1[k][i] = gp[k][i] = 2.f * uniform01(100 + step * 10 + k, i) - 1.f;
    EXPECT_EQ(a1.step(one), ap.step(many));
  }
  int64_t differ = 0, total = 0;
  for (size_t k = 0; k < shapes.size(); ++k)
    for (int64_t i = 0; i < v1[k].numel(); ++i) differ += v1[k][i] != vp[k][i];
  EXPECT_EQ(differ, 0) << "rank " << w.rank() << ": weights differ from one process's";
  for (const Shape& s : shapes) total += 2 * 4 * shape_numel(s);
  const int64_t mine = ap.state_bytes(), sum = w.allreduce_sum_exact(mine);
  EXPECT_EQ(sum, total);  // every moment kept once
  EXPECT_EQ(a1.state_bytes(), total);
  EXPECT_LE(mine, total / P + 2 * 4 * 64 * 32)
      << "rank " << w.rank();  // 1/P, give or take a parameter
  // The gathered state on rank 0 is one process's.
  const auto gathered = ap.gather_state(0);
  if (w.rank() == 0) {
    const auto want = a1.state();
    ASSERT_EQ(gathered.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(gathered[i].first, want[i].first);
      EXPECT_TRUE(test::bitwise_equal(gathered[i].second, *want[i].second)) << want[i].first;
    }
  } else {
    EXPECT_TRUE(gathered.empty());
  }
}

TEST(AdamWMpi, ExpertShardedParametersEqualOneProcess) {
  // Stacked expert tensors held in shards (each rank its experts' rows, as MoeLayer's sharded
  // storage) next to whole ones: after three clipped steps every rank's rows equal one process's,
  // the norm is one process's (it decides the clipping), and the gathered moments are the whole.
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const int64_t E = 3;  // uneven over 2 ranks; a rank holds none on 4
  // [E, 100, 70]: 7000 floats per expert, so chunks restart inside the tensor's first chunk.
  const std::vector<Shape> shapes = {{40, 30}, {E, 100, 70}, {E, 70}, {30}};
  const ExpertShard sh = expert_shard(E, r, P);
  auto value = [](size_t k, int64_t i) { return uniform01(k, i) - 0.5f; };
  std::vector<Tensor> v1, g1, vp, gp;
  std::vector<ParamRef> one, many;
  v1.reserve(4), g1.reserve(4), vp.reserve(4), gp.reserve(4);
  for (size_t k = 0; k < shapes.size(); ++k) {
    const bool stacked = shapes[k].size() > 1 && shapes[k][0] == E;
    Shape local = shapes[k];
    if (stacked) local[0] = sh.count;
    v1.emplace_back(shapes[k]), g1.emplace_back(shapes[k]);
    vp.emplace_back(local), gp.emplace_back(local);
    const int64_t off = stacked ? sh.first * (v1[k].numel() / E) : 0;
    for (int64_t i = 0; i < v1[k].numel(); ++i) v1[k][i] = value(k, i);
    for (int64_t i = 0; i < vp[k].numel(); ++i) vp[k][i] = value(k, off + i);
    std::string name = "p";  // (GCC 12 warns falsely on "p" + to_string)
    name += std::to_string(k);
    one.push_back({name, &v1[k], &g1[k], stacked ? E : 0, 0, false});
    many.push_back({name, &vp[k], &gp[k], stacked ? E : 0, stacked ? sh.first : 0, stacked});
  }
  AdamWConfig c;
  c.learning_rate = 1e-2;
  c.clip_norm = 0.5;
  AdamW a1(c, one), ap(c, many, &w);
  int64_t norms = 0;
  for (int step = 0; step < 3; ++step) {
    for (size_t k = 0; k < shapes.size(); ++k) {
      const int64_t off = many[k].sharded ? sh.first * (g1[k].numel() / E) : 0;
      for (int64_t i = 0; i < g1[k].numel(); ++i)
        g1[k][i] = 2.f * uniform01(100 + step * 10 + k, i) - 1.f;
      for (int64_t i = 0; i < gp[k].numel(); ++i) gp[k][i] = g1[k][off + i];
    }
    norms += a1.step(one) != ap.step(many);
  }
  EXPECT_EQ(norms, 0) << "rank " << r << ": the gradient norm differs from one process's";
  int64_t differ = 0;
  for (size_t k = 0; k < shapes.size(); ++k) {
    const int64_t off = many[k].sharded ? sh.first * (v1[k].numel() / E) : 0;
    for (int64_t i = 0; i < vp[k].numel(); ++i) differ += vp[k][i] != v1[k][off + i];
  }
  EXPECT_EQ(differ, 0) << "rank " << r << ": weights differ from one process's";
  const auto gathered = ap.gather_state(0);
  if (r == 0) {
    const auto want = a1.state();
    ASSERT_EQ(gathered.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_TRUE(test::bitwise_equal(gathered[i].second, *want[i].second)) << want[i].first;
  }
  // And back: each rank takes its experts' rows of the whole moments.
  std::vector<std::pair<std::string, Tensor>> whole;
  for (const auto& [name, t] : a1.state()) whole.emplace_back(name, *t);
  AdamW back(c, many, &w);
  back.load_state(whole, a1.steps_done());
  const auto again = back.gather_state(0);
  if (r == 0) {
    for (size_t i = 0; i < whole.size(); ++i)
      EXPECT_TRUE(test::bitwise_equal(again[i].second, whole[i].second)) << whole[i].first;
  }
}

TEST(AdamWMpi, ShardedGradientNormHasOneProcessBits) {
  // The norm over stacked experts held in shards equals one process's bit for bit: each expert's
  // chunk sums land in their global places. Experts of very different scales and two chunks per
  // expert make any other order of the additions visible.
  Communicator& w = world();
  const int64_t E = 8;
  const ExpertShard sh = expert_shard(E, w.rank(), w.size());
  Tensor whole({E, 160, 125}), part({sh.count, 160, 125}), dense({999});
  const int64_t per = whole.numel() / E;
  for (int64_t i = 0; i < whole.numel(); ++i)
    whole[i] = (uniform01(5, i) - 0.5f) * std::ldexp(1.f, static_cast<int>((i / per) * 7 % 23));
  std::copy_n(whole.data() + sh.first * per, part.numel(), part.data());
  for (int64_t i = 0; i < dense.numel(); ++i) dense[i] = uniform01(6, i) * 1e3f;
  const std::vector<ParamRef> one = {{"d", &dense, &dense}, {"e", &whole, &whole, E, 0, false}};
  const std::vector<ParamRef> many = {{"d", &dense, &dense},
                                      {"e", &part, &part, E, sh.first, true}};
  const double a = global_grad_norm(one), b = global_grad_norm(many, &w);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "rank " << w.rank() << ": " << a << " vs " << b;
}

INSTANTIATE_TEST_SUITE_P(Routing, TrainMpi,
                         testing::Values(Variant{false, true}, Variant{true, true},
                                         Variant{false, false}),
                         [](const testing::TestParamInfo<Variant>& i) {
                           return std::string(i.param.dropless ? "Dropless" : "Capacity") +
                                  (i.param.expert_parallel ? "ExpertParallel" : "DataParallel");
                         });

}  // namespace
}  // namespace sparsemoe
