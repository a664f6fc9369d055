/* The torch ops puyu::int4_matmul, puyu::int8_matmul (gemv.c) and puyu::paged_decode_attention (attention.c); their
 * schemas are defined in build.py and their fake kernels beside their Python wrappers.  puyu.kernels.build compiles
 * this once per torch version and hands it the kernels of the build the CPU runs (puyu_use_kernels), so one
 * registration serves every build and a test can switch between them.
 *
 * Why a C++ kernel registered with the dispatcher: a decode step makes some 120 of these products, and a Python kernel
 * reaching the C code through ctypes cost about 16 us a call in a compiled graph (the dispatcher calls back into
 * Python, which converts nine ctypes arguments), against about 5 us here: 1.5 ms of a 15 ms decode step of the
 * built-in model (measured on 2 AVX2 cores).  The dispatcher releases the GIL around the call, as ctypes did. */
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>

using Int4Kernel = int (*)(const float *, int64_t, int64_t, const uint32_t *, const uint16_t *, int64_t, int64_t, int, float *, int);
using Int8Kernel = int (*)(const float *, int64_t, int64_t, const int8_t *, const float *, int64_t, float *, int);
using AttentionKernel = int (*)(const float *, int64_t, int64_t, int64_t, int64_t, const float *, const float *, int64_t,
                                const int64_t *, int64_t, int64_t, const int64_t *, const int64_t *, float, float *, int);
static Int4Kernel int4_kernel = nullptr;
static Int8Kernel int8_kernel = nullptr;
static AttentionKernel attention_kernel = nullptr;

extern "C" void puyu_use_kernels(void *int4, void *int8, void *attention) {
    int4_kernel = reinterpret_cast<Int4Kernel>(int4);
    int8_kernel = reinterpret_cast<Int8Kernel>(int8);
    attention_kernel = reinterpret_cast<AttentionKernel>(attention);
}

static void check(int code, const char *what) {
    TORCH_CHECK(code != 1, what, ": shapes not multiples of 32");
    TORCH_CHECK(code != 2, what, ": out of memory");
}

/* x [..., K] in any float dtype as contiguous float32 rows, and an empty float32 output [..., n]. */
static std::pair<at::Tensor, at::Tensor> prepare(const at::Tensor &x, int64_t n, bool ready, const char *what) {
    TORCH_CHECK(ready, what, ": the kernels were not loaded (puyu.kernels.build loads them)");
    TORCH_CHECK(x.device().is_cpu() && x.is_floating_point() && x.dim() > 0 && x.size(-1) > 0, what,
                ": x must be a float tensor [..., K] on the CPU");
    at::Tensor flat = x.scalar_type() == at::kFloat ? x.contiguous() : x.to(at::kFloat).contiguous();
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = n;
    return {flat, at::empty(sizes, flat.options())};
}

static at::Tensor int4_matmul(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &table, int64_t group_size, int64_t n,
                              int64_t activation_bits) {
    TORCH_CHECK(activation_bits == 8 || activation_bits == 16, "int4 matmul: activation_bits must be 8 or 16");
    auto [flat, y] = prepare(x, n, int4_kernel != nullptr, "int4 matmul");
    const int64_t k = x.size(-1);
    check(int4_kernel(flat.data_ptr<float>(), flat.numel() / k, k, static_cast<const uint32_t *>(codes.data_ptr()),
                      static_cast<const uint16_t *>(table.data_ptr()), n, group_size, static_cast<int>(activation_bits),
                      y.data_ptr<float>(), at::get_num_threads()),
          "int4 matmul");
    return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

static at::Tensor int8_matmul(const at::Tensor &x, const at::Tensor &codes, const at::Tensor &scale, int64_t n) {
    auto [flat, y] = prepare(x, n, int8_kernel != nullptr, "int8 matmul");
    const int64_t k = x.size(-1);
    check(int8_kernel(flat.data_ptr<float>(), flat.numel() / k, k, static_cast<const int8_t *>(codes.data_ptr()),
                      scale.data_ptr<float>(), n, y.data_ptr<float>(), at::get_num_threads()),
          "int8 matmul");
    return x.scalar_type() == at::kFloat ? y : y.to(x.scalar_type());
}

/* q [B, H, D] float32; keys/values [S, KV, D] float32 (one layer of the paged cache); slots [C, L] int64; lengths [B]
 * int64; rows [B] int64 or none (C = B): query b's context is the first lengths[b] entries of slots row rows[b]
 * -> [B, H, D], scaled by 1/sqrt(D). */
static at::Tensor paged_decode_attention(const at::Tensor &q, const at::Tensor &keys, const at::Tensor &values,
                                         const at::Tensor &slots, const at::Tensor &lengths, const std::optional<at::Tensor> &rows) {
    const char *what = "paged decode attention";
    TORCH_CHECK(attention_kernel != nullptr, what, ": the kernels were not loaded (puyu.kernels.build loads them)");
    TORCH_CHECK(q.dim() == 3 && keys.dim() == 3 && values.sizes() == keys.sizes() && slots.dim() == 2 && lengths.dim() == 1,
                what, ": expected q [B, H, D], keys and values [S, KV, D], slots [B, L], lengths [B]");
    TORCH_CHECK(q.scalar_type() == at::kFloat && keys.scalar_type() == at::kFloat && values.scalar_type() == at::kFloat,
                what, ": float32 tensors only");
    TORCH_CHECK(slots.scalar_type() == at::kLong && lengths.scalar_type() == at::kLong, what, ": int64 slots and lengths");
    const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KV = keys.size(1);
    TORCH_CHECK(keys.size(2) == D && H % KV == 0 && lengths.size(0) == B && (rows.has_value() || slots.size(0) == B), what,
                ": shapes disagree");
    TORCH_CHECK(!rows.has_value() || (rows->dim() == 1 && rows->size(0) == B && rows->scalar_type() == at::kLong), what,
                ": rows must be int64 [B]");
    TORCH_CHECK(keys.is_contiguous() && values.is_contiguous(), what, ": the cache must be contiguous");
    at::Tensor qc = q.contiguous(), sc = slots.contiguous(), lc = lengths.contiguous();
    at::Tensor rc = rows.has_value() ? rows->contiguous() : at::Tensor();
    at::Tensor out = at::empty_like(qc);
    if (B == 0) return out;
    const int code = attention_kernel(qc.data_ptr<float>(), B, H, KV, D, keys.data_ptr<float>(), values.data_ptr<float>(),
                                      keys.size(0), sc.data_ptr<int64_t>(), sc.size(0), sc.size(1),
                                      rows.has_value() ? rc.data_ptr<int64_t>() : nullptr, lc.data_ptr<int64_t>(),
                                      1.0f / std::sqrt(static_cast<float>(D)), out.data_ptr<float>(), at::get_num_threads());
    TORCH_CHECK(code != 3, what, ": a slot or a length is out of range");
    TORCH_CHECK(code != 2, what, ": out of memory");
    return out;
}

TORCH_LIBRARY_IMPL(puyu, CPU, m) {
    m.impl("int4_matmul", int4_matmul);
    m.impl("int8_matmul", int8_matmul);
    m.impl("paged_decode_attention", paged_decode_attention);
}
