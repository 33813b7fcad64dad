// 256-bit AVX2+FMA vectors for kernels_impl.h. Included by kernels_avx2.cpp inside its
// target("avx2,fma") region; relies on <immintrin.h> and <cmath> having been included before that
// region.
//
// tanh for float is vectorised (the recurrence applies it to every hidden unit of every step, so a
// scalar libm call would cost more than the mat-vec at small sizes). It follows Cephes' tanhf: an
// odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above, with a Cephes-style expf. Its
// error against torch.tanh is measured by tests/test_kernels.py. NaN propagates: every min/max
// below keeps its second operand on NaN, and that operand is always the data.
#pragma once

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

  // exp(x) for x >= 0 (all tanh needs); overflow gives +inf, NaN gives NaN.
  static Reg exp_nonnegative(Reg x) {
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
    Reg fx = _mm256_floor_ps(
        _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    // x - fx * ln2, with ln2 split in two so the reduction is exact to float precision.
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    Reg y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
  }

  static Reg tanh(Reg x) {
    const Reg sign_bit = _mm256_set1_ps(-0.0f);
    const Reg ax = _mm256_andnot_ps(sign_bit, x);
    const Reg z = _mm256_mul_ps(x, x);
    Reg p = _mm256_set1_ps(-5.70498872745e-3f);
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(2.06390887954e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-5.37397155531e-2f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(1.33314422036e-1f));
    p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(-3.33332819422e-1f));
    const Reg small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
    const Reg e = exp_nonnegative(_mm256_add_ps(ax, ax));
    Reg large =
        _mm256_sub_ps(_mm256_set1_ps(1.0f),
                      _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    large = _mm256_or_ps(large, _mm256_and_ps(sign_bit, x));
    const Reg use_small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm256_blendv_ps(large, small, use_small);
  }
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
