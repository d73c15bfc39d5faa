// Shared by the extension's source files: numpy arrays checked and wrapped without copies, JSON
// to and from Python objects.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "sparsemoe/core/tensor.h"

namespace sparsemoe::python {

namespace py = pybind11;

inline std::string type_name(const py::handle& obj) {
  return py::str(py::type::of(obj).attr("__name__")).cast<std::string>();
}

// A C-contiguous, aligned float32 numpy array, or a TypeError / ValueError naming the argument.
inline py::array checked_array(const py::handle& obj, const std::string& name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error("argument '" + name + "': expected a numpy.ndarray of float32, got " +
                         type_name(obj));
  auto a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error("argument '" + name + "': expected dtype float32, got " +
                         py::str(a.dtype()).cast<std::string>() + " (use x.astype(np.float32))");
  if (!(a.flags() & py::array::c_style) ||
      reinterpret_cast<uintptr_t>(a.data()) % alignof(float) != 0)
    throw py::value_error("argument '" + name + "': expected a C-contiguous array, got strides " +
                          py::str(py::tuple(a.attr("strides"))).cast<std::string>() +
                          " (use np.ascontiguousarray)");
  return a;
}

inline Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

// The engine reads `a` in place; the caller keeps `a` alive for as long as the Tensor is used.
inline Tensor borrow(const py::array& a) {
  return Tensor::borrow(const_cast<float*>(static_cast<const float*>(a.data())), shape_of(a));
}

// A fresh numpy array of `shape` and a Tensor that writes into it.
inline std::pair<py::array_t<float>, Tensor> output(const Shape& shape) {
  py::array_t<float> out(std::vector<py::ssize_t>(shape.begin(), shape.end()));
  Tensor t = Tensor::borrow(out.mutable_data(), shape);
  return {std::move(out), std::move(t)};
}

// If the engine had to move the output elsewhere (it never should: the shape is exact), the
// result is copied back rather than lost.
inline void settle(py::array_t<float>& out, const Tensor& t) {
  if (t.data() != out.data()) {
    if (shape_of(out) != t.shape())
      throw std::logic_error("sparsemoe: output shape " + shape_str(t.shape()) + " differs from " +
                             shape_str(shape_of(out)));
    std::memcpy(out.mutable_data(), t.data(), t.numel() * sizeof(float));
  }
}

inline py::object json_to_py(const nlohmann::json& j) {
  return py::module_::import("json").attr("loads")(j.dump());
}

inline nlohmann::json py_to_json(const std::string& text, const std::string& name) {
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw py::value_error("argument '" + name + "': not valid JSON: " + e.what());
  }
}

// A view of one engine buffer; `owner` (the Python layer object) stays alive while it exists.
inline py::array view_of(Tensor& t, const py::handle& owner) {
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
  return py::array_t<float>(shape, t.data(), owner);
}

// The engine call of a method on one engine object: the GIL released, then the object's mutex
// taken. An object holds one activation record, and without the GIL calls from two Python threads
// would otherwise run on it at once; this way they take turns.
struct Compute {
  explicit Compute(std::mutex& mu) : lock(mu) {}
  py::gil_scoped_release release;  // declared first: released before locking, taken back after
  std::unique_lock<std::mutex> lock;
};

void bind_training(py::module_& m);  // train_bindings.cc
void bind_models(py::module_& m);    // model_bindings.cc

}  // namespace sparsemoe::python
