// The communicator seam in one process (dist/communicator.h): the single-process backend copies,
// the pairwise tree every cross-unit sum follows, and the errors. The same collectives across 2
// and 4 processes: tests/mpi/test_dist_mpi.cc, run under mpirun.
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/dist/communicator.h"
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

}  // namespace
}  // namespace sparsemoe
