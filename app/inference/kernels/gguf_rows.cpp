// A decode step's few input rows (1..7) times GGUF-style blocks (layout: gguf_layout.h; from 8 rows on,
// gguf_cpu.cpp's panels run instead).
//
// Each input row is first rounded to int16 per block of 32 inputs, x[j] ~ s * xq[j] with s = max|x| / 32767, and
// the codes are multiplied with it as integers (16 x 16 -> 32 bits, exact). A block then costs one integer
// multiply-add pass instead of dequantizing each of its weights to fp32. Its sum is
//   sum_j w[j] x[j] = d * s * sum_j q[j] xq[j] + m * sum_j x[j]
// where sum_j x[j] is the exact fp32 sum of the unrounded inputs. The only rounding beyond fp32's is the inputs' to
// 16 bits: at most max|x| / 65534 per input, 2^-16 of the block's largest input (bf16 activations round each input
// at 2^-9 of itself).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "gguf_layout.h"

namespace {

struct RowsQ16 {
  int16_t* q;   // [rows][k] the rounded inputs
  float* s;     // [rows][groups] each block's scale
  float* sum;   // [rows][groups] each block's exact fp32 sum
};

void quantize_rows_q16(const float* x, int64_t m_rows, int64_t k, RowsQ16 r) {
  const int64_t groups = k / kGroup, padded = (groups + 7) / 8 * 8;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < m_rows * groups; ++i) {
    const float* xg = x + i * kGroup;
    const int64_t at = i / groups * padded + i % groups;
    __m256 v[4], amax = _mm256_setzero_ps(), total = _mm256_setzero_ps();
    #pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      v[j] = _mm256_loadu_ps(xg + 8 * j);
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[j]));
      total = _mm256_add_ps(total, v[j]);
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float top = _mm_cvtss_f32(m4);
    r.s[at] = top / 32767.0f;
    r.sum[at] = hsum(total);
    const __m256 inv = _mm256_set1_ps(top > 0.0f ? 32767.0f / top : 0.0f);
    __m256i n[4];
    #pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) n[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));  // round to nearest
    // packs works within 128-bit lanes: [a0..3 b0..3 a4..7 b4..7] -> reorder the 64-bit quarters
    const __m256i lo = _mm256_permute4x64_epi64(_mm256_packs_epi32(n[0], n[1]), 0xD8);
    const __m256i hi = _mm256_permute4x64_epi64(_mm256_packs_epi32(n[2], n[3]), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r.q + i * kGroup), lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(r.q + i * kGroup + 16), hi);
  }
}

// Block g's 32 codes as two registers of sixteen int16: codes 0..15 and 16..31.
template <bool Wide, bool Byte>
__attribute__((always_inline)) inline void codes16(const uint8_t* row, int64_t g, __m256i c[2]) {
  const uint8_t* p = Layout<Wide, Byte>::codes(row, g);
  if constexpr (Byte) {
    c[0] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    c[1] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
  } else {  // byte j holds q[j] (low nibble) and q[j + 16] (high nibble)
    const __m256i both = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    c[0] = _mm256_and_si256(both, _mm256_set1_epi16(0x0F));
    c[1] = _mm256_srli_epi16(both, 4);
  }
}

// Eight consecutive constants (d or m) of a row from block g0 as floats; past `len` blocks, zeros.
template <bool Wide, bool Byte>
__attribute__((always_inline)) inline __m256 load8(const uint8_t* p, int64_t len) {
  using L = Layout<Wide, Byte>;
  if (len >= 8) {
    if constexpr (Wide) return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
    else return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  alignas(32) float v[8] = {};
  for (int64_t i = 0; i < len; ++i) v[i] = L::load1(p + i * L::kConst);
  return _mm256_load_ps(v);
}

// A Pair row's scales of blocks g0 .. g0 + len - 1, first halves' in d[0], second halves' in d[1]; past len, zeros.
__attribute__((always_inline)) inline void load8_pairs(const uint8_t* p, int64_t len, __m256 d[2]) {
  alignas(32) float v[2][8] = {};
  for (int64_t i = 0; i < len; ++i) {
    std::memcpy(&v[0][i], p + 8 * i, 4);
    std::memcpy(&v[1][i], p + 8 * i + 4, 4);
  }
  d[0] = _mm256_load_ps(v[0]);
  d[1] = _mm256_load_ps(v[1]);
}

// KN weight rows against RM rounded input rows. Eight blocks at a time: their d * s and m * sum x are computed
// eight-wide, then each block's integer dot product is scaled by its d * s (a Pair's two halves each by their own).
template <bool Wide, bool Byte, bool Pair, int KN, int RM>
__attribute__((always_inline)) inline void tile_q16(const uint8_t* row, int64_t row_bytes, int64_t groups,
                                                    const RowsQ16& x, int64_t k, float* out, int64_t n_total) {
  using L = Layout<Wide, Byte, Pair>;
  constexpr int H = Pair ? 2 : 1;           // scales per block
  const int64_t xg = (groups + 7) / 8 * 8;  // x.s and x.sum rows are padded to whole eights with zeros
  __m256 acc[KN][RM], offset[KN][RM];
  #pragma GCC unroll 16
  for (int n = 0; n < KN; ++n)
    #pragma GCC unroll 16
    for (int r = 0; r < RM; ++r) acc[n][r] = _mm256_setzero_ps(), offset[n][r] = _mm256_setzero_ps();
  alignas(32) float ds[KN][RM][H][8];
  {  // the tile after next: its rows' bytes, a cache line at a time (hardware prefetch alone leaves DRAM idle)
    const char* ahead = reinterpret_cast<const char*>(row + 2 * KN * row_bytes);
    for (int64_t b = 0; b < KN * row_bytes; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
  }
  for (int64_t g0 = 0; g0 < groups; g0 += 8) {
    const int64_t len = groups - g0 < 8 ? groups - g0 : 8;
    #pragma GCC unroll 16
    for (int n = 0; n < KN; ++n) {
      const uint8_t* wn = row + n * row_bytes;
      __m256 d8[H];
      if constexpr (Pair) load8_pairs(L::scales(wn, groups) + g0 * 2 * L::kConst, len, d8);
      else d8[0] = load8<Wide, Byte>(L::scales(wn, groups) + g0 * L::kConst, len);
      const __m256 m8 = load8<Wide, Byte>(L::offsets(wn, groups) + g0 * L::kConst, len);
      #pragma GCC unroll 16
      for (int r = 0; r < RM; ++r) {
        const __m256 s8 = _mm256_loadu_ps(x.s + r * xg + g0);
        #pragma GCC unroll 2
        for (int h = 0; h < H; ++h) _mm256_store_ps(ds[n][r][h], _mm256_mul_ps(d8[h], s8));
        offset[n][r] = _mm256_fmadd_ps(m8, _mm256_loadu_ps(x.sum + r * xg + g0), offset[n][r]);
      }
    }
    for (int64_t i = 0; i < len; ++i) {
      const int64_t g = g0 + i;
      #pragma GCC unroll 16
      for (int n = 0; n < KN; ++n) {
        __m256i c[2];
        codes16<Wide, Byte>(row + n * row_bytes, g, c);
        #pragma GCC unroll 16
        for (int r = 0; r < RM; ++r) {
          const int16_t* xq = x.q + r * k + g * kGroup;
          const __m256i p0 = _mm256_madd_epi16(c[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
          const __m256i p1 = _mm256_madd_epi16(c[1], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 16)));
          if constexpr (Pair) {
            acc[n][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p0), _mm256_broadcast_ss(&ds[n][r][0][i]), acc[n][r]);
            acc[n][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1), _mm256_broadcast_ss(&ds[n][r][1][i]), acc[n][r]);
          } else {
            const __m256i p = _mm256_add_epi32(p0, p1);
            acc[n][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&ds[n][r][0][i]), acc[n][r]);
          }
        }
      }
    }
  }
  #pragma GCC unroll 16
  for (int n = 0; n < KN; ++n)
    #pragma GCC unroll 16
    for (int r = 0; r < RM; ++r) out[r * n_total + n] = hsum(_mm256_add_ps(acc[n][r], offset[n][r]));
}

template <bool Wide, bool Byte, bool Pair>
void rows_times_q16(const uint8_t* w, int64_t row_bytes, int64_t groups, int64_t count, const RowsQ16& x,
                    int64_t m_rows, int64_t k, float* out, int64_t n_total) {
  int64_t n = 0;
  switch (m_rows) {
    case 1:
      for (; n + 4 <= count; n += 4) tile_q16<Wide, Byte, Pair, 4, 1>(w + n * row_bytes, row_bytes, groups, x, k, out + n, n_total);
      break;
    case 2:
      for (; n + 2 <= count; n += 2) tile_q16<Wide, Byte, Pair, 2, 2>(w + n * row_bytes, row_bytes, groups, x, k, out + n, n_total);
      break;
    case 3:
      for (; n + 2 <= count; n += 2) tile_q16<Wide, Byte, Pair, 2, 3>(w + n * row_bytes, row_bytes, groups, x, k, out + n, n_total);
      break;
    default: break;
  }
  for (; n < count; ++n) {
    const uint8_t* wn = w + n * row_bytes;
    switch (m_rows) {
      case 1: tile_q16<Wide, Byte, Pair, 1, 1>(wn, row_bytes, groups, x, k, out + n, n_total); break;
      case 2: tile_q16<Wide, Byte, Pair, 1, 2>(wn, row_bytes, groups, x, k, out + n, n_total); break;
      case 3: tile_q16<Wide, Byte, Pair, 1, 3>(wn, row_bytes, groups, x, k, out + n, n_total); break;
      case 4: tile_q16<Wide, Byte, Pair, 1, 4>(wn, row_bytes, groups, x, k, out + n, n_total); break;
      case 5: tile_q16<Wide, Byte, Pair, 1, 5>(wn, row_bytes, groups, x, k, out + n, n_total); break;
      case 6: tile_q16<Wide, Byte, Pair, 1, 6>(wn, row_bytes, groups, x, k, out + n, n_total); break;
      default: tile_q16<Wide, Byte, Pair, 1, 7>(wn, row_bytes, groups, x, k, out + n, n_total); break;
    }
  }
}

}  // namespace

void few_rows_mm(int64_t format, const float* x, int64_t m_rows, int64_t k, const uint8_t* blocks, int64_t n_total,
                 float* out) {
  const int64_t groups = k / kGroup, padded = (groups + 7) / 8 * 8;
  std::vector<int16_t> q(m_rows * k);
  std::vector<float> s(m_rows * padded), sum(m_rows * padded);
  const RowsQ16 rq{q.data(), s.data(), sum.data()};
  quantize_rows_q16(x, m_rows, k, rq);
  // Small grains: one stream's decode step has few rows per weight, and both cores should share them.
  with_layout(format, [&](auto layout) {
    using L = decltype(layout);
    const int64_t row_bytes = groups * L::kBytes;
    at::parallel_for(0, n_total, 16, [&](int64_t begin, int64_t end) {
      rows_times_q16<L::kWide, L::kByte, L::kPair>(blocks + begin * row_bytes, row_bytes, groups, end - begin, rq,
                                                   m_rows, k, out + begin, n_total);
    });
  });
}
