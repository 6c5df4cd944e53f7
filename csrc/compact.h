// Torch side of the compaction ops: argument checks and descriptor building shared by the CPU
// implementation (compact.cpp) and the CUDA wrapper (cuda/compact_cuda.cpp).
#pragma once

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <vector>

#include "compact_desc.h"

namespace npdg {

using OptTensorList = c10::List<std::optional<at::Tensor>>;

// The checked arguments of one compact / compact_many call, outputs already allocated.
struct CompactPlan {
  std::string op;  // "compact" or "compact_many", for messages
  std::vector<CompactDesc> descs;
  std::vector<at::Tensor> outputs;
  // Contiguous int64 indices (undefined = None); the descriptors point into them.
  std::vector<at::Tensor> out_index, in_index;

  // "compact: out_index" / "compact_many: out_index[3]".
  std::string label(size_t t, const char* arg) const;
};

// Checks everything that needs no index values (list lengths, dtypes, dims, devices) and raises a
// RuntimeError naming the problem. `many` selects compact_many's messages.
CompactPlan plan_compaction(at::TensorList src, const OptTensorList& out_index,
                            const OptTensorList& in_index, bool many);

// Raises an IndexError naming the first value of `index` (int64, any device) outside [0, size).
void check_index_values(const at::Tensor& index, int64_t size, const std::string& label, int dim);

// Checks index values of tensor t of the plan (copies CUDA indices to the host: error paths only).
void check_plan_indices(const CompactPlan& plan, size_t t);

at::Tensor compact_cpu(const at::Tensor& src, const std::optional<at::Tensor>& out_index,
                       const std::optional<at::Tensor>& in_index);
std::vector<at::Tensor> compact_many_cpu(at::TensorList src, const OptTensorList& out_index,
                                         const OptTensorList& in_index);

}  // namespace npdg
