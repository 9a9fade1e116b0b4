// The block layout shared by the kernel's files (gguf_cpu.cpp: formats and the panel GEMM; gguf_rows.cpp: few
// input rows).
#pragma once
#include <c10/util/Exception.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>

constexpr int64_t kGroup = 32;
// kQ8Pair: 8-bit codes with two fp32 scales a block, one per 16 weights (Q6_K's sub-blocks), and an offset.
enum Format : int64_t { kQ4Half = 0, kQ4Float = 1, kQ8Half = 2, kQ8Float = 3, kQ8Pair = 4 };

// A row is laid out as arrays, not as blocks side by side: every block's codes, then every block's d (two for a
// Pair: the first 16 weights', then the last 16's), then every block's m. So each block's codes start at a fixed
// stride. Bytes per block stay the file's where its constants fit: Q4_1 is 16 + 2 + 2.
template <bool Wide, bool Byte, bool Pair = false> struct Layout {
  static_assert(!Pair || (Wide && Byte), "a block with a scale per 16 weights has 8-bit codes and fp32 constants");
  static constexpr bool kWide = Wide, kByte = Byte, kPair = Pair;
  static constexpr int64_t kFormat =
      Pair ? kQ8Pair : (Byte ? (Wide ? kQ8Float : kQ8Half) : (Wide ? kQ4Float : kQ4Half));
  static constexpr int64_t kCodes = Byte ? 32 : 16;  // code bytes per block
  static constexpr int64_t kConst = Wide ? 4 : 2;    // bytes of one constant (d or m)
  static constexpr int64_t kScales = Pair ? 2 : 1;   // scales per block
  static constexpr int64_t kBytes = kCodes + (kScales + 1) * kConst;
  static inline const uint8_t* codes(const uint8_t* row, int64_t g) { return row + g * kCodes; }
  static inline const uint8_t* scales(const uint8_t* row, int64_t groups) { return row + groups * kCodes; }
  static inline const uint8_t* offsets(const uint8_t* row, int64_t groups) {
    return row + groups * (kCodes + kScales * kConst);
  }
  static inline float load1(const uint8_t* p) {
    if constexpr (Wide) { float v; std::memcpy(&v, p, 4); return v; }
    else { uint16_t h; std::memcpy(&h, p, 2); return _cvtsh_ss(h); }
  }
};

// f(Layout<...>{}) for the layout of `format`: the one place a format number becomes a layout type.
template <typename F> decltype(auto) with_layout(int64_t format, F&& f) {
  switch (format) {
    case kQ4Half: return f(Layout<false, false>{});
    case kQ4Float: return f(Layout<true, false>{});
    case kQ8Half: return f(Layout<false, true>{});
    case kQ8Float: return f(Layout<true, true>{});
    case kQ8Pair: return f(Layout<true, true, true>{});
    default: TORCH_CHECK(false, "unknown GGUF block format ", format);
  }
  __builtin_unreachable();
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// x [m_rows, k] float32 (1..7 rows) times the block weight's n_total rows -> out [m_rows, n_total] (gguf_rows.cpp).
void few_rows_mm(int64_t format, const float* x, int64_t m_rows, int64_t k, const uint8_t* blocks, int64_t n_total,
                 float* out);
