// The registry of cases that the test harness (tests/test_harness.cc) checks and
// `sparsemoe bench cases` times, in the manner of ggml's test-backend-ops: every op, layer and
// network with its shapes and config, behind one contract (Subject). The harness runs each case
// in four modes: reference (the fast path against its plain-loop reference), gradient (finite
// differences), determinism (bitwise equal at 1 and 2 threads) and errors (bad input gives the
// typed error naming the argument); perf is the bench command. A new op or layer gets all of it
// by registering a case here.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "sparsemoe/core/tensor.h"
#include "sparsemoe/nn/layer_common.h"

namespace sparsemoe::cases {

// One instance under test. The objective the harness differentiates is
//   sum_i <outputs()[i], r_i> + forward's return value (the losses the subject adds itself).
class Subject {
 public:
  virtual ~Subject() = default;
  // Runs the forward on the subject's own inputs; returns the loss it adds (0 for most).
  virtual double forward(const ForwardOptions& opt) = 0;
  virtual std::vector<const Tensor*> outputs() = 0;
  // The gradient of the objective for upstream gradients douts (one per output): fills
  // input_grads() and accumulates the parameters' gradients.
  virtual void backward(const std::vector<Tensor>& douts) = 0;
  // The differentiable inputs (perturbed by the gradient mode) and their last gradients.
  virtual std::vector<Tensor*> inputs() = 0;
  virtual std::vector<const Tensor*> input_grads() = 0;
  virtual std::vector<ParamRef> params() = 0;
};

// A bad input or config: run() must throw `error` ("InvalidArgument" or "ConfigError") whose
// message contains `message`.
struct BadInput {
  std::string what;
  std::function<void()> run;
  std::string error;
  std::string message;
};

enum class GradientCheck {
  kNone,
  kElements,     // central differences at sampled elements of every input and parameter
  kDirectional,  // Ridders along one random direction per tensor (deep stacks)
};

struct Case {
  std::string name;  // "moe/tokens_choose/k2_bpr"; the prefix before '/' is the tier
  std::function<std::unique_ptr<Subject>()> make;
  // The same function computed by plain loops, with the weights copied from `fast`; empty when
  // the case has no separate reference.
  std::function<std::unique_ptr<Subject>(Subject& fast)> reference;
  // A reference for the forward only (outputs and added loss; no backward), when the reference
  // form has no backward of its own. Compared in eval mode (no dropout).
  std::function<std::unique_ptr<Subject>(Subject& fast)> forward_reference;
  ForwardOptions options{true, 3};
  uint64_t dout_seed = 1000;  // the upstream gradients r: uniform(-1, 1) from this seed
  GradientCheck gradient = GradientCheck::kElements;
  int input_samples = 48, param_samples = 32;  // elements checked per tensor (kElements)
  float fd_step = 1e-3f;                       // central-difference step (kElements)
  double rtol = 2e-2, atol = 2e-4;             // |analytic - numeric| <= atol + rtol * max
  double reference_tolerance = 1e-5;           // normalised error
  std::vector<BadInput> errors;
  // What a case must show besides the modes (e.g. "capacity drops are present"): empty when
  // fine, else the complaint. Run after one forward.
  std::function<std::string(Subject&)> precondition;
  // FLOPs of the last forward, for the bench's GFLOP/s (empty: not reported).
  std::function<double(Subject&)> flops;
  // Production-size cases for `sparsemoe bench cases`: the harness runs only their errors mode
  // (the same configurations at test size carry the other modes).
  bool perf_only = false;
};

const std::vector<Case>& registry();

// uniform(lo, hi) elements from the counter RNG (the tests' inputs).
Tensor random_input(Shape shape, uint64_t seed, float lo = -1.f, float hi = 1.f);

}  // namespace sparsemoe::cases
