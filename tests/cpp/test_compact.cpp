// C++ test of npdg::compact / compact_many against plain ATen indexing (index_select), run by ctest.
// Exits non-zero and prints each failing case on a mismatch. Also runs on CUDA when built with it and
// a device is present.
#include <ATen/Context.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/randperm.h>
#include <ATen/ops/sort.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "compact.h"

namespace {

using OptT = std::optional<at::Tensor>;
int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::cerr << "FAIL: " << what << "\n";
  }
}

at::Tensor reference(const at::Tensor& src, const OptT& oi, const OptT& ii) {
  at::Tensor out = oi ? src.index_select(0, *oi) : src;
  if (ii) out = out.index_select(1, *ii);
  return out.contiguous();
}

OptT keep(int64_t n, int64_t k, const at::TensorOptions& opts) {  // sorted random keep set of size k
  return std::get<0>(at::randperm(n, opts.dtype(at::kLong)).slice(0, 0, k).sort());
}

at::Tensor via_dispatcher(const at::Tensor& src, const OptT& oi, const OptT& ii) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("npdg::compact", "")
                       .typed<at::Tensor(const at::Tensor&, const OptT&, const OptT&)>();
  return op.call(src, oi, ii);
}

std::string describe(const at::Tensor& src, const char* what) {
  std::ostringstream s;
  s << what << " " << src.scalar_type() << " " << src.sizes() << " strides " << src.strides() << " on "
    << src.device();
  return s.str();
}

void check_device(const at::Device& device) {
  const auto opts = at::TensorOptions().device(device);
  const std::vector<std::vector<int64_t>> shapes = {{8, 6, 3, 3}, {10, 7}, {9}, {64, 48, 1, 1}, {5, 4, 2, 3, 2}};
  const std::vector<at::ScalarType> dtypes = {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16};
  for (const auto& shape : shapes) {
    for (auto dtype : dtypes) {
      at::Tensor x = at::randn(shape, opts.dtype(at::kDouble)).to(dtype);
      std::vector<at::Tensor> sources = {x, x.slice(-1, 0, shape.back(), 2)};
      if (x.dim() >= 2) sources.push_back(x.transpose(0, 1));
      for (const at::Tensor& src : sources) {
        const OptT oi = keep(src.size(0), (7 * src.size(0) + 9) / 10, opts);
        const OptT ii = src.dim() >= 2 ? keep(src.size(1), (7 * src.size(1) + 9) / 10, opts) : OptT();
        const OptT empty = at::arange(0, opts.dtype(at::kLong));
        for (const auto& [o, i] : std::vector<std::pair<OptT, OptT>>{{oi, ii}, {OptT(), ii}, {oi, OptT()},
                                                                      {OptT(), OptT()}, {empty, ii}}) {
          const at::Tensor want = reference(src, o, i);
          const at::Tensor got = via_dispatcher(src, o, i);
          expect(got.is_contiguous() && got.sizes() == want.sizes() && at::equal(got, want),
                 describe(src, "compact"));
        }
      }
    }
  }

  // A whole "network" in one compact_many call: mixed shapes and dtypes.
  std::vector<at::Tensor> srcs = {at::randn({16, 3, 7, 7}, opts), at::randn({16}, opts).to(at::kHalf),
                                  at::randn({32, 16, 3, 3}, opts.dtype(at::kDouble)), at::randn({10, 32}, opts)};
  npdg::OptTensorList outs, ins;
  for (const auto& s : srcs) {
    outs.push_back(keep(s.size(0), s.size(0) / 2, opts));
    ins.push_back(s.dim() >= 2 ? keep(s.size(1), s.size(1) / 2 + 1, opts) : OptT());
  }
  static auto many = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("npdg::compact_many", "")
                         .typed<std::vector<at::Tensor>(at::TensorList, const npdg::OptTensorList&,
                                                        const npdg::OptTensorList&)>();
  const std::vector<at::Tensor> got = many.call(srcs, outs, ins);
  expect(got.size() == srcs.size(), "compact_many returns one tensor per source");
  for (size_t t = 0; t < srcs.size() && t < got.size(); ++t) {
    expect(at::equal(got[t], reference(srcs[t], outs.get(t), ins.get(t))), describe(srcs[t], "compact_many"));
  }

  // Bad indices raise, never crash.
  at::Tensor x = at::randn({4, 5}, opts);
  try {
    via_dispatcher(x, at::arange(3, 5, opts.dtype(at::kLong)), OptT());
    expect(false, "out-of-range out_index must throw");
  } catch (const c10::IndexError& e) {
    expect(std::string(e.what_without_backtrace()).find("value 4") != std::string::npos,
           std::string("message names the bad value: ") + e.what_without_backtrace());
  }
  try {
    via_dispatcher(x, at::arange(2, opts.dtype(at::kInt)), OptT());
    expect(false, "int32 index must throw");
  } catch (const c10::Error& e) {
    expect(std::string(e.what_without_backtrace()).find("int64") != std::string::npos, "message names int64");
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  // Call the CPU entry point directly once: also keeps libnpdg_ops (and its registrations) linked.
  at::Tensor v = at::randn({6});
  expect(at::equal(npdg::compact_cpu(v, at::arange(3, at::kLong), std::nullopt), v.slice(0, 0, 3)),
         "compact_cpu on a vector");
  check_device(at::kCPU);
  if (at::hasCUDA()) {
    check_device(at::Device(at::kCUDA, 0));
    std::cout << "checked CUDA\n";
  }
  std::cout << (failures ? "FAILED: " : "OK: ") << failures << " failure(s)\n";
  return failures ? 1 : 0;
}
