// Vectorised float32 exp and tanh, written once against a vector policy's primitives (vec_avx2.h,
// vec_avx512.h). Included inside an instruction-set namespace before those headers.
//
// tanh follows Cephes' tanhf: an odd polynomial below |x| = 0.625, 1 - 2 / (exp(2|x|) + 1) above,
// with a Cephes-style expf; tests/cpu/test_kernels.py measures it within 2 ulp of the exact value.
// NaN propagates: V::min keeps its second operand on NaN, and that operand is always the data.
#pragma once

// exp(x) for x >= 0 (all tanh needs); overflow gives +inf, NaN gives NaN.
template <class V>
typename V::Reg exp_nonnegative(typename V::Reg x) {
  using B = V;
  x = V::min(B::broadcast(88.0f), x);
  const auto fx = V::floor(V::fmadd(x, B::broadcast(1.44269504088896341f), B::broadcast(0.5f)));
  // x - fx * ln2, with ln2 split in two so the reduction is exact to float precision.
  x = V::fnmadd(fx, B::broadcast(0.693359375f), x);
  x = V::fnmadd(fx, B::broadcast(-2.12194440e-4f), x);
  auto y = B::broadcast(1.9875691500e-4f);
  y = V::fmadd(y, x, B::broadcast(1.3981999507e-3f));
  y = V::fmadd(y, x, B::broadcast(8.3334519073e-3f));
  y = V::fmadd(y, x, B::broadcast(4.1665795894e-2f));
  y = V::fmadd(y, x, B::broadcast(1.6666665459e-1f));
  y = V::fmadd(y, x, B::broadcast(5.0000001201e-1f));
  y = V::fmadd(y, V::mul(x, x), V::add(x, B::broadcast(1.0f)));
  return V::mul(y, V::exp2_int(fx));
}

template <class V>
typename V::Reg cephes_tanh(typename V::Reg x) {
  using B = V;
  const auto ax = V::abs(x);
  const auto z = V::mul(x, x);
  auto p = B::broadcast(-5.70498872745e-3f);
  p = V::fmadd(p, z, B::broadcast(2.06390887954e-2f));
  p = V::fmadd(p, z, B::broadcast(-5.37397155531e-2f));
  p = V::fmadd(p, z, B::broadcast(1.33314422036e-1f));
  p = V::fmadd(p, z, B::broadcast(-3.33332819422e-1f));
  const auto small = V::fmadd(V::mul(p, z), x, x);
  const auto e = exp_nonnegative<V>(V::add(ax, ax));
  const auto large = V::with_sign_of(
      V::sub(B::broadcast(1.0f), V::div(B::broadcast(2.0f), V::add(e, B::broadcast(1.0f)))), x);
  return V::select_less(ax, B::broadcast(0.625f), small, large);
}
