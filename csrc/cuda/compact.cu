// CUDA kernel of npdg::compact / npdg::compact_many, in plain CUDA (no torch headers; see
// compact_desc.h). The torch wrapper that checks arguments and registers the op is compact_cuda.cpp.
//
// One launch covers a whole parameter list: every tensor's output is cut into blocks of
// kBlockElems elements, a block finds its tensor by a binary search over the per-tensor block
// offsets (uniform across the block, so no divergence), then each thread gathers elements with a
// stride of blockDim.x (coalesced writes). Compaction is a gather, so only the element size matters.
#include <cuda_runtime.h>

#include <climits>

#include "../compact_desc.h"

namespace npdg {
namespace cuda {
namespace {

template <typename T>
__device__ void gather_block(const CompactDesc& d, int64_t t, int64_t e0, int64_t e1,
                             unsigned long long* error) {
  const T* __restrict__ src = static_cast<const T*>(d.src);
  T* __restrict__ dst = static_cast<T*>(d.dst);
  for (int64_t e = e0 + threadIdx.x; e < e1; e += blockDim.x) {
    int64_t row, col, inner_off;
    locate(d, e, row, col, inner_off);
    // A bad index is reported (the host raises) and never dereferenced.
    if (row < 0 || row >= d.src_rows) {
      atomicMin(error, static_cast<unsigned long long>(2 * t));
    } else if (col < 0 || col >= d.src_cols) {
      atomicMin(error, static_cast<unsigned long long>(2 * t + 1));
    } else {
      dst[e] = src[row * d.stride_row + col * d.stride_col + inner_off];
    }
  }
}

__global__ void compact_many_kernel(const CompactDesc* __restrict__ descs,
                                    const int64_t* __restrict__ block_start, int64_t ntensors,
                                    unsigned long long* error) {
  const int64_t b = blockIdx.x;
  // Largest t with block_start[t] <= b: empty tensors share their start with the next tensor and
  // are skipped because the search takes the last of equal starts.
  int64_t lo = 0, hi = ntensors - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (block_start[mid] <= b) lo = mid; else hi = mid - 1;
  }
  __shared__ CompactDesc d;  // one copy per block, broadcast reads
  if (threadIdx.x == 0) d = descs[lo];
  __syncthreads();
  const int64_t e0 = (b - block_start[lo]) * kBlockElems;
  const int64_t e1 = e0 + kBlockElems < d.numel ? e0 + kBlockElems : d.numel;
  switch (d.elem_size) {
    case 1: gather_block<uint8_t>(d, lo, e0, e1, error); break;
    case 2: gather_block<uint16_t>(d, lo, e0, e1, error); break;
    case 4: gather_block<uint32_t>(d, lo, e0, e1, error); break;
    case 8: gather_block<uint64_t>(d, lo, e0, e1, error); break;
    default: break;  // rejected on the host
  }
}

}  // namespace

const char* launch_compact_many(const void* table, int64_t ntensors, int64_t nblocks,
                                unsigned long long* error, CUstream_st* stream) {
  cudaError_t status = cudaMemsetAsync(error, 0xFF, sizeof(unsigned long long), stream);
  if (status != cudaSuccess) return cudaGetErrorString(status);
  if (nblocks <= 0) return nullptr;
  if (nblocks > INT_MAX) return "compact_many: output too large for one launch (more than 2^31 blocks)";
  const auto* descs = static_cast<const CompactDesc*>(table);
  const auto* block_start = reinterpret_cast<const int64_t*>(descs + ntensors);
  compact_many_kernel<<<static_cast<unsigned int>(nblocks), kThreads, 0, stream>>>(
      descs, block_start, ntensors, error);
  status = cudaGetLastError();
  return status == cudaSuccess ? nullptr : cudaGetErrorString(status);
}

}  // namespace cuda
}  // namespace npdg
