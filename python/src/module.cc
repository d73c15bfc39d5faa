// The Python extension `sparsemoe._core` (pybind11): the MoE layers on float32 numpy arrays with
// no copies. Inputs are read in place (Tensor::borrow); outputs are numpy arrays the engine writes
// into directly; parameters and gradients are writable numpy views of the engine's own buffers,
// each holding a reference to its layer so that a view never outlives its storage. Every compute
// call releases the GIL. The Python package (python/sparsemoe/__init__.py) wraps these classes
// with dict configs and keyword arguments.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bindings.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/tensor.h"
#include "sparsemoe/moe/moe_layer.h"
#include "sparsemoe/moe/routing.h"
#include "sparsemoe/ops/simd.h"

namespace py = pybind11;

namespace sparsemoe::python {

namespace {

// The metrics as a dict, built directly (no JSON text on the way: this is per call). The keys
// are MoeMetrics::to_json()'s, plus what backward's routing-loss gradient is the gradient of.
py::dict metrics_dict(const MoeMetrics& m) {
  py::dict d;
  d["load_balancing_loss"] = m.load_balancing_loss;
  d["router_z_loss"] = m.router_z_loss;
  d["unscaled_router_z_loss"] = m.unscaled_router_z_loss;
  d["fraction_tokens_left_behind"] = m.fraction_tokens_left_behind;
  d["router_confidence"] = m.router_confidence;
  d["expert_usage"] = m.expert_usage;
  d["tokens_per_expert"] = m.tokens_per_expert;
  d["over_capacity_1_ratio"] = m.over_capacity_1_ratio;
  d["over_capacity_2_ratio"] = m.over_capacity_2_ratio;
  d["loss"] = m.loss;
  d["num_groups"] = m.num_groups;
  d["tokens_per_group"] = m.tokens_per_group;
  d["expert_capacity"] = m.expert_capacity;
  return d;
}

// The layer classes share everything but their config type.
template <class Layer, class Config>
struct PyLayer {
  explicit PyLayer(const std::string& config_json)
      : config(Config::from_json(py_to_json(config_json, "config"))), layer(config) {}

  std::pair<py::array_t<float>, py::object> forward(const py::handle& x_obj, bool training,
                                                    uint64_t step, const py::handle& paddings_obj,
                                                    bool save_for_backward) {
    py::array x = checked_array(x_obj, "x");
    if (x.ndim() != 3)
      throw py::value_error("argument 'x': expected 3 dimensions [B, L, H], got shape " +
                            shape_str(shape_of(x)));
    Tensor x_t = borrow(x), p_t;
    ForwardOptions opt;
    opt.training = training;
    opt.step = step;
    opt.save_for_backward = save_for_backward;
    if (!paddings_obj.is_none()) {
      p_t = borrow(checked_array(paddings_obj, "paddings"));  // the caller keeps it alive
      opt.paddings = &p_t;
    }
    auto [y, y_t] = output(layer.output_shape(x_t.shape()));
    MoeMetrics m;
    {
      Compute compute(mu);
      m = layer.forward(x_t, y_t, opt);
    }
    settle(y, y_t);
    x_shape = x_t.shape();
    return {std::move(y), metrics_dict(m)};
  }

  py::array_t<float> backward(const py::handle& dy_obj, double loss_scale, bool accumulate) {
    py::array dy = checked_array(dy_obj, "dy");
    check_arg(!x_shape.empty(), "backward: call forward first");
    check_shape("dy", shape_of(dy), x_shape, "[B, L, H]");
    Tensor dy_t = borrow(dy);
    auto [dx, dx_t] = output(x_shape);
    {
      Compute compute(mu);
      layer.backward(dy_t, dx_t, loss_scale,
                     accumulate ? GradMode::kAccumulate : GradMode::kOverwrite);
    }
    settle(dx, dx_t);
    return dx;
  }

  // bench/python_overhead.py's yardstick: the seconds of the engine's own forward (and backward)
  // on x, timed in C++ around the call alone, into an engine-owned output reused across calls
  // (as `sparsemoe bench moe` does). Paired with the Python call it gives the bindings' cost.
  double time_engine(const py::handle& x_obj, bool training, bool with_backward) {
    const py::array x = checked_array(x_obj, "x");
    Tensor x_t = borrow(x);
    ForwardOptions opt;
    opt.training = training;
    Compute compute(mu);
    const auto start = std::chrono::steady_clock::now();
    layer.forward(x_t, bench_y, opt);
    if (with_backward) layer.backward(x_t, bench_dx);
    const auto stop = std::chrono::steady_clock::now();
    x_shape = x_t.shape();
    return std::chrono::duration<double>(stop - start).count();
  }

  Config config;
  Layer layer;
  Shape x_shape;             // of the last forward, empty before the first
  Tensor bench_y, bench_dx;  // time_engine's outputs
  std::mutex mu;             // Compute
};

// name -> view of each weight (or its gradient); the views keep `self` alive.
template <class P>
py::dict arrays(const py::object& self, bool grads) {
  P& obj = self.cast<P&>();
  std::vector<ParamRef> params;
  {
    Compute compute(obj.mu);  // params() drops the packed inference copies a forward may read
    params = obj.layer.params();
  }
  py::dict d;
  for (const ParamRef& p : params) d[py::str(p.name)] = view_of(grads ? *p.grad : *p.value, self);
  return d;
}

template <class Layer, class Config>
void bind_layer(py::module_& m, const char* name, const char* doc) {
  using P = PyLayer<Layer, Config>;
  py::class_<P>(m, name, doc)
      .def(py::init<const std::string&>(), py::arg("config_json"))
      .def("forward", &P::forward, py::arg("x"), py::arg("training") = false, py::arg("step") = 0,
           py::arg("paddings") = py::none(), py::arg("save_for_backward") = true,
           "x [B, L, H] float32 -> (y [B, L, H], metrics dict). Reads x in place. "
           "save_for_backward=False: inference (no_grad), no backward may follow.")
      .def("backward", &P::backward, py::arg("dy"), py::arg("loss_scale") = 1.0,
           py::arg("accumulate") = true,
           "dy [B, L, H] -> dx; accumulates the parameters' gradients (routing losses included, "
           "scaled by loss_scale), or with accumulate=False writes them (no zero_grad needed).")
      .def(
          "parameters", [](const py::object& self) { return arrays<P>(self, false); },
          "name -> writable float32 view of the weight (no copy)")
      .def(
          "gradients", [](const py::object& self) { return arrays<P>(self, true); },
          "name -> writable float32 view of the weight's gradient (no copy)")
      .def("zero_grad",
           [](P& self) {
             Compute compute(self.mu);
             zero_grads(self.layer.params());
           })
      .def("_time_engine", &P::time_engine, py::arg("x"), py::arg("training"),
           py::arg("with_backward"), "seconds of the engine's own call (benchmarks)")
      .def("count_params", [](P& self) { return self.layer.count_params(); })
      .def("config_json", [](P& self) { return self.config.to_json().dump(); });
}

// sparsemoe.route: one routing problem, answered as `sparsemoe route` answers it.
py::dict route(const py::handle& logits_obj, const std::string& router, int64_t k, int64_t capacity,
               double capacity_factor, bool batch_prioritized_routing,
               const std::string& second_expert_policy, double second_expert_threshold,
               bool legacy_mtf_behavior, const std::vector<int64_t>& expert_padding_idx,
               const py::handle& paddings_obj, const py::object& seed) {
  py::array logits = checked_array(logits_obj, "logits");
  if (logits.ndim() != 3)
    throw py::value_error("argument 'logits': expected 3 dimensions [G, T, E], got shape " +
                          shape_str(shape_of(logits)));
  const int64_t G = logits.shape(0), T = logits.shape(1), E = logits.shape(2);
  RouterConfig rc;
  rc.type = parse_router_type(router);
  rc.num_experts = E;
  rc.num_selected_experts = k >= 0 ? k : make_policy(rc)->default_k();  // -1: the default
  rc.batch_prioritized_routing = batch_prioritized_routing;
  rc.top2.second_expert_policy =
      kSecondExpertPolicies.parse(second_expert_policy, "second_expert_policy");
  rc.top2.second_expert_threshold = second_expert_threshold;
  rc.top2.legacy_mtf_behavior = legacy_mtf_behavior;
  rc.top2.expert_padding_idx = expert_padding_idx;
  rc.validate();
  DenseRouteOptions o;
  o.capacity = capacity;
  o.capacity_factor = capacity_factor;
  if (!paddings_obj.is_none()) {
    const py::array paddings = checked_array(paddings_obj, "paddings");
    check_shape("paddings", shape_of(paddings), {G, T}, "[G, T]");
    o.paddings = static_cast<const float*>(paddings.data());
  }
  if (!seed.is_none()) {
    o.seeded = true;
    o.seed = seed.cast<uint64_t>();
  }
  o.max_cells = int64_t{1} << 28;  // 1 GiB per array
  DenseRoute d;
  {
    py::gil_scoped_release release;
    d = route_dense(rc, static_cast<const float*>(logits.data()), G, T, o);
  }
  auto dense = [&](const std::vector<float>& v) {
    py::array_t<float> a(std::vector<py::ssize_t>{G, T, E, d.C});
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
  };
  const RouteResult& r = d.result;
  py::dict metrics;
  metrics["load_balancing_loss"] = r.load_balancing_loss;
  metrics["router_z_loss"] = r.unscaled_router_z_loss;
  metrics["unscaled_router_z_loss"] = r.unscaled_router_z_loss;
  metrics["fraction_tokens_left_behind"] = r.fraction_tokens_left_behind;
  metrics["router_confidence"] = r.router_confidence;
  metrics["expert_usage"] = r.expert_usage;
  metrics["tokens_per_expert"] = r.tokens_per_expert;
  if (d.reports_over_capacity) {
    metrics["over_capacity_1_ratio"] = r.over_capacity_1_ratio;
    metrics["over_capacity_2_ratio"] = r.over_capacity_2_ratio;
  }
  py::dict out;
  out["capacity"] = d.C;
  out["dispatch"] = dense(d.dispatch);
  out["combine"] = dense(d.combine);
  out["aux_loss"] = r.load_balancing_loss;
  out["router_z_loss"] = r.unscaled_router_z_loss;
  out["metrics"] = metrics;
  return out;
}

}  // namespace

}  // namespace sparsemoe::python

PYBIND11_MODULE(_core, m) {
  using namespace sparsemoe;
  using namespace sparsemoe::python;
  m.doc() = "sparsemoe's C++ engine (use the sparsemoe package, not this module directly)";
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const ConfigError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });
  bind_layer<MoeLayer, MoeLayerConfig>(
      m, "MoeLayer", "Sparsely-gated MoE layer (tf-models MoeLayer): router, routing, experts");
  bind_layer<MoeLayerWithBackbone, MoeLayerWithBackboneConfig>(
      m, "MoeLayerWithBackbone", "MoeLayer plus a dense FFN added to its output");
  bind_training(m);
  bind_models(m);
  m.def("route", &route, py::arg("logits"), py::arg("router"), py::arg("k"), py::arg("capacity"),
        py::arg("capacity_factor"), py::arg("batch_prioritized_routing"),
        py::arg("second_expert_policy"), py::arg("second_expert_threshold"),
        py::arg("legacy_mtf_behavior"), py::arg("expert_padding_idx"), py::arg("paddings"),
        py::arg("seed"));
  m.def(
      "simd", [] { return simd_target_name(simd_target()); },
      "the instruction-set level the kernels run at");
}
