// The communicator across processes: run by ctest under `mpirun -np 2` and `-np 4 --oversubscribe`
// (tests/CMakeLists.txt). Every rank runs every test; a failure on any rank fails the job. The
// sum over ranks is checked bit for bit against the same pairwise tree in one process, on data
// whose sequential sum differs from the tree's, so a library reduction in another order fails.
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>
#include <vector>

#include "sparsemoe/core/rng.h"
#include "sparsemoe/dist/communicator.h"

namespace sparsemoe {
namespace {

TEST(Mpi, RunsUnderTheMpiBackend) {
  Communicator& w = world();
  EXPECT_EQ(w.backend(), "mpi");
  EXPECT_GE(w.size(), 2);
  EXPECT_LT(w.rank(), w.size());
}

TEST(Mpi, CountsGoToTheirRanks) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  std::vector<int64_t> send(P), recv(P, -1);
  for (int d = 0; d < P; ++d) send[d] = 100 * r + d;
  w.exchange_counts(send.data(), recv.data());
  for (int s = 0; s < P; ++s) EXPECT_EQ(recv[s], 100 * s + r);
}

// Rank s sends s + d + 1 rows of 3 floats to rank d; row i carries (s, d, i).
void check_alltoallv(bool nonblocking) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  std::vector<int64_t> send_rows(P), recv_rows(P);
  std::vector<float> send;
  for (int d = 0; d < P; ++d) {
    send_rows[d] = r + d + 1;
    for (int64_t i = 0; i < send_rows[d]; ++i)
      send.insert(send.end(), {float(r), float(d), float(i)});
  }
  w.exchange_counts(send_rows.data(), recv_rows.data());
  const int64_t total = std::accumulate(recv_rows.begin(), recv_rows.end(), int64_t{0});
  std::vector<float> recv(3 * total, -1.f);
  if (nonblocking) {
    auto req = w.start_alltoallv(send.data(), send_rows.data(), recv.data(), recv_rows.data(),
                                 3 * sizeof(float));
    req->wait();
  } else {
    w.alltoallv(send.data(), send_rows.data(), recv.data(), recv_rows.data(), 3 * sizeof(float));
  }
  int64_t row = 0;
  for (int s = 0; s < P; ++s) {
    ASSERT_EQ(recv_rows[s], s + r + 1);
    for (int64_t i = 0; i < recv_rows[s]; ++i, ++row) {
      EXPECT_EQ(recv[3 * row], float(s));
      EXPECT_EQ(recv[3 * row + 1], float(r));
      EXPECT_EQ(recv[3 * row + 2], float(i));
    }
  }
}

TEST(Mpi, AlltoallvDeliversRowsInRankOrder) { check_alltoallv(false); }
TEST(Mpi, NonBlockingAlltoallvDeliversTheSameRows) { check_alltoallv(true); }

// 8 units of 1000 values spread over the ranks: a local tree over this rank's units, then the
// sum over ranks, equals the tree over all 8 units computed here, bit for bit.
TEST(Mpi, AllreduceSumEqualsTheOneProcessTree) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const int64_t U = 8, len = 1000;
  ASSERT_EQ(U % P, 0);
  std::vector<std::vector<float>> units(U, std::vector<float>(len));
  for (int64_t u = 0; u < U; ++u)
    for (int64_t i = 0; i < len; ++i)  // magnitudes 1e-3 .. 1e3: the order shows in the bits
      units[u][i] = (uniform01(u, i) - 0.5f) * std::pow(10.f, static_cast<float>(i % 7) - 3.f);
  std::vector<const float*> all, mine;
  for (int64_t u = 0; u < U; ++u) all.push_back(units[u].data());
  for (int64_t u = r * (U / P); u < (r + 1) * (U / P); ++u) mine.push_back(units[u].data());
  std::vector<float> want(len), got(len), fold(len, 0.f);
  tree_sum(all, len, want.data());
  tree_sum(mine, len, got.data());
  w.allreduce_sum(got.data(), len);
  int64_t fold_differs = 0;
  for (int64_t i = 0; i < len; ++i) {
    for (int64_t u = 0; u < U; ++u) fold[i] += units[u][i];
    fold_differs += fold[i] != want[i];
    ASSERT_EQ(got[i], want[i]) << "element " << i;
  }
  EXPECT_GT(fold_differs, 0);  // a sum in another order would have been caught
  std::vector<double> d(3, r + 0.25);
  w.allreduce_sum(d.data(), 3);
  EXPECT_EQ(d[2], P * 0.25 + P * (P - 1) / 2.0);
}

TEST(Mpi, BroadcastAllgatherMaxAndSendrecv) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  std::vector<int> v(5, r == 1 ? 42 : 0);
  w.broadcast(v.data(), 5 * sizeof(int), 1);
  for (int x : v) EXPECT_EQ(x, 42);
  std::vector<int64_t> all(P);
  const int64_t mine = 10 + r;
  w.allgather(&mine, sizeof mine, all.data());
  for (int s = 0; s < P; ++s) EXPECT_EQ(all[s], 10 + s);
  EXPECT_EQ(w.allreduce_max(r * 3), (P - 1) * 3);
  EXPECT_EQ(w.allreduce_sum_exact(r), P * (P - 1) / 2);
  const int partner = r ^ 1;
  if (partner < P) {
    float out = float(r), in = -1;
    w.sendrecv(&out, &in, sizeof out, partner);
    EXPECT_EQ(in, float(partner));
  }
  EXPECT_GT(w.bytes_sent(), 0);
  w.barrier();
}

}  // namespace
}  // namespace sparsemoe
