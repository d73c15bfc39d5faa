// Data parallelism for training: a step's batch is cut into `units` equal runs of sequences,
// each run forward and backward on its own (from zeroed gradients), and the units' gradients,
// losses and metrics added as one fixed pairwise tree (dist/communicator.h tree_sum). P processes
// (a power of two dividing units) each take units / P consecutive units, add theirs as the lower
// levels of that tree and combine the ranks with allreduce_sum, its top levels. So one process
// and P processes compute the same tree from the same per-unit values and get the same bits.
#pragma once

#include <cstdint>
#include <vector>

#include "sparsemoe/data/batching.h"
#include "sparsemoe/dist/communicator.h"
#include "sparsemoe/models/sparse_mixer.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe {

// Sequences [first, first + count) of `batch` (ids, mask, masked-LM positions, labels and
// weights alike) into `out`.
void slice_batch(const Batch& batch, int64_t first, int64_t count, Batch& out);

// The gradients of a process's units, added as tree_sum's tree while they arrive: after unit j
// (of a power-of-two count), adjacent subtrees of equal size are merged, left + right, so at most
// log2(units) + 1 copies are held. finish() writes the sum into the parameters' gradients, summed
// over the processes of `comm` as well (except expert-sharded ones: their holder's gradient is
// already the step's whole sum).
class GradientTree {
 public:
  // Takes the gradients of `params` as the next unit's.
  void add_unit(const std::vector<ParamRef>& params);
  // Writes the total into the gradients and forgets the units.
  void finish(const std::vector<ParamRef>& params, Communicator& comm);

 private:
  struct Node {
    std::vector<float> values;
    int64_t size = 0;  // units in this subtree
  };
  std::vector<Node> stack_;
  std::vector<std::vector<float>> spare_;  // buffers reused across steps
};

// Sums per-unit values (loss shares) over the units of every process, as the same tree.
double sum_over_units(const std::vector<double>& local, Communicator& comm);

// A step's MoE metrics from its units': losses (each unit's share of the batch's, the
// normalisers being the batch's) and token counts are summed; ratios (the fraction left behind,
// router confidence, expert usage, the over-capacity ratios) are the mean over the units; the
// capacity is the largest. `units` is the count over all processes.
SparseMixerMetrics combine_unit_metrics(const std::vector<SparseMixerMetrics>& local, int64_t units,
                                        Communicator& comm);

}  // namespace sparsemoe
