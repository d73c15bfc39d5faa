// Tensor storage and shape checks.
#include "sparsemoe/core/tensor.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "sparsemoe/core/errors.h"
#include "sparsemoe/core/limits.h"

namespace sparsemoe {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    check_arg(d >= 0, "Tensor: negative dimension in " + shape_str(shape));
    check_arg(!__builtin_mul_overflow(n, d, &n),
              "Tensor: shape " + shape_str(shape) + " has more elements than 64-bit sizes hold");
  }
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

void Tensor::AlignedFree::operator()(float* p) const {
  if (owned) std::free(p);
}

Tensor Tensor::borrow(float* data, Shape shape) {
  Tensor t;
  t.numel_ = shape_numel(shape);
  check_arg(data != nullptr || t.numel_ == 0,
            "Tensor::borrow: null data for shape " + shape_str(shape));
  t.data_ = std::unique_ptr<float[], AlignedFree>(data, AlignedFree{false});
  t.shape_ = std::move(shape);
  t.capacity_ = t.numel_;
  return t;
}

Tensor::Tensor(Shape shape) {
  resize(shape);
  zero();
}

Tensor::Tensor(Shape shape, float value) {
  resize(shape);
  fill(value);
}

Tensor::Tensor(Shape shape, const std::vector<float>& values) {
  check_arg(
      static_cast<int64_t>(values.size()) == shape_numel(shape),
      "Tensor: " + std::to_string(values.size()) + " values do not fill shape " + shape_str(shape));
  resize(shape);
  if (numel_) std::memcpy(data(), values.data(), numel_ * sizeof(float));
}

Tensor::Tensor(const Tensor& other) { *this = other; }

Tensor& Tensor::operator=(const Tensor& other) {
  if (this == &other) return *this;
  if (!other.data_) {  // default-constructed or zero-size: nothing to copy
    shape_ = other.shape_;
    numel_ = other.numel_;
    return *this;
  }
  resize(other.shape_);
  if (numel_) std::memcpy(data(), other.data(), numel_ * sizeof(float));
  return *this;
}

void Tensor::resize(const Shape& shape) {
  const int64_t n = shape_numel(shape);
  if (n > capacity_) {
    check_memory(static_cast<double>(n) * sizeof(float), "Tensor " + shape_str(shape));
    // Round the byte size up to the 64-byte alignment, as aligned_alloc requires.
    const size_t bytes = ((static_cast<size_t>(n) * sizeof(float) + 63) / 64) * 64;
    float* p = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
    data_.reset(p);
    data_.get_deleter().owned = true;  // a borrowed Tensor that grows owns its new storage
    capacity_ = n;
  }
  shape_ = shape;
  numel_ = n;
}

void Tensor::zero() {
  if (numel_) std::memset(data(), 0, numel_ * sizeof(float));
}

void Tensor::fill(float value) {
  for (int64_t i = 0; i < numel_; ++i) data()[i] = value;
}

void check_shape(const std::string& name, const Shape& actual, const Shape& expected,
                 const std::string& dims) {
  if (actual == expected) return;
  std::string msg = "argument '" + name + "': expected shape " + shape_str(expected);
  if (!dims.empty()) msg += " " + dims;
  msg += ", got " + shape_str(actual);
  throw InvalidArgument(msg);
}

}  // namespace sparsemoe
