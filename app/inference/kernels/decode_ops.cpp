// The small steps around a decode step's matmuls, each folded into one torch op, for the lean llama forward
// (app/inference/lean_llama.py). One stream's decode step is mostly dispatch: every op called from Python costs
// several microseconds however little it computes, and a layer had about thirty of them. These ops compute what the
// Python computed, in fp32, in one call each:
//
//   mm_normed(x, blocks, format, n, norm, eps)  rms_norm(x) * norm, then the block matmul (gguf_cpu.cpp)
//   mm_gated(x, blocks, format, n, residual)     silu(x[:, :K]) * x[:, K:], the block matmul, plus residual
//   mm_residual(x, blocks, format, n, residual)  the block matmul plus residual
//   rope_(qkv, cos, sin, heads, head_dim)        rotary embedding of the first `heads` heads of each row, in place
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "decode_ops.h"
#include "gguf_cpu.h"

void check_rows(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 2 && x.is_contiguous(), name,
              " must be a contiguous 2-D float32 CPU tensor");
}

// rms_norm over the last dimension, as torch.nn.functional.rms_norm computes it in fp32: x * rsqrt(mean(x^2) + eps)
// * weight.
at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_rows(x, "x");
  const int64_t rows = x.size(0), k = x.size(1);
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.numel() == k && weight.is_contiguous(),
              "the norm weight must be float32 with one value per input column");
  auto out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = src + r * k;
      float sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) sum += xr[j] * xr[j];
      const float scale = 1.0f / std::sqrt(sum / static_cast<float>(k) + static_cast<float>(eps));
      for (int64_t j = 0; j < k; ++j) dst[r * k + j] = xr[j] * scale * w[j];
    }
  });
  return out;
}

at::Tensor mm_normed(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n, const at::Tensor& norm,
                     double eps) {
  return gguf_mm(rms_norm_rows(x, norm, eps), blocks, format, n);
}

namespace {

void add_residual(at::Tensor& out, const at::Tensor& residual) {
  check_rows(residual, "residual");
  TORCH_CHECK(residual.sizes() == out.sizes(), "the residual must have the output's shape ", out.sizes(), ", got ",
              residual.sizes());
  float* o = out.data_ptr<float>();
  const float* r = residual.data_ptr<float>();
  const int64_t total = out.numel();
  for (int64_t i = 0; i < total; ++i) o[i] = r[i] + o[i];
}

}  // namespace

at::Tensor mm_residual(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n,
                       const at::Tensor& residual) {
  auto out = gguf_mm(x, blocks, format, n);
  add_residual(out, residual);
  return out;
}

at::Tensor mm_gated(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n,
                    const at::Tensor& residual) {
  check_rows(x, "x");
  TORCH_CHECK(x.size(1) % 2 == 0, "a gated input holds gate and up side by side: an even width, got ", x.size(1));
  const int64_t rows = x.size(0), k = x.size(1) / 2;
  auto act = at::empty({rows, k}, x.options());
  const float* src = x.data_ptr<float>();
  float* dst = act.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t j = 0; j < k; ++j) {
        const float g = src[r * 2 * k + j], u = src[r * 2 * k + k + j];
        dst[r * k + j] = g / (1.0f + std::exp(-g)) * u;  // silu(g) * up
      }
  });
  auto out = gguf_mm(act, blocks, format, n);
  add_residual(out, residual);
  return out;
}

// qkv [rows, width] holds each row's heads side by side, head_dim values each; the first `heads` of them (q and k)
// are rotated: out[j] = x[j] cos[j] - x[j + half] sin[j] for j < half, x[j] cos[j] + x[j - half] sin[j] above.
// cos and sin are [rows, head_dim].
at::Tensor& rope_(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads, int64_t head_dim) {
  check_rows(qkv, "qkv");
  check_rows(cos, "cos");
  check_rows(sin, "sin");
  const int64_t rows = qkv.size(0), width = qkv.size(1), half = head_dim / 2;
  TORCH_CHECK(head_dim % 2 == 0 && heads * head_dim <= width, "rope_: ", heads, " heads of ", head_dim,
              " do not fit a row of ", width);
  TORCH_CHECK(cos.size(0) == rows && cos.size(1) == head_dim && sin.sizes() == cos.sizes(),
              "rope_: cos and sin must be [rows, head_dim]");
  float* base = qkv.data_ptr<float>();
  const float* c = cos.data_ptr<float>();
  const float* s = sin.data_ptr<float>();
  at::parallel_for(0, rows * heads, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / heads, h = i % heads;
      float* v = base + r * width + h * head_dim;
      const float* cr = c + r * head_dim;
      const float* sr = s + r * head_dim;
      for (int64_t j = 0; j < half; ++j) {
        const float a = v[j], b = v[j + half];
        v[j] = a * cr[j] - b * sr[j];
        v[j + half] = b * cr[j + half] + a * sr[j + half];
      }
    }
  });
  return qkv;
}

TORCH_LIBRARY_FRAGMENT(clawbot_gguf, m) {
  m.def("mm_normed(Tensor x, Tensor blocks, int format, int n, Tensor norm, float eps) -> Tensor", mm_normed);
  m.def("mm_gated(Tensor x, Tensor blocks, int format, int n, Tensor residual) -> Tensor", mm_gated);
  m.def("mm_residual(Tensor x, Tensor blocks, int format, int n, Tensor residual) -> Tensor", mm_residual);
  m.def("rope_(Tensor(a!) qkv, Tensor cos, Tensor sin, int heads, int head_dim) -> Tensor(a!)", rope_);
}
