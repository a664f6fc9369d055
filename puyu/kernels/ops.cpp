/* The torch ops puyu::int4_matmul, puyu::int8_matmul (gemv.c), puyu::paged_decode_attention (attention.c),
 * puyu::softmax_cross_entropy_ (cross_entropy.c), puyu::rms_norm_forward/backward (rms_norm.c), puyu::rope (rope.c) and
 * puyu::span_attention/_backward (span_attention.c);
 * their schemas are defined in build.py and their fake kernels beside their Python wrappers.  puyu.kernels.build compiles
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
#include <tuple>

using Int4Kernel = int (*)(const float *, int64_t, int64_t, const uint32_t *, const uint16_t *, int64_t, int64_t, int, float *, int);
using Int8Kernel = int (*)(const float *, int64_t, int64_t, const int8_t *, const float *, int64_t, float *, int);
using AttentionKernel = int (*)(const float *, int64_t, int64_t, int64_t, int64_t, const float *, const float *, int64_t,
                                const int64_t *, int64_t, int64_t, const int64_t *, const int64_t *, float, float *, int);
using CrossEntropyKernel = int (*)(void *, int, int64_t, int64_t, int64_t, const int64_t *, int, float *, int);
using NormForwardKernel = int (*)(const void *, int, int64_t, int64_t, const void *, int, float, void *, float *, int);
using NormBackwardKernel = int (*)(const void *, const void *, int, int64_t, int64_t, const void *, int, const float *, void *,
                                   float *, int);
using RopeKernel = void (*)(const void *, int, int64_t, int64_t, int64_t, const void *, const void *, int, void *, int, int, int);
static Int4Kernel int4_kernel = nullptr;
static Int8Kernel int8_kernel = nullptr;
static AttentionKernel attention_kernel = nullptr;
static CrossEntropyKernel cross_entropy_kernel = nullptr;
static NormForwardKernel norm_forward_kernel = nullptr;
static NormBackwardKernel norm_backward_kernel = nullptr;
using SpanForwardKernel = int (*)(const float *, const float *, const float *, int64_t, int64_t, int64_t, int64_t, int64_t,
                                  const int64_t *, int64_t, float *, float *, int);
using SpanBackwardKernel = int (*)(const float *, const float *, const float *, const float *, const float *, const float *,
                                   int64_t, int64_t, int64_t, int64_t, int64_t, const int64_t *, int64_t, float *, float *,
                                   float *, int);
static RopeKernel rope_kernel = nullptr;
static SpanForwardKernel span_forward_kernel = nullptr;
static SpanBackwardKernel span_backward_kernel = nullptr;

/* The kernels of one build, in the order of build.py's KERNELS. */
extern "C" void puyu_use_kernels(void *const *k) {
    int4_kernel = reinterpret_cast<Int4Kernel>(k[0]);
    int8_kernel = reinterpret_cast<Int8Kernel>(k[1]);
    attention_kernel = reinterpret_cast<AttentionKernel>(k[2]);
    cross_entropy_kernel = reinterpret_cast<CrossEntropyKernel>(k[3]);
    norm_forward_kernel = reinterpret_cast<NormForwardKernel>(k[4]);
    norm_backward_kernel = reinterpret_cast<NormBackwardKernel>(k[5]);
    rope_kernel = reinterpret_cast<RopeKernel>(k[6]);
    span_forward_kernel = reinterpret_cast<SpanForwardKernel>(k[7]);
    span_backward_kernel = reinterpret_cast<SpanBackwardKernel>(k[8]);
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

/* logits [n, V] float32 or bf16, contiguous, overwritten by the gradient when grad; targets [n] int64 (the first rows
 * are real, the rest padding) -> the loss of each row [n] float32. */
static at::Tensor softmax_cross_entropy_(at::Tensor &logits, const at::Tensor &targets, int64_t rows, bool grad) {
    const char *what = "softmax cross-entropy";
    TORCH_CHECK(cross_entropy_kernel != nullptr, what, ": the kernels were not loaded (puyu.kernels.build loads them)");
    TORCH_CHECK(logits.device().is_cpu() && logits.dim() == 2 && logits.is_contiguous() &&
                    (logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kBFloat16),
                what, ": logits must be a contiguous float32 or bf16 [n, V] CPU tensor");
    TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong, what,
                ": targets must be int64 [n]");
    TORCH_CHECK(rows >= 0 && rows <= logits.size(0), what, ": rows out of range");
    at::Tensor tc = targets.contiguous();
    at::Tensor loss = at::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
    const int code = cross_entropy_kernel(logits.data_ptr(), logits.scalar_type() == at::kBFloat16, logits.size(0), logits.size(1),
                                          rows, tc.data_ptr<int64_t>(), grad, loss.data_ptr<float>(), at::get_num_threads());
    TORCH_CHECK(code != 3, what, ": a target is out of range");
    TORCH_CHECK(code != 2, what, ": out of memory");
    return loss;
}

static bool float_or_bf16(const at::Tensor &t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16; }

/* x [..., D] and weight [D], float32 or bf16, contiguous -> (y, rstd [rows] float32); y is bf16 when both are. */
static std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor &x, const at::Tensor &weight, double eps) {
    const char *what = "rms norm";
    TORCH_CHECK(norm_forward_kernel != nullptr, what, ": the kernels were not loaded (puyu.kernels.build loads them)");
    TORCH_CHECK(x.device().is_cpu() && x.dim() > 0 && x.is_contiguous() && weight.is_contiguous() && float_or_bf16(x) &&
                    float_or_bf16(weight) && weight.dim() == 1 && weight.size(0) == x.size(-1) && x.size(-1) > 0,
                what, ": x [..., D] and weight [D] must be contiguous float32 or bf16 CPU tensors");
    const bool x_bf16 = x.scalar_type() == at::kBFloat16, w_bf16 = weight.scalar_type() == at::kBFloat16;
    const int64_t D = x.size(-1), rows = x.numel() / D;
    at::Tensor y = at::empty(x.sizes(), x.options().dtype(x_bf16 && w_bf16 ? at::kBFloat16 : at::kFloat));
    at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
    norm_forward_kernel(x.data_ptr(), x_bf16, rows, D, weight.data_ptr(), w_bf16, static_cast<float>(eps), y.data_ptr(),
                        rstd.data_ptr<float>(), at::get_num_threads());
    return {y, rstd};
}

/* grad [..., D] in y's dtype -> (dx in x's dtype, dweight [D] float32). */
static std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor &grad, const at::Tensor &x, const at::Tensor &weight,
                                                            const at::Tensor &rstd) {
    const char *what = "rms norm backward";
    TORCH_CHECK(norm_backward_kernel != nullptr, what, ": the kernels were not loaded (puyu.kernels.build loads them)");
    const bool x_bf16 = x.scalar_type() == at::kBFloat16, w_bf16 = weight.scalar_type() == at::kBFloat16;
    const at::Tensor g = grad.to(x_bf16 && w_bf16 ? at::kBFloat16 : at::kFloat).contiguous();
    TORCH_CHECK(g.sizes() == x.sizes() && rstd.numel() == x.numel() / x.size(-1), what, ": shapes disagree");
    at::Tensor dx = at::empty_like(x);
    at::Tensor dw = at::empty({x.size(-1)}, x.options().dtype(at::kFloat));
    const int code = norm_backward_kernel(g.data_ptr(), x.data_ptr(), x_bf16, x.numel() / x.size(-1), x.size(-1),
                                          weight.data_ptr(), w_bf16, rstd.data_ptr<float>(), dx.data_ptr(), dw.data_ptr<float>(),
                                          at::get_num_threads());
    TORCH_CHECK(code != 2, what, ": out of memory");
    return {dx, dw};
}

/* x [B, T, H, D] and tables cos, sin [B, T, D] (float32 or bf16) -> x rotated, or with backward the gradient x
 * rotated back; the result is bf16 when bf16_out, else float32. */
static at::Tensor rope(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin, bool backward, bool bf16_out) {
    const char *what = "rope";
    TORCH_CHECK(rope_kernel != nullptr, what, ": the kernels were not loaded (puyu.kernels.build loads them)");
    TORCH_CHECK(x.device().is_cpu() && x.dim() == 4 && cos.dim() == 3 && sin.sizes() == cos.sizes() && cos.size(0) == x.size(0) &&
                    cos.size(1) == x.size(1) && cos.size(2) == x.size(3) && x.size(3) % 2 == 0,
                what, ": expected x [B, T, H, D] and tables [B, T, D], D even");
    TORCH_CHECK(float_or_bf16(x) && float_or_bf16(cos) && cos.scalar_type() == sin.scalar_type(), what,
                ": float32 or bf16 tensors, both tables of one dtype");
    const at::Tensor xc = x.contiguous(), cc = cos.contiguous(), sc = sin.contiguous();
    at::Tensor out = at::empty(x.sizes(), x.options().dtype(bf16_out ? at::kBFloat16 : at::kFloat));
    rope_kernel(xc.data_ptr(), x.scalar_type() == at::kBFloat16, x.size(0) * x.size(1), x.size(2), x.size(3), cc.data_ptr(),
                sc.data_ptr(), cos.scalar_type() == at::kBFloat16, out.data_ptr(), bf16_out, backward, at::get_num_threads());
    return out;
}

/* q [B, T, H, D], k and v [B, T, KV, D] float32, spans [N, 3] int64 (row, start, end): the checks both directions share. */
static void check_spans(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, const at::Tensor &spans, const char *what) {
    TORCH_CHECK(span_forward_kernel != nullptr, what, ": the kernels were not loaded (puyu.kernels.build loads them)");
    TORCH_CHECK(q.device().is_cpu() && q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && k.size(0) == q.size(0) &&
                    k.size(1) == q.size(1) && k.size(3) == q.size(3) && k.size(2) > 0 && q.size(2) % k.size(2) == 0 &&
                    q.size(3) % 8 == 0 && q.size(3) > 0,
                what, ": expected q [B, T, H, D] and k, v [B, T, KV, D] with H a multiple of KV and D of 8");
    TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat, what,
                ": float32 tensors only");
    TORCH_CHECK(spans.dim() == 2 && spans.size(1) == 3 && spans.scalar_type() == at::kLong, what,
                ": spans must be int64 [N, 3] (row, start, end)");
}

static std::tuple<at::Tensor, at::Tensor> span_attention(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                                                         const at::Tensor &spans) {
    const char *what = "span attention";
    check_spans(q, k, v, spans, what);
    const at::Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous(), sc = spans.contiguous();
    at::Tensor out = at::empty_like(qc), lse = at::empty({q.size(0), q.size(1), q.size(2)}, qc.options());
    const int code = span_forward_kernel(qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(), q.size(0), q.size(1),
                                         q.size(2), k.size(2), q.size(3), sc.data_ptr<int64_t>(), sc.size(0), out.data_ptr<float>(),
                                         lse.data_ptr<float>(), at::get_num_threads());
    TORCH_CHECK(code != 3, what, ": a span is out of range");
    TORCH_CHECK(code != 2, what, ": out of memory");
    return {out, lse};
}

static std::tuple<at::Tensor, at::Tensor, at::Tensor> span_attention_backward(const at::Tensor &grad, const at::Tensor &q,
                                                                              const at::Tensor &k, const at::Tensor &v,
                                                                              const at::Tensor &out, const at::Tensor &lse,
                                                                              const at::Tensor &spans) {
    const char *what = "span attention backward";
    check_spans(q, k, v, spans, what);
    TORCH_CHECK(grad.sizes() == q.sizes() && out.sizes() == q.sizes() && lse.numel() == q.numel() / q.size(3) &&
                    out.scalar_type() == at::kFloat && lse.scalar_type() == at::kFloat,
                what, ": the gradient, output and log-sum-exp disagree with q");
    const at::Tensor g = grad.to(at::kFloat).contiguous(), qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
    const at::Tensor oc = out.contiguous(), lc = lse.contiguous(), sc = spans.contiguous();
    at::Tensor dq = at::empty_like(qc), dk = at::empty_like(kc), dv = at::empty_like(vc);
    const int code = span_backward_kernel(g.data_ptr<float>(), qc.data_ptr<float>(), kc.data_ptr<float>(), vc.data_ptr<float>(),
                                          oc.data_ptr<float>(), lc.data_ptr<float>(), q.size(0), q.size(1), q.size(2), k.size(2),
                                          q.size(3), sc.data_ptr<int64_t>(), sc.size(0), dq.data_ptr<float>(), dk.data_ptr<float>(),
                                          dv.data_ptr<float>(), at::get_num_threads());
    TORCH_CHECK(code != 3, what, ": a span is out of range");
    TORCH_CHECK(code != 2, what, ": out of memory");
    return {dq, dk, dv};
}

TORCH_LIBRARY_IMPL(puyu, CPU, m) {
    m.impl("int4_matmul", int4_matmul);
    m.impl("int8_matmul", int8_matmul);
    m.impl("paged_decode_attention", paged_decode_attention);
    m.impl("softmax_cross_entropy_", softmax_cross_entropy_);
    m.impl("rms_norm_forward", rms_norm_forward);
    m.impl("rms_norm_backward", rms_norm_backward);
    m.impl("rope", rope);
    m.impl("span_attention", span_attention);
    m.impl("span_attention_backward", span_attention_backward);
}
