// What decode_ops.cpp calls in gguf_cpu.cpp: the block matmul (see gguf_cpu.cpp for the block formats).
#pragma once
#include <ATen/ATen.h>

// x [M, K] float32 times the GGUF-style block weight [N rows] -> [M, N] float32.
at::Tensor gguf_mm(const at::Tensor& x, const at::Tensor& blocks, int64_t format, int64_t n);
