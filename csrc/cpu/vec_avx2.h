// 256-bit AVX2+FMA vectors for kernels_impl.h. Included by kernels_avx2.cpp inside its
// target("avx2,fma") region; relies on <immintrin.h> and <cmath> having been included before that
// region.
//
// tanh for float is vectorised (the recurrence applies it to every hidden unit of every step, so a
// scalar libm call would cost more than the mat-vec at small sizes). It follows Cephes' tanhf: an
// odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above, with a Cephes-style expf. Its
// error against torch.tanh is measured by tests/cpu/test_kernels.py. NaN propagates: every min/max
// below keeps its second operand on NaN, and that operand is always the data.
#pragma once

#include "vec_math.h"  // cephes_tanh, in the same instruction-set namespace

template <typename Scalar>
struct VecAvx2;

template <>
struct VecAvx2<float> {
  using T = float;
  using Reg = __m256;
  static constexpr int kWidth = 8;
  static constexpr int kRegisters = 16;

  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg broadcast(T v) { return _mm256_set1_ps(v); }
  static Reg load(const T* p) { return _mm256_loadu_ps(p); }
  static __m256i lane_mask(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Reg load_partial(const T* p, int64_t n) { return _mm256_maskload_ps(p, lane_mask(n)); }
  static void store(T* p, Reg v) { _mm256_storeu_ps(p, v); }
  static void store_partial(T* p, Reg v, int64_t n) { _mm256_maskstore_ps(p, lane_mask(n), v); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static T sum(Reg v) {  // of the lanes
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }

  // The primitives vec_math.h builds exp and tanh from.
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static Reg fnmadd(Reg a, Reg b, Reg c) { return _mm256_fnmadd_ps(a, b, c); }
  static Reg min(Reg a, Reg b) { return _mm256_min_ps(a, b); }
  static Reg floor(Reg x) { return _mm256_floor_ps(x); }
  static Reg abs(Reg x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
  static Reg with_sign_of(Reg v, Reg x) {
    return _mm256_or_ps(v, _mm256_and_ps(_mm256_set1_ps(-0.0f), x));
  }
  static Reg exp2_int(Reg n) {  // 2^n for whole n in float range
    const __m256i e = _mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static Reg select_less(Reg a, Reg b, Reg yes, Reg no) {
    return _mm256_blendv_ps(no, yes, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
  }

  static Reg tanh(Reg x) { return cephes_tanh<VecAvx2<float>>(x); }
  static Reg relu(Reg x) { return _mm256_max_ps(_mm256_setzero_ps(), x); }
  static Reg tanh_backward(Reg g, Reg y) {
    return _mm256_mul_ps(g, _mm256_fnmadd_ps(y, y, _mm256_set1_ps(1.0f)));
  }
  static Reg relu_backward(Reg g, Reg y) {
    const Reg nonpositive = _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LE_OQ);
    return _mm256_andnot_ps(nonpositive, g);
  }
};

template <>
struct VecAvx2<double> {
  using T = double;
  using Reg = __m256d;
  static constexpr int kWidth = 4;
  static constexpr int kRegisters = 16;

  static Reg zero() { return _mm256_setzero_pd(); }
  static Reg broadcast(T v) { return _mm256_set1_pd(v); }
  static Reg load(const T* p) { return _mm256_loadu_pd(p); }
  static __m256i lane_mask(int64_t n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static Reg load_partial(const T* p, int64_t n) { return _mm256_maskload_pd(p, lane_mask(n)); }
  static void store(T* p, Reg v) { _mm256_storeu_pd(p, v); }
  static void store_partial(T* p, Reg v, int64_t n) { _mm256_maskstore_pd(p, lane_mask(n), v); }
  static Reg add(Reg a, Reg b) { return _mm256_add_pd(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_pd(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm256_fmadd_pd(a, b, c); }
  static T sum(Reg v) {  // of the lanes
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }

  // float64 is the precision of gradcheck and of reference comparisons, not of speed: use libm's
  // tanh lane by lane so the result is as exact as ATen's.
  static Reg tanh(Reg x) {
    alignas(32) double v[4];
    _mm256_store_pd(v, x);
    for (double& e : v) e = std::tanh(e);
    return _mm256_load_pd(v);
  }
  static Reg relu(Reg x) { return _mm256_max_pd(_mm256_setzero_pd(), x); }
  static Reg tanh_backward(Reg g, Reg y) {
    return _mm256_mul_pd(g, _mm256_fnmadd_pd(y, y, _mm256_set1_pd(1.0)));
  }
  static Reg relu_backward(Reg g, Reg y) {
    const Reg nonpositive = _mm256_cmp_pd(y, _mm256_setzero_pd(), _CMP_LE_OQ);
    return _mm256_andnot_pd(nonpositive, g);
  }
};
