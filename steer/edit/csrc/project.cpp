// Python binding of the native projection kernel (project_kernel.cpp): checks shapes, builds a Problem.
#include <torch/extension.h>

#include "project.h"

// x, y: [d, m] float32/bfloat16 views, same dtype, (stride(0) == 1 for both) or (stride(1) == 1 for
// both); basis [d, k] float32 contiguous; gram [k, k] float32 (B^T B) or an empty tensor.
void project(torch::Tensor x, torch::Tensor y, torch::Tensor basis, torch::Tensor gram, double strength) {
  TORCH_CHECK(x.dim() == 2 && y.sizes() == x.sizes() && x.scalar_type() == y.scalar_type(), "x, y: same [d, m]");
  TORCH_CHECK(basis.scalar_type() == torch::kFloat32 && basis.is_contiguous() && basis.size(0) == x.size(0),
              "basis: contiguous float32 [d, k]");
  const bool cols = x.stride(0) == 1 && y.stride(0) == 1;
  TORCH_CHECK(cols || (x.stride(1) == 1 && y.stride(1) == 1), "x, y: rows or columns contiguous");
  const int64_t k = basis.size(1);
  torch::Tensor bt = basis.t().contiguous();
  const float* g = gram.numel() ? gram.data_ptr<float>() : nullptr;
  const float s = static_cast<float>(strength);
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16,
              "native projection supports float32 and bfloat16, got ", x.scalar_type());
  Problem q{x.data_ptr(), y.data_ptr(), x.size(0), x.size(1), cols ? x.stride(1) : x.stride(0),
            cols ? y.stride(1) : y.stride(0), cols, x.scalar_type() == torch::kBFloat16,
            basis.data_ptr<float>(), bt.data_ptr<float>(), k, g, s};
  pybind11::gil_scoped_release release;
  steer_project(q);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("project", &project, "in-place-capable projection"); }
