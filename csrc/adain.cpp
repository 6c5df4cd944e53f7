// npdg::adain_forward / npdg::adain_backward: schema + fused CPU implementation of AdaIN.
//
//   adain_forward(x, mean', std', eps) -> (y, mu, rstd)
//       y = std' * (x - mu) * rstd + mean' per (n, c), mu / rstd = the row's mean and 1/sqrt(var + eps)
//   adain_backward(dy, x, mu, rstd, std', need_dx) -> (dx, d mean', d std')
//       d mean' = sum dy, d std' = sum dy * xhat (xhat = (x - mu) * rstd) per (n, c),
//       dx = std' * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)); dx is an empty tensor when !need_dx
//
// Conventions of npdg.reference: statistics per (n, c) over all trailing (spatial) positions, biased
// variance. x is (N, C, *spatial) of float / double / bfloat16 / half and is read as contiguous rows of
// L = prod(spatial) positions (another layout is made contiguous first; npdg.ops only sends contiguous
// x here). mean' / std' are (N, C) of any floating dtype and strides. mu, rstd, d mean', d std' are
// (N, C) float (double for double x). Autograd and the fake (meta) functions live in npdg/ops.py.
//
// Memory traffic: one thread owns a whole row and makes all its passes back to back, so only the first
// pass reads the row from DRAM and the rest hit the core's L2 (a 128x128 fp32 row is 64 KB):
//   forward  = mean pass + centred-variance pass + normalize pass  -> ~1 read of x + 1 write of y;
//   backward = sums pass + dx pass                                   -> ~1 read of x and dy + 1 write of dx.
// Arithmetic: 16 (fp64: 8) independent lane accumulators in the element's precision (float; double for
// double) as one GCC/Clang vector, added into a double every kFlush positions -- so no accumulator ever
// sums more than 64 values in float. The variance is the corrected two-pass formula
// sum((x - m)^2) - (sum(x - m))^2 / L around the float-rounded mean m.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <type_traits>

namespace npdg {
namespace {

// Lanes: kUnroll native 16-byte vectors (SSE / NEON: 4 fp32 or 2 fp64) per accumulator, i.e. 16 fp32 /
// 8 fp64 independent adds in flight -- enough to hide the FP-add latency. Plain loops with two
// accumulators were vectorized badly by GCC 12 (outer-loop vectorization with strided shuffles, ~10x
// slower than a copy), and one wide generic vector (vector_size(64)) was lowered poorly without AVX-512;
// explicit native vectors unrolled by hand run at the speed of a plain sum.
template <typename Ln>
struct Vec16 {
  typedef Ln type __attribute__((vector_size(16)));  // (an alias template would drop the attribute)
};
template <typename Ln>
using vec_t = typename Vec16<Ln>::type;
template <typename Ln>
constexpr int kVecLen = 16 / sizeof(Ln);
constexpr int kUnroll = 4;
template <typename Ln>
constexpr int kStep = kUnroll * kVecLen<Ln>;  // positions per unrolled step: 16 fp32 / 8 fp64
// Positions summed in lane precision before the lanes are added into a double (64 values per fp32 lane).
constexpr int64_t kFlush = 1024;
// Elements per parallel task: ~128 KB of fp32, large enough to amortize the task overhead of at::parallel_for.
constexpr int64_t kGrainElems = 1 << 15;

template <typename T>
using lane_t = std::conditional_t<std::is_same_v<T, double>, double, float>;
template <typename T>
using acc_t = lane_t<T>;

template <typename Ln, typename T>
inline vec_t<Ln> load(const T* p) {
  vec_t<Ln> v;
  if constexpr (std::is_same_v<T, Ln>) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    for (int j = 0; j < kVecLen<Ln>; ++j) v[j] = static_cast<Ln>(p[j]);
  }
  return v;
}

template <typename Ln, typename T>
inline void store(T* p, const vec_t<Ln>& v) {
  if constexpr (std::is_same_v<T, Ln>) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int j = 0; j < kVecLen<Ln>; ++j) p[j] = static_cast<T>(v[j]);
  }
}

template <typename Ln>
inline double hsum(const vec_t<Ln> (&v)[kUnroll]) {
  double s = 0.0;
  for (int u = 0; u < kUnroll; ++u)
    for (int j = 0; j < kVecLen<Ln>; ++j) s += v[u][j];
  return s;
}

// Two sums over positions [0, n) of a row: vf(i, a, b) adds the terms of the kVecLen positions from i on
// to the vectors a, b; sf(i, a, b) those of position i alone to scalars (the tail).
template <typename Ln, typename VF, typename SF>
inline std::pair<double, double> row_sums(int64_t n, const VF& vf, const SF& sf) {
  constexpr int kL = kStep<Ln>;
  double ta = 0.0, tb = 0.0;
  int64_t i = 0;
  for (int64_t b0 = 0; b0 + kL <= n; b0 += kFlush) {
    const int64_t e = std::min(n, b0 + kFlush);
    vec_t<Ln> a[kUnroll] = {}, b[kUnroll] = {};
    for (i = b0; i + kL <= e; i += kL)
      for (int u = 0; u < kUnroll; ++u) vf(i + u * kVecLen<Ln>, a[u], b[u]);
    ta += hsum<Ln>(a), tb += hsum<Ln>(b);
    if (i < e) break;  // the last block ends in a tail
  }
  Ln ra = 0, rb = 0;
  for (; i < n; ++i) sf(i, ra, rb);
  return {ta + ra, tb + rb};
}

template <typename T>
void forward_rows(const T* x, T* y, const acc_t<T>* new_mean, const acc_t<T>* new_std, acc_t<T>* mu_out,
                  acc_t<T>* rstd_out, int64_t rows, int64_t len, double eps) {
  using Ln = lane_t<T>;
  using V = vec_t<Ln>;
  constexpr int kL = kVecLen<Ln>;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(len, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * len;
      T* yr = y + r * len;
      const double total = row_sums<Ln>(
          len, [&](int64_t i, V& a, V&) { a += load<Ln>(xr + i); },
          [&](int64_t i, Ln& a, Ln&) { a += static_cast<Ln>(xr[i]); }).first;
      const Ln m = static_cast<Ln>(total / len);
      const auto [s1, s2] = row_sums<Ln>(
          len,
          [&](int64_t i, V& a, V& b) {
            const V d = load<Ln>(xr + i) - m;
            a += d;
            b += d * d;
          },
          [&](int64_t i, Ln& a, Ln& b) {
            const Ln d = static_cast<Ln>(xr[i]) - m;
            a += d;
            b += d * d;
          });
      const double mean = static_cast<double>(m) + s1 / len;
      const double var = std::max(0.0, (s2 - s1 * s1 / len) / len);
      const double rstd = 1.0 / std::sqrt(var + eps);
      const Ln mu = static_cast<Ln>(mean);
      const Ln scale = static_cast<Ln>(static_cast<double>(new_std[r]) * rstd);
      const Ln shift = static_cast<Ln>(new_mean[r]);
      int64_t i = 0;
      for (; i + kL <= len; i += kL) store<Ln>(yr + i, (load<Ln>(xr + i) - mu) * scale + shift);
      for (; i < len; ++i) yr[i] = static_cast<T>((static_cast<Ln>(xr[i]) - mu) * scale + shift);
      mu_out[r] = static_cast<acc_t<T>>(mean);
      rstd_out[r] = static_cast<acc_t<T>>(rstd);
    }
  });
}

template <typename T>
void backward_rows(const T* dy, const T* x, const acc_t<T>* mu_in, const acc_t<T>* rstd_in,
                   const acc_t<T>* new_std, T* dx, acc_t<T>* dmean, acc_t<T>* dstd, int64_t rows, int64_t len) {
  using Ln = lane_t<T>;
  using V = vec_t<Ln>;
  constexpr int kL = kVecLen<Ln>;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(2 * len, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = x + r * len;
      const T* dyr = dy + r * len;
      const Ln mu = static_cast<Ln>(mu_in[r]);
      const Ln rstd = static_cast<Ln>(rstd_in[r]);
      const auto [sdy, sdyx] = row_sums<Ln>(
          len,
          [&](int64_t i, V& a, V& b) {
            const V g = load<Ln>(dyr + i);
            a += g;
            b += g * ((load<Ln>(xr + i) - mu) * rstd);
          },
          [&](int64_t i, Ln& a, Ln& b) {
            const Ln g = static_cast<Ln>(dyr[i]);
            a += g;
            b += g * ((static_cast<Ln>(xr[i]) - mu) * rstd);
          });
      dmean[r] = static_cast<acc_t<T>>(sdy);
      dstd[r] = static_cast<acc_t<T>>(sdyx);
      if (dx == nullptr || len == 0) continue;
      T* dxr = dx + r * len;
      const Ln gain = static_cast<Ln>(static_cast<double>(new_std[r]) * static_cast<double>(rstd_in[r]));
      const Ln ma = static_cast<Ln>(sdy / len), mb = static_cast<Ln>(sdyx / len);
      int64_t i = 0;
      for (; i + kL <= len; i += kL) {
        const V xhat = (load<Ln>(xr + i) - mu) * rstd;
        store<Ln>(dxr + i, gain * (load<Ln>(dyr + i) - ma - xhat * mb));
      }
      for (; i < len; ++i) {
        const Ln xhat = (static_cast<Ln>(xr[i]) - mu) * rstd;
        dxr[i] = static_cast<T>(gain * (static_cast<Ln>(dyr[i]) - ma - xhat * mb));
      }
    }
  });
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() >= 3, op, ": x must be (N, C, *spatial), got shape ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), op, ": the fused CPU kernel got a tensor on ", x.device());
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, op,
              ": x dtype ", t, " not supported (float, double, bfloat16, half)");
}

// (N, C) per-row values of `p` as a contiguous tensor of dtype `acc`.
at::Tensor rows_of(const at::Tensor& p, const at::Tensor& x, at::ScalarType acc, const char* op, const char* name) {
  TORCH_CHECK(p.dim() == 2 && p.size(0) == x.size(0) && p.size(1) == x.size(1), op, ": ", name,
              " must be (N, C) = (", x.size(0), ", ", x.size(1), "), got ", p.sizes());
  TORCH_CHECK(p.is_floating_point(), op, ": ", name, " must be floating point, got ", p.scalar_type());
  TORCH_CHECK(p.device() == x.device(), op, ": ", name, " is on ", p.device(), ", x on ", x.device());
  return p.to(acc).contiguous();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_forward_cpu(const at::Tensor& x_in, const at::Tensor& mean,
                                                                  const at::Tensor& std_, double eps) {
  constexpr const char* op = "npdg::adain_forward";
  check_x(x_in, op);
  const at::Tensor x = x_in.contiguous();
  const auto acc = acc_type(x.scalar_type());
  const at::Tensor m = rows_of(mean, x, acc, op, "mean"), s = rows_of(std_, x, acc, op, "std");
  const int64_t n = x.size(0), c = x.size(1), rows = n * c, len = rows == 0 ? 0 : x.numel() / rows;
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor mu = at::empty({n, c}, x.options().dtype(acc));
  at::Tensor rstd = at::empty({n, c}, x.options().dtype(acc));
  if (len == 0) {  // no positions: undefined statistics, as in the reference
    mu.fill_(std::numeric_limits<double>::quiet_NaN());
    rstd.fill_(std::numeric_limits<double>::quiet_NaN());
    return {y, mu, rstd};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "npdg_adain_forward", [&] {
    using A = acc_t<scalar_t>;
    forward_rows<scalar_t>(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), m.const_data_ptr<A>(),
                           s.const_data_ptr<A>(), mu.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>(), rows, len,
                           eps);
  });
  return {y, mu, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adain_backward_cpu(const at::Tensor& dy_in, const at::Tensor& x_in,
                                                                   const at::Tensor& mu_in, const at::Tensor& rstd_in,
                                                                   const at::Tensor& std_, bool need_dx) {
  constexpr const char* op = "npdg::adain_backward";
  check_x(x_in, op);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), op, ": dy ", dy_in.sizes(), " and x ", x_in.sizes(), " differ");
  TORCH_CHECK(dy_in.scalar_type() == x_in.scalar_type(), op, ": dy is ", dy_in.scalar_type(), ", x is ",
              x_in.scalar_type());
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const auto acc = acc_type(x.scalar_type());
  const at::Tensor mu = rows_of(mu_in, x, acc, op, "mu"), rstd = rows_of(rstd_in, x, acc, op, "rstd");
  const at::Tensor s = rows_of(std_, x, acc, op, "std");
  const int64_t n = x.size(0), c = x.size(1), rows = n * c, len = rows == 0 ? 0 : x.numel() / rows;
  at::Tensor dx = need_dx ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor dmean = at::empty({n, c}, x.options().dtype(acc));
  at::Tensor dstd = at::empty({n, c}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "npdg_adain_backward", [&] {
    using A = acc_t<scalar_t>;
    backward_rows<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), mu.const_data_ptr<A>(),
                            rstd.const_data_ptr<A>(), s.const_data_ptr<A>(),
                            need_dx ? dx.mutable_data_ptr<scalar_t>() : nullptr, dmean.mutable_data_ptr<A>(),
                            dstd.mutable_data_ptr<A>(), rows, len);
  });
  return {dx, dmean, dstd};
}

}  // namespace
}  // namespace npdg

TORCH_LIBRARY_FRAGMENT(npdg, m) {
  m.def("adain_forward(Tensor x, Tensor mean, Tensor std, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("adain_backward(Tensor dy, Tensor x, Tensor mu, Tensor rstd, Tensor std, bool need_dx) "
        "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(npdg, CPU, m) {
  m.impl("adain_forward", &npdg::adain_forward_cpu);
  m.impl("adain_backward", &npdg::adain_backward_cpu);
}
