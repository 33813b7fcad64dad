// A one-lane "vector" with the same interface as vec_avx2.h, so kernels_impl.h compiles to portable
// scalar code (which the compiler may still auto-vectorise for the baseline instruction set).
// Included inside an instruction-set namespace by kernels_generic.cpp; relies on <cmath>.
#pragma once

template <typename Scalar>
struct VecGeneric {
  using T = Scalar;
  using Reg = Scalar;
  static constexpr int kWidth = 1;
  static constexpr int kRegisters = 16;

  static Reg zero() { return T(0); }
  static Reg broadcast(T v) { return v; }
  static Reg load(const T* p) { return *p; }
  static Reg load_partial(const T* p, int64_t n) { return n > 0 ? *p : T(0); }
  static void store(T* p, Reg v) { *p = v; }
  static void store_partial(T* p, Reg v, int64_t n) {
    if (n > 0) *p = v;
  }
  static Reg add(Reg a, Reg b) { return a + b; }
  static Reg mul(Reg a, Reg b) { return a * b; }
  static Reg fmadd(Reg a, Reg b, Reg c) { return a * b + c; }
  static T sum(Reg v) { return v; }

  static Reg tanh(Reg x) { return std::tanh(x); }
  // NaN stays NaN (x > 0 is false for NaN, so keep x itself when it is not <= 0).
  static Reg relu(Reg x) { return x <= T(0) ? T(0) : x; }
  static Reg tanh_backward(Reg g, Reg y) { return g * (T(1) - y * y); }
  static Reg relu_backward(Reg g, Reg y) { return y <= T(0) ? T(0) : g; }
};
