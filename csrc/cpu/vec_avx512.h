// 512-bit AVX-512 (F, DQ, BW, VL) vectors for kernels_impl.h: the AVX2 policy twice as wide, with
// 32 registers for larger register blocks. Included by kernels_avx512.cpp inside its target region;
// the tanh and exp follow vec_avx2.h (Cephes), so both give the same values to within rounding.
#pragma once

template <typename Scalar>
struct VecAvx512;

template <>
struct VecAvx512<float> {
  using T = float;
  using Reg = __m512;
  static constexpr int kWidth = 16;
  static constexpr int kRegisters = 32;

  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg broadcast(T v) { return _mm512_set1_ps(v); }
  static Reg load(const T* p) { return _mm512_loadu_ps(p); }
  static __mmask16 lane_mask(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static Reg load_partial(const T* p, int64_t n) { return _mm512_maskz_loadu_ps(lane_mask(n), p); }
  static void store(T* p, Reg v) { _mm512_storeu_ps(p, v); }
  static void store_partial(T* p, Reg v, int64_t n) { _mm512_mask_storeu_ps(p, lane_mask(n), v); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }

  static Reg exp_nonnegative(Reg x) {
    x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);
    Reg fx = _mm512_roundscale_ps(
        _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), x);
    Reg y = _mm512_set1_ps(1.9875691500e-4f);
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.3981999507e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(8.3334519073e-3f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(4.1665795894e-2f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.6666665459e-1f));
    y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(5.0000001201e-1f));
    y = _mm512_fmadd_ps(y, _mm512_mul_ps(x, x), _mm512_add_ps(x, _mm512_set1_ps(1.0f)));
    __m512i n = _mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127));
    return _mm512_mul_ps(y, _mm512_castsi512_ps(_mm512_slli_epi32(n, 23)));
  }

  static Reg tanh(Reg x) {
    const Reg sign_bit = _mm512_set1_ps(-0.0f);
    const Reg ax = _mm512_andnot_ps(sign_bit, x);
    const Reg z = _mm512_mul_ps(x, x);
    Reg p = _mm512_set1_ps(-5.70498872745e-3f);
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(2.06390887954e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-5.37397155531e-2f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(1.33314422036e-1f));
    p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(-3.33332819422e-1f));
    const Reg small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
    const Reg e = exp_nonnegative(_mm512_add_ps(ax, ax));
    Reg large =
        _mm512_sub_ps(_mm512_set1_ps(1.0f),
                      _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    large = _mm512_or_ps(large, _mm512_and_ps(sign_bit, x));
    const __mmask16 use_small = _mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.625f), _CMP_LT_OQ);
    return _mm512_mask_blend_ps(use_small, large, small);
  }
  static Reg relu(Reg x) { return _mm512_max_ps(_mm512_setzero_ps(), x); }
  static Reg tanh_backward(Reg g, Reg y) {
    return _mm512_mul_ps(g, _mm512_fnmadd_ps(y, y, _mm512_set1_ps(1.0f)));
  }
  static Reg relu_backward(Reg g, Reg y) {
    const __mmask16 positive = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_NLE_UQ);
    return _mm512_maskz_mov_ps(positive, g);
  }
};
