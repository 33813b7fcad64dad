// 512-bit AVX-512 (F, DQ, BW, VL) vectors for kernels_impl.h: the AVX2 policy twice as wide, with
// 32 registers for larger register blocks. Included by kernels_avx512.cpp inside its target region;
// tanh comes from vec_math.h, as for AVX2.
#pragma once

#include "vec_math.h"  // cephes_tanh, in the same instruction-set namespace

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
  static T sum(Reg v) { return _mm512_reduce_add_ps(v); }  // of the lanes

  // The primitives vec_math.h builds exp and tanh from.
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static Reg fnmadd(Reg a, Reg b, Reg c) { return _mm512_fnmadd_ps(a, b, c); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(a, b); }
  static Reg floor(Reg x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  }
  static Reg abs(Reg x) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), x); }
  static Reg with_sign_of(Reg v, Reg x) {
    return _mm512_or_ps(v, _mm512_and_ps(_mm512_set1_ps(-0.0f), x));
  }
  static Reg exp2_int(Reg n) {  // 2^n for whole n in float range
    const __m512i e = _mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static Reg select_less(Reg a, Reg b, Reg yes, Reg no) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), no, yes);
  }

  static Reg tanh(Reg x) { return cephes_tanh<VecAvx512<float>>(x); }
  static Reg relu(Reg x) { return _mm512_max_ps(_mm512_setzero_ps(), x); }
  static Reg tanh_backward(Reg g, Reg y) {
    return _mm512_mul_ps(g, _mm512_fnmadd_ps(y, y, _mm512_set1_ps(1.0f)));
  }
  static Reg relu_backward(Reg g, Reg y) {
    const __mmask16 positive = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_NLE_UQ);
    return _mm512_maskz_mov_ps(positive, g);
  }
};
