// GGUF-style blocks of 32 weights times float32 activations on x86-64 CPUs with AVX2, FMA and F16C, as torch ops.
//
// A weight row is K / 32 blocks. Each block has a scale d and an offset m (fp16 where the file's constants are
// fp16 numbers, fp32 where the file's arithmetic makes a finer one: Q4_K's d * sc) and 32 codes q, and its weights
// are w[j] = d * q[j] + m:
//   Q4 (4-bit codes, 0..15): 16 bytes, byte j's low nibble is q[j] and its high nibble q[j + 16] (GGUF's Q4_0/Q4_1
//      order). Q4_0 (m = -8d), Q4_1 and Q4_K's sub-blocks are this with the file's own codes.
//   Q8 (8-bit codes, -128..127): 32 bytes: Q8_0's own codes (m = 0), Q5_x's 5-bit codes.
//   Q8 Pair: Q8 codes with two fp32 scales, the first 16 weights' and the last 16's: Q6_K's codes q - 32 and the
//      exact products d * sc of its 16-weight sub-blocks (m = 0).
//
// From 8 input rows on (prefill, a batched decode step) every weight is dequantized in registers exactly as the gguf
// package dequantizes it (d * q is exact in fp32, so fma(d, q, m) is the one rounding of d * q + m), into fp32 panels
// of 12 weight rows that a register tile of 6 weight rows x 16 input rows multiplies with float32 activations: the
// dense fp32 matmul with the file's dequantized weight, up to fp32 summation order, no bf16 constants. A panel is
// unpacked once for all the input rows (torch's int4 CPU kernel unpacks the weight again every 4 rows). Fewer rows
// (a decode step's 1..7) go to gguf_rows.cpp, which multiplies the codes as integers with the inputs rounded to
// 16 bits.
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
  return with_layout(format, [](auto layout) { return decltype(layout)::kBytes; });
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

// Block g of a row as 32 float weights in four registers: w[j] = fma(d, q[j], m), exactly d * q[j] + m (a Pair's
// first 16 weights with its first d, the last 16 with its second).
template <bool Wide, bool Byte, bool Pair>
__attribute__((always_inline)) inline void weights(const uint8_t* row, int64_t groups, int64_t g, __m256 w[4]) {
  using L = Layout<Wide, Byte, Pair>;
  const uint8_t* d_at = L::scales(row, groups) + g * L::kScales * L::kConst;
  const __m256 d0 = _mm256_set1_ps(L::load1(d_at));
  const __m256 d1 = Pair ? _mm256_set1_ps(L::load1(d_at + L::kConst)) : d0;
  const __m256 m = _mm256_set1_ps(L::load1(L::offsets(row, groups) + g * L::kConst));
  codes<Wide, Byte>(row, g, w);
  w[0] = _mm256_fmadd_ps(d0, w[0], m);
  w[1] = _mm256_fmadd_ps(d0, w[1], m);
  w[2] = _mm256_fmadd_ps(d1, w[2], m);
  w[3] = _mm256_fmadd_ps(d1, w[3], m);
}

// From kPanelRows input rows on, a matmul is a small fp32 GEMM. The input rows are packed once a call into tiles of
// 16 rows (the last 1..8 rows: a tile of 8), each laid out [K][16] so that one load gives 8 rows' inputs at one k;
// rows past the last are zeros. The weight is dequantized kPanelN rows at a time into a thread's scratch, each row
// as it lies in the file's order ([kPanelN][K], no transpose), and a register tile of 6 weight rows x 16 input rows
// (12 x 8 for a tile of 8) runs over it: for each k, two input loads, one broadcast per weight row, twelve
// independent FMAs. A panel is dequantized once for all the input rows. Every output is one chain of FMAs in k order,
// so the result does not depend on the tiling.
constexpr int kPanelRows = 8;
constexpr int kPanelN = 12;
constexpr int64_t kTileM = 16;

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

// Input rows [r0, r0 + width) of x as width / 8 vectors a k: xp[kk * width + i] = x[r0 + i][kk] (0 past m_rows).
void pack_tile(const float* x, int64_t m_rows, int64_t k, int64_t r0, int64_t width, float* xp) {
  for (int64_t h = 0; h < width; h += 8)
    for (int64_t kk = 0; kk < k; kk += 8) {
      __m256 r[8];
      #pragma GCC unroll 8
      for (int i = 0; i < 8; ++i)
        r[i] = r0 + h + i < m_rows ? _mm256_loadu_ps(x + (r0 + h + i) * k + kk) : _mm256_setzero_ps();
      transpose8(r);
      #pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) _mm256_store_ps(xp + (kk + j) * width + h, r[j]);
    }
}

// Weight rows [0, count) of a panel dequantized as they lie, [kPanelN][K]; rows past count are zeros.
template <bool Wide, bool Byte, bool Pair>
void unpack_panel(const uint8_t* w, int64_t row_bytes, int64_t groups, int64_t count, float* panel) {
  const int64_t k = groups * kGroup;
  for (int64_t i = 0; i < count; ++i)
    for (int64_t g = 0; g < groups; ++g) {
      __m256 v[4];
      weights<Wide, Byte, Pair>(w + i * row_bytes, groups, g, v);
      #pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) _mm256_store_ps(panel + i * k + g * kGroup + 8 * j, v[j]);
    }
  std::memset(panel + count * k, 0, (kPanelN - count) * k * sizeof(float));
}

// NJ weight rows (stride k) times a packed tile of 8 * XV input rows -> o[j][i]. Not inlined: inlined into the
// panel loop, GCC spilled an accumulator to the stack, a store and a load in every k's chain (half the speed).
template <int NJ, int XV>
__attribute__((noinline)) void tile_kernel(const float* w, const float* xp, int64_t k, float* o) {
  __m256 acc[NJ][XV];
  #pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j)
    #pragma GCC unroll 4
    for (int i = 0; i < XV; ++i) acc[j][i] = _mm256_setzero_ps();
  const float* wr[NJ];
  #pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j) wr[j] = w + j * k;
  for (int64_t kk = 0; kk < k; ++kk) {
    __m256 xv[XV];
    #pragma GCC unroll 4
    for (int i = 0; i < XV; ++i) xv[i] = _mm256_load_ps(xp + kk * (8 * XV) + 8 * i);
    #pragma GCC unroll 16
    for (int j = 0; j < NJ; ++j) {
      const __m256 wv = _mm256_broadcast_ss(wr[j] + kk);
      #pragma GCC unroll 4
      for (int i = 0; i < XV; ++i) acc[j][i] = _mm256_fmadd_ps(wv, xv[i], acc[j][i]);
    }
  }
  #pragma GCC unroll 16
  for (int j = 0; j < NJ; ++j)
    #pragma GCC unroll 4
    for (int i = 0; i < XV; ++i) _mm256_store_ps(o + j * 8 * XV + 8 * i, acc[j][i]);
}

// The tile's products into out[i][j] for its first rows x cols.
template <int NJ, int XV>
inline void panel_tile(const float* w, const float* xp, int64_t k, float* out, int64_t n_total, int64_t rows,
                       int64_t cols) {
  alignas(32) float o[NJ][8 * XV];
  tile_kernel<NJ, XV>(w, xp, k, &o[0][0]);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[i * n_total + j] = o[j][i];
}

template <bool Wide, bool Byte, bool Pair>
void matmul_panels(const float* x, int64_t m_rows, int64_t k, const uint8_t* blocks, int64_t n_total, float* out) {
  using L = Layout<Wide, Byte, Pair>;
  const int64_t groups = k / kGroup, row_bytes = groups * L::kBytes;
  // Tiles of 16 input rows; a rest of 1..8 rows is a tile of 8, of 9..15 one more of 16.
  const int64_t rest = m_rows % kTileM;
  const int64_t padded = m_rows - rest + (rest == 0 ? 0 : (rest <= 8 ? 8 : kTileM));
  auto packed = at::empty({padded * k}, at::TensorOptions().dtype(at::kFloat));
  float* xp = packed.data_ptr<float>();
  for (int64_t r0 = 0; r0 < padded; r0 += kTileM) pack_tile(x, m_rows, k, r0, std::min(kTileM, padded - r0), xp + r0 * k);
  const int64_t panels = (n_total + kPanelN - 1) / kPanelN;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    float* panel = static_cast<float*>(std::aligned_alloc(32, kPanelN * k * sizeof(float)));
    TORCH_CHECK(panel != nullptr, "out of memory for a ", k, "-wide weight panel");
    for (int64_t p = begin; p < end; ++p) {
      const int64_t n0 = p * kPanelN, count = std::min<int64_t>(kPanelN, n_total - n0);
      unpack_panel<Wide, Byte, Pair>(blocks + n0 * row_bytes, row_bytes, groups, count, panel);
      for (int64_t r0 = 0; r0 < padded; r0 += kTileM) {
        const int64_t rows = std::min(kTileM, m_rows - r0);
        float* o = out + r0 * n_total + n0;
        if (padded - r0 == 8) {
          panel_tile<kPanelN, 1>(panel, xp + r0 * k, k, o, n_total, rows, count);
        } else {
          panel_tile<kPanelN / 2, 2>(panel, xp + r0 * k, k, o, n_total, rows, std::min<int64_t>(count, kPanelN / 2));
          if (count > kPanelN / 2)
            panel_tile<kPanelN / 2, 2>(panel + kPanelN / 2 * k, xp + r0 * k, k, o + kPanelN / 2, n_total, rows,
                                       count - kPanelN / 2);
        }
      }
    }
    std::free(panel);
  });
}

template <bool Wide, bool Byte, bool Pair>
void matmul(const float* x, int64_t m_rows, int64_t k, const uint8_t* blocks, int64_t n_total, float* out) {
  if (m_rows >= kPanelRows) return matmul_panels<Wide, Byte, Pair>(x, m_rows, k, blocks, n_total, out);
  // A decode step's few rows: integer products with the inputs rounded to int16 (gguf_rows.cpp).
  few_rows_mm(Layout<Wide, Byte, Pair>::kFormat, x, m_rows, k, blocks, n_total, out);
}

void check(const at::Tensor& blocks, int64_t format, int64_t n, int64_t k) {
  TORCH_CHECK(blocks.device().is_cpu() && blocks.scalar_type() == at::kByte && blocks.is_contiguous(),
              "gguf blocks must be a contiguous uint8 CPU tensor");
  TORCH_CHECK(k % kGroup == 0, "K must be a multiple of 32, got ", k);
  TORCH_CHECK(blocks.numel() == n * (k / kGroup) * block_bytes(format), "gguf blocks hold ", blocks.numel(),
              " bytes; ", n, " rows of ", k, " weights in format ", format, " need ", n * (k / kGroup) * block_bytes(format));
}

template <bool Wide, bool Byte, bool Pair>
void dequantize_rows(const uint8_t* blocks, int64_t n, int64_t k, float* out) {
  using L = Layout<Wide, Byte, Pair>;
  const int64_t groups = k / kGroup, row_bytes = groups * L::kBytes;
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row)
      for (int64_t g = 0; g < groups; ++g) {
        __m256 w[4];
        weights<Wide, Byte, Pair>(blocks + row * row_bytes, groups, g, w);
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
  with_layout(format, [&](auto layout) {
    using L = decltype(layout);
    dequantize_rows<L::kWide, L::kByte, L::kPair>(b, n, k, o);
  });
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
  with_layout(format, [&](auto layout) {
    using L = decltype(layout);
    matmul<L::kWide, L::kByte, L::kPair>(xp, m_rows, k, b, n, o);
  });
  return out;
}

TORCH_LIBRARY(clawbot_gguf, m) {
  m.def("mm(Tensor x, Tensor blocks, int format, int n) -> Tensor", gguf_mm);
  m.def("dequantize(Tensor blocks, int format, int n, int k) -> Tensor", gguf_dequantize);
  m.def("block_bytes(int format) -> int", block_bytes);
}
