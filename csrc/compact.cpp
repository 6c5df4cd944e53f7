// npdg::compact / npdg::compact_many: schema, argument checks, CPU implementation.
//
//   compact(src, out_index, in_index) = src[out_index][:, in_index], contiguous, in one pass
//   compact_many(...)                  = the same over a whole parameter list
//
// Indices are 1-D int64 tensors on src's device, or None (keep the dim whole). The gather only
// moves bytes, so any strided dtype of 1, 2, 4 or 8 bytes works (the project uses fp32/fp64/fp16/bf16).
#include "compact.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace npdg {

std::string CompactPlan::label(size_t t, const char* arg) const {
  if (op == "compact") return op + ": " + arg;
  return op + ": " + arg + "[" + std::to_string(t) + "]";
}

namespace {

// Checks one optional index against src and returns it contiguous (undefined for None).
at::Tensor checked_index(const CompactPlan& plan, size_t t, const std::optional<at::Tensor>& index,
                         const at::Tensor& src, const char* arg, int dim) {
  if (!index.has_value() || !index->defined()) return at::Tensor();
  const at::Tensor& idx = *index;
  const std::string name = plan.label(t, arg);
  TORCH_CHECK(src.dim() > dim, name, " must be None: src is ", src.dim(), "-D and has no dim ", dim,
              (dim == 1 ? " (a 1-D tensor has no input-channel dim)" : ""));
  TORCH_CHECK(idx.scalar_type() == at::kLong, name, " must be an int64 (torch.long) tensor, got ",
              idx.scalar_type());
  TORCH_CHECK(idx.dim() == 1, name, " must be 1-D, got a ", idx.dim(), "-D tensor of shape ", idx.sizes());
  TORCH_CHECK(idx.device() == src.device(), name, " is on ", idx.device(), " but src is on ",
              src.device(), "; indices must be on src's device");
  return idx.contiguous();
}

// Fills rows/cols/inner of d from src's sizes and strides (see compact_desc.h for the view).
void describe(CompactDesc& d, const at::Tensor& src, bool has_out, bool has_in, int64_t out_len,
              int64_t in_len) {
  const int64_t dim = src.dim();
  d.rows = d.cols = d.src_rows = d.src_cols = 1;
  d.stride_row = d.stride_col = 0;
  // Un-indexed dims directly before the trailing dims join them (output order is row-major).
  const bool fold_cols = !has_in;
  const bool fold_rows = !has_out && fold_cols;
  int64_t first_trailing = std::min<int64_t>(dim, 2);
  if (dim >= 2 && fold_cols) first_trailing = 1;
  if (dim >= 1 && fold_rows) first_trailing = 0;
  if (dim >= 1 && !fold_rows) {
    d.src_rows = src.size(0);
    d.stride_row = src.stride(0);
    d.rows = has_out ? out_len : d.src_rows;
  }
  if (dim >= 2 && !fold_cols) {
    d.src_cols = src.size(1);
    d.stride_col = src.stride(1);
    d.cols = in_len;
  }
  // Collapse the trailing dims: drop size-1 dims, merge a dim into the previous one when
  // stride[prev] == size * stride (the pair then walks memory like one dim).
  d.inner = 1;
  d.ninner = 0;
  for (int64_t i = first_trailing; i < dim; ++i) {
    const int64_t size = src.size(i), stride = src.stride(i);
    d.inner *= size;
    if (size == 1) continue;
    if (d.ninner > 0 && d.inner_stride[d.ninner - 1] == size * stride) {
      d.inner_size[d.ninner - 1] *= size;
      d.inner_stride[d.ninner - 1] = stride;
    } else {
      d.inner_size[d.ninner] = size;
      d.inner_stride[d.ninner] = stride;
      ++d.ninner;
    }
  }
  if (d.inner == 0) d.ninner = 0;
  d.numel = d.rows * d.cols * d.inner;
}

// The CUDA kernel's per-element decode (compact_desc.h): any layout, no fast path.
template <typename T>
void copy_range_generic(const CompactDesc& d, int64_t e0, int64_t e1) {
  const T* src = static_cast<const T*>(d.src);
  T* dst = static_cast<T*>(d.dst);
  for (int64_t e = e0; e < e1; ++e) {
    int64_t row, col, inner_off;
    locate(d, e, row, col, inner_off);
    dst[e] = src[row * d.stride_row + col * d.stride_col + inner_off];
  }
}

// Copies output elements [e0, e1) of one tensor; fast paths for the common layouts.
template <typename T>
void copy_range(const CompactDesc& d, int64_t e0, int64_t e1) {
  const T* src = static_cast<const T*>(d.src);
  T* dst = static_cast<T*>(d.dst);
  const int64_t* oi = d.out_index;
  const int64_t* ii = d.in_index;
  const int64_t slab = e0 / d.inner;
  int64_t k = e0 - slab * d.inner, r = slab / d.cols, c = slab - r * d.cols;
  int64_t e = e0;
  if (d.inner == 1) {  // 1x1 convs, linear layers, vectors: a row is a gather over columns
    while (e < e1) {
      const T* row = src + (oi ? oi[r] : r) * d.stride_row;
      const int64_t cend = std::min(d.cols, c + (e1 - e));
      if (ii) {
        for (; c < cend; ++c) dst[e++] = row[ii[c] * d.stride_col];
      } else {
        for (; c < cend; ++c) dst[e++] = row[c * d.stride_col];
      }
      if (c == d.cols) c = 0, ++r;
    }
  } else if (d.ninner == 1 && d.inner_stride[0] == 1) {  // contiguous trailing dims: memcpy runs
    while (e < e1) {
      const int64_t n = std::min(d.inner - k, e1 - e);
      const T* s = src + (oi ? oi[r] : r) * d.stride_row + (ii ? ii[c] : c) * d.stride_col;
      std::memcpy(dst + e, s + k, n * sizeof(T));
      e += n;
      k = 0;
      if (++c == d.cols) c = 0, ++r;
    }
  } else {
    copy_range_generic<T>(d, e0, e1);
  }
}

template <typename T>
void copy_range_as(const CompactDesc& d, int64_t e0, int64_t e1, bool generic) {
  generic ? copy_range_generic<T>(d, e0, e1) : copy_range<T>(d, e0, e1);
}

void copy_range_any(const CompactDesc& d, int64_t e0, int64_t e1, bool generic) {
  switch (d.elem_size) {
    case 1: return copy_range_as<uint8_t>(d, e0, e1, generic);
    case 2: return copy_range_as<uint16_t>(d, e0, e1, generic);
    case 4: return copy_range_as<uint32_t>(d, e0, e1, generic);
    case 8: return copy_range_as<uint64_t>(d, e0, e1, generic);
  }
}

// Elements per parallel work item: big enough to amortize the lookup, small enough to balance.
constexpr int64_t kCpuChunk = 1 << 14;

void run_cpu(const CompactPlan& plan) {
  for (size_t t = 0; t < plan.descs.size(); ++t) check_plan_indices(plan, t);
  const auto& descs = plan.descs;
  const char* generic_env = std::getenv("NPDG_COMPACT_GENERIC");  // test hook, see compact_desc.h
  const bool generic = generic_env != nullptr && std::string(generic_env) == "1";
  std::vector<int64_t> chunk_start(descs.size() + 1, 0);
  for (size_t t = 0; t < descs.size(); ++t)
    chunk_start[t + 1] = chunk_start[t] + (descs[t].numel + kCpuChunk - 1) / kCpuChunk;
  at::parallel_for(0, chunk_start.back(), 1, [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(chunk_start.begin(), chunk_start.end(), begin) - chunk_start.begin() - 1;
    for (int64_t chunk = begin; chunk < end; ++chunk) {
      while (chunk_start[t + 1] <= chunk) ++t;  // skips empty tensors too
      const int64_t e0 = (chunk - chunk_start[t]) * kCpuChunk;
      copy_range_any(descs[t], e0, std::min(e0 + kCpuChunk, descs[t].numel), generic);
    }
  });
}

}  // namespace

CompactPlan plan_compaction(at::TensorList src, const OptTensorList& out_index,
                            const OptTensorList& in_index, bool many) {
  CompactPlan plan;
  plan.op = many ? "compact_many" : "compact";
  TORCH_CHECK(out_index.size() == src.size() && in_index.size() == src.size(), plan.op,
              ": list lengths differ: ", src.size(), " src, ", out_index.size(), " out_index, ",
              in_index.size(), " in_index");
  const size_t n = src.size();
  plan.descs.resize(n);
  plan.outputs.reserve(n);
  plan.out_index.reserve(n);
  plan.in_index.reserve(n);
  for (size_t t = 0; t < n; ++t) {
    const at::Tensor& s = src[t];
    const std::string name = plan.label(t, "src");
    TORCH_CHECK(s.defined(), name, " is undefined");
    TORCH_CHECK(s.layout() == at::kStrided && !s.is_quantized(), name,
                " must be a dense (strided) tensor, got layout ", s.layout());
    const int64_t esize = s.element_size();
    TORCH_CHECK(esize == 1 || esize == 2 || esize == 4 || esize == 8, name, ": unsupported dtype ",
                s.scalar_type(), " (element size must be 1, 2, 4 or 8 bytes)");
    TORCH_CHECK(s.dim() <= kMaxInnerDims, name, " has ", s.dim(), " dims; at most ", kMaxInnerDims,
                " are supported");
    plan.out_index.push_back(checked_index(plan, t, out_index.get(t), s, "out_index", 0));
    plan.in_index.push_back(checked_index(plan, t, in_index.get(t), s, "in_index", 1));
    const at::Tensor& oi = plan.out_index.back();
    const at::Tensor& ii = plan.in_index.back();

    std::vector<int64_t> shape = s.sizes().vec();
    if (oi.defined()) shape[0] = oi.numel();
    if (ii.defined()) shape[1] = ii.numel();
    plan.outputs.push_back(at::empty(shape, s.options().memory_format(at::MemoryFormat::Contiguous)));

    CompactDesc& d = plan.descs[t];
    std::memset(&d, 0, sizeof(d));
    describe(d, s, oi.defined(), ii.defined(), oi.defined() ? oi.numel() : 0,
             ii.defined() ? ii.numel() : 0);
    d.src = s.data_ptr();
    d.dst = plan.outputs.back().data_ptr();
    d.out_index = oi.defined() ? oi.const_data_ptr<int64_t>() : nullptr;
    d.in_index = ii.defined() ? ii.const_data_ptr<int64_t>() : nullptr;
    d.elem_size = static_cast<int32_t>(esize);
  }
  return plan;
}

void check_index_values(const at::Tensor& index, int64_t size, const std::string& label, int dim) {
  const at::Tensor host = index.is_cpu() ? index.contiguous() : index.cpu();
  const int64_t* v = host.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    TORCH_CHECK_INDEX(v[i] >= 0 && v[i] < size, label, ": value ", v[i], " at position ", i,
                      " is out of range for dim ", dim, " of size ", size,
                      (v[i] < 0 ? " (negative indices are not supported)" : ""));
  }
}

void check_plan_indices(const CompactPlan& plan, size_t t) {
  const CompactDesc& d = plan.descs[t];
  // A dim with an index is never folded, so src_rows / src_cols are its source sizes.
  if (plan.out_index[t].defined())
    check_index_values(plan.out_index[t], d.src_rows, plan.label(t, "out_index"), 0);
  if (plan.in_index[t].defined())
    check_index_values(plan.in_index[t], d.src_cols, plan.label(t, "in_index"), 1);
}

at::Tensor compact_cpu(const at::Tensor& src, const std::optional<at::Tensor>& out_index,
                       const std::optional<at::Tensor>& in_index) {
  OptTensorList oi, ii;
  oi.push_back(out_index);
  ii.push_back(in_index);
  CompactPlan plan = plan_compaction({src}, oi, ii, /*many=*/false);
  run_cpu(plan);
  return plan.outputs[0];
}

std::vector<at::Tensor> compact_many_cpu(at::TensorList src, const OptTensorList& out_index,
                                         const OptTensorList& in_index) {
  CompactPlan plan = plan_compaction(src, out_index, in_index, /*many=*/true);
  run_cpu(plan);
  return plan.outputs;
}

}  // namespace npdg

TORCH_LIBRARY(npdg, m) {
  m.def("compact(Tensor src, Tensor? out_index, Tensor? in_index) -> Tensor");
  m.def("compact_many(Tensor[] src, Tensor?[] out_index, Tensor?[] in_index) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(npdg, CPU, m) {
  m.impl("compact", &npdg::compact_cpu);
  m.impl("compact_many", &npdg::compact_many_cpu);
}
