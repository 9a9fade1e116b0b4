// A whole decode step of a llama stack in one torch op, for the lean llama forward (app/inference/lean_llama.py):
// every layer's norm and q/k/v, rotary, the new keys and values written into the cache's room, attention over the
// cache, the output projection, and the gated MLP, with no Python between them. One stream's decode step was about
// 600 ops called from Python, a few microseconds of dispatch each, around 4 ms of its 15.
//
//   decode_layers(h [rows, hidden], weights, formats, sizes, eps, cos, sin, heads, kv_heads, head_dim,
//                 keys, values, held, mask, scaling) -> h after the last layer
//
// weights: six tensors a layer (input norm, q/k/v blocks, output blocks, post-attention norm, gate/up blocks, down
// blocks); formats and sizes: four a layer (block format and output rows of q/k/v, output, gate/up, down).
// keys and values: a layer's cache buffers [rows, kv_heads, columns, head_dim] (kv_room.py), whose first `held`
// columns are the cache and where column `held` receives this step's key and value. mask: None, or additive
// [rows, held + 1] (0 or -inf; padding). Each step is the op decode_ops.cpp defines for it, so the result is what
// calling them one by one from Python computes; attention is the softmax of q.k * scaling + mask over the held
// columns and the new one, in fp32, as torch's SDPA computes it up to summation order and a 1-ulp exp.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/library.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "decode_ops.h"
#include "gguf_layout.h"

namespace {

constexpr int64_t kWeightsPerLayer = 6, kMatmulsPerLayer = 4;

// exp(x) for x <= 0 (a softmax's scores less their maximum), Cephes' single-precision polynomial (about 1 ulp, as
// torch's vectorized exp); below -87.3, -inf included, exactly 0.
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 low = _mm256_set1_ps(-87.3f);
  const __m256 underflow = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
  x = _mm256_max_ps(x, low);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // x - n ln 2, ln 2 in two parts
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(underflow, _mm256_mul_ps(y, _mm256_castsi256_ps(two_n)));
}

// scores[j] = q . keys[j] * scale + add[j] for j < length; four keys at a time, so four FMA chains run side by side.
void scores(const float* q, const float* keys, int64_t length, int64_t d, float scale, const float* add,
            float* out) {
  int64_t j = 0;
  for (; j + 4 <= length; j += 4) {
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t c = 0; c < d; c += 8) {
      const __m256 qc = _mm256_loadu_ps(q + c);
      #pragma GCC unroll 4
      for (int t = 0; t < 4; ++t) a[t] = _mm256_fmadd_ps(qc, _mm256_loadu_ps(keys + (j + t) * d + c), a[t]);
    }
    #pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) out[j + t] = hsum(a[t]) * scale + (add ? add[j + t] : 0.0f);
  }
  for (; j < length; ++j) {
    __m256 a = _mm256_setzero_ps();
    for (int64_t c = 0; c < d; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(keys + j * d + c), a);
    out[j] = hsum(a) * scale + (add ? add[j] : 0.0f);
  }
}

// p[0, length) := exp(p - max p), in place; p has room for `length` rounded up to 8. Returns the sum.
float softmax_numerators(float* p, int64_t length) {
  const int64_t padded = (length + 7) / 8 * 8;
  float top = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < length; ++j) top = std::max(top, p[j]);
  for (int64_t j = length; j < padded; ++j) p[j] = -std::numeric_limits<float>::infinity();
  const __m256 shift = _mm256_set1_ps(top);
  __m256 total = _mm256_setzero_ps();
  for (int64_t j = 0; j < padded; j += 8) {
    const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p + j), shift));
    _mm256_storeu_ps(p + j, e);
    total = _mm256_add_ps(total, e);
  }
  return hsum(total);
}

// out[0, d) = sum_j p[j] values[j] / total; eight columns of registers at a time, independent FMA chains.
void weighted_sum(const float* p, const float* values, int64_t length, int64_t d, float total, float* out) {
  const __m256 inv = _mm256_set1_ps(1.0f / total);
  for (int64_t c0 = 0; c0 < d; c0 += 64) {
    const int64_t chunks = std::min<int64_t>(64, d - c0) / 8;
    __m256 acc[8];
    for (int64_t t = 0; t < 8; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t j = 0; j < length; ++j) {
      const __m256 w = _mm256_set1_ps(p[j]);
      const float* v = values + j * d + c0;
      for (int64_t t = 0; t < chunks; ++t) acc[t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * t), acc[t]);
    }
    for (int64_t t = 0; t < chunks; ++t) _mm256_storeu_ps(out + c0 + 8 * t, _mm256_mul_ps(acc[t], inv));
  }
}

struct Shape {
  int64_t rows, heads, kv_heads, head_dim, held, columns;
};

void check_cache(const at::Tensor& t, const Shape& s, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.dim() == 4 &&
                  t.size(0) == s.rows && t.size(1) == s.kv_heads && t.size(3) == s.head_dim && t.size(2) > s.held,
              "decode_layers: each layer's ", name, " must be a contiguous float32 buffer [", s.rows, ", ", s.kv_heads,
              ", columns > ", s.held, ", ", s.head_dim, "], got ", t.sizes());
}

// Writes the new key and value of every row into column `held` and returns the attention output [rows, heads * d].
at::Tensor attend(const at::Tensor& qkv, at::Tensor& keys, at::Tensor& values, const Shape& s,
                  const c10::optional<at::Tensor>& mask, double scaling) {
  const int64_t d = s.head_dim, width = qkv.size(1), length = s.held + 1, group = s.heads / s.kv_heads;
  const int64_t row_stride = s.kv_heads * s.columns * d, head_stride = s.columns * d;
  const float* src = qkv.data_ptr<float>();
  float* kb = keys.data_ptr<float>();
  float* vb = values.data_ptr<float>();
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t h = 0; h < s.kv_heads; ++h) {
      const float* k = src + r * width + (s.heads + h) * d;
      std::copy(k, k + d, kb + r * row_stride + h * head_stride + s.held * d);
      std::copy(k + s.kv_heads * d, k + s.kv_heads * d + d, vb + r * row_stride + h * head_stride + s.held * d);
    }
  const float* add = mask.has_value() ? mask->data_ptr<float>() : nullptr;
  auto out = at::empty({s.rows, s.heads * d}, qkv.options());
  float* dst = out.data_ptr<float>();
  const float scale = static_cast<float>(scaling);
  // A row's heads stay on one thread unless there are many rows: one head over a short cache is a few microseconds.
  at::parallel_for(0, s.rows * s.heads, s.heads, [&](int64_t begin, int64_t end) {
    std::vector<float> p((length + 7) / 8 * 8);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / s.heads, h = i % s.heads, kv = r * row_stride + (h / group) * head_stride;
      scores(src + r * width + h * d, kb + kv, length, d, scale, add ? add + r * length : nullptr, p.data());
      const float total = softmax_numerators(p.data(), length);
      weighted_sum(p.data(), vb + kv, length, d, total, dst + r * s.heads * d + h * d);
    }
  });
  return out;
}

at::Tensor decode_layers(const at::Tensor& h0, at::TensorList weights, at::IntArrayRef formats, at::IntArrayRef sizes,
                         double eps, const at::Tensor& cos, const at::Tensor& sin, int64_t heads, int64_t kv_heads,
                         int64_t head_dim, at::TensorList keys, at::TensorList values, int64_t held,
                         const c10::optional<at::Tensor>& mask, double scaling) {
  check_rows(h0, "h");
  const int64_t layers = static_cast<int64_t>(keys.size());
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == kWeightsPerLayer * layers &&
                  static_cast<int64_t>(formats.size()) == kMatmulsPerLayer * layers &&
                  static_cast<int64_t>(sizes.size()) == kMatmulsPerLayer * layers &&
                  static_cast<int64_t>(values.size()) == layers,
              "decode_layers: ", layers, " layers need ", kWeightsPerLayer * layers, " weights, ",
              kMatmulsPerLayer * layers, " formats and sizes and as many value buffers as key buffers");
  TORCH_CHECK(head_dim % 8 == 0 && kv_heads > 0 && heads % kv_heads == 0,
              "decode_layers: head_dim must be a multiple of 8 and heads a multiple of kv_heads");
  Shape s{h0.size(0), heads, kv_heads, head_dim, held, 0};
  if (mask.has_value()) {
    check_rows(*mask, "mask");
    TORCH_CHECK(mask->size(0) == s.rows && mask->size(1) == held + 1, "decode_layers: the mask must be [", s.rows,
                ", ", held + 1, "], got ", mask->sizes());
  }
  at::Tensor h = h0;
  for (int64_t l = 0; l < layers; ++l) {
    const at::Tensor* w = weights.data() + kWeightsPerLayer * l;
    const int64_t* f = formats.data() + kMatmulsPerLayer * l;
    const int64_t* n = sizes.data() + kMatmulsPerLayer * l;
    at::Tensor k = keys[l], v = values[l];
    s.columns = k.size(2);
    check_cache(k, s, "keys");
    check_cache(v, s, "values");
    TORCH_CHECK(v.size(2) == s.columns, "decode_layers: a layer's keys and values must have as many columns");
    // Each step is a profiler scope of its own (bench/decode_profile.py tells the matmuls from the rest by name).
    at::Tensor qkv;
    {
      RECORD_FUNCTION("clawbot_gguf::mm_normed", c10::ArrayRef<const c10::IValue>{});
      qkv = mm_normed(h, w[1], f[0], n[0], w[0], eps);
    }
    TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * head_dim, "decode_layers: layer ", l, "'s q/k/v has ",
                qkv.size(1), " columns, not (heads + 2 kv_heads) * head_dim");
    at::Tensor a;
    {
      RECORD_FUNCTION("clawbot_gguf::attention", c10::ArrayRef<const c10::IValue>{});
      rope_(qkv, cos, sin, heads + kv_heads, head_dim);
      a = attend(qkv, k, v, s, mask, scaling);
    }
    {
      RECORD_FUNCTION("clawbot_gguf::mm_residual", c10::ArrayRef<const c10::IValue>{});
      h = mm_residual(a, w[2], f[1], n[1], h);
    }
    at::Tensor gate_up;
    {
      RECORD_FUNCTION("clawbot_gguf::mm_normed", c10::ArrayRef<const c10::IValue>{});
      gate_up = mm_normed(h, w[4], f[2], n[2], w[3], eps);
    }
    RECORD_FUNCTION("clawbot_gguf::mm_gated", c10::ArrayRef<const c10::IValue>{});
    h = mm_gated(gate_up, w[5], f[3], n[3], h);
  }
  return h;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(clawbot_gguf, m) {
  m.def(
      "decode_layers(Tensor h, Tensor[] weights, int[] formats, int[] sizes, float eps, Tensor cos, Tensor sin, "
      "int heads, int kv_heads, int head_dim, Tensor(a!)[] keys, Tensor(b!)[] values, int held, Tensor? mask, "
      "float scaling) -> Tensor",
      decode_layers);
}
