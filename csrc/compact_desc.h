// Torch-free description of one channel compaction, shared by the C++ (CPU) path and the plain-CUDA
// kernel in cuda/compact.cu (which must compile without torch headers: the CPU torch wheel ships no
// CUDA-generated headers, and CI compile-checks every .cu with bare nvcc).
//
// A source tensor is viewed as (rows, cols, inner...):  dst[r, c, k] = src[row(r), col(c), k]
// where row(r) = out_index ? out_index[r] : r (same for cols / in_index), and k runs over the
// trailing dims (kh, kw of a conv weight), collapsed where the source strides allow. A dim without
// an index that is adjacent to the trailing ones is folded into them (rows or cols becomes 1), so a
// contiguous row copies as one run.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NPDG_HD __host__ __device__ __forceinline__
#else
#define NPDG_HD inline
#endif

struct CUstream_st;  // == cudaStream_t, declared here so this header needs no CUDA include

namespace npdg {

// Sources have at most this many dims (conv3d weights have 5). Un-indexed leading dims are folded
// into the trailing ones, so a fully non-collapsible source can use all of them.
constexpr int kMaxInnerDims = 8;

struct CompactDesc {
  const void* src;
  void* dst;                 // contiguous output, numel elements
  const int64_t* out_index;  // rows entries, nullptr = identity
  const int64_t* in_index;   // cols entries, nullptr = identity
  int64_t rows, cols;        // output extent of dims 0 and 1 (cols = 1 for 0-D / 1-D sources)
  int64_t src_rows, src_cols;        // bounds the index values must respect
  int64_t stride_row, stride_col;    // source strides, in elements
  int64_t inner;                     // product of the trailing sizes (1 if none)
  int64_t numel;                     // rows * cols * inner
  int64_t inner_size[kMaxInnerDims];
  int64_t inner_stride[kMaxInnerDims];
  int32_t ninner;                    // number of trailing dims after collapsing (0 if inner == 1)
  int32_t elem_size;                 // 1, 2, 4 or 8 bytes: the gather does not care about dtype
};
// The host (g++) packs this struct and the device (nvcc) reads it: the layouts must agree.
static_assert(sizeof(CompactDesc) == 4 * 8 + 8 * 8 + 2 * kMaxInnerDims * 8 + 2 * 4,
              "CompactDesc must have no padding");

// 64-bit division is emulated on GPUs (dozens of instructions); almost every operand fits 32 bits.
NPDG_HD int64_t div64(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0) return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}

// Source offset (elements) of trailing element k of a (row, col) slab.
NPDG_HD int64_t inner_offset(const CompactDesc& d, int64_t k) {
  if (d.ninner <= 1) return d.ninner == 1 ? k * d.inner_stride[0] : 0;
  int64_t off = 0;
  for (int i = d.ninner - 1; i >= 0; --i) {
    const int64_t q = div64(k, d.inner_size[i]);
    off += (k - q * d.inner_size[i]) * d.inner_stride[i];
    k = q;
  }
  return off;
}

// Per-element decode of output element e (numel > 0): the source row and column it reads (unchecked
// index values) and the offset of its trailing part. The CUDA kernel runs this for every element;
// the CPU path runs it for layouts without a fast path (and for everything under
// NPDG_COMPACT_GENERIC=1, which is how the CPU tests cover the GPU's index math).
NPDG_HD void locate(const CompactDesc& d, int64_t e, int64_t& row, int64_t& col, int64_t& inner_off) {
  const int64_t slab = div64(e, d.inner);
  const int64_t r = div64(slab, d.cols);
  const int64_t c = slab - r * d.cols;
  row = d.out_index ? d.out_index[r] : r;
  col = d.in_index ? d.in_index[c] : c;
  inner_off = inner_offset(d, e - slab * d.inner);
}

namespace cuda {

// Output elements handled by one CUDA block (256 threads x 8 elements).
constexpr int kThreads = 256;
constexpr int64_t kBlockElems = 2048;

// Compacts every tensor of `descs` in ONE kernel launch on `stream`.
//   table:        device buffer holding ntensors CompactDesc followed by ntensors + 1 int64
//                 block offsets (tensor t owns blocks [block_start[t], block_start[t + 1])).
//   error:        device uint64; set to min(2 * t + which) over bad index values (which: 0 =
//                 out_index, 1 = in_index), ~0 if all were in range.
// Returns nullptr on success, else the CUDA error string.
const char* launch_compact_many(const void* table, int64_t ntensors, int64_t nblocks,
                                unsigned long long* error, CUstream_st* stream);

}  // namespace cuda
}  // namespace npdg
