// CUDA implementation of npdg::compact / npdg::compact_many: argument checks (shared with the CPU
// path), descriptor table upload, one kernel launch (cuda/compact.cu), index-error report.
// Compiled only in CUDA builds (setup.py defines NPDG_WITH_CUDA and adds csrc/cuda/*).
//
// Index values are checked on the host BEFORE the launch (compaction runs once per prune: copying the
// indices to the host costs nothing next to it), so a bad index never reaches a kernel and the error is
// an IndexError naming the tensor, position and value. The kernel keeps its own guard (a bad index is
// never dereferenced and sets an error word, read with one sync after the launch) as a second line.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstring>
#include <limits>

#include "../compact.h"

namespace npdg {
namespace {

void run_cuda(const CompactPlan& plan, at::TensorList src) {
  const size_t n = plan.descs.size();
  if (n == 0) return;
  const at::Device device = src[0].device();
  for (size_t t = 0; t < n; ++t) {
    TORCH_CHECK(src[t].device() == device, plan.label(t, "src"), " is on ", src[t].device(),
                " but src[0] is on ", device, "; all tensors must share one device");
  }
  c10::cuda::CUDAGuard guard(device);
  for (size_t t = 0; t < n; ++t) check_plan_indices(plan, t);  // before any launch: see the file comment

  // Table = descriptors, then per-tensor block offsets; uploaded with one async copy from pinned
  // memory (the caching host allocator keeps the buffer alive until the copy is done).
  std::vector<int64_t> block_start(n + 1, 0);
  for (size_t t = 0; t < n; ++t) {
    block_start[t + 1] = block_start[t] + (plan.descs[t].numel + cuda::kBlockElems - 1) / cuda::kBlockElems;
  }
  const size_t desc_bytes = n * sizeof(CompactDesc);
  const size_t table_bytes = desc_bytes + block_start.size() * sizeof(int64_t);
  at::Tensor host = at::empty({static_cast<int64_t>(table_bytes)},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  auto* bytes = static_cast<char*>(host.mutable_data_ptr());
  std::memcpy(bytes, plan.descs.data(), desc_bytes);
  std::memcpy(bytes + desc_bytes, block_start.data(), block_start.size() * sizeof(int64_t));
  const at::Tensor table = host.to(device, /*non_blocking=*/true);
  at::Tensor error = at::empty({1}, at::TensorOptions().dtype(at::kLong).device(device));

  const char* failure = cuda::launch_compact_many(
      table.const_data_ptr(), static_cast<int64_t>(n), block_start.back(),
      reinterpret_cast<unsigned long long*>(error.mutable_data_ptr<int64_t>()),
      c10::cuda::getCurrentCUDAStream(device.index()).stream());
  TORCH_CHECK(failure == nullptr, plan.op, ": CUDA kernel launch failed: ", failure);

  const bool kernel_saw_bad_index = error.item<int64_t>() != -1;  // ~0 == all good
  TORCH_CHECK(!kernel_saw_bad_index, plan.op, ": the kernel reported an out-of-range index that the host "
              "check before the launch did not find (internal error)");
}

at::Tensor compact_cuda(const at::Tensor& src, const std::optional<at::Tensor>& out_index,
                        const std::optional<at::Tensor>& in_index) {
  OptTensorList oi, ii;
  oi.push_back(out_index);
  ii.push_back(in_index);
  const CompactPlan plan = plan_compaction({src}, oi, ii, /*many=*/false);
  run_cuda(plan, {src});
  return plan.outputs[0];
}

std::vector<at::Tensor> compact_many_cuda(at::TensorList src, const OptTensorList& out_index,
                                          const OptTensorList& in_index) {
  const CompactPlan plan = plan_compaction(src, out_index, in_index, /*many=*/true);
  run_cuda(plan, src);
  return plan.outputs;
}

}  // namespace
}  // namespace npdg

TORCH_LIBRARY_IMPL(npdg, CUDA, m) {
  m.impl("compact", &npdg::compact_cuda);
  m.impl("compact_many", &npdg::compact_many_cuda);
}
