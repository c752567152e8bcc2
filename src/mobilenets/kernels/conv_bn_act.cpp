// Fused training kernels for the CPU: BatchNorm (batch statistics) + activation, and the depthwise
// convolution in front of it, on channels_last (NHWC) tensors; squeeze-and-excitation's backward;
// and the training batch's crop, flip, colour jitter and normalisation.
//
// Why: a MobileNet training step on a CPU is bound by memory traffic, not arithmetic. PyTorch runs
// conv → BatchNorm → activation as separate passes over each activation tensor (and casts between
// bf16 and fp32 in between); oneDNN's depthwise weight gradient is 5-40x its forward for 5x5 kernels.
// Here each layer reads its tensors once per pass it truly needs:
//   forward:  the depthwise conv writes y and, while the image is in cache, its channel sums;
//             then z = act(BN(y)) in one pass.
//   backward: one reduction pass over (dz, y); then, per image, dy is formed into a buffer, the
//             weight gradient is accumulated from it and dx gathered from it, so dy never exists
//             as a tensor.
// Every layout is NHWC: the innermost loops run over a block of contiguous channels held in one
// SIMD register (GCC/Clang vector types: AVX-512 where the CPU has it, narrower vectors elsewhere).
// Arithmetic is fp32, batch sums are accumulated in double; tensors may be fp32 or bf16. Reductions
// are per image, then summed in image order: results do not depend on the thread count.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#define RESTRICT __restrict__
// Tap loops have compile-time bounds; unrolled, a block's K² accumulators and weights stay in registers.
#define UNROLL _Pragma("GCC unroll 64")

namespace {

using at::BFloat16;

enum Activation : int64_t { kIdentity = 0, kReLU = 1, kReLU6 = 2, kHardswish = 3 };

// ------------------------------------------------------------------------------------------------
// SIMD blocks of B channels
// ------------------------------------------------------------------------------------------------

template <int64_t B>
struct Lanes;
template <>
struct Lanes<16> {
  typedef float f32 __attribute__((vector_size(64)));
  typedef uint32_t u32 __attribute__((vector_size(64)));
  typedef uint16_t u16 __attribute__((vector_size(32)));
};
template <>
struct Lanes<8> {
  typedef float f32 __attribute__((vector_size(32)));
  typedef uint32_t u32 __attribute__((vector_size(32)));
  typedef uint16_t u16 __attribute__((vector_size(16)));
};
template <>
struct Lanes<1> {
  typedef float f32 __attribute__((vector_size(4)));
  typedef uint32_t u32 __attribute__((vector_size(4)));
  typedef uint16_t u16 __attribute__((vector_size(2)));
};

template <int64_t B>
using Vec = typename Lanes<B>::f32;

template <int64_t B>
inline Vec<B> load(const float* p) {
  Vec<B> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// bf16 is the top half of an fp32: widen and shift.
template <int64_t B>
inline Vec<B> load(const BFloat16* p) {
#ifdef __AVX512F__
  // GCC splits the generic widening below into two 256-bit halves; one zero-extend does all 16.
  if constexpr (B == 16) {
    const __m512i word = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
    return reinterpret_cast<Vec<B>>(_mm512_castsi512_ps(word));
  }
#endif
  typename Lanes<B>::u16 half;
  std::memcpy(&half, p, sizeof(half));
  const typename Lanes<B>::u32 word = __builtin_convertvector(half, typename Lanes<B>::u32) << 16;
  Vec<B> v;
  std::memcpy(&v, &word, sizeof(v));
  return v;
}

template <int64_t B>
inline void store(float* p, Vec<B> v) {
  std::memcpy(p, &v, sizeof(v));
}

// fp32 → bf16 with round-to-nearest-even, as c10::BFloat16 does for finite values.
template <int64_t B>
inline void store(BFloat16* p, Vec<B> v) {
#ifdef __AVX512BF16__
  // One instruction (AVX512-BF16) instead of the five of the rounding below; the same rounding.
  if constexpr (B == 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(reinterpret_cast<__m512>(v))));
    return;
  }
#endif
  typename Lanes<B>::u32 word;
  std::memcpy(&word, &v, sizeof(v));
  word = (word + (((word >> 16) & 1) + 0x7FFFu)) >> 16;
  const typename Lanes<B>::u16 half = __builtin_convertvector(word, typename Lanes<B>::u16);
  std::memcpy(p, &half, sizeof(half));
}

template <int64_t B>
inline Vec<B> splat(float value) {
  Vec<B> v = {};
  return v + value;
}

// Channels in blocks of 16, then 8, then singles: every loop over a block has a compile-time width.
template <typename F>
inline void for_channel_blocks(int64_t C, F&& body) {
  int64_t c0 = 0;
  for (; c0 + 16 <= C; c0 += 16) body(c0, std::integral_constant<int64_t, 16>{});
  for (; c0 + 8 <= C; c0 += 8) body(c0, std::integral_constant<int64_t, 8>{});
  for (; c0 < C; ++c0) body(c0, std::integral_constant<int64_t, 1>{});
}

template <int64_t B>
inline Vec<B> clamp_0_6(Vec<B> a) {
  const Vec<B> zero = {}, six = splat<B>(6.f);
  const Vec<B> low = a > zero ? a : zero;
  return low < six ? low : six;
}

template <int64_t ACT, int64_t B>
inline Vec<B> activate(Vec<B> a) {
  const Vec<B> zero = {};
  if constexpr (ACT == kReLU) return a > zero ? a : zero;
  if constexpr (ACT == kReLU6) return clamp_0_6<B>(a);
  if constexpr (ACT == kHardswish) return a * clamp_0_6<B>(a + 3.f) * (1.f / 6.f);
  return a;
}

// d act(a) / da, with PyTorch's conventions at the kinks (relu: 0 at 0; hardswish: a/3 + 1/2 on [-3, 3]).
template <int64_t ACT, int64_t B>
inline Vec<B> activation_slope(Vec<B> a) {
  const Vec<B> zero = {}, one = splat<B>(1.f);
  if constexpr (ACT == kReLU) return a > zero ? one : zero;
  if constexpr (ACT == kReLU6) return (a > zero) & (a < splat<B>(6.f)) ? one : zero;
  if constexpr (ACT == kHardswish) {
    const Vec<B> middle = a * (1.f / 3.f) + 0.5f;
    return a < splat<B>(-3.f) ? zero : (a <= splat<B>(3.f) ? middle : one);
  }
  return one;
}

// The activation as a compile-time constant.
template <typename F>
void dispatch_activation(int64_t act, F&& body) {
  switch (act) {
    case kIdentity: body(std::integral_constant<int64_t, kIdentity>{}); break;
    case kReLU: body(std::integral_constant<int64_t, kReLU>{}); break;
    case kReLU6: body(std::integral_constant<int64_t, kReLU6>{}); break;
    case kHardswish: body(std::integral_constant<int64_t, kHardswish>{}); break;
    default: TORCH_CHECK(false, "mobilenets kernels: unknown activation code ", act);
  }
}

template <typename F>
void dispatch_float_or_bf16(at::ScalarType type, const char* name, F&& body) {
  if (type == at::kFloat) {
    body(float{});
  } else if (type == at::kBFloat16) {
    body(BFloat16{});
  } else {
    TORCH_CHECK(false, name, ": expected float32 or bfloat16, got ", type);
  }
}

at::Tensor nhwc(const at::Tensor& t) { return t.contiguous(at::MemoryFormat::ChannelsLast); }

at::Tensor empty_nhwc(at::IntArrayRef sizes, at::ScalarType dtype) {
  return at::empty(sizes, at::TensorOptions().dtype(dtype).memory_format(at::MemoryFormat::ChannelsLast));
}

// ------------------------------------------------------------------------------------------------
// Per-channel constants
// ------------------------------------------------------------------------------------------------

// The normalization as a = y * scale + shift per channel.
struct Affine {
  std::vector<float> scale, shift;
};

Affine bn_affine(const at::Tensor& mean, const at::Tensor& invstd, const at::Tensor& gamma, const at::Tensor& beta) {
  const int64_t C = mean.numel();
  Affine a{std::vector<float>(C), std::vector<float>(C)};
  const float *m = mean.data_ptr<float>(), *r = invstd.data_ptr<float>();
  const float *g = gamma.data_ptr<float>(), *b = beta.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    a.scale[c] = g[c] * r[c];
    a.shift[c] = b[c] - m[c] * a.scale[c];
  }
  return a;
}

// Per-image partial sums [N][C] (double), summed in image order.
std::vector<double> sum_over_images(const std::vector<double>& per_image, int64_t N, int64_t C) {
  std::vector<double> total(C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) total[c] += per_image[n * C + c];
  return total;
}

// mean, biased variance and 1/sqrt(var + eps) from sums of y and y² over `count` values per channel.
std::vector<at::Tensor> finish_statistics(const std::vector<double>& sums, const std::vector<double>& squares,
                                          int64_t N, int64_t C, int64_t count, double eps) {
  const auto s = sum_over_images(sums, N, C), q = sum_over_images(squares, N, C);
  auto mean = at::empty({C}, at::kFloat), var = at::empty({C}, at::kFloat), invstd = at::empty({C}, at::kFloat);
  for (int64_t c = 0; c < C; ++c) {
    const double mu = s[c] / count;
    const double v = std::max(q[c] / count - mu * mu, 0.0);
    mean.data_ptr<float>()[c] = static_cast<float>(mu);
    var.data_ptr<float>()[c] = static_cast<float>(v);
    invstd.data_ptr<float>()[c] = static_cast<float>(1.0 / std::sqrt(v + eps));
  }
  return {mean, var, invstd};
}

// The per-channel sums Σ first and Σ second over a run of pixels [p0, p1), for the channels
// c0 .. c0 + 16·NB (+ 8 more when `tail`), with terms(p, c, block) giving both for a block of channels
// of pixel p; added to s and q. The accumulators of all the blocks live in registers (NB ≤ 8: up to
// 18 vectors), so that the loop reads each pixel's channels contiguously: sweeping one block at a
// time down the pixels instead strides by C and stalled on its loads.
template <int64_t NB, typename F>
inline void add_run_sums(int64_t p0, int64_t p1, int64_t c0, bool tail, F& terms, double* RESTRICT s,
                         double* RESTRICT q) {
  using Wide = std::integral_constant<int64_t, 16>;
  using Narrow = std::integral_constant<int64_t, 8>;
  Vec<16> first[NB > 0 ? NB : 1] = {}, second[NB > 0 ? NB : 1] = {};
  Vec<8> first_tail = {}, second_tail = {};
  for (int64_t p = p0; p < p1; ++p) {
    UNROLL for (int64_t b = 0; b < NB; ++b) {
      const auto [x, y] = terms(p, c0 + 16 * b, Wide{});
      first[b] += x;
      second[b] += y;
    }
    if (tail) {
      const auto [x, y] = terms(p, c0 + 16 * NB, Narrow{});
      first_tail += x;
      second_tail += y;
    }
  }
  for (int64_t b = 0; b < NB; ++b) {
    for (int64_t l = 0; l < 16; ++l) {
      s[c0 + 16 * b + l] += first[b][l];
      q[c0 + 16 * b + l] += second[b][l];
    }
  }
  if (tail) {
    for (int64_t l = 0; l < 8; ++l) {
      s[c0 + 16 * NB + l] += first_tail[l];
      q[c0 + 16 * NB + l] += second_tail[l];
    }
  }
}

// Adds Σ first and Σ second over `count` NHWC pixels to s and q per channel (see add_run_sums). fp32
// partials over runs of 64 pixels, summed in double; channels in groups of up to 128, the last
// group's 8-wide tail with it, and any channels left over (C not a multiple of 8) one at a time.
template <typename F>
void add_channel_sums(int64_t count, int64_t C, double* RESTRICT s, double* RESTRICT q, F&& terms) {
  for (int64_t p0 = 0; p0 < count; p0 += 64) {
    const int64_t p1 = std::min(count, p0 + 64);
    int64_t c0 = 0;
    for (; C - c0 >= 128; c0 += 128) add_run_sums<8>(p0, p1, c0, false, terms, s, q);
    // The remaining 0..7 blocks as groups of 4, 2 and 1 (fewer instantiations than one per count),
    // the 8-wide tail with the last of them.
    const int64_t blocks = (C - c0) / 16;
    const bool tail = (C - c0) % 16 >= 8;
    const int64_t last = blocks & 1 ? 1 : blocks & 2 ? 2 : blocks & 4 ? 4 : 0;
    if (blocks & 4) add_run_sums<4>(p0, p1, c0, tail && last == 4, terms, s, q), c0 += 64;
    if (blocks & 2) add_run_sums<2>(p0, p1, c0, tail && last == 2, terms, s, q), c0 += 32;
    if (blocks & 1) add_run_sums<1>(p0, p1, c0, tail && last == 1, terms, s, q), c0 += 16;
    if (tail && last == 0) add_run_sums<0>(p0, p1, c0, true, terms, s, q);
    if (tail) c0 += 8;
    for (int64_t c = c0; c < C; ++c) {
      float first = 0.f, second = 0.f;
      for (int64_t p = p0; p < p1; ++p) {
        const auto [x, y] = terms(p, c, std::integral_constant<int64_t, 1>{});
        first += x[0];
        second += y[0];
      }
      s[c] += first;
      q[c] += second;
    }
  }
}

// Adds the channel sums and sums of squares of `count` NHWC pixels at `v` to s and q.
template <typename T>
void add_channel_moments(const T* RESTRICT v, int64_t count, int64_t C, double* RESTRICT s, double* RESTRICT q) {
  add_channel_sums(count, C, s, q, [v, C](int64_t p, int64_t c0, auto block) {
    constexpr int64_t B = decltype(block)::value;
    const Vec<B> x = load<B>(v + p * C + c0);
    return std::pair<Vec<B>, Vec<B>>{x, x * x};
  });
}

// ------------------------------------------------------------------------------------------------
// BatchNorm + activation after another op (the 1×1 convolutions, computed by oneDNN)
// ------------------------------------------------------------------------------------------------

// Batch mean, biased variance and 1/sqrt(var + eps) per channel of an NHWC tensor.
std::vector<at::Tensor> batch_statistics(const at::Tensor& y_in, double eps) {
  const auto y = nhwc(y_in);
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  std::vector<double> sums(N * C, 0.0), squares(N * C, 0.0);
  dispatch_float_or_bf16(y.scalar_type(), "batch_statistics", [&](auto tag) {
    using T = decltype(tag);
    const T* py = y.data_ptr<T>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) add_channel_moments(py + n * HW * C, HW, C, &sums[n * C], &squares[n * C]);
    });
  });
  return finish_statistics(sums, squares, N, C, N * HW, eps);
}

// z = act(gamma * (y - mean) * invstd + beta), written as `out_dtype`.
at::Tensor bn_act_forward(const at::Tensor& y_in, const at::Tensor& mean, const at::Tensor& invstd,
                          const at::Tensor& gamma, const at::Tensor& beta, int64_t act, at::ScalarType out_dtype) {
  const auto y = nhwc(y_in);
  const int64_t C = y.size(1), pixels = y.size(0) * y.size(2) * y.size(3);
  auto z = empty_nhwc(y.sizes(), out_dtype);
  const Affine affine = bn_affine(mean, invstd, gamma, beta);
  const float* scale = affine.scale.data();
  const float* shift = affine.shift.data();
  dispatch_activation(act, [&](auto act_tag) {
    constexpr int64_t ACT = decltype(act_tag)::value;
    dispatch_float_or_bf16(y.scalar_type(), "bn_act_forward", [&](auto in_tag) {
      using TI = decltype(in_tag);
      dispatch_float_or_bf16(out_dtype, "bn_act_forward", [&](auto out_tag) {
        using TO = decltype(out_tag);
        const TI* py = y.data_ptr<TI>();
        TO* pz = z.data_ptr<TO>();
        at::parallel_for(0, pixels, 256, [&](int64_t begin, int64_t end) {
          // Locals, not captures: the vector stores may alias anything in memory, so captured pointers
          // would be reloaded from the closure on every block.
          const TI* RESTRICT src = py;
          TO* RESTRICT dst = pz;
          const float* RESTRICT sc = scale;
          const float* RESTRICT sh = shift;
          const int64_t channels = C;
          for (int64_t p = begin; p < end; ++p) {
            for_channel_blocks(channels, [&](int64_t c0, auto block) {
              constexpr int64_t B = decltype(block)::value;
              const Vec<B> a = load<B>(src + p * channels + c0) * load<B>(sc + c0) + load<B>(sh + c0);
              store<B>(dst + p * channels + c0, activate<ACT, B>(a));
            });
          }
        });
      });
    });
  });
  return z;
}

// The backward's two per-channel reductions: sum_g = Σ g and sum_gxhat = Σ g·xhat over the batch, with
// g = dz · act'(a) and xhat = (y − mean) · invstd. They are dbeta and dgamma, and the two means that
// the input gradient needs.
struct BackwardSums {
  std::vector<double> g, gxhat;
};

template <int64_t ACT, typename TG, typename TY>
BackwardSums bn_act_backward_sums(const TG* pdz, const TY* py, int64_t N, int64_t HW, int64_t C, const Affine& affine,
                                  const float* mean, const float* invstd) {
  std::vector<double> per_image_g(N * C, 0.0), per_image_gy(N * C, 0.0);
  const float* scale = affine.scale.data();
  const float* shift = affine.shift.data();
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const TG* RESTRICT dz = pdz + n * HW * C;
      const TY* RESTRICT yy = py + n * HW * C;
      add_channel_sums(HW, C, &per_image_g[n * C], &per_image_gy[n * C],
                       [dz, yy, scale, shift, C](int64_t p, int64_t c0, auto block) {
                         constexpr int64_t B = decltype(block)::value;
                         const Vec<B> y = load<B>(yy + p * C + c0);
                         const Vec<B> g = load<B>(dz + p * C + c0) *
                                          activation_slope<ACT, B>(y * load<B>(scale + c0) + load<B>(shift + c0));
                         // Σ g·xhat = invstd · (Σ g·y − mean · Σ g), centred after the sum
                         return std::pair<Vec<B>, Vec<B>>{g, g * y};
                       });
    }
  });
  BackwardSums sums{sum_over_images(per_image_g, N, C), sum_over_images(per_image_gy, N, C)};
  for (int64_t c = 0; c < C; ++c) sums.gxhat[c] = (sums.gxhat[c] - mean[c] * sums.g[c]) * invstd[c];
  return sums;
}

// dy = gamma · invstd · (g − mean(g) − xhat · mean(g·xhat)), written dy = g·k1 + y·k2 + k3 per channel.
struct InputGradient {
  std::vector<float> k1, k2, k3;
};

InputGradient input_gradient_coefficients(const BackwardSums& sums, const float* mean, const float* invstd,
                                          const float* gamma, int64_t count) {
  const int64_t C = sums.g.size();
  InputGradient k{std::vector<float>(C), std::vector<float>(C), std::vector<float>(C)};
  for (int64_t c = 0; c < C; ++c) {
    const double r = invstd[c], mean_g = sums.g[c] / count, mean_gx = sums.gxhat[c] / count;
    const double a = gamma[c] * r;
    k.k1[c] = static_cast<float>(a);
    k.k2[c] = static_cast<float>(-a * mean_gx * r);
    k.k3[c] = static_cast<float>(-a * mean_g + a * mean_gx * r * mean[c]);
  }
  return k;
}

std::vector<at::Tensor> gamma_beta_gradients(const BackwardSums& sums) {
  const int64_t C = sums.g.size();
  auto dgamma = at::empty({C}, at::kFloat), dbeta = at::empty({C}, at::kFloat);
  for (int64_t c = 0; c < C; ++c) {
    dgamma.data_ptr<float>()[c] = static_cast<float>(sums.gxhat[c]);
    dbeta.data_ptr<float>()[c] = static_cast<float>(sums.g[c]);
  }
  return {dgamma, dbeta};
}

// One block of dy at pixel offset e: from dz and y, with the per-channel constants at c0.
// The five per-channel constants of dy as plain pointers, copied into each loop (see bn_act_forward).
struct InputGradientConstants {
  const float *scale, *shift, *k1, *k2, *k3;
  InputGradientConstants(const Affine& affine, const InputGradient& k)
      : scale(affine.scale.data()), shift(affine.shift.data()), k1(k.k1.data()), k2(k.k2.data()), k3(k.k3.data()) {}
};

template <int64_t ACT, int64_t B, typename TG, typename TY>
inline Vec<B> input_gradient_block(const TG* pdz, const TY* py, int64_t e, int64_t c0, const InputGradientConstants k) {
  const Vec<B> y = load<B>(py + e);
  const Vec<B> g = load<B>(pdz + e) * activation_slope<ACT, B>(y * load<B>(k.scale + c0) + load<B>(k.shift + c0));
  return g * load<B>(k.k1 + c0) + y * load<B>(k.k2 + c0) + load<B>(k.k3 + c0);
}

// Returns dy (dtype of y), dgamma, dbeta.
std::vector<at::Tensor> bn_act_backward(const at::Tensor& dz_in, const at::Tensor& y_in, const at::Tensor& mean,
                                        const at::Tensor& invstd, const at::Tensor& gamma, const at::Tensor& beta,
                                        int64_t act) {
  const auto y = nhwc(y_in);
  const auto dz = nhwc(dz_in);
  const int64_t N = y.size(0), C = y.size(1), HW = y.size(2) * y.size(3);
  const Affine affine = bn_affine(mean, invstd, gamma, beta);
  auto dy = empty_nhwc(y.sizes(), y.scalar_type());
  BackwardSums sums;
  dispatch_activation(act, [&](auto act_tag) {
    constexpr int64_t ACT = decltype(act_tag)::value;
    dispatch_float_or_bf16(dz.scalar_type(), "bn_act_backward", [&](auto g_tag) {
      using TG = decltype(g_tag);
      dispatch_float_or_bf16(y.scalar_type(), "bn_act_backward", [&](auto y_tag) {
        using TY = decltype(y_tag);
        const TG* pdz = dz.data_ptr<TG>();
        const TY* py = y.data_ptr<TY>();
        sums = bn_act_backward_sums<ACT>(pdz, py, N, HW, C, affine, mean.data_ptr<float>(), invstd.data_ptr<float>());
        const InputGradient k = input_gradient_coefficients(sums, mean.data_ptr<float>(), invstd.data_ptr<float>(),
                                                            gamma.data_ptr<float>(), N * HW);
        TY* pdy = dy.data_ptr<TY>();
        const InputGradientConstants constants(affine, k);
        at::parallel_for(0, N * HW, 256, [&](int64_t begin, int64_t end) {
          const TG* RESTRICT dz_ = pdz;  // locals: see bn_act_forward
          const TY* RESTRICT y_ = py;
          TY* RESTRICT dy_ = pdy;
          const InputGradientConstants kc = constants;
          const int64_t channels = C;
          for (int64_t p = begin; p < end; ++p) {
            for_channel_blocks(channels, [&](int64_t c0, auto block) {
              constexpr int64_t B = decltype(block)::value;
              store<B>(dy_ + p * channels + c0, input_gradient_block<ACT, B>(dz_, y_, p * channels + c0, c0, kc));
            });
          }
        });
      });
    });
  });
  auto gb = gamma_beta_gradients(sums);
  return {dy, gb[0], gb[1]};
}

// ------------------------------------------------------------------------------------------------
// Depthwise convolution → BatchNorm → activation
// ------------------------------------------------------------------------------------------------

struct DepthwiseGeometry {
  int64_t N, C, H, W, K, stride, pad, OH, OW;

  // Kernel rows i (columns j) whose tap lands inside the image for output row oh (column ow).
  int64_t first_tap(int64_t o) const { return std::max<int64_t>(0, pad - o * stride); }
  int64_t end_tap_row(int64_t oh) const { return std::min<int64_t>(K, H + pad - oh * stride); }
  int64_t end_tap_column(int64_t ow) const { return std::min<int64_t>(K, W + pad - ow * stride); }
  // Output columns whose tap column j lands inside the image.
  int64_t first_output_column(int64_t j) const { return std::max<int64_t>(0, (pad - j + stride - 1) / stride); }
  int64_t end_output_column(int64_t j) const { return std::min<int64_t>(OW, (W - 1 + pad - j) / stride + 1); }
};

DepthwiseGeometry geometry_of(const at::Tensor& x, const at::Tensor& weight, int64_t stride, int64_t pad) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4 && weight.size(1) == 1 && weight.size(0) == x.size(1) &&
                  weight.size(2) == weight.size(3),
              "depthwise kernels: expected x (N, C, H, W) and weight (C, 1, k, k)");
  DepthwiseGeometry g{x.size(0), x.size(1), x.size(2), x.size(3), weight.size(2), stride, pad, 0, 0};
  g.OH = (g.H + 2 * pad - g.K) / stride + 1;
  g.OW = (g.W + 2 * pad - g.K) / stride + 1;
  return g;
}

// Weights as [tap][channel], so that a block of channels reads them contiguously.
std::vector<float> taps_by_channel(const at::Tensor& weight) {
  const auto w = weight.contiguous().to(at::kFloat);
  const int64_t C = w.size(0), taps = w.size(2) * w.size(3);
  std::vector<float> out(taps * C);
  const float* pw = w.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < taps; ++t) out[t * C + c] = pw[c * taps + t];
  return out;
}

// Per-image buffers are channel-blocked (channels c0..c0+B-1 of every pixel stored together, as
// oneDNN's nChw16c): a block's loops then walk contiguous memory. In NHWC the same loops stride by C
// floats per pixel and touch a new page every pixel or two, and ran ~3x slower on TLB misses.
struct BlockedImage {
  int64_t pixels;  // per channel
  std::vector<float> data;
  float* block(int64_t c0) { return data.data() + c0 * pixels; }
  const float* block(int64_t c0) const { return data.data() + c0 * pixels; }
};

// One image of x (NHWC), converted to fp32 and zero-padded by `pad` on every side, channel-blocked.
// Every kernel tap then reads inside the buffer, so the tap loops need no bounds checks.
template <typename T>
void pad_image(const T* x, const DepthwiseGeometry& g, BlockedImage& padded) {
  const int64_t C = g.C, PW = g.W + 2 * g.pad;
  padded.pixels = (g.H + 2 * g.pad) * PW;
  padded.data.assign(padded.pixels * C, 0.f);
  for (int64_t h = 0; h < g.H; ++h) {
    for (int64_t w = 0; w < g.W; ++w) {
      const int64_t pixel = (h + g.pad) * PW + w + g.pad;
      for_channel_blocks(C, [&](int64_t c0, auto block) {
        constexpr int64_t B = decltype(block)::value;
        store<B>(padded.block(c0) + pixel * B, load<B>(x + (h * g.W + w) * C + c0));
      });
    }
  }
}

// The kernel size as a compile-time constant: a channel block's K² taps then live in registers.
template <typename F>
void dispatch_kernel_size(int64_t K, F&& body) {
  switch (K) {
    case 3: body(std::integral_constant<int64_t, 3>{}); break;
    case 5: body(std::integral_constant<int64_t, 5>{}); break;
    case 7: body(std::integral_constant<int64_t, 7>{}); break;
    default: TORCH_CHECK(false, "depthwise kernels: kernel size ", K, " (3, 5 or 7 supported)");
  }
}

// y = depthwise(x) in fp32, with per-channel batch statistics of y. Returns y, mean, var, invstd.
std::vector<at::Tensor> depthwise_forward(const at::Tensor& x_in, const at::Tensor& weight, int64_t stride,
                                          int64_t pad, double eps) {
  const auto x = nhwc(x_in);
  const auto g = geometry_of(x, weight, stride, pad);
  const int64_t C = g.C, PW = g.W + 2 * g.pad;
  const auto taps = taps_by_channel(weight);
  auto y = empty_nhwc({g.N, C, g.OH, g.OW}, at::kFloat);
  std::vector<double> sums(g.N * C, 0.0), squares(g.N * C, 0.0);
  dispatch_kernel_size(g.K, [&](auto k_tag) {
    constexpr int64_t K = decltype(k_tag)::value;
    dispatch_float_or_bf16(x.scalar_type(), "depthwise_forward", [&](auto tag) {
      using T = decltype(tag);
      const T* px = x.data_ptr<T>();
      float* py = y.data_ptr<float>();
      at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
        BlockedImage padded, image_y{g.OH * g.OW, std::vector<float>(g.OH * g.OW * C)};
        // Locals, not captures: the vector stores may alias anything, and captured values would be
        // reloaded on every tap.
        const int64_t OH = g.OH, OW = g.OW, stride = g.stride, row = PW;
        const float* RESTRICT tap_weights = taps.data();
        for (int64_t n = begin; n < end; ++n) {
          pad_image(px + n * g.H * g.W * C, g, padded);
          for_channel_blocks(C, [&](int64_t c0, auto block) {
            constexpr int64_t B = decltype(block)::value;
            Vec<B> w[K * K];
            UNROLL for (int64_t t = 0; t < K * K; ++t) w[t] = load<B>(&tap_weights[t * C + c0]);
            const float* RESTRICT in = padded.block(c0);
            float* RESTRICT out = image_y.block(c0);
            for (int64_t oh = 0; oh < OH; ++oh) {
              for (int64_t ow = 0; ow < OW; ++ow) {
                const float* corner = in + (oh * stride * row + ow * stride) * B;
                Vec<B> acc = {};
                UNROLL for (int64_t i = 0; i < K; ++i)
                  UNROLL for (int64_t j = 0; j < K; ++j) acc += load<B>(corner + (i * row + j) * B) * w[i * K + j];
                store<B>(out + (oh * OW + ow) * B, acc);
              }
            }
          });
          float* out = py + n * g.OH * g.OW * C;
          for (int64_t p = 0; p < g.OH * g.OW; ++p) {
            for_channel_blocks(C, [&](int64_t c0, auto block) {
              constexpr int64_t B = decltype(block)::value;
              store<B>(out + p * C + c0, load<B>(image_y.block(c0) + p * B));
            });
          }
          // The image's output is still in cache: its moments cost no extra trip to memory.
          add_channel_moments(out, g.OH * g.OW, C, &sums[n * C], &squares[n * C]);
        }
      });
    });
  });
  auto stats = finish_statistics(sums, squares, g.N, C, g.N * g.OH * g.OW, eps);
  return {y, stats[0], stats[1], stats[2]};
}

// One image's dy = d(BN + activation)/dy · dz, written channel-blocked into `dy`, whose border of
// `border` pixels (zeroed once by the caller) is left alone. Instantiated per activation and dz type
// only: the convolution's loops below do not depend on either.
template <int64_t ACT, typename TG>
void form_image_dy(const void* dz_tensor, const float* py, int64_t n, const DepthwiseGeometry& g,
                   const InputGradientConstants constants, int64_t border, BlockedImage& dy) {
  const TG* RESTRICT pdz = static_cast<const TG*>(dz_tensor);
  const int64_t C = g.C, OH = g.OH, OW = g.OW, DW = OW + 2 * border;
  for (int64_t oh = 0; oh < OH; ++oh) {
    for (int64_t ow = 0; ow < OW; ++ow) {
      const int64_t e = (n * OH * OW + oh * OW + ow) * C, q = (oh + border) * DW + ow + border;
      for_channel_blocks(C, [&](int64_t c0, auto block) {
        constexpr int64_t B = decltype(block)::value;
        store<B>(dy.block(c0) + q * B, input_gradient_block<ACT, B>(pdz, py, e + c0, c0, constants));
      });
    }
  }
}

// Per-thread buffers of the depthwise backward, reused image after image.
struct DepthwiseBackwardBuffers {
  BlockedImage padded_x, padded_dx, image_dx, dy;
};

// One image's weight gradient (into dw, [tap][channel]) and, when dx_image is not null, its input
// gradient, from its dy. Instantiated per kernel size and x type only.
//
// dx is gathered: each input pixel sums the taps of dy that it fed, in registers, and is stored
// once. (Scattering dy into dx costs K² read-modify-writes per output pixel, each waiting on the
// previous one's store, and ran at half the speed.) With stride 1, dx is dy, zero-padded by `pad`,
// correlated with the flipped kernel; with stride 2, the taps that reach an input pixel depend on
// its row and column parity. Other geometries scatter.
template <int64_t K, typename TX>
void depthwise_image_backward(const void* x_tensor, void* dx_tensor, int64_t n, const DepthwiseGeometry& g,
                              const float* RESTRICT weights_by_tap, bool gather, int64_t border,
                              DepthwiseBackwardBuffers& buffers, float* RESTRICT dw) {
  const int64_t C = g.C, OH = g.OH, OW = g.OW, H = g.H, W = g.W, stride = g.stride;
  const int64_t row = W + 2 * g.pad, DW = OW + 2 * border;
  const TX* x_image = static_cast<const TX*>(x_tensor) + n * H * W * C;
  TX* dx_image = dx_tensor ? static_cast<TX*>(dx_tensor) + n * H * W * C : nullptr;
  BlockedImage& padded = buffers.padded_x;
  pad_image(x_image, g, padded);
  if (dx_image && !gather) {
    buffers.padded_dx.pixels = padded.pixels;
    buffers.padded_dx.data.assign(padded.data.size(), 0.f);  // keeps its capacity: no page faults per image
  }
  for_channel_blocks(C, [&](int64_t c0, auto block) {
    constexpr int64_t B = decltype(block)::value;
    const float* RESTRICT d_block = buffers.dy.block(c0);
    const float* RESTRICT x_block = padded.block(c0);
    Vec<B> acc[K * K] = {};
    for (int64_t oh = 0; oh < OH; ++oh) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Vec<B> d = load<B>(d_block + ((oh + border) * DW + ow + border) * B);
        const float* corner = x_block + (oh * stride * row + ow * stride) * B;
        UNROLL for (int64_t i = 0; i < K; ++i)
          UNROLL for (int64_t j = 0; j < K; ++j) acc[i * K + j] += d * load<B>(corner + (i * row + j) * B);
      }
    }
    UNROLL for (int64_t t = 0; t < K * K; ++t) store<B>(dw + t * C + c0, acc[t]);
    if (!dx_image) return;
    Vec<B> w[K * K];
    UNROLL for (int64_t t = 0; t < K * K; ++t) w[t] = load<B>(&weights_by_tap[t * C + c0]);
    if (gather && stride == 1) {
      float* RESTRICT out = buffers.image_dx.block(c0);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t x_w = 0; x_w < W; ++x_w) {
          const float* corner = d_block + (h * DW + x_w) * B;
          Vec<B> sum = {};
          UNROLL for (int64_t i = 0; i < K; ++i)
            UNROLL for (int64_t j = 0; j < K; ++j) sum += load<B>(corner + (i * DW + j) * B) * w[K * K - 1 - (i * K + j)];
          store<B>(out + (h * W + x_w) * B, sum);
        }
      }
      return;
    }
    if (gather) {  // stride 2: input pixel (2a + PH, 2b + PV) gets tap (i, j) of dy pixel
                   // (a + (PH + PAD - i) / 2, b + (PV + PAD - j) / 2) when both are whole
      constexpr int64_t PAD = (K - 1) / 2;
      float* RESTRICT out = buffers.image_dx.block(c0);
      auto one_parity = [&](auto row_parity, auto column_parity) {
        constexpr int64_t PH = decltype(row_parity)::value, PV = decltype(column_parity)::value;
        for (int64_t h = PH, a = 0; h < H; h += 2, ++a) {
          for (int64_t x_w = PV, b = 0; x_w < W; x_w += 2, ++b) {
            const float* centre = d_block + ((a + border) * DW + b + border) * B;
            Vec<B> sum = {};
            UNROLL for (int64_t i = 0; i < K; ++i) {
              if ((PH + PAD - i) % 2 != 0) continue;
              UNROLL for (int64_t j = 0; j < K; ++j) {
                if ((PV + PAD - j) % 2 != 0) continue;
                sum += load<B>(centre + ((PH + PAD - i) / 2 * DW + (PV + PAD - j) / 2) * B) * w[i * K + j];
              }
            }
            store<B>(out + (h * W + x_w) * B, sum);
          }
        }
      };
      one_parity(std::integral_constant<int64_t, 0>{}, std::integral_constant<int64_t, 0>{});
      one_parity(std::integral_constant<int64_t, 0>{}, std::integral_constant<int64_t, 1>{});
      one_parity(std::integral_constant<int64_t, 1>{}, std::integral_constant<int64_t, 0>{});
      one_parity(std::integral_constant<int64_t, 1>{}, std::integral_constant<int64_t, 1>{});
      return;
    }
    float* RESTRICT dx_block = buffers.padded_dx.block(c0);
    for (int64_t oh = 0; oh < OH; ++oh) {
      for (int64_t ow = 0; ow < OW; ++ow) {
        const Vec<B> d = load<B>(d_block + (oh * OW + ow) * B);  // border is 0 when scattering
        float* corner = dx_block + (oh * stride * row + ow * stride) * B;
        UNROLL for (int64_t i = 0; i < K; ++i) {
          UNROLL for (int64_t j = 0; j < K; ++j) {
            float* at_tap = corner + (i * row + j) * B;
            store<B>(at_tap, load<B>(at_tap) + d * w[i * K + j]);
          }
        }
      }
    }
  });
  if (!dx_image) return;
  const BlockedImage& source = gather ? buffers.image_dx : buffers.padded_dx;
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      const int64_t pixel = gather ? h * W + w : (h + g.pad) * row + w + g.pad;
      for_channel_blocks(C, [&](int64_t c0, auto block) {
        constexpr int64_t B = decltype(block)::value;
        store<B>(dx_image + (h * W + w) * C + c0, load<B>(source.block(c0) + pixel * B));
      });
    }
  }
}

// Backward of z = act(BN(depthwise(x))) given dz: returns dx (dtype of x), dweight, dgamma, dbeta.
// One reduction pass over (dz, y) for BatchNorm's sums; then per image, dy is formed into a buffer
// the size of one image's output, the weight gradient of a channel block accumulates all K² taps in
// registers over the image, and dx is gathered from dy. dy never exists as a tensor.
std::vector<at::Tensor> depthwise_bn_act_backward(const at::Tensor& dz_in, const at::Tensor& x_in,
                                                  const at::Tensor& weight, const at::Tensor& y_in,
                                                  const at::Tensor& mean, const at::Tensor& invstd,
                                                  const at::Tensor& gamma, const at::Tensor& beta, int64_t act,
                                                  int64_t stride, int64_t pad, bool input_gradient) {
  const auto x = nhwc(x_in);
  const auto y = nhwc(y_in);
  const auto dz = nhwc(dz_in);
  TORCH_CHECK(y.scalar_type() == at::kFloat, "depthwise_bn_act_backward: y must be float32");
  const auto g = geometry_of(x, weight, stride, pad);
  const int64_t C = g.C, taps = g.K * g.K, OHW = g.OH * g.OW;
  const auto tap_weights = taps_by_channel(weight);
  const Affine affine = bn_affine(mean, invstd, gamma, beta);
  const float* py = y.data_ptr<float>();
  auto dx = input_gradient ? empty_nhwc(x.sizes(), x.scalar_type()) : at::Tensor();
  std::vector<float> per_image_dw(g.N * taps * C, 0.f);

  using FormDy = void (*)(const void*, const float*, int64_t, const DepthwiseGeometry&, const InputGradientConstants,
                          int64_t, BlockedImage&);
  using ImageBackward = void (*)(const void*, void*, int64_t, const DepthwiseGeometry&, const float*, bool, int64_t,
                                 DepthwiseBackwardBuffers&, float*);
  FormDy form_dy = nullptr;
  ImageBackward image_backward = nullptr;
  BackwardSums sums;
  dispatch_activation(act, [&](auto act_tag) {
    constexpr int64_t ACT = decltype(act_tag)::value;
    dispatch_float_or_bf16(dz.scalar_type(), "depthwise_bn_act_backward", [&](auto g_tag) {
      using TG = decltype(g_tag);
      sums = bn_act_backward_sums<ACT>(dz.data_ptr<TG>(), py, g.N, OHW, C, affine, mean.data_ptr<float>(),
                                       invstd.data_ptr<float>());
      form_dy = &form_image_dy<ACT, TG>;
    });
  });
  dispatch_kernel_size(g.K, [&](auto k_tag) {
    constexpr int64_t K = decltype(k_tag)::value;
    dispatch_float_or_bf16(x.scalar_type(), "depthwise_bn_act_backward", [&](auto x_tag) {
      image_backward = &depthwise_image_backward<K, decltype(x_tag)>;
    });
  });
  const InputGradient k = input_gradient_coefficients(sums, mean.data_ptr<float>(), invstd.data_ptr<float>(),
                                                      gamma.data_ptr<float>(), g.N * OHW);
  const InputGradientConstants constants(affine, k);
  const bool gather = (g.stride == 1 || g.stride == 2) && 2 * g.pad == g.K - 1;
  const int64_t border = gather ? g.pad : 0;
  const void* dz_data = dz.data_ptr();
  const void* x_data = x.data_ptr();
  void* dx_data = input_gradient ? dx.data_ptr() : nullptr;
  at::parallel_for(0, g.N, 1, [&](int64_t begin, int64_t end) {
    DepthwiseBackwardBuffers buffers;
    const int64_t dy_pixels = (g.OH + 2 * border) * (g.OW + 2 * border);
    buffers.dy = BlockedImage{dy_pixels, std::vector<float>(dy_pixels * C, 0.f)};  // its border stays 0
    if (input_gradient && gather) buffers.image_dx = BlockedImage{g.H * g.W, std::vector<float>(g.H * g.W * C)};
    for (int64_t n = begin; n < end; ++n) {
      form_dy(dz_data, py, n, g, constants, border, buffers.dy);
      image_backward(x_data, dx_data, n, g, tap_weights.data(), gather, border, buffers, &per_image_dw[n * taps * C]);
    }
  });
  // Sum the images' weight gradients in image order (contiguous rows), then transpose to (C, 1, k, k).
  std::vector<double> total(taps * C, 0.0);
  for (int64_t n = 0; n < g.N; ++n) {
    const float* image_dw = &per_image_dw[n * taps * C];
    for (int64_t e = 0; e < taps * C; ++e) total[e] += image_dw[e];
  }
  auto dweight = at::empty({C, 1, g.K, g.K}, at::kFloat);
  float* pdw = dweight.data_ptr<float>();
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t c = 0; c < C; ++c) pdw[c * taps + t] = static_cast<float>(total[t * C + c]);
  auto gb = gamma_beta_gradients(sums);
  return {input_gradient ? dx : at::Tensor(), dweight.to(weight.scalar_type()), gb[0], gb[1]};
}

// ------------------------------------------------------------------------------------------------
// Squeeze-and-excitation: out = x · s, with s (N, C) a gate computed from the spatial mean of x
// ------------------------------------------------------------------------------------------------

// Σ over pixels of dout · x per (image, channel): the gate's gradient. Returns (N, C) float32.
at::Tensor channel_dot(const at::Tensor& dout_in, const at::Tensor& x_in) {
  const auto dout = nhwc(dout_in);
  const auto x = nhwc(x_in);
  const int64_t N = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  auto out = at::zeros({N, C}, at::kFloat);
  dispatch_float_or_bf16(dout.scalar_type(), "channel_dot", [&](auto g_tag) {
    using TG = decltype(g_tag);
    dispatch_float_or_bf16(x.scalar_type(), "channel_dot", [&](auto x_tag) {
      using TX = decltype(x_tag);
      const TG* pg = dout.data_ptr<TG>();
      const TX* px = x.data_ptr<TX>();
      float* po = out.data_ptr<float>();
      at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
        std::vector<double> total(C);
        for (int64_t n = begin; n < end; ++n) {
          std::fill(total.begin(), total.end(), 0.0);
          for (int64_t p0 = 0; p0 < HW; p0 += 64) {
            const int64_t p1 = std::min(HW, p0 + 64);
            for_channel_blocks(C, [&](int64_t c0, auto block) {
              constexpr int64_t B = decltype(block)::value;
              Vec<B> acc = {};
              for (int64_t p = p0; p < p1; ++p) {
                const int64_t e = (n * HW + p) * C + c0;
                acc += load<B>(pg + e) * load<B>(px + e);
              }
              for (int64_t b = 0; b < B; ++b) total[c0 + b] += acc[b];
            });
          }
          for (int64_t c = 0; c < C; ++c) po[n * C + c] = static_cast<float>(total[c]);
        }
      });
    });
  });
  return out;
}

// dx = dout · scale[n, c] + shift[n, c] (scale and shift (N, C) float32), in the dtype of dout.
at::Tensor scale_shift_channels(const at::Tensor& dout_in, const at::Tensor& scale_in, const at::Tensor& shift_in) {
  const auto dout = nhwc(dout_in);
  const auto scale = scale_in.to(at::kFloat).contiguous();
  const auto shift = shift_in.to(at::kFloat).contiguous();
  const int64_t N = dout.size(0), C = dout.size(1), HW = dout.size(2) * dout.size(3);
  auto dx = empty_nhwc(dout.sizes(), dout.scalar_type());
  dispatch_float_or_bf16(dout.scalar_type(), "scale_shift_channels", [&](auto tag) {
    using T = decltype(tag);
    const T* pg = dout.data_ptr<T>();
    T* pdx = dx.data_ptr<T>();
    const float* ps = scale.data_ptr<float>();
    const float* pt = shift.data_ptr<float>();
    at::parallel_for(0, N * HW, 256, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / HW;
        for_channel_blocks(C, [&](int64_t c0, auto block) {
          constexpr int64_t B = decltype(block)::value;
          const Vec<B> v = load<B>(pg + p * C + c0) * load<B>(ps + n * C + c0) + load<B>(pt + n * C + c0);
          store<B>(pdx + p * C + c0, v);
        });
      }
    });
  });
  return dx;
}

// ------------------------------------------------------------------------------------------------
// The training batch's crop, flip, colour jitter and normalisation in one kernel
// ------------------------------------------------------------------------------------------------

// What mobilenets.augment's PyTorch path computes for crops, flips and colour jitter — uint8 / 255,
// grid_sample's bilinear rule (align_corners=False) with `fill` outside the image, brightness, contrast
// and saturation (each clamped to [0, 1]), then (x − mean) / std — written as an NHWC float batch.
// A few passes over each output image (built in R, G, B planes, then interleaved), which stays in
// cache, instead of ~25 passes over the batch.
// matrices: (N, 3, 3) output→input affine matrices in normalized coordinates, axis-aligned.
at::Tensor augment_crop_flip_jitter(const at::Tensor& images_in, const at::Tensor& matrices_in,
                                    const at::Tensor& brightness_in, const at::Tensor& contrast_in,
                                    const at::Tensor& saturation_in, bool jitter, const at::Tensor& mean_in,
                                    const at::Tensor& std_in, double fill) {
  const auto images = images_in.contiguous();
  TORCH_CHECK(images.scalar_type() == at::kByte && images.dim() == 4 && images.size(1) == 3,
              "augment_crop_flip_jitter: expected uint8 images (N, 3, H, W)");
  const auto matrices = matrices_in.to(at::kFloat).contiguous();
  const auto brightness = brightness_in.to(at::kFloat).contiguous();
  const auto contrast = contrast_in.to(at::kFloat).contiguous();
  const auto saturation = saturation_in.to(at::kFloat).contiguous();
  const auto mean = mean_in.to(at::kFloat).contiguous();
  const auto std_ = std_in.to(at::kFloat).contiguous();
  const int64_t N = images.size(0), H = images.size(2), W = images.size(3), HW = H * W;
  auto out = empty_nhwc({N, 3, H, W}, at::kFloat);
  const uint8_t* px = images.data_ptr<uint8_t>();
  const float* pm = matrices.data_ptr<float>();
  float* po = out.data_ptr<float>();
  const float f = static_cast<float>(fill);
  const float gray_weight[3] = {0.299f, 0.587f, 0.114f};
  // One axis of the bilinear rule: the two source indices (clamped into the image) and their weights,
  // zero for a neighbour outside, so that the sum over neighbours of w · (pixel − fill), plus fill, is
  // grid_sample's result with zero padding of x − fill, without a branch per pixel.
  struct Taps {
    std::vector<int64_t> low, high;
    std::vector<float> w_low, w_high;
  };
  auto taps_of = [](float scale, float offset, int64_t size) {
    Taps t{std::vector<int64_t>(size), std::vector<int64_t>(size), std::vector<float>(size), std::vector<float>(size)};
    for (int64_t i = 0; i < size; ++i) {
      const float centre = (static_cast<float>(i) * 2 + 1) / size - 1;
      const float position = ((scale * centre + offset + 1) * size - 1) / 2;
      const int64_t i0 = static_cast<int64_t>(std::floor(position));
      const float w = position - i0;
      const bool low_inside = i0 >= 0 && i0 < size, high_inside = i0 + 1 >= 0 && i0 + 1 < size;
      t.low[i] = std::min(std::max<int64_t>(i0, 0), size - 1);
      t.high[i] = std::min(std::max<int64_t>(i0 + 1, 0), size - 1);
      t.w_low[i] = low_inside ? 1 - w : 0.f;
      t.w_high[i] = high_inside ? w : 0.f;
    }
    return t;
  };
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    // The image is built in three planes (R, G, B), interleaved into NHWC at the end: every loop then
    // runs over contiguous floats and vectorizes, where per-pixel RGB triples kept it scalar.
    std::vector<float> blended(W), planes(3 * HW);
    std::vector<int32_t> low(W), high(W);
    for (int64_t n = begin; n < end; ++n) {
      const float* m = pm + n * 9;
      const uint8_t* image = px + n * 3 * HW;
      float* o = po + n * HW * 3;
      const float b = jitter ? brightness.data_ptr<float>()[n] : 1.f;
      const Taps columns = taps_of(m[0], m[2], W), rows = taps_of(m[4], m[5], H);
      for (int64_t x = 0; x < W; ++x) {  // 32-bit indices: the gather below vectorizes
        low[x] = static_cast<int32_t>(columns.low[x]);
        high[x] = static_cast<int32_t>(columns.high[x]);
      }
      const float* RESTRICT w_low = columns.w_low.data();
      const float* RESTRICT w_high = columns.w_high.data();
      double gray_sum = 0;
      for (int64_t y = 0; y < H; ++y) {
        const float wt = rows.w_low[y], wb = rows.w_high[y];
        float row_gray = 0;
        for (int64_t c = 0; c < 3; ++c) {
          // Separable: first the two source rows blended, then the columns.
          const uint8_t* top = image + c * HW + rows.low[y] * W;
          const uint8_t* bottom = image + c * HW + rows.high[y] * W;
          float* RESTRICT row = blended.data();
          for (int64_t x = 0; x < W; ++x) row[x] = wt * (top[x] * (1 / 255.f) - f) + wb * (bottom[x] * (1 / 255.f) - f);
          float* RESTRICT v = planes.data() + c * HW + y * W;
          const int32_t* RESTRICT l = low.data();
          const int32_t* RESTRICT h = high.data();
          for (int64_t x = 0; x < W; ++x) v[x] = w_low[x] * row[l[x]] + w_high[x] * row[h[x]] + f;
          if (jitter)
            for (int64_t x = 0; x < W; ++x) v[x] = std::min(std::max(v[x] * b, 0.f), 1.f);
          float channel_sum = 0;
          for (int64_t x = 0; x < W; ++x) channel_sum += v[x];
          row_gray += channel_sum * gray_weight[c];
        }
        gray_sum += row_gray;
      }
      const float mean_gray = static_cast<float>(gray_sum / HW);
      const float k = contrast.data_ptr<float>()[n], s = saturation.data_ptr<float>()[n];
      const float* mu = mean.data_ptr<float>();
      const float* sd = std_.data_ptr<float>();
      const float m0 = mu[0], m1 = mu[1], m2 = mu[2], i0 = 1 / sd[0], i1 = 1 / sd[1], i2 = 1 / sd[2];
      float* RESTRICT red = planes.data();
      float* RESTRICT green = red + HW;
      float* RESTRICT blue = green + HW;
      const float gw0 = gray_weight[0], gw1 = gray_weight[1], gw2 = gray_weight[2];
      auto unit = [](float v) { return std::min(std::max(v, 0.f), 1.f); };
      if (jitter) {
        for (int64_t p = 0; p < HW; ++p) {
          const float r = unit(mean_gray + k * (red[p] - mean_gray));
          const float g = unit(mean_gray + k * (green[p] - mean_gray));
          const float bl = unit(mean_gray + k * (blue[p] - mean_gray));
          const float gray = r * gw0 + g * gw1 + bl * gw2;
          red[p] = unit(gray + s * (r - gray));
          green[p] = unit(gray + s * (g - gray));
          blue[p] = unit(gray + s * (bl - gray));
        }
      }
      for (int64_t p = 0; p < HW; ++p) {
        red[p] = (unit(red[p]) - m0) * i0;
        green[p] = (unit(green[p]) - m1) * i1;
        blue[p] = (unit(blue[p]) - m2) * i2;
      }
      for (int64_t p = 0; p < HW; ++p) {
        o[p * 3] = red[p];
        o[p * 3 + 1] = green[p];
        o[p * 3 + 2] = blue[p];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(mobilenets_kernels, m) {
  m.def("batch_statistics(Tensor y, float eps) -> Tensor[]");
  m.def(
      "bn_act_forward(Tensor y, Tensor mean, Tensor invstd, Tensor gamma, Tensor beta, int act, ScalarType out_dtype)"
      " -> Tensor");
  m.def("bn_act_backward(Tensor dz, Tensor y, Tensor mean, Tensor invstd, Tensor gamma, Tensor beta, int act) -> Tensor[]");
  m.def("depthwise_forward(Tensor x, Tensor weight, int stride, int pad, float eps) -> Tensor[]");
  m.def(
      "depthwise_bn_act_backward(Tensor dz, Tensor x, Tensor weight, Tensor y, Tensor mean, Tensor invstd, "
      "Tensor gamma, Tensor beta, int act, int stride, int pad, bool input_gradient) -> Tensor[]");
  m.def("channel_dot(Tensor dout, Tensor x) -> Tensor");
  m.def("scale_shift_channels(Tensor dout, Tensor scale, Tensor shift) -> Tensor");
  m.def(
      "augment_crop_flip_jitter(Tensor images, Tensor matrices, Tensor brightness, Tensor contrast, "
      "Tensor saturation, bool jitter, Tensor mean, Tensor std, float fill) -> Tensor");
}

TORCH_LIBRARY_IMPL(mobilenets_kernels, CPU, m) {
  m.impl("batch_statistics", &batch_statistics);
  m.impl("bn_act_forward", &bn_act_forward);
  m.impl("bn_act_backward", &bn_act_backward);
  m.impl("depthwise_forward", &depthwise_forward);
  m.impl("depthwise_bn_act_backward", &depthwise_bn_act_backward);
  m.impl("channel_dot", &channel_dot);
  m.impl("scale_shift_channels", &scale_shift_channels);
  m.impl("augment_crop_flip_jitter", &augment_crop_flip_jitter);
}
