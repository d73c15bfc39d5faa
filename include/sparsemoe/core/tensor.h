// The float32 tensor type: a shape plus contiguous, 64-byte-aligned storage (Tensor), and a
// cheap non-owning view of the same (TensorView). Layers keep their saved activations and
// workspaces in Tensors and reuse the storage across calls (resize never shrinks capacity),
// because touching fresh pages is slow on the machines we run on.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace sparsemoe {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);  // "[2, 8, 16]"

// Non-owning view over contiguous float32 data.
struct TensorView {
  float* data = nullptr;
  Shape shape;

  int64_t numel() const { return shape_numel(shape); }
  int64_t dim(int i) const { return shape.at(i < 0 ? shape.size() + i : i); }
  int rank() const { return static_cast<int>(shape.size()); }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(Shape shape);  // zero-filled
  Tensor(Shape shape, float fill);
  Tensor(Shape shape, const std::vector<float>& values);  // values.size() must equal numel
  Tensor(const Tensor& other);
  Tensor& operator=(const Tensor& other);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  // A Tensor over memory the caller owns and keeps alive (the Python bindings' numpy arrays, so
  // that inputs and outputs are not copied). It reads and writes that memory in place; a resize
  // within its size keeps it, a larger one moves to storage of its own. Copies own their storage.
  static Tensor borrow(float* data, Shape shape);
  bool borrowed() const { return data_ && !data_.get_deleter().owned; }

  // Changes the shape; reallocates only if the new size exceeds the current capacity.
  // Contents are unspecified afterwards (use zero() when needed).
  void resize(const Shape& shape);
  void zero();
  void fill(float value);

  float* data() { return data_.get(); }
  const float* data() const { return data_.get(); }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return numel_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(i < 0 ? shape_.size() + i : i); }
  float& operator[](int64_t i) { return data_.get()[i]; }
  float operator[](int64_t i) const { return data_.get()[i]; }

  TensorView view() { return {data(), shape_}; }
  TensorView view() const { return {const_cast<float*>(data()), shape_}; }
  std::vector<float> to_vector() const { return {data(), data() + numel_}; }

 private:
  struct AlignedFree {
    AlignedFree() noexcept {}  // user-provided: a nested default member initializer is not enough
    explicit AlignedFree(bool o) noexcept : owned(o) {}
    bool owned = true;
    void operator()(float* p) const;
  };
  std::unique_ptr<float[], AlignedFree> data_;
  Shape shape_;
  int64_t numel_ = 0;
  int64_t capacity_ = 0;
};

// Throws InvalidArgument "argument 'name': expected shape [..] (dims), got [..]" unless the
// view has exactly `expected` shape. `dims` names the axes with lingvo letters, e.g. "[B, L, H]".
void check_shape(const std::string& name, const Shape& actual, const Shape& expected,
                 const std::string& dims = "");

}  // namespace sparsemoe
