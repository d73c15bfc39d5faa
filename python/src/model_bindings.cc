// The Python package's Sparse Mixer encoder (sparsemoe.SparseMixer): the network from a preset or
// a config, forward on token ids (int or float arrays, converted to the engine's float ids, which
// checks that each is an integer in range), backward from the sequence and/or pooled output
// gradients into the parameters' gradient buffers, parameters and gradients as numpy views.
// Outputs are copied into new arrays: the engine reuses its output buffers on the next forward.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bindings.h"
#include "sparsemoe/core/errors.h"
#include "sparsemoe/models/presets.h"
#include "sparsemoe/models/sparse_mixer.h"

namespace py = pybind11;

namespace sparsemoe::python {

namespace {

// Integer ids [B, L] as the engine's float tensor (an integer array is converted, a float32 one
// copied); the engine checks the values.
Tensor ids_tensor(const py::handle& obj, const std::string& name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error("argument '" + name + "': expected a numpy.ndarray of integers, got " +
                         type_name(obj));
  auto a = py::reinterpret_borrow<py::array>(obj);
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u' && kind != 'f' && kind != 'b')
    throw py::type_error("argument '" + name + "': expected integer ids, got dtype " +
                         py::str(a.dtype()).cast<std::string>());
  if (a.ndim() != 2)
    throw py::value_error("argument '" + name + "': expected 2 dimensions [B, L], got shape " +
                          shape_str(shape_of(a)));
  auto f = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
  if (!f) throw py::error_already_set();
  Tensor t(shape_of(f));
  std::copy(f.data(), f.data() + t.numel(), t.data());
  return t;
}

py::array_t<float> copy_out(const Tensor& t) {
  py::array_t<float> a(std::vector<py::ssize_t>(t.shape().begin(), t.shape().end()));
  std::copy(t.data(), t.data() + t.numel(), a.mutable_data());
  return a;
}

struct PyMixer {
  explicit PyMixer(const std::string& config_json)
      : model(SparseMixerConfig::from_json(py_to_json(config_json, "config"))) {}

  py::tuple forward(const py::handle& ids, const py::handle& mask, const py::handle& type_ids,
                    bool training, uint64_t step, bool save_for_backward) {
    Tensor ids_t = ids_tensor(ids, "input_word_ids"), mask_t, type_t;
    SparseMixerInputs in;
    in.input_word_ids = &ids_t;
    if (!mask.is_none()) {
      mask_t = ids_tensor(mask, "input_mask");
      in.input_mask = &mask_t;
    }
    if (!type_ids.is_none()) {
      type_t = ids_tensor(type_ids, "input_type_ids");
      in.input_type_ids = &type_t;
    }
    ForwardOptions opt;
    opt.training = training;
    opt.step = step;
    opt.save_for_backward = save_for_backward;
    SparseMixerMetrics m;
    {
      Compute compute(mu);
      m = model.forward(in, opt);
    }
    have_forward = true;
    nlohmann::json j = m.to_json();
    j["loss"] = m.loss;
    return py::make_tuple(copy_out(model.sequence_output()), copy_out(model.pooled_output()),
                          json_to_py(j));
  }

  void backward(const py::handle& dseq_obj, const py::handle& dpool_obj) {
    check_arg(have_forward, "backward: call forward first");
    check_arg(!dseq_obj.is_none() || !dpool_obj.is_none(),
              "backward: give dsequence, dpooled or both");
    py::array dseq, dpool;
    Tensor dseq_t, dpool_t;
    if (!dseq_obj.is_none()) {
      dseq = checked_array(dseq_obj, "dsequence");
      check_shape("dsequence", shape_of(dseq), model.sequence_output().shape(), "[B, L, H]");
      dseq_t = borrow(dseq);
    }
    if (!dpool_obj.is_none()) {
      dpool = checked_array(dpool_obj, "dpooled");
      check_shape("dpooled", shape_of(dpool), model.pooled_output().shape(), "[B, H]");
      dpool_t = borrow(dpool);
    }
    Compute compute(mu);
    model.backward(dseq_obj.is_none() ? nullptr : &dseq_t,
                   dpool_obj.is_none() ? nullptr : &dpool_t);
  }

  SparseMixer model;
  bool have_forward = false;
  std::mutex mu;  // Compute
};

py::dict mixer_arrays(const py::object& self, bool grads) {
  PyMixer& obj = self.cast<PyMixer&>();
  std::vector<ParamRef> params;
  {
    Compute compute(obj.mu);
    params = obj.model.params();
  }
  py::dict d;
  for (const ParamRef& p : params) d[py::str(p.name)] = view_of(grads ? *p.grad : *p.value, self);
  return d;
}

}  // namespace

void bind_models(py::module_& m) {
  m.def("preset_names", &preset_names);
  m.def("preset_json", [](const std::string& name) { return preset_json(name).dump(); });
  py::class_<PyMixer>(m, "SparseMixer")
      .def(py::init<const std::string&>(), py::arg("config_json"))
      .def("forward", &PyMixer::forward, py::arg("input_word_ids"), py::arg("input_mask"),
           py::arg("input_type_ids"), py::arg("training"), py::arg("step"),
           py::arg("save_for_backward") = true)
      .def("backward", &PyMixer::backward, py::arg("dsequence"), py::arg("dpooled"))
      .def("parameters", [](const py::object& self) { return mixer_arrays(self, false); })
      .def("gradients", [](const py::object& self) { return mixer_arrays(self, true); })
      .def("zero_grad",
           [](PyMixer& self) {
             Compute compute(self.mu);
             zero_grads(self.model.params());
           })
      .def("count_params", [](PyMixer& self) { return self.model.count_params(); })
      .def("config_json", [](PyMixer& self) { return self.model.config().to_json().dump(); });
}

}  // namespace sparsemoe::python
