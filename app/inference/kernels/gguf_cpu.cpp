// GGUF-style blocks of 32 weights times float32 activations on x86-64 CPUs with AVX2, FMA and F16C, as torch ops.
//
// A weight row is K / 32 blocks. Each block has a scale d and an offset m (fp16 where the file's constants are
// fp16 numbers, fp32 where the file's arithmetic makes a finer one: Q4_K's d * sc) and 32 codes q, and its weights
// are w[j] = d * q[j] + m:
//   Q4 (4-bit codes, 0..15): 16 bytes, byte j's low nibble is q[j] and its high nibble q[j + 16] (GGUF's Q4_0/Q4_1
//      order). Q4_0 (m = -8d), Q4_1 and Q4_K's sub-blocks are this with the file's own codes.
//   Q8 (8-bit codes, -128..127): 32 bytes: Q8_0's own codes (m = 0), Q5_x's 5-bit codes.
//
// From 8 input rows on (prefill, a batched decode step) every weight is dequantized in registers exactly as the gguf
// package dequantizes it (d * q is exact in fp32, so fma(d, q, m) is the one rounding of d * q + m), into fp32 panels
// of 16 weight rows that a 6-row register tile multiplies with float32 activations: the dense fp32 matmul with the
// file's dequantized weight, up to fp32 summation order, no bf16 constants. A panel is unpacked once for all the
// input rows (torch's int4 CPU kernel unpacks the weight again every 4 rows). Fewer rows (a decode step's 1..7) go
// to gguf_rows.cpp, which multiplies the codes as integers with the inputs rounded to 16 bits.
//
// gguf_mm(x [M, K] float32, blocks [N, K / 32 * block bytes] uint8, format, N) -> [M, N] float32
// gguf_dequantize(blocks, format, N, K) -> [N, K] float32, exactly d * q + m (embedding rows, and for checks)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <immintrin.h>

#include "gguf_cpu.h"
#include "gguf_layout.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace {

int64_t block_bytes(int64_t format) {
  switch (format) {
    case kQ4Half: return Layout<false, false>::kBytes;
    case kQ4Float: return Layout<true, false>::kBytes;
    case kQ8Half: return Layout<false, true>::kBytes;
    case kQ8Float: return Layout<true, true>::kBytes;
  }
  TORCH_CHECK(false, "unknown GGUF block format ", format);
}

// Block g's 32 codes as floats in four registers (exact: small integers).
template <bool Wide, bool Byte>
__attribute__((always_inline)) inline void codes(const uint8_t* row, int64_t g, __m256 q[4]) {
  using L = Layout<Wide, Byte>;
  const uint8_t* c = L::codes(row, g);
  __m256i v[4];
  if constexpr (Byte) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c));
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 16));
    v[0] = _mm256_cvtepi8_epi32(a);
    v[1] = _mm256_cvtepi8_epi32(_mm_srli_si128(a, 8));
    v[2] = _mm256_cvtepi8_epi32(b);
    v[3] = _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8));
  } else {
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c));
    const __m128i mask = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(raw, mask);
    const __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    v[0] = _mm256_cvtepu8_epi32(lo);
    v[1] = _mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8));
    v[2] = _mm256_cvtepu8_epi32(hi);
    v[3] = _mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtepi32_ps(v[j]);
}

// Block g of a row as 32 float weights in four registers: w[j] = fma(d, q[j], m), exactly d * q[j] + m.
template <bool Wide, bool Byte>
__attribute__((always_inline)) inline void weights(const uint8_t* row, int64_t groups, int64_t g, __m256 w[4]) {
  using L = Layout<Wide, Byte>;
  const __m256 d = _mm256_set1_ps(L::load1(L::scales(row, groups) + g * L::kConst));
  const __m256 m = _mm256_set1_ps(L::load1(L::offsets(row, groups) + g * L::kConst));
  codes<Wide, Byte>(row, g, w);
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) w[j] = _mm256_fmadd_ps(d, w[j], m);
}

// From kPanelRows input rows on, weights are unpacked a panel at a time and multiplied as a small GEMM: a panel is
// kPanelN weight rows over all of K, dequantized into a thread's scratch as [K][kPanelN] floats, then every tile of
// kTileM input rows runs a kTileM x kPanelN register tile (12 accumulators) over it: for each k, two panel loads, one
// broadcast per input row, twelve independent FMAs. The panel is unpacked once for all input rows.
constexpr int kPanelRows = 8;
constexpr int kPanelN = 16;
constexpr int kTileM = 6;

// Eight registers (rows) of eight floats -> eight registers (columns): r[i][j] becomes r[j][i].
__attribute__((always_inline)) inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  #pragma GCC unroll 16
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  #pragma GCC unroll 16
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  #pragma GCC unroll 16
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// Weight rows [0, count) of a panel, every block dequantized and laid out [K][kPanelN]; missing rows are zeros.
template <bool Wide, bool Byte>
void unpack_panel(const uint8_t* w, int64_t row_bytes, int64_t groups, int64_t count, float* panel) {
  for (int64_t half = 0; half < kPanelN; half += 8)
    for (int64_t g = 0; g < groups; ++g) {
      __m256 v[8][4];
      for (int64_t i = 0; i < 8; ++i) {
        if (half + i < count) weights<Wide, Byte>(w + (half + i) * row_bytes, groups, g, v[i]);
        else v[i][0] = v[i][1] = v[i][2] = v[i][3] = _mm256_setzero_ps();
      }
      #pragma GCC unroll 16
      for (int j = 0; j < 4; ++j) {  // k = g * 32 + 8 * j .. + 7
        __m256 r[8];
        #pragma GCC unroll 16
        for (int i = 0; i < 8; ++i) r[i] = v[i][j];
        transpose8(r);
        float* dst = panel + (g * kGroup + 8 * j) * kPanelN + half;
        #pragma GCC unroll 16
        for (int i = 0; i < 8; ++i) _mm256_store_ps(dst + i * kPanelN, r[i]);
      }
    }
}

template <int RM>
__attribute__((always_inline)) inline void panel_tile(const float* panel, const float* x, int64_t k, float* out,
                                                      int64_t n_total, int64_t count) {
  __m256 acc[RM][2];
  #pragma GCC unroll 16
  for (int r = 0; r < RM; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 w0 = _mm256_load_ps(panel + kk * kPanelN);
    const __m256 w1 = _mm256_load_ps(panel + kk * kPanelN + 8);
    #pragma GCC unroll 16
    for (int r = 0; r < RM; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * k + kk);
      acc[r][0] = _mm256_fmadd_ps(w0, xv, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(w1, xv, acc[r][1]);
    }
  }
  #pragma GCC unroll 16
  for (int r = 0; r < RM; ++r) {
    alignas(32) float o[kPanelN];
    _mm256_store_ps(o, acc[r][0]);
    _mm256_store_ps(o + 8, acc[r][1]);
    std::memcpy(out + r * n_total, o, count * sizeof(float));
  }
}

void panel_rows(const float* panel, const float* x, int64_t m_rows, int64_t k, float* out, int64_t n_total,
                int64_t count) {
  // Tiles of 6 rows, and the last 7..9 rows as 4 plus the rest: a tile of 1..3 rows has too few independent FMA
  // chains to keep the units busy (32 rows run as 6+6+6+6+4+4).
  int64_t r = 0;
  while (r < m_rows) {
    const int64_t left = m_rows - r;
    const int64_t rows = left >= 10 ? kTileM : (left >= 7 ? 4 : left);
    const float* xr = x + r * k;
    float* o = out + r * n_total;
    switch (rows) {
      case 1: panel_tile<1>(panel, xr, k, o, n_total, count); break;
      case 2: panel_tile<2>(panel, xr, k, o, n_total, count); break;
      case 3: panel_tile<3>(panel, xr, k, o, n_total, count); break;
      case 4: panel_tile<4>(panel, xr, k, o, n_total, count); break;
      case 5: panel_tile<5>(panel, xr, k, o, n_total, count); break;
      default: panel_tile<kTileM>(panel, xr, k, o, n_total, count); break;
    }
    r += rows;
  }
}

template <bool Wide, bool Byte>
void matmul_panels(const float* x, int64_t m_rows, int64_t k, const uint8_t* blocks, int64_t n_total, float* out) {
  using L = Layout<Wide, Byte>;
  const int64_t groups = k / kGroup, row_bytes = groups * L::kBytes;
  const int64_t panels = (n_total + kPanelN - 1) / kPanelN;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    float* panel = static_cast<float*>(std::aligned_alloc(32, k * kPanelN * sizeof(float)));
    TORCH_CHECK(panel != nullptr, "out of memory for a ", k, "-wide weight panel");
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * kPanelN, count = std::min<int64_t>(kPanelN, n_total - n0);
      unpack_panel<Wide, Byte>(blocks + n0 * row_bytes, row_bytes, groups, count, panel);
      panel_rows(panel, x, m_rows, k, out + n0, n_total, count);
    }
    std::free(panel);
  });
}

template <bool Wide, bool Byte>
void matmul(const float* x, int64_t m_rows, int64_t k, const uint8_t* blocks, int64_t n_total, float* out) {
  using L = Layout<Wide, Byte>;
  const int64_t groups = k / kGroup, row_bytes = groups * L::kBytes;
  if (m_rows >= kPanelRows) return matmul_panels<Wide, Byte>(x, m_rows, k, blocks, n_total, out);
  // A decode step's few rows: integer products with the inputs rounded to int16 (gguf_rows.cpp).
  few_rows_mm(Layout<Wide, Byte>::kFormat, x, m_rows, k, blocks, n_total, out);
}

void check(const at::Tensor& blocks, int64_t format, int64_t n, int64_t k) {
  TORCH_CHECK(blocks.device().is_cpu() && blocks.scalar_type() == at::kByte && blocks.is_contiguous(),
              "gguf blocks must be a contiguous uint8 CPU tensor");
  TORCH_CHECK(k % kGroup == 0, "K must be a multiple of 32, got ", k);
  TORCH_CHECK(blocks.numel() == n * (k / kGroup) * block_bytes(format), "gguf blocks hold ", blocks.numel(),
              " bytes; ", n, " rows of ", k, " weights in format ", format, " need ", n * (k / kGroup) * block_bytes(format));
}

template <bool Wide, bool Byte>
void dequantize_rows(const uint8_t* blocks, int64_t n, int64_t k, float* out) {
  using L = Layout<Wide, Byte>;
  const int64_t groups = k / kGroup, row_bytes = groups * L::kBytes;
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      for (int64_t g = 0; g < groups; ++g) {
        __m256 w[4];
        weights<Wide, Byte>(blocks + row * row_bytes, groups, g, w);
        float* dst = out + row * k + g * kGroup;
        #pragma GCC unroll 16
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(dst + 8 * j, w[j]);
      }
  });
}

at::Tensor gguf_dequantize(const at::Tensor& blocks, int64_t format, int64_t n, int64_t k) {
  check(blocks, format, n, k);
  auto out = at::empty({n, k}, at::TensorOptions().dtype(at::kFloat));
  const uint8_t* b = blocks.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  switch (format) {
    case kQ4Half: dequantize_rows<false, false>(b, n, k, o); break;
    case kQ4Float: dequantize_rows<true, false>(b, n, k, o); break;
    case kQ8Half: dequantize_rows<false, true>(b, n, k, o); break;
    case kQ8Float: dequantize_rows<true, true>(b, n, k, o); break;
    default: TORCH_CHECK(false, "unknown GGUF block format ", format);
  }
  return out;
}

}  // namespace

at::Tensor gguf_mm(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2, "x must be a 2-D float32 CPU tensor");
  const auto xc = x.contiguous();
  const int64_t m_rows = xc.size(0), k = xc.size(1);
  check(blocks, format, n, k);
  auto out = at::empty({m_rows, n}, xc.options());
  if (m_rows == 0 || n == 0) return out;
  const float* xp = xc.data_ptr<float>();
  const uint8_t* b = blocks.data_ptr<uint8_t>();
  float* o = out.data_ptr<float>();
  switch (format) {
    case kQ4Half: matmul<false, false>(xp, m_rows, k, b, n, o); break;
    case kQ4Float: matmul<true, false>(xp, m_rows, k, b, n, o); break;
    case kQ8Half: matmul<false, true>(xp, m_rows, k, b, n, o); break;
    case kQ8Float: matmul<true, true>(xp, m_rows, k, b, n, o); break;
    default: TORCH_CHECK(false, "unknown GGUF block format ", format);
  }
  return out;
}

TORCH_LIBRARY(clawbot_gguf, m) {
  m.def("mm(Tensor x, Tensor blocks, int format, int n) -> Tensor", gguf_mm);
  m.def("dequantize(Tensor blocks, int format, int n, int k) -> Tensor", gguf_dequantize);
  m.def("block_bytes(int format) -> int", block_bytes);
}
