// The communicator seam in one process (dist/communicator.h): the single-process backend copies,
// the pairwise tree every cross-unit sum follows, and the errors; and expert-sharded storage
// built by placement, which needs no other process to check. The same collectives across 2
// and 4 processes: tests/mpi/test_dist_mpi.cc, run under mpirun.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/models/presets.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/moe/moe_layer.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

TEST(Communicator, WorldIsOneProcessOutsideMpirun) {
  if (launched_under_mpi()) GTEST_SKIP() << "running under an MPI launcher";
  Communicator& w = world();
  EXPECT_EQ(w.rank(), 0);
  EXPECT_EQ(w.size(), 1);
  EXPECT_EQ(w.backend(), "single");
}

TEST(Communicator, SingleProcessCollectivesAreCopies) {
  Communicator& c = single_process();
  const std::vector<float> rows = {1, 2, 3, 4, 5, 6};
  std::vector<float> got(6, 0.f);
  const int64_t n = 2;
  c.alltoallv(rows.data(), &n, got.data(), &n, 3 * sizeof(float));
  EXPECT_EQ(got, rows);
  std::fill(got.begin(), got.end(), 0.f);
  auto req = c.start_alltoallv(rows.data(), &n, got.data(), &n, 3 * sizeof(float));
  req->wait();
  req->wait();  // idempotent
  EXPECT_EQ(got, rows);
  int64_t counts = 7, recv = 0;
  c.exchange_counts(&counts, &recv);
  EXPECT_EQ(recv, 7);
  float v[3] = {1.5f, -2.f, 3.f};
  c.allreduce_sum(v, 3);
  EXPECT_EQ(v[0], 1.5f);
  EXPECT_EQ(c.allreduce_max(5), 5);
  EXPECT_EQ(c.allreduce_sum_exact(5), 5);
  c.barrier();
}

TEST(Communicator, SingleProcessErrorsNameTheArgument) {
  Communicator& c = single_process();
  float x = 0, y = 0;
  try {
    c.sendrecv(&x, &y, 4, 1);
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("rank 1 does not exist"), std::string::npos) << e.what();
  }
  const int64_t send = 2, recv = 3;
  std::vector<float> buf(6);
  EXPECT_THROW(c.alltoallv(buf.data(), &send, buf.data(), &recv, 4), InvalidArgument);
}

// The tree splits at n / 2: ((p0 + p1) + (p2 + p3)) for four parts, p0 + (p1 + p2) for three.
TEST(Communicator, TreeSumFollowsTheFixedPairwiseTree) {
  const float a = 1e8f, b = 1.f, c = -1e8f, d = 1.f;
  const std::vector<float> p = {a, b, c, d};
  std::vector<const float*> parts = {&p[0], &p[1], &p[2], &p[3]};
  float out = 0;
  tree_sum(parts, 1, &out);
  EXPECT_EQ(out, (a + b) + (c + d));
  EXPECT_NE(out, ((a + b) + c) + d);  // the data tell the two orders apart
  parts.pop_back();
  tree_sum(parts, 1, &out);
  EXPECT_EQ(out, a + (b + c));
  std::vector<double> q = {0.1, 0.2, 0.3};
  double dout = 0;
  tree_sum(std::vector<const double*>{&q[0], &q[1], &q[2]}, 1, &dout);
  EXPECT_EQ(dout, 0.1 + (0.2 + 0.3));
  EXPECT_THROW(tree_sum(std::vector<const float*>{}, 1, &out), InvalidArgument);
}

TEST(ExpertPlacement, AProcessBuildsItsOwnExpertsWithTheWholeLayersValues) {
  // A layer built for rank r of P allocates only expert_shard(E, r, P) and initialises them to the
  // whole layer's values, for even and uneven splits and a rank holding none.
  for (const int64_t E : {3, 8})
    for (const int P : {2, 3, 4})
      for (int r = 0; r < P; ++r) {
        SCOPED_TRACE("E " + std::to_string(E) + ", rank " + std::to_string(r) + " of " +
                     std::to_string(P));
        MoeLayerConfig c;
        c.hidden_size = 24;
        c.experts.num_experts = c.router.num_experts = E;
        c.experts.d_ff = 40;
        c.seed = 5;
        MoeLayer whole(c), part(c, {r, P});
        const ExpertShard sh = expert_shard(E, r, P);
        const std::vector<ParamRef> w = whole.params(), p = part.params();
        ASSERT_EQ(w.size(), p.size());
        int64_t differ = 0;
        for (size_t k = 0; k < w.size(); ++k) {
          if (w[k].experts == 0) {  // the router: whole on every rank
            EXPECT_FALSE(p[k].sharded);
            EXPECT_TRUE(test::bitwise_equal(*w[k].value, *p[k].value)) << w[k].name;
            continue;
          }
          EXPECT_TRUE(p[k].sharded) << p[k].name;
          EXPECT_EQ(p[k].expert0, sh.first);
          EXPECT_EQ(p[k].value->dim(0), sh.count);
          EXPECT_EQ(p[k].full_shape(), w[k].value->shape());
          const int64_t per = w[k].value->numel() / E;
          for (int64_t i = 0; i < p[k].value->numel(); ++i)
            differ += (*p[k].value)[i] != (*w[k].value)[sh.first * per + i];
        }
        EXPECT_EQ(differ, 0);
        // Without its communicator the layer refuses to run, naming the experts it holds.
        Tensor x({1, 4, 24}, 0.5f), y;
        try {
          part.forward(x, y);
          ADD_FAILURE() << "a sharded layer ran without its communicator";
        } catch (const InvalidArgument& e) {
          EXPECT_NE(std::string(e.what()).find("expert-sharded storage"), std::string::npos)
              << e.what();
        }
      }
  MoeLayerConfig c;
  EXPECT_THROW(MoeLayer(c, {2, 2}), InvalidArgument);
  EXPECT_THROW(MoeLayer(c, {0, 0}), InvalidArgument);
}

TEST(ExpertPlacement, ASparseMixerHoldsOneProcesssShareOfTheExperts) {
  SparseMixerConfig c = load_model_config("tiny");
  SparseMixer whole(c), part(c, {1, 2});
  int64_t experts = 0, held = 0, dense = 0;
  for (const ParamRef& p : whole.params()) (p.experts ? experts : dense) += p.value->numel();
  for (const ParamRef& p : part.params()) held += p.experts ? p.value->numel() : 0;
  EXPECT_GT(experts, 0);
  EXPECT_EQ(held * 2, experts);  // E even: half
  EXPECT_EQ(part.count_params(), dense + held);
}

}  // namespace
}  // namespace sparsemoe
