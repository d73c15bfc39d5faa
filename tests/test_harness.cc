// The one test harness (ggml test-backend-ops style): every case in the registry
// (sparsemoe/cases/cases.h) runs in each mode:
//   Reference    the fast path against its plain-loop reference: outputs, the added loss, input
//                gradients and every parameter gradient by normalised error
//   Gradient     analytic gradients against central differences (sampled elements) or Ridders
//                along a random direction, of sum <outputs, r> + the added loss
//   Determinism  outputs and gradients bitwise equal at 1, 2 and 3 threads and run to run
//   Errors       each bad input throws the typed error whose message names the argument
// plus the case's own precondition (e.g. capacity drops are present). `sparsemoe bench cases`
// times the same cases.
#include <gtest/gtest.h>

#include <limits>
#include <set>
#include <string>
#include <vector>

#include "sparsemoe/cases/cases.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/parallel.h"
#include "test_util.h"

namespace sparsemoe {
namespace {

using cases::Case;
using cases::GradientCheck;
using cases::Subject;

// The upstream gradients r, shaped like the outputs of one forward.
std::vector<Tensor> upstream(Subject& s, const Case& c) {
  s.forward(c.options);
  std::vector<Tensor> r;
  for (const Tensor* y : s.outputs())
    r.push_back(cases::random_input(y->shape(), c.dout_seed + r.size()));
  return r;
}

// One forward and backward from zeroed gradients; returns the added loss.
double run(Subject& s, const Case& c, const std::vector<Tensor>& r) {
  const double added = s.forward(c.options);
  zero_grads(s.params());
  s.backward(r);
  return added;
}

class Harness : public ::testing::TestWithParam<const Case*> {};

TEST_P(Harness, Precondition) {
  const Case& c = *GetParam();
  if (c.perf_only) return;
  if (!c.precondition) return;
  auto s = c.make();
  s->forward(c.options);
  EXPECT_EQ(c.precondition(*s), "");
}

TEST_P(Harness, Reference) {
  const Case& c = *GetParam();
  if (c.perf_only) return;
  if (!c.reference) return;
  auto fast = c.make();
  auto ref = c.reference(*fast);
  const std::vector<Tensor> r = upstream(*fast, c);
  const double lf = run(*fast, c, r), lr = run(*ref, c, r);
  EXPECT_NEAR(lf, lr, 1e-6 * std::max(1.0, std::fabs(lr))) << "added loss";
  const auto yf = fast->outputs(), yr = ref->outputs();
  ASSERT_EQ(yf.size(), yr.size());
  for (size_t i = 0; i < yf.size(); ++i)
    EXPECT_LT(test::normalized_error(*yf[i], *yr[i]), c.reference_tolerance) << "output " << i;
  const auto df = fast->input_grads(), dr = ref->input_grads();
  for (size_t i = 0; i < df.size(); ++i)
    EXPECT_LT(test::normalized_error(*df[i], *dr[i]), c.reference_tolerance) << "input grad " << i;
  auto pf = fast->params(), pr = ref->params();
  ASSERT_EQ(pf.size(), pr.size());
  for (size_t i = 0; i < pf.size(); ++i) {
    EXPECT_EQ(pf[i].name, pr[i].name);
    EXPECT_LT(test::normalized_error(*pf[i].grad, *pr[i].grad), c.reference_tolerance)
        << pf[i].name;
  }
}

TEST_P(Harness, ForwardReference) {
  const Case& c = *GetParam();
  if (c.perf_only) return;
  if (!c.forward_reference) return;
  auto fast = c.make();
  auto ref = c.forward_reference(*fast);
  const ForwardOptions eval{false, c.options.step};
  const double lf = fast->forward(eval), lr = ref->forward(eval);
  EXPECT_NEAR(lf, lr, 1e-6 * std::max(1.0, std::fabs(lr))) << "added loss";
  const auto yf = fast->outputs(), yr = ref->outputs();
  ASSERT_EQ(yf.size(), yr.size());
  for (size_t i = 0; i < yf.size(); ++i)
    EXPECT_LT(test::normalized_error(*yf[i], *yr[i]), c.reference_tolerance) << "output " << i;
}

TEST_P(Harness, Gradient) {
  const Case& c = *GetParam();
  if (c.perf_only) return;
  if (c.gradient == GradientCheck::kNone) return;
  auto s = c.make();
  const std::vector<Tensor> r = upstream(*s, c);
  auto loss = [&] {
    const double added = s->forward(c.options);
    double sum = added;
    const auto ys = s->outputs();
    for (size_t i = 0; i < ys.size(); ++i) sum += test::dot(*ys[i], r[i]);
    return sum;
  };
  run(*s, c, r);
  // Copies: the checks perturb the inputs and parameters and re-run forward.
  std::vector<Tensor> dxs;
  for (const Tensor* d : s->input_grads()) dxs.push_back(*d);
  std::vector<Tensor> dps;
  for (const ParamRef& p : s->params()) dps.push_back(*p.grad);
  const auto xs = s->inputs();
  for (size_t i = 0; i < xs.size(); ++i) {
    if (c.gradient == GradientCheck::kElements)
      test::check_gradient("input " + std::to_string(i), *xs[i], dxs[i], loss, c.input_samples,
                           c.fd_step, c.rtol, c.atol);
    else
      test::check_directional_gradient("input " + std::to_string(i), *xs[i], dxs[i], loss, 1 + i,
                                       2e-2f, c.rtol, c.atol);
  }
  auto ps = s->params();
  for (size_t i = 0; i < ps.size(); ++i) {
    if (c.gradient == GradientCheck::kElements)
      test::check_gradient(ps[i].name, *ps[i].value, dps[i], loss, c.param_samples, c.fd_step,
                           c.rtol, c.atol);
    else
      test::check_directional_gradient(ps[i].name, *ps[i].value, dps[i], loss, 100 + i, 2e-2f,
                                       c.rtol, c.atol);
  }
}

TEST_P(Harness, Determinism) {
  const Case& c = *GetParam();
  if (c.perf_only) return;
  auto once = [&](int threads) {
    set_num_threads(threads);
    auto s = c.make();
    const std::vector<Tensor> r = upstream(*s, c);
    run(*s, c, r);
    std::vector<Tensor> out;
    for (const Tensor* y : s->outputs()) out.push_back(*y);
    for (const Tensor* d : s->input_grads()) out.push_back(*d);
    for (const ParamRef& p : s->params()) out.push_back(*p.grad);
    set_num_threads(0);
    return out;
  };
  const auto a = once(1), b = once(2), c3 = once(3), again = once(1);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(test::bitwise_equal(a[i], b[i])) << "tensor " << i << ": 1 vs 2 threads";
    EXPECT_TRUE(test::bitwise_equal(a[i], c3[i])) << "tensor " << i << ": 1 vs 3 threads";
    EXPECT_TRUE(test::bitwise_equal(a[i], again[i])) << "tensor " << i << ": run to run";
  }
}

// Backward needs only what forward saved: overwriting the inputs with NaN between forward and
// backward changes no gradient (no layer keeps a pointer into its caller's tensors).
TEST_P(Harness, BackwardKeepsNoPointerToTheInputs) {
  const Case& c = *GetParam();
  if (c.perf_only) return;
  auto grads = [&](bool poison) {
    auto s = c.make();
    const std::vector<Tensor> r = upstream(*s, c);
    s->forward(c.options);
    zero_grads(s->params());
    if (poison)
      for (Tensor* x : s->inputs()) x->fill(std::numeric_limits<float>::quiet_NaN());
    s->backward(r);
    std::vector<Tensor> out;
    for (const Tensor* d : s->input_grads()) out.push_back(*d);
    for (const ParamRef& p : s->params()) out.push_back(*p.grad);
    return out;
  };
  const auto clean = grads(false), poisoned = grads(true);
  ASSERT_EQ(clean.size(), poisoned.size());
  for (size_t i = 0; i < clean.size(); ++i)
    EXPECT_TRUE(test::bitwise_equal(clean[i], poisoned[i])) << "gradient " << i;
}

TEST_P(Harness, Errors) {
  const Case& c = *GetParam();
  for (const cases::BadInput& bad : c.errors) {
    std::string type = "no error", message;
    try {
      bad.run();
    } catch (const InvalidArgument& e) {
      type = "InvalidArgument", message = e.what();
    } catch (const ConfigError& e) {
      type = "ConfigError", message = e.what();
    } catch (const std::exception& e) {
      type = "other", message = e.what();
    }
    EXPECT_EQ(type, bad.error) << bad.what << ": " << message;
    EXPECT_NE(message.find(bad.message), std::string::npos)
        << bad.what << ": '" << message << "' lacks '" << bad.message << "'";
  }
}

std::vector<const Case*> all_cases() {
  std::vector<const Case*> v;
  for (const Case& c : cases::registry()) v.push_back(&c);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Registry, Harness, ::testing::ValuesIn(all_cases()), [](const auto& info) {
  std::string n = info.param->name;
  for (char& ch : n)
    if (ch == '/') ch = '_';
  return n;
});

TEST(HarnessRegistry, NamesAreUniqueAndEveryCaseHasBadInputs) {
  std::set<std::string> names;
  for (const Case& c : cases::registry()) {
    EXPECT_TRUE(names.insert(c.name).second) << c.name;
    EXPECT_FALSE(c.errors.empty()) << c.name << " has no bad inputs";
  }
}

}  // namespace
}  // namespace sparsemoe
