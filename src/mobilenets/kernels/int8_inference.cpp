// int8 inference of a whole MobileNet, one image at a time, on the CPU.
//
// Why: ONNX Runtime runs an int8 MobileNetV3 layer by layer over the whole batch, so every uint8
// activation tensor of a 32-image batch (up to 6 MB) leaves the caches between layers, and its int8
// stem, squeeze-and-excitation multiplies and layout transposes cost more than the int8 1×1
// convolutions save (BENCHMARKS.md, issue 7): int8 V3-Small is no faster than its fp32 model there.
// Here each thread runs the whole network on one image at a time, so an image's activations (at most
// a few hundred KB of uint8 at 224 px) stay in the core's L2 cache from the stem to the pooled
// features, and each layer's epilogue (bias, activation, residual add, requantization, pooling) is
// fused into the pass that produces it.
//
// The program is a list of ops built in Python (mobilenets/int8_engine.py) from a BN-folded model:
//   stem:      k×k convolution of the float image (NCHW), fp32 arithmetic, uint8 NHWC output;
//   pointwise: 1×1 convolution, uint8 activations × int8 weights (per output channel) summed in
//              int32 (AVX-512 VNNI `vpdpbusd` where the CPU has it), then float epilogue: scale, bias,
//              optional residual, activation, then requantized to uint8 or averaged into the features;
//   depthwise: k×k depthwise convolution of uint8 × int8, summed exactly in fp32 (integer products,
//              sums < 2^24), same epilogue;
//   squeeze-and-excitation: mean of the uint8 tensor, the two small FC layers in fp32, and the gate
//              applied in place with a requantization to the gated tensor's scale.
// Quantization is affine uint8 for activations (scale, zero point), symmetric int8 for weights;
// rounding is to nearest even, like ONNX Runtime's QuantizeLinear.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__x86_64__) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define MOBILENETS_VNNI 1
#include <immintrin.h>
#else
#define MOBILENETS_VNNI 0
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <optional>
#include <thread>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

#define RESTRICT __restrict__

namespace {

enum OpKind : int64_t { kStem = 0, kPointwise = 1, kDepthwise = 2, kSqueezeExcite = 3 };
enum Activation : int64_t { kIdentity = 0, kReLU = 1, kReLU6 = 2, kHardswish = 3 };

// Integer fields of one op (a row of the program's int64 table).
struct OpInts {
  int64_t kind, in_channels, out_channels, kernel, stride, activation, residual, pool, hidden;
};
constexpr int64_t kIntFields = 9;
// Float fields: quantization of the input, output and residual tensors.
struct OpFloats {
  float in_scale, in_zero, out_scale, out_zero, res_scale, res_zero;
};
constexpr int64_t kFloatFields = 6;

inline int64_t round_up16(int64_t c) { return (c + 15) / 16 * 16; }

inline float activate_scalar(float v, int64_t act) {
  switch (act) {
    case kReLU: return std::max(v, 0.0f);
    case kReLU6: return std::min(std::max(v, 0.0f), 6.0f);
    case kHardswish: return v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f);
    default: return v;
  }
}

inline uint8_t quantize_scalar(float v, float inv_scale, float zero) {
  float q = std::nearbyint(v * inv_scale) + zero;
  return static_cast<uint8_t>(std::min(std::max(q, 0.0f), 255.0f));
}

// One image's tensor: H×W×C uint8, NHWC, rows of C bytes.
struct Image {
  uint8_t* data;
  int64_t height, width, channels;
};

#if MOBILENETS_VNNI
inline __m512 activate(__m512 v, int64_t act) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 six = _mm512_set1_ps(6.0f);
  switch (act) {
    case kReLU: return _mm512_max_ps(v, zero);
    case kReLU6: return _mm512_min_ps(_mm512_max_ps(v, zero), six);
    case kHardswish: {
      __m512 gate = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, _mm512_set1_ps(3.0f)), zero), six);
      return _mm512_mul_ps(_mm512_mul_ps(v, gate), _mm512_set1_ps(1.0f / 6.0f));
    }
    default: return v;
  }
}

// Round to nearest even (the MXCSR default), add the zero point, saturate to 0..255, store `mask` lanes.
// Returns the stored values (lanes outside `mask` are zero), for the channel sums of SE's pooling.
inline __m512i store_quantized(uint8_t* out, __m512 v, __m512 inv_scale, __m512 zero, __mmask16 mask) {
  // v·(1/s) + z rounds like round(v·(1/s)) + z: z is an integer (up to float rounding of the sum).
  const __m512i i = _mm512_maskz_max_epi32(mask, _mm512_cvtps_epi32(_mm512_fmadd_ps(v, inv_scale, zero)), _mm512_setzero_si512());
  _mm512_mask_cvtusepi32_storeu_epi8(out, mask, i);
  return _mm512_min_epi32(i, _mm512_set1_epi32(255));
}

inline __m512 load_u8_as_float(const uint8_t* p, __mmask16 mask) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mask, p)));
}

inline __mmask16 lane_mask(int64_t lanes) {
  return lanes >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << lanes) - 1u);
}
#endif

// ------------------------------------------------------------------------------------------------
// Pointwise (1×1) convolution: uint8 [P][K] × int8 weights → int32, then the fused epilogue.
// Weights are packed per block of 16 output channels as [K/4][16 lanes][4 bytes]: the layout
// `vpdpbusd` multiplies against a broadcast of 4 consecutive input bytes of one pixel.
// ------------------------------------------------------------------------------------------------

struct PointwiseArgs {
  const uint8_t* x;         // [P][K] (rows may be read past P: buffers carry slack rows)
  int64_t pixels, in_channels, out_channels;
  const int8_t* weights;    // packed, [ceil(N/16)][K/4][16][4]
  const int32_t* zero_correction;  // [Npad]: in_zero · Σ_k w[o][k]
  const float* multiplier;  // [Npad]: in_scale · w_scale[o]
  const float* bias;        // [Npad]
  const uint8_t* residual;  // [P][N] or null
  float res_scale, res_zero;
  int64_t activation;
  uint8_t* out;             // [P][N] (quantized) or null when pooling
  float out_inv_scale, out_zero;
  float* pooled;            // [N] running sums of the activated outputs, or null
  float* out_float;         // [P][N] the activated outputs in float (the classifier's logits), or null
};

#if MOBILENETS_VNNI
// R pixels × J blocks of 16 output channels per tile: R·J int32 accumulators in registers.
template <int R, int J>
void pointwise_tile(const PointwiseArgs& a, int64_t p0, int64_t block0) {
  const int64_t K = a.in_channels, N = a.out_channels, groups = K / 4;
  const int64_t block_stride = groups * 64;
  const uint8_t* RESTRICT x = a.x + p0 * K;
  const int8_t* RESTRICT w = a.weights + block0 * block_stride;
  __m512i acc[R][J];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i wv[J];
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) wv[j] = _mm512_loadu_si512(w + j * block_stride + g * 64);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      int32_t four;
      std::memcpy(&four, x + r * K + 4 * g, 4);
      const __m512i xv = _mm512_set1_epi32(four);
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_dpbusd_epi32(acc[r][j], xv, wv[j]);
    }
  }
  const int64_t rows = std::min<int64_t>(R, a.pixels - p0);
  const __m512 inv_scale = _mm512_set1_ps(a.out_inv_scale), out_zero = _mm512_set1_ps(a.out_zero);
  const __m512 res_scale = _mm512_set1_ps(a.res_scale), res_offset = _mm512_set1_ps(-a.res_zero * a.res_scale);
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j) {
    const int64_t c0 = (block0 + j) * 16;
    const __mmask16 mask = lane_mask(N - c0);
    const __m512i correction = _mm512_loadu_si512(a.zero_correction + c0);
    const __m512 mul = _mm512_loadu_ps(a.multiplier + c0), bias = _mm512_loadu_ps(a.bias + c0);
    __m512 pooled = _mm512_setzero_ps();
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      if (r >= rows) continue;
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][j], correction)), mul, bias);
      const int64_t p = p0 + r;
      if (a.residual) v = _mm512_add_ps(v, _mm512_fmadd_ps(load_u8_as_float(a.residual + p * N + c0, mask), res_scale, res_offset));
      v = activate(v, a.activation);
      if (a.pooled) pooled = _mm512_add_ps(pooled, v);
      else if (a.out_float) _mm512_mask_storeu_ps(a.out_float + p * N + c0, mask, v);
      else store_quantized(a.out + p * N + c0, v, inv_scale, out_zero, mask);
    }
    if (a.pooled) _mm512_storeu_ps(a.pooled + c0, _mm512_add_ps(_mm512_loadu_ps(a.pooled + c0), pooled));
  }
}

template <int R, int J>
void pointwise_blocks(const PointwiseArgs& a, int64_t block0) {
  for (int64_t p0 = 0; p0 < a.pixels; p0 += R) pointwise_tile<R, J>(a, p0, block0);
}
#endif

void pointwise(const PointwiseArgs& a) {
  const int64_t blocks = (a.out_channels + 15) / 16;
#if MOBILENETS_VNNI
  // Widest tiles first: 4 blocks × 6 pixels, then the remaining 1–3 blocks with more pixels per tile.
  int64_t block = 0;
  for (; block + 4 <= blocks; block += 4) pointwise_blocks<6, 4>(a, block);
  switch (blocks - block) {
    case 3: pointwise_blocks<8, 3>(a, block); break;
    case 2: pointwise_blocks<12, 2>(a, block); break;
    case 1: pointwise_blocks<16, 1>(a, block); break;
    default: break;
  }
#else
  const int64_t K = a.in_channels, N = a.out_channels, groups = K / 4;
  for (int64_t p = 0; p < a.pixels; ++p) {
    for (int64_t o = 0; o < N; ++o) {
      const int8_t* w = a.weights + (o / 16) * groups * 64 + (o % 16) * 4;
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int32_t(a.x[p * K + k]) * int32_t(w[(k / 4) * 64 + k % 4]);
      float v = float(acc - a.zero_correction[o]) * a.multiplier[o] + a.bias[o];
      if (a.residual) v += (float(a.residual[p * N + o]) - a.res_zero) * a.res_scale;
      v = activate_scalar(v, a.activation);
      if (a.pooled) a.pooled[o] += v;
      else if (a.out_float) a.out_float[p * N + o] = v;
      else a.out[p * N + o] = quantize_scalar(v, a.out_inv_scale, a.out_zero);
    }
  }
  (void)blocks;
#endif
}

// ------------------------------------------------------------------------------------------------
// Depthwise k×k convolution on uint8 NHWC: products of integers summed exactly in fp32.
// ------------------------------------------------------------------------------------------------

struct DepthwiseArgs {
  Image in;
  Image out;
  int64_t stride, padding;
  const float* weights;          // [k·k][Cpad]: the int8 weights as floats
  const float* zero_correction;  // [Cpad]: in_zero · Σ_taps w[c] (the portable path's)
  const float* multiplier;       // [Cpad]
  const float* bias;             // [Cpad]
  float in_zero;
  int64_t activation;
  float out_inv_scale, out_zero;
  int32_t* channel_sums;         // [Cpad]: Σ over pixels of the uint8 outputs (for SE), or null
  const void* int8_weights;      // [C/16][k][ceil(k/4)][16][4]: the int8 weights, k columns in 4-byte groups
  const int32_t* int_correction; // [Cpad]: in_zero · Σ_taps w[c]
};

#if MOBILENETS_VNNI
template <int ACT>
inline __m512 activate_as(__m512 v) {
  const __m512 zero = _mm512_setzero_ps(), six = _mm512_set1_ps(6.0f);
  if constexpr (ACT == kReLU) return _mm512_max_ps(v, zero);
  if constexpr (ACT == kReLU6) return _mm512_min_ps(_mm512_max_ps(v, zero), six);
  if constexpr (ACT == kHardswish) {
    const __m512 gate = _mm512_min_ps(_mm512_max_ps(_mm512_add_ps(v, _mm512_set1_ps(3.0f)), zero), six);
    return _mm512_mul_ps(_mm512_mul_ps(v, gate), _mm512_set1_ps(1.0f / 6.0f));
  }
  return v;
}

// The input, as floats minus its zero point, in a zero-bordered buffer laid out per block of 16
// channels, [C/16][H+2p][W+2p+slack][16]: every tap is then one FMA from memory at a compile-time
// offset from its row, with no bounds checks, masks or zero-point correction. (Converting each input
// once, not once per tap: each of a 5×5's 25 taps would pay a widening load and a conversion.)
template <int K, int S, int ACT>
__attribute__((noinline)) void depthwise_padded(const DepthwiseArgs& a, std::vector<float>& storage) {
  const int64_t C = a.in.channels, H = a.in.height, W = a.in.width, pad = a.padding;
  const int64_t Ho = a.out.height, Wo = a.out.width, Cpad = round_up16(C);
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad + 4 * S, plane = Hp * Wp * 16;
  if (int64_t(storage.size()) < Cpad * Hp * Wp) storage.resize(Cpad * Hp * Wp);
  const __m512 zero = _mm512_set1_ps(a.in_zero), inv_scale = _mm512_set1_ps(a.out_inv_scale);
  const __m512 out_zero = _mm512_set1_ps(a.out_zero);
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const __mmask16 mask = lane_mask(C - c0);
    float* RESTRICT padded = storage.data() + (c0 / 16) * plane;
    std::memset(padded, 0, pad * Wp * 16 * sizeof(float));
    std::memset(padded + (pad + H) * Wp * 16, 0, (Hp - pad - H) * Wp * 16 * sizeof(float));
    for (int64_t y = 0; y < H; ++y) {
      float* RESTRICT row = padded + (y + pad) * Wp * 16;
      std::memset(row, 0, pad * 16 * sizeof(float));
      std::memset(row + (pad + W) * 16, 0, (Wp - pad - W) * 16 * sizeof(float));
      const uint8_t* RESTRICT source = a.in.data + y * W * C + c0;
      for (int64_t x = 0; x < W; ++x)
        _mm512_storeu_ps(row + (x + pad) * 16, _mm512_maskz_sub_ps(mask, load_u8_as_float(source + x * C, mask), zero));
    }
    __m512 w[K * K];
    for (int t = 0; t < K * K; ++t) w[t] = _mm512_loadu_ps(a.weights + t * Cpad + c0);
    const __m512 mul = _mm512_loadu_ps(a.multiplier + c0), bias = _mm512_loadu_ps(a.bias + c0);
    __m512i sums = _mm512_setzero_si512();
    for (int64_t oy = 0; oy < Ho; ++oy) {
      const float* RESTRICT top = padded + oy * S * Wp * 16;
      uint8_t* RESTRICT out_row = a.out.data + oy * Wo * C + c0;
      for (int64_t ox = 0; ox < Wo; ox += 4) {
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
#pragma GCC unroll 7
        for (int ky = 0; ky < K; ++ky) {
          const float* RESTRICT at = top + ky * Wp * 16 + ox * S * 16;
#pragma GCC unroll 7
          for (int kx = 0; kx < K; ++kx)
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u)
              acc[u] = _mm512_fmadd_ps(_mm512_loadu_ps(at + (u * S + kx) * 16), w[ky * K + kx], acc[u]);
        }
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
          if (ox + u >= Wo) break;
          const __m512 v = activate_as<ACT>(_mm512_fmadd_ps(acc[u], mul, bias));
          sums = _mm512_add_epi32(sums, store_quantized(out_row + (ox + u) * C, v, inv_scale, out_zero, mask));
        }
      }
    }
    if (a.channel_sums) _mm512_storeu_si512(a.channel_sums + c0, sums);
  }
}

#if defined(__AVX512VBMI__)
// Depthwise in int8 with `vpdpbusd`, 4 taps of a kernel row per instruction. The input is rewritten
// per block of 16 channels so that each 64-byte vector holds, for each channel, the 4 bytes of 4
// consecutive columns: [C/16][H+2p][W+2p+slack][16 channels][4 columns]. A kernel row of width K is
// then ceil(K/4) `vpdpbusd` per output vector (2 for a 5×5 row, 1 for a 3×3) instead of K FMAs.
// The border holds the zero point, so the zero-point correction (in_zero · Σw) is the same at every
// pixel and the integer sums are exact.
template <int K, int S, int ACT>
__attribute__((noinline)) void depthwise_int8(const DepthwiseArgs& a, std::vector<uint8_t>& storage) {
  constexpr int G = (K + 3) / 4;  // dwords per kernel row
  const int64_t C = a.in.channels, H = a.in.height, W = a.in.width, pad = a.padding;
  const int64_t Ho = a.out.height, Wo = a.out.width;
  // Only the K input rows the current output row reads are kept, in a ring (row y in slot y mod K):
  // a whole rewritten plane of a 56×56 layer would not fit in L2.
  const int64_t Wq = W + 2 * pad + 4 * S, plane = K * Wq * 64;
  const int64_t row_bytes = (Wq + 4) * 16;
  if (int64_t(storage.size()) < plane + row_bytes) storage.resize(plane + row_bytes);
  uint8_t* RESTRICT quads = storage.data();
  uint8_t* RESTRICT row = storage.data() + plane;  // one padded input row of this channel block
  const uint8_t zero_point = static_cast<uint8_t>(a.in_zero);
  // Byte 4c + j of the output = byte 16j + c of the input (column j, channel c).
  alignas(64) uint8_t order[64];
  for (int c = 0; c < 16; ++c)
    for (int j = 0; j < 4; ++j) order[4 * c + j] = static_cast<uint8_t>(16 * j + c);
  const __m512i interleave = _mm512_load_si512(order);
  const __m512 inv_scale = _mm512_set1_ps(a.out_inv_scale), out_zero = _mm512_set1_ps(a.out_zero);
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const __mmask16 mask = lane_mask(C - c0);
    const __m128i zeros = _mm_set1_epi8(static_cast<char>(zero_point));
    auto rewrite_row = [&](int64_t y) {  // padded row y (image row y - pad) into its ring slot
      const int64_t iy = y - pad;
      uint8_t* RESTRICT target = quads + (y % K) * Wq * 64;
      if (iy < 0 || iy >= H) {
        std::memset(target, zero_point, Wq * 64);
        return;
      }
      std::memset(row, zero_point, row_bytes);
      const uint8_t* RESTRICT source = a.in.data + iy * W * C + c0;
      for (int64_t x = 0; x < W; ++x)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(row + (x + pad) * 16), _mm_mask_loadu_epi8(zeros, mask, source + x * C));
      for (int64_t x = 0; x < Wq; ++x)
        _mm512_storeu_si512(target + x * 64, _mm512_permutexvar_epi8(interleave, _mm512_loadu_si512(row + x * 16)));
    };
    int64_t rewritten = 0;  // padded rows [0, rewritten) have been through the ring
    __m512i w[K * G];
    for (int t = 0; t < K * G; ++t) w[t] = _mm512_loadu_si512(static_cast<const int8_t*>(a.int8_weights) + (c0 / 16 * K * G + t) * 64);
    const __m512i correction = _mm512_loadu_si512(a.int_correction + c0);
    const __m512 mul = _mm512_loadu_ps(a.multiplier + c0), bias = _mm512_loadu_ps(a.bias + c0);
    __m512i sums = _mm512_setzero_si512();
    for (int64_t oy = 0; oy < Ho; ++oy) {
      while (rewritten < oy * S + K) rewrite_row(rewritten++);
      const uint8_t* rows[K];
      for (int ky = 0; ky < K; ++ky) rows[ky] = quads + ((oy * S + ky) % K) * Wq * 64;
      uint8_t* RESTRICT out_row = a.out.data + oy * Wo * C + c0;
      for (int64_t ox = 0; ox < Wo; ox += 4) {
        __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 7
        for (int ky = 0; ky < K; ++ky) {
          const uint8_t* RESTRICT at = rows[ky] + ox * S * 64;
#pragma GCC unroll 2
          for (int g = 0; g < G; ++g)
#pragma GCC unroll 4
            for (int u = 0; u < 4; ++u)
              acc[u] = _mm512_dpbusd_epi32(acc[u], _mm512_loadu_si512(at + (u * S + 4 * g) * 64), w[ky * G + g]);
        }
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
          if (ox + u >= Wo) break;
          const __m512 v = activate_as<ACT>(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[u], correction)), mul, bias));
          sums = _mm512_add_epi32(sums, store_quantized(out_row + (ox + u) * C, v, inv_scale, out_zero, mask));
        }
      }
    }
    if (a.channel_sums) _mm512_storeu_si512(a.channel_sums + c0, sums);
  }
}
#endif

template <int K, int S>
void depthwise_padded_for(const DepthwiseArgs& a, std::vector<float>& storage, std::vector<uint8_t>& bytes) {
#if defined(__AVX512VBMI__)
  (void)storage;
  switch (a.activation) {
    case kReLU: return depthwise_int8<K, S, kReLU>(a, bytes);
    case kReLU6: return depthwise_int8<K, S, kReLU6>(a, bytes);
    case kHardswish: return depthwise_int8<K, S, kHardswish>(a, bytes);
    default: return depthwise_int8<K, S, kIdentity>(a, bytes);
  }
#endif
  (void)bytes;
  switch (a.activation) {
    case kReLU: return depthwise_padded<K, S, kReLU>(a, storage);
    case kReLU6: return depthwise_padded<K, S, kReLU6>(a, storage);
    case kHardswish: return depthwise_padded<K, S, kHardswish>(a, storage);
    default: return depthwise_padded<K, S, kIdentity>(a, storage);
  }
}
#endif

template <int K>
void depthwise(const DepthwiseArgs& a, std::vector<float>& storage, std::vector<uint8_t>& bytes) {
  const int64_t C = a.in.channels, H = a.in.height, W = a.in.width, S = a.stride, pad = a.padding;
  const int64_t Ho = a.out.height, Wo = a.out.width, Cpad = round_up16(C);
#if MOBILENETS_VNNI
  (void)H, (void)W, (void)Ho, (void)Wo, (void)Cpad, (void)pad;
  if (S == 1) return depthwise_padded_for<K, 1>(a, storage, bytes);
  return depthwise_padded_for<K, 2>(a, storage, bytes);
#else
  (void)storage, (void)bytes;
  if (a.channel_sums) std::fill(a.channel_sums, a.channel_sums + Cpad, 0);
  for (int64_t oy = 0; oy < Ho; ++oy)
    for (int64_t ox = 0; ox < Wo; ++ox)
      for (int64_t c = 0; c < C; ++c) {
        float acc = 0.0f, missing = 0.0f;
        for (int ky = 0; ky < K; ++ky)
          for (int kx = 0; kx < K; ++kx) {
            const int64_t iy = oy * S - pad + ky, ix = ox * S - pad + kx;
            const float w = a.weights[(ky * K + kx) * Cpad + c];
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) missing += w;
            else acc += float(a.in.data[(iy * W + ix) * C + c]) * w;
          }
        acc += missing * a.in_zero;
        float v = (acc - a.zero_correction[c]) * a.multiplier[c] + a.bias[c];
        const uint8_t q = quantize_scalar(activate_scalar(v, a.activation), a.out_inv_scale, a.out_zero);
        a.out.data[(oy * Wo + ox) * C + c] = q;
        if (a.channel_sums) a.channel_sums[c] += q;
      }
#endif
}

// ------------------------------------------------------------------------------------------------
// Stem: k×k convolution of the image (up to 4 channels, NCHW float), quantized to uint8 on the way in.
// ------------------------------------------------------------------------------------------------

struct StemArgs {
  const float* image;            // [Cin][H][W], normalized
  int64_t in_channels, height, width, kernel, stride, padding;
  float in_inv_scale, in_zero;   // the image's quantization
  Image out;
  const int8_t* weights;         // [Cout/16][k·k][16 lanes][4 channels]
  const int32_t* zero_correction;// [Cpad]: in_zero · Σ w[o]
  const float* multiplier;       // [Cpad]
  const float* bias;             // [Cpad]
  int64_t activation;
  float out_inv_scale, out_zero;
};

// The image as uint8 pixels of 4 bytes (the channels, then the zero point as filler) in a border of
// zero-point pixels, [H+2p][W+2p+slack][4]: each tap of every output pixel is then one 4-byte
// broadcast and one `vpdpbusd` (9 per pixel for a 3×3, instead of 27 FMAs).
void quantize_image(const StemArgs& a, std::vector<uint8_t>& storage, int64_t& row_pixels) {
  const int64_t Cin = a.in_channels, H = a.height, W = a.width, pad = a.padding;
  const int64_t Hp = H + 2 * pad, Wp = W + 2 * pad + 4 * a.stride;
  row_pixels = Wp;
  if (int64_t(storage.size()) < Hp * Wp * 4) storage.resize(Hp * Wp * 4);
  const uint8_t zero = static_cast<uint8_t>(a.in_zero);
  std::memset(storage.data(), zero, Hp * Wp * 4);
  uint32_t* RESTRICT pixels = reinterpret_cast<uint32_t*>(storage.data());
  for (int64_t y = 0; y < H; ++y) {
    uint32_t* RESTRICT row = pixels + (y + pad) * Wp + pad;
    int64_t x = 0;
#if MOBILENETS_VNNI
    const __m512 inv = _mm512_set1_ps(a.in_inv_scale), z = _mm512_set1_ps(a.in_zero);
    const __m512i low = _mm512_setzero_si512(), high = _mm512_set1_epi32(255);
    for (; x + 16 <= W; x += 16) {
      __m512i packed = _mm512_set1_epi32(static_cast<int32_t>(uint32_t(zero) * 0x01010101u));
      for (int64_t ci = 0; ci < Cin; ++ci) {
        const __m512 v = _mm512_loadu_ps(a.image + (ci * H + y) * W + x);
        __m512i q = _mm512_cvtps_epi32(_mm512_fmadd_ps(v, inv, z));
        q = _mm512_min_epi32(_mm512_max_epi32(q, low), high);
        const __m512i keep = _mm512_set1_epi32(static_cast<int32_t>(~(0xFFu << (8 * ci))));
        packed = _mm512_or_si512(_mm512_and_si512(packed, keep), _mm512_slli_epi32(q, static_cast<unsigned>(8 * ci)));
      }
      _mm512_storeu_si512(row + x, packed);
    }
#endif
    for (; x < W; ++x) {
      uint8_t* bytes = reinterpret_cast<uint8_t*>(row + x);
      for (int64_t ci = 0; ci < Cin; ++ci) bytes[ci] = quantize_scalar(a.image[(ci * H + y) * W + x], a.in_inv_scale, a.in_zero);
    }
  }
}

#if MOBILENETS_VNNI
template <int K, int S, int ACT>
__attribute__((noinline)) void stem_int8(const StemArgs& a, const uint32_t* pixels, int64_t Wp) {
  const int64_t Ho = a.out.height, Wo = a.out.width, C = a.out.channels;
  const __m512 inv_scale = _mm512_set1_ps(a.out_inv_scale), out_zero = _mm512_set1_ps(a.out_zero);
  for (int64_t c0 = 0; c0 < C; c0 += 16) {
    const __mmask16 mask = lane_mask(C - c0);
    __m512i w[K * K];
    for (int t = 0; t < K * K; ++t) w[t] = _mm512_loadu_si512(a.weights + ((c0 / 16) * K * K + t) * 64);
    const __m512i correction = _mm512_loadu_si512(a.zero_correction + c0);
    const __m512 mul = _mm512_loadu_ps(a.multiplier + c0), bias = _mm512_loadu_ps(a.bias + c0);
    for (int64_t oy = 0; oy < Ho; ++oy) {
      const uint32_t* RESTRICT top = pixels + oy * S * Wp;
      uint8_t* RESTRICT out_row = a.out.data + oy * Wo * C + c0;
      for (int64_t ox = 0; ox < Wo; ox += 4) {
        __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 49
        for (int t = 0; t < K * K; ++t) {
          const uint32_t* RESTRICT at = top + (t / K) * Wp + ox * S + t % K;
#pragma GCC unroll 4
          for (int u = 0; u < 4; ++u)
            acc[u] = _mm512_dpbusd_epi32(acc[u], _mm512_set1_epi32(static_cast<int32_t>(at[u * S])), w[t]);
        }
#pragma GCC unroll 4
        for (int u = 0; u < 4; ++u) {
          if (ox + u >= Wo) break;
          const __m512 v = activate_as<ACT>(_mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[u], correction)), mul, bias));
          store_quantized(out_row + (ox + u) * C, v, inv_scale, out_zero, mask);
        }
      }
    }
  }
}

template <int K, int S>
void stem_int8_for(const StemArgs& a, const uint32_t* pixels, int64_t Wp) {
  switch (a.activation) {
    case kReLU: return stem_int8<K, S, kReLU>(a, pixels, Wp);
    case kReLU6: return stem_int8<K, S, kReLU6>(a, pixels, Wp);
    case kHardswish: return stem_int8<K, S, kHardswish>(a, pixels, Wp);
    default: return stem_int8<K, S, kIdentity>(a, pixels, Wp);
  }
}
#endif

void stem(const StemArgs& a, std::vector<uint8_t>& storage) {
  int64_t Wp = 0;
  quantize_image(a, storage, Wp);
  const uint32_t* pixels = reinterpret_cast<const uint32_t*>(storage.data());
  const int64_t K = a.kernel, S = a.stride;
#if MOBILENETS_VNNI
  if (K == 3 && S == 2) return stem_int8_for<3, 2>(a, pixels, Wp);
  if (K == 3 && S == 1) return stem_int8_for<3, 1>(a, pixels, Wp);
#endif
  // Any other kernel and stride, and CPUs without AVX-512 VNNI: the same integer sums, one at a time.
  const int64_t Ho = a.out.height, Wo = a.out.width, C = a.out.channels;
  for (int64_t oy = 0; oy < Ho; ++oy)
    for (int64_t ox = 0; ox < Wo; ++ox)
      for (int64_t c = 0; c < C; ++c) {
        int32_t acc = 0;
        for (int64_t t = 0; t < K * K; ++t) {
          const uint8_t* x = reinterpret_cast<const uint8_t*>(pixels + (oy * S + t / K) * Wp + ox * S + t % K);
          const int8_t* w = a.weights + ((c / 16) * K * K + t) * 64 + (c % 16) * 4;
          for (int j = 0; j < 4; ++j) acc += int32_t(x[j]) * int32_t(w[j]);
        }
        const float v = float(acc - a.zero_correction[c]) * a.multiplier[c] + a.bias[c];
        a.out.data[(oy * Wo + ox) * C + c] = quantize_scalar(activate_scalar(v, a.activation), a.out_inv_scale, a.out_zero);
      }
}

// ------------------------------------------------------------------------------------------------
// Squeeze-and-excitation on a uint8 tensor, in place: x ← requantize(x · gate(mean(x))).
// ------------------------------------------------------------------------------------------------

struct SqueezeExciteArgs {
  Image x;
  int64_t hidden;
  const int8_t* reduce_weight; // [hidden][C], int8 with one scale per row
  const float* reduce_bias;    // [hidden]
  const int8_t* expand_weight; // [C][hidden]
  const float* expand_bias;    // [C]
  const float* reduce_scale;   // [hidden]
  const float* expand_scale;   // [C]
  float in_scale, in_zero, out_inv_scale, out_zero;
  const int32_t* channel_sums; // [C]: Σ over pixels of x, from the depthwise op that wrote x
};

__attribute__((noinline)) void squeeze_excite(const SqueezeExciteArgs& a, std::vector<float>& scratch) {
  const int64_t C = a.x.channels, P = a.x.height * a.x.width, Cpad = round_up16(C), Hd = a.hidden;
  scratch.assign(2 * Cpad + Hd, 0.0f);
  float* RESTRICT mean = scratch.data();
  float* RESTRICT factor = mean + Cpad;
  float* RESTRICT hidden = factor + Cpad;
  const int32_t* RESTRICT sums = a.channel_sums;
  for (int64_t c = 0; c < C; ++c) mean[c] = (float(sums[c]) / float(P) - a.in_zero) * a.in_scale;
  // The two FC layers see one value per channel: their weights are int8 (4× less to stream through
  // the cache for every image: V3-Small's SE weights are 1.8 MB in fp32), their arithmetic fp32.
  const int8_t* RESTRICT w1 = a.reduce_weight;
  const int8_t* RESTRICT w2 = a.expand_weight;
  for (int64_t h = 0; h < Hd; ++h) {
    float v = 0.0f;
    for (int64_t c = 0; c < C; ++c) v += float(w1[h * C + c]) * mean[c];
    hidden[h] = std::max(v * a.reduce_scale[h] + a.reduce_bias[h], 0.0f);
  }
  for (int64_t c = 0; c < C; ++c) {
    float v = 0.0f;
    for (int64_t h = 0; h < Hd; ++h) v += float(w2[c * Hd + h]) * hidden[h];
    v = v * a.expand_scale[c] + a.expand_bias[c];
    const float gate = std::min(std::max(v + 3.0f, 0.0f), 6.0f) * (1.0f / 6.0f);  // hard-sigmoid
    factor[c] = gate * a.in_scale * a.out_inv_scale;
  }
#if MOBILENETS_VNNI
  const __m512 in_zero = _mm512_set1_ps(a.in_zero), out_zero = _mm512_set1_ps(a.out_zero), one = _mm512_set1_ps(1.0f);
  for (int64_t p = 0; p < P; ++p)
    for (int64_t c0 = 0; c0 < C; c0 += 16) {
      const __mmask16 mask = lane_mask(C - c0);
      uint8_t* at = a.x.data + p * C + c0;
      const __m512 v = _mm512_mul_ps(_mm512_sub_ps(load_u8_as_float(at, mask), in_zero), _mm512_loadu_ps(factor + c0));
      store_quantized(at, v, one, out_zero, mask);
    }
#else
  for (int64_t p = 0; p < P; ++p)
    for (int64_t c = 0; c < C; ++c) {
      uint8_t* at = a.x.data + p * C + c;
      *at = quantize_scalar((float(*at) - a.in_zero) * factor[c], 1.0f, a.out_zero);
    }
#endif
}

// ------------------------------------------------------------------------------------------------
// The program: ops in order, one image at a time per thread.
// ------------------------------------------------------------------------------------------------

// One per thread: three activation buffers and each op's scratch. They are kept between calls in a
// free list (a fresh megabyte per call would be fresh pages to fault in for every batch).
struct Workspace {
  std::vector<uint8_t> storage;
  uint8_t* buffer[3];
  std::vector<float> scratch, padded;
  std::vector<uint8_t> bytes;
  std::vector<int32_t> channel_sums;
};

struct WorkspaceLease {
  static std::mutex& lock() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::unique_ptr<Workspace>>& free_list() {
    static std::vector<std::unique_ptr<Workspace>> list;
    return list;
  }
  std::unique_ptr<Workspace> w;
  WorkspaceLease() {
    std::lock_guard<std::mutex> guard(lock());
    if (free_list().empty()) {
      w = std::make_unique<Workspace>();
    } else {
      w = std::move(free_list().back());
      free_list().pop_back();
    }
  }
  ~WorkspaceLease() {
    std::lock_guard<std::mutex> guard(lock());
    free_list().push_back(std::move(w));
  }
};

// Each op's tensors, in the order Python appends them (see int8_engine.py).
constexpr int64_t kTensorsPerOp = 6;

// op_seconds (float64 [ops]), when given: the images run on one thread and each op's time is added.
at::Tensor int8_forward(const at::Tensor& images, const at::Tensor& ints, const at::Tensor& floats,
                        at::TensorList tensors, const std::optional<at::Tensor>& op_seconds) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == at::kFloat, "int8_forward: a float NCHW batch");
  TORCH_CHECK(ints.dim() == 2 && ints.size(1) == kIntFields && ints.scalar_type() == at::kLong, "int8_forward: ints table");
  TORCH_CHECK(floats.dim() == 2 && floats.size(1) == kFloatFields && floats.scalar_type() == at::kFloat, "int8_forward: floats table");
  const int64_t ops = ints.size(0);
  TORCH_CHECK(ops >= 1 && floats.size(0) == ops && int64_t(tensors.size()) == ops * kTensorsPerOp, "int8_forward: program size");
  const at::Tensor input = images.contiguous();
  const int64_t N = input.size(0), Cin = input.size(1), H = input.size(2), W = input.size(3);
  std::vector<OpInts> op(ops);
  std::vector<OpFloats> q(ops);
  std::memcpy(op.data(), ints.contiguous().data_ptr<int64_t>(), sizeof(OpInts) * ops);
  std::memcpy(q.data(), floats.contiguous().data_ptr<float>(), sizeof(OpFloats) * ops);
  TORCH_CHECK(op[0].kind == kStem && op[0].in_channels == Cin && Cin <= 4,
              "int8_forward: the program starts with the stem, on images of up to 4 channels");

  // Shapes through the network, and the largest tensor (plus slack rows the pointwise tiles read).
  std::vector<int64_t> height(ops + 1), width(ops + 1);
  height[0] = H;
  width[0] = W;
  int64_t largest = 0, largest_channels = 16;
  for (int64_t i = 0; i < ops; ++i) {
    const OpInts& o = op[i];
    height[i + 1] = height[i];
    width[i + 1] = width[i];
    if (o.kind == kStem || o.kind == kDepthwise) {
      const int64_t pad = (o.kernel - 1) / 2;
      height[i + 1] = (height[i] + 2 * pad - o.kernel) / o.stride + 1;
      width[i + 1] = (width[i] + 2 * pad - o.kernel) / o.stride + 1;
    }
    if (o.kind == kPointwise) TORCH_CHECK(o.in_channels % 4 == 0, "int8_forward: 1x1 input channels must be a multiple of 4");
    largest = std::max(largest, (height[i + 1] * width[i + 1] + 16) * std::max(o.in_channels, o.out_channels));
    largest_channels = std::max(largest_channels, round_up16(std::max(o.in_channels, o.out_channels)));
    if (o.kind == kSqueezeExcite) TORCH_CHECK(i > 0 && op[i - 1].kind == kDepthwise, "int8_forward: squeeze-and-excitation follows a depthwise op");
  }
  const OpInts& last = op[ops - 1];
  const bool pooled_output = last.kind == kPointwise && last.pool;
  at::Tensor result = pooled_output ? at::zeros({N, round_up16(last.out_channels)}, input.options())
                                    : at::empty({N, height[ops], width[ops], last.out_channels}, input.options().dtype(at::kByte));
  auto data = [&](int64_t i, int64_t j) { return tensors[i * kTensorsPerOp + j].data_ptr(); };

  double* seconds = nullptr;
  if (op_seconds.has_value()) {
    TORCH_CHECK(op_seconds->scalar_type() == at::kDouble && op_seconds->numel() == ops && op_seconds->is_contiguous(),
                "int8_forward: op_seconds is a float64 tensor with one element per op");
    seconds = op_seconds->data_ptr<double>();
  }
  auto run_images = [&](int64_t begin, int64_t end, Workspace& w) {
    if (int64_t(w.storage.size()) < 3 * largest + 64) w.storage.resize(3 * largest + 64);
    for (int k = 0; k < 3; ++k) w.buffer[k] = w.storage.data() + k * largest;
    if (int64_t(w.channel_sums.size()) < largest_channels) w.channel_sums.resize(largest_channels);
    uint8_t* const* buffer = w.buffer;
    std::vector<float>& scratch = w.scratch;
    std::vector<float>& padded = w.padded;
    std::vector<uint8_t>& bytes = w.bytes;
    std::vector<int32_t>& channel_sums = w.channel_sums;
    for (int64_t n = begin; n < end; ++n) {
      int current = -1;
      std::vector<int> input_buffer(ops, -1);
      for (int64_t i = 0; i < ops; ++i) {
        const auto started = std::chrono::steady_clock::now();
        const OpInts& o = op[i];
        const OpFloats& f = q[i];
        input_buffer[i] = current;
        const int residual_buffer = o.residual >= 0 ? input_buffer[o.residual] : -1;
        // A block's input stays alive until the residual add that reads it has run.
        int live = -1;
        for (int64_t k = i; k < ops; ++k)
          if (op[k].residual >= 0 && op[k].residual <= i) {
            live = input_buffer[op[k].residual];
            break;
          }
        const bool last_op = i == ops - 1;
        int next = current;  // squeeze-and-excitation works in place
        if (o.kind != kSqueezeExcite) {
          next = 0;
          while (next == current || next == live) ++next;
        }
        Image out{last_op && !pooled_output ? result[n].data_ptr<uint8_t>() : buffer[next], height[i + 1], width[i + 1],
                  o.out_channels};
        Image in{current >= 0 ? buffer[current] : nullptr, height[i], width[i], o.in_channels};
        switch (o.kind) {
          case kStem:
            stem(StemArgs{input.data_ptr<float>() + n * Cin * H * W, Cin, H, W, o.kernel, o.stride, (o.kernel - 1) / 2,
                          1.0f / f.in_scale, f.in_zero, out, static_cast<const int8_t*>(data(i, 0)),
                          static_cast<const int32_t*>(data(i, 1)), static_cast<const float*>(data(i, 2)),
                          static_cast<const float*>(data(i, 3)), o.activation, 1.0f / f.out_scale, f.out_zero},
                 bytes);
            break;
          case kDepthwise: {
            DepthwiseArgs a{in, out, o.stride, (o.kernel - 1) / 2, static_cast<const float*>(data(i, 0)),
                            static_cast<const float*>(data(i, 1)), static_cast<const float*>(data(i, 2)),
                            static_cast<const float*>(data(i, 3)), f.in_zero, o.activation, 1.0f / f.out_scale, f.out_zero,
                            !last_op && op[i + 1].kind == kSqueezeExcite ? channel_sums.data() : nullptr,
                            data(i, 4), static_cast<const int32_t*>(data(i, 5))};
            if (o.kernel == 3) depthwise<3>(a, padded, bytes);
            else if (o.kernel == 5) depthwise<5>(a, padded, bytes);
            else if (o.kernel == 7) depthwise<7>(a, padded, bytes);
            else TORCH_CHECK(false, "int8_forward: depthwise kernels are 3, 5 or 7");
            break;
          }
          case kSqueezeExcite: {
            TORCH_CHECK(!last_op, "int8_forward: squeeze-and-excitation cannot end the program");
            Image x{buffer[current], height[i], width[i], o.in_channels};
            squeeze_excite(SqueezeExciteArgs{x, o.hidden, static_cast<const int8_t*>(data(i, 0)),
                                             static_cast<const float*>(data(i, 1)), static_cast<const int8_t*>(data(i, 2)),
                                             static_cast<const float*>(data(i, 3)), static_cast<const float*>(data(i, 4)),
                                             static_cast<const float*>(data(i, 5)), f.in_scale, f.in_zero,
                                             1.0f / f.out_scale, f.out_zero, channel_sums.data()},
                           scratch);
            break;
          }
          case kPointwise: {
            const int64_t Np = round_up16(o.out_channels);
            PointwiseArgs a{in.data, height[i] * width[i], o.in_channels, o.out_channels,
                            static_cast<const int8_t*>(data(i, 0)), static_cast<const int32_t*>(data(i, 1)),
                            static_cast<const float*>(data(i, 2)), static_cast<const float*>(data(i, 3)),
                            residual_buffer >= 0 ? buffer[residual_buffer] : nullptr, f.res_scale, f.res_zero,
                            o.activation, out.data, 1.0f / f.out_scale, f.out_zero, nullptr, nullptr};
            if (o.pool) {
              TORCH_CHECK(last_op, "int8_forward: only the last op pools");
              float* sums = result[n].data_ptr<float>();
              a.out = nullptr;
              a.pooled = sums;
              pointwise(a);
              const float inv = 1.0f / float(height[i] * width[i]);
              for (int64_t c = 0; c < Np; ++c) sums[c] *= inv;
            } else {
              pointwise(a);
            }
            break;
          }
          default:
            TORCH_CHECK(false, "int8_forward: unknown op kind ", o.kind);
        }
        current = next;
        if (seconds) seconds[i] += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      }
    }
  };
  if (seconds) {
    WorkspaceLease lease;
    run_images(0, N, *lease.w);
  } else {
    // Images are handed out one at a time, not in fixed halves: on a shared or virtual machine one core
    // is often briefly slower, and a static split makes the whole batch wait for it. Plain threads, not
    // OpenMP's pool: its idle threads spin after each call and slow whatever runs next on the cores
    // (measured: another engine timed right after, or this one right after ONNX Runtime's).
    std::atomic<int64_t> next_image{0};
    std::vector<std::exception_ptr> errors(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N)));
    auto work = [&](size_t worker) {
      try {
        WorkspaceLease lease;
        for (int64_t n = next_image.fetch_add(1); n < N; n = next_image.fetch_add(1)) run_images(n, n + 1, *lease.w);
      } catch (...) {
        errors[worker] = std::current_exception();
        next_image = N;  // the others stop at their next image
      }
    };
    std::vector<std::thread> helpers;
    for (size_t t = 1; t < errors.size(); ++t) helpers.emplace_back(work, t);
    work(0);
    for (auto& helper : helpers) helper.join();
    for (auto& error : errors)
      if (error) std::rethrow_exception(error);
  }
  if (pooled_output) return result.narrow(1, 0, last.out_channels);
  return result;
}

// A fully connected layer of the classifier head over the batch: x (float, quantized here, or uint8)
// [N][K] × int8 weights → activation → uint8 (the next layer's input) or float (the logits).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weights, const at::Tensor& zero_correction,
                       const at::Tensor& multiplier, const at::Tensor& bias, double in_scale, double in_zero,
                       int64_t activation, double out_scale, double out_zero, int64_t out_features, bool float_output) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) % 4 == 0, "int8_linear: x is [N, K] with K a multiple of 4");
  const int64_t N = x.size(0), K = x.size(1), M = out_features;
  const int64_t outputs = round_up16(M);
  TORCH_CHECK(weights.numel() == outputs * K && multiplier.numel() == outputs && bias.numel() == outputs &&
                  zero_correction.numel() == outputs,
              "int8_linear: weight sizes");
  at::Tensor input = x;
  if (x.scalar_type() == at::kFloat) {
    input = at::empty({N + 16, K}, x.options().dtype(at::kByte)).narrow(0, 0, N);  // slack rows for the tiles
    const float* RESTRICT source = x.contiguous().data_ptr<float>();
    uint8_t* RESTRICT target = input.data_ptr<uint8_t>();
    const float inv = 1.0f / float(in_scale), zero = float(in_zero);
    for (int64_t i = 0; i < N * K; ++i) target[i] = quantize_scalar(source[i], inv, zero);
  } else {
    TORCH_CHECK(x.scalar_type() == at::kByte && x.is_contiguous(), "int8_linear: x is float or contiguous uint8");
    at::Tensor copy = at::empty({N + 16, K}, x.options());
    copy.narrow(0, 0, N).copy_(x);
    input = copy.narrow(0, 0, N);
  }
  at::Tensor out = float_output ? at::empty({N, M}, x.options().dtype(at::kFloat))
                                : at::empty({N, M}, x.options().dtype(at::kByte));
  PointwiseArgs a{input.data_ptr<uint8_t>(), N, K, M, weights.data_ptr<int8_t>(), zero_correction.data_ptr<int32_t>(),
                  multiplier.data_ptr<float>(), bias.data_ptr<float>(), nullptr, 1.0f, 0.0f, activation,
                  float_output ? nullptr : out.data_ptr<uint8_t>(), 1.0f / float(out_scale), float(out_zero),
                  nullptr, float_output ? out.data_ptr<float>() : nullptr};
  pointwise(a);
  return out;
}

bool int8_vnni() { return MOBILENETS_VNNI != 0; }

}  // namespace

TORCH_LIBRARY_FRAGMENT(mobilenets_kernels, m) {
  m.def("int8_forward(Tensor images, Tensor ints, Tensor floats, Tensor[] tensors, Tensor? op_seconds=None) -> Tensor");
  m.def("int8_vnni() -> bool", int8_vnni);
  m.def("int8_linear(Tensor x, Tensor weights, Tensor zero_correction, Tensor multiplier, Tensor bias, float in_scale, "
        "float in_zero, int activation, float out_scale, float out_zero, int out_features, bool float_output) -> Tensor");
}

TORCH_LIBRARY_IMPL(mobilenets_kernels, CPU, m) {
  m.impl("int8_forward", int8_forward);
  m.impl("int8_linear", int8_linear);
}
