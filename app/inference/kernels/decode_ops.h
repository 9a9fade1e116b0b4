// The steps of a lean llama layer (decode_ops.cpp), which decode_layers.cpp chains into whole decode steps.
#pragma once
#include <ATen/ATen.h>

// x must be a contiguous 2-D float32 CPU tensor; `name` is what the error calls it.
void check_rows(const at::Tensor& x, const char* name);
at::Tensor rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor mm_normed(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n, const at::Tensor& norm,
                     double eps);
at::Tensor mm_residual(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n,
                       const at::Tensor& residual);
at::Tensor mm_gated(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n,
                    const at::Tensor& residual);
at::Tensor& rope_(at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t heads, int64_t head_dim);
