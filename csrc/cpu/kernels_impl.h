// The per-step kernels, written once against a vector policy V (vec_avx2.h or vec_generic.h).
// Included inside an instruction-set namespace by kernels_<isa>.cpp, which instantiates
// make_kernels<V>() to fill its table; nothing here has external linkage.
#pragma once

// One register block of rows_times_matrix: R rows of x against C vectors of m's columns, starting
// at column `col`, with the R*C accumulators kept in registers for the whole k loop. Every load of
// m feeds R fused multiply-adds, which is what makes small batches cheaper than R separate
// mat-vecs. `valid` is how many of the C*W columns exist (only the last block of a row may be
// short). With kPartialLast, the last of the C vectors holds fewer than W of them and is loaded
// masked, so nothing past column `valid` of m is read (m need not be padded). With kTransposedX, x
// is given transposed: row r's element i at x[i * x_stride + r].
//
// A block of fewer accumulators than the FMAs a core keeps in flight (batch 1 at hidden 48 or less
// on AVX-512: R = 1, C <= 3) would be chains of k dependent FMAs with the FMA unit idle in between;
// there each accumulator is kSums independent sums instead, term i going to sum i % kSums, added
// in a fixed order at the end. The order depends on R and C alone, so a block computes the same
// bits on either thread. With x transposed (the weight gradients, whose blocks of rows may differ
// between calls that are compared) the sum runs over i in order, as documented in kernels.h.
template <int R, int C, bool kTransposedX>
constexpr int partial_sums() {
  // Four chains: this machine's AVX-512 cores behave as one 512-bit FMA unit of four cycles'
  // latency. Measured (PERFORMANCE.md, versions 13 and 20): at hidden 64 (four chains) two sums
  // gained nothing; at hidden 32 (two chains) they took the step from 0.106 to 0.09 us.
  constexpr int kChains = 4;
  if (kTransposedX || R * C >= kChains) return 1;
  return R * C * 2 >= kChains ? 2 : 4;
}

// A block over part of k (a tile: rows_block) starts from the sums a previous tile left in
// `sums_in` (R rows of `sums_stride`, at the block's columns) rather than from zero, and, unless it
// is the last tile, leaves its sums in `sums_out` instead of finishing: a float kept in memory is
// the same float, so the tiles sum every element in the same order as one pass over k would.
template <class V, int R, int C, bool kPartialLast = false, bool kTransposedX = false>
inline void matrix_block(Epilogue epilogue, Activation act, const typename V::T* x,
                         int64_t x_stride, int64_t k, const typename V::T* m, int64_t m_stride,
                         typename V::T* out, int64_t out_stride, int64_t col, int64_t valid,
                         const typename V::T* sums_in = nullptr, typename V::T* sums_out = nullptr,
                         int64_t sums_stride = 0) {
  using Reg = typename V::Reg;
  constexpr int W = V::kWidth;
  constexpr int kSums = partial_sums<R, C, kTransposedX>();
  Reg acc[kSums][R][C];
  for (int s = 0; s < kSums; ++s)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c)
        acc[s][r][c] =
            s == 0 && sums_in ? V::load(sums_in + r * sums_stride + col + c * W) : V::zero();

  const int64_t last_lanes = valid - (C - 1) * W;
  // Term i of every dot product, into sum s.
  auto term = [&](int64_t i, int s) {
    const typename V::T* mp = m + i * m_stride + col;
    Reg w[C];
    for (int c = 0; c < C; ++c)
      w[c] = kPartialLast && c == C - 1 ? V::load_partial(mp + c * W, last_lanes)
                                        : V::load(mp + c * W);
    for (int r = 0; r < R; ++r) {
      const Reg xv = V::broadcast(kTransposedX ? x[i * x_stride + r] : x[r * x_stride + i]);
      for (int c = 0; c < C; ++c) acc[s][r][c] = V::fmadd(xv, w[c], acc[s][r][c]);
    }
  };
  int64_t i = 0;
  for (; i + kSums <= k; i += kSums)
    for (int s = 0; s < kSums; ++s) term(i + s, s);
  for (int s = 0; i < k; ++i, ++s) term(i, s);
  if constexpr (kSums == 4)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) {
        acc[0][r][c] = V::add(acc[0][r][c], acc[2][r][c]);
        acc[1][r][c] = V::add(acc[1][r][c], acc[3][r][c]);
      }
  if constexpr (kSums >= 2)
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[0][r][c] = V::add(acc[0][r][c], acc[1][r][c]);
  if (sums_out) {
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) V::store(sums_out + r * sums_stride + col + c * W, acc[0][r][c]);
    return;
  }

  for (int r = 0; r < R; ++r) {
    typename V::T* o = out + r * out_stride + col;
    for (int c = 0; c < C; ++c) {
      const int64_t lanes = valid - c * W;
      if (lanes <= 0) break;
      Reg v = acc[0][r][c];
      if (epilogue != Epilogue::kStore)
        v = V::add(v, lanes >= W ? V::load(o + c * W) : V::load_partial(o + c * W, lanes));
      if (epilogue == Epilogue::kAddActivate)
        v = act == Activation::kTanh ? V::tanh(v) : V::relu(v);
      if (lanes >= W)
        V::store(o + c * W, v);
      else
        V::store_partial(o + c * W, v, lanes);
    }
  }
}

// Row-block sizes chosen so R*C accumulators plus C loaded vectors and one broadcast fit in the
// vector registers (16 for AVX2, 32 for AVX-512): every k-iteration then issues C loads for R*C
// FMAs.
template <class V, int R>
constexpr int columns_per_block() {
  if constexpr (V::kRegisters >= 32) return R == 1 ? 8 : R == 2 ? 8 : R == 3 ? 7 : 6;
  return R == 1 ? 8 : R == 2 ? 6 : R == 3 ? 4 : 3;
}

// matrix_block with Cn = `vectors` chosen at run time, for any 1 <= vectors <= Cn (the last,
// narrower block of a row: up to C vectors, the last of them possibly partial).
template <class V, int R, int Cn, bool kTransposedX>
void narrow_block(int64_t vectors, Epilogue epilogue, Activation act, const typename V::T* x,
                  int64_t x_stride, int64_t k, const typename V::T* m, int64_t m_stride,
                  typename V::T* out, int64_t out_stride, int64_t col, int64_t valid) {
  if constexpr (Cn > 1) {
    if (vectors < Cn) {
      narrow_block<V, R, Cn - 1, kTransposedX>(vectors, epilogue, act, x, x_stride, k, m, m_stride,
                                               out, out_stride, col, valid);
      return;
    }
  }
  if (valid % V::kWidth != 0)
    matrix_block<V, R, Cn, true, kTransposedX>(epilogue, act, x, x_stride, k, m, m_stride, out,
                                               out_stride, col, valid);
  else
    matrix_block<V, R, Cn, false, kTransposedX>(epilogue, act, x, x_stride, k, m, m_stride, out,
                                                out_stride, col, valid);
}

// The most bytes of m that one tile of k spans (rows_block): a pass over m for each block of
// columns reads a few cache lines of every row of m, a 4 KB stride at hidden 1024, which the
// hardware prefetchers do not follow; within a tile that fits in L2 (even a 512 KB one), the lines
// the first block's pass brought in, and those the prefetchers fetched ahead along each row, are
// still there for the next blocks. Measured (PERFORMANCE.md, version 21): batch 1, hidden 1024,
// one pass per block took 410-470 us a step, twice nn.RNN's time on one thread.
constexpr int64_t kTileBytes = int64_t{256} << 10;

// Memory for the sums between tiles; none when count is 0 or malloc fails (the caller then makes
// one pass over k).
template <typename T>
struct Sums {
  explicit Sums(int64_t count)
      : data(count > 0 ? static_cast<T*>(malloc(static_cast<size_t>(count) * sizeof(T)))
                       : nullptr) {}
  ~Sums() { free(data); }
  Sums(const Sums&) = delete;
  Sums& operator=(const Sums&) = delete;
  T* const data;
};

template <class V, int R, bool kTransposedX>
void rows_block(Epilogue epilogue, Activation act, const typename V::T* x, int64_t x_stride,
                int64_t k, const typename V::T* m, int64_t m_stride, int64_t n, typename V::T* out,
                int64_t out_stride) {
  using T = typename V::T;
  constexpr int C = columns_per_block<V, R>();
  constexpr int64_t kBlockCols = C * V::kWidth;
  const int64_t full = n / kBlockCols * kBlockCols;  // the columns of the full blocks
  static_assert(partial_sums<R, C, kTransposedX>() == 1, "a full block keeps one sum");
  const int64_t row_bytes = m_stride * static_cast<int64_t>(sizeof(T));
  const int64_t tile = row_bytes <= 0 ? k : row_bytes < kTileBytes ? kTileBytes / row_bytes : 1;
  // Each tile's sums, for the next (malloc, not std::vector: no template from outside this file's
  // internal linkage is instantiated here for this instruction set, see kernels_avx512.cpp).
  // Without them, one tile spans all of k (at k = 0 too: each block still writes its epilogue).
  Sums<T> sums(tile < k && full > 0 ? R * full : 0);
  const int64_t tile_rows = sums.data ? tile : k;
  for (int64_t first = 0;; first += tile_rows) {
    const int64_t rows = k - first < tile_rows ? k - first : tile_rows;
    const T* x_tile = x + first * (kTransposedX ? x_stride : 1);
    const T* sums_in = first > 0 ? sums.data : nullptr;
    T* sums_out = first + rows < k ? sums.data : nullptr;
    for (int64_t col = 0; col < full; col += kBlockCols)
      matrix_block<V, R, C, false, kTransposedX>(epilogue, act, x_tile, x_stride, rows,
                                                 m + first * m_stride, m_stride, out, out_stride,
                                                 col, kBlockCols, sums_in, sums_out, full);
    if (!sums_out) break;  // the last tile
  }
  const int64_t rest = n - full;  // 0 <= rest < C * W: one narrower block, up to C vectors
  if (rest > 0)
    narrow_block<V, R, C, kTransposedX>((rest + V::kWidth - 1) / V::kWidth, epilogue, act, x,
                                        x_stride, k, m, m_stride, out, out_stride, full, rest);
}

// Row r of x starts at x + r * (x_stride) normally, at x + r when x is given transposed.
template <class V, bool kTransposedX = false>
void rows_times_matrix(Epilogue epilogue, Activation act, int64_t rows, const typename V::T* x,
                       int64_t x_stride, int64_t k, const typename V::T* m, int64_t m_stride,
                       int64_t n, typename V::T* out, int64_t out_stride) {
  const int64_t row_step = kTransposedX ? 1 : x_stride;
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4)
    rows_block<V, 4, kTransposedX>(epilogue, act, x + r * row_step, x_stride, k, m, m_stride, n,
                                   out + r * out_stride, out_stride);
  const typename V::T* xr = x + r * row_step;
  typename V::T* outr = out + r * out_stride;
  switch (rows - r) {
    case 3:
      rows_block<V, 3, kTransposedX>(epilogue, act, xr, x_stride, k, m, m_stride, n, outr,
                                     out_stride);
      break;
    case 2:
      rows_block<V, 2, kTransposedX>(epilogue, act, xr, x_stride, k, m, m_stride, n, outr,
                                     out_stride);
      break;
    case 1:
      rows_block<V, 1, kTransposedX>(epilogue, act, xr, x_stride, k, m, m_stride, n, outr,
                                     out_stride);
      break;
    default:
      break;
  }
}

template <class V>
void activate_rows(Activation act, int64_t rows, int64_t n, typename V::T* y, int64_t y_stride) {
  constexpr int W = V::kWidth;
  for (int64_t r = 0; r < rows; ++r) {
    typename V::T* p = y + r * y_stride;
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      const auto v = V::load(p + j);
      V::store(p + j, act == Activation::kTanh ? V::tanh(v) : V::relu(v));
    }
    if (j < n) {
      const auto v = V::load_partial(p + j, n - j);
      V::store_partial(p + j, act == Activation::kTanh ? V::tanh(v) : V::relu(v), n - j);
    }
  }
}

template <class V>
void activation_backward_rows(Activation act, int64_t rows, int64_t n, const typename V::T* dh,
                              int64_t dh_stride, const typename V::T* dy, int64_t dy_stride,
                              const typename V::T* y, int64_t y_stride, typename V::T* dz,
                              int64_t dz_stride) {
  constexpr int W = V::kWidth;
  auto one = [&](int64_t r, int64_t j, int64_t lanes) {
    const bool full = lanes >= W;
    auto ld = [&](const typename V::T* p) { return full ? V::load(p) : V::load_partial(p, lanes); };
    const auto g = dy ? V::add(ld(dh + r * dh_stride + j), ld(dy + r * dy_stride + j))
                      : ld(dh + r * dh_stride + j);
    const auto yv = ld(y + r * y_stride + j);
    const auto d = act == Activation::kTanh ? V::tanh_backward(g, yv) : V::relu_backward(g, yv);
    if (full)
      V::store(dz + r * dz_stride + j, d);
    else
      V::store_partial(dz + r * dz_stride + j, d, lanes);
  };
  for (int64_t r = 0; r < rows; ++r) {
    int64_t j = 0;
    for (; j + W <= n; j += W) one(r, j, W);
    if (j < n) one(r, j, n - j);
  }
}

// acc[r][j] += x[r, :] . m[j, :] over the k columns of R rows of x and J rows of m (row stride k),
// lane by lane; the masked tail reads nothing past column k.
template <class V, int R, int J>
inline void accumulate_dots(const typename V::T* x, int64_t x_stride, int64_t k,
                            const typename V::T* m, typename V::Reg (&acc)[R][J]) {
  using Reg = typename V::Reg;
  constexpr int W = V::kWidth;
  auto step = [&](int64_t i, int64_t lanes) {
    auto ld = [&](const typename V::T* p) {
      return lanes >= W ? V::load(p + i) : V::load_partial(p + i, lanes);
    };
    Reg xv[R];
    for (int r = 0; r < R; ++r) xv[r] = ld(x + r * x_stride);
    for (int j = 0; j < J; ++j) {
      const Reg w = ld(m + j * k);
      for (int r = 0; r < R; ++r) acc[r][j] = V::fmadd(xv[r], w, acc[r][j]);
    }
  };
  int64_t i = 0;
  for (; i + W <= k; i += W) step(i, W);
  if (i < k) step(i, k - i);
}

// The pre-activations of units [j, j + J) for R rows of cell_forward (see there), with the R*J dot
// products in registers until their one horizontal sum each: every load of a weight row feeds R
// rows.
template <class V, int R, int J>
inline void cell_units(const typename V::T* a, int64_t a_stride, int64_t ka, const typename V::T* A,
                       const typename V::T* b, int64_t b_stride, int64_t kb, const typename V::T* B,
                       const typename V::T* bias_a, const typename V::T* bias_b, int64_t j,
                       typename V::T* out, int64_t out_stride) {
  using T = typename V::T;
  typename V::Reg acc[R][J];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < J; ++u) acc[r][u] = V::zero();
  accumulate_dots<V, R, J>(a, a_stride, ka, A + j * ka, acc);
  accumulate_dots<V, R, J>(b, b_stride, kb, B + j * kb, acc);
  for (int u = 0; u < J; ++u) {
    const T bias = (bias_a ? bias_a[j + u] : T(0)) + (bias_b ? bias_b[j + u] : T(0));
    for (int r = 0; r < R; ++r) out[r * out_stride + j + u] = V::sum(acc[r][u]) + bias;
  }
}

template <class V, int R>
void cell_rows(Activation act, const typename V::T* a, int64_t a_stride, int64_t ka,
               const typename V::T* A, const typename V::T* b, int64_t b_stride, int64_t kb,
               const typename V::T* B, const typename V::T* bias_a, const typename V::T* bias_b,
               int64_t n, typename V::T* out, int64_t out_stride) {
  constexpr int kUnits = 4;  // R*4 accumulators, R rows and a weight vector: within 16 registers
  int64_t j = 0;
  for (; j + kUnits <= n; j += kUnits)
    cell_units<V, R, kUnits>(a, a_stride, ka, A, b, b_stride, kb, B, bias_a, bias_b, j, out,
                             out_stride);
  for (; j < n; ++j)
    cell_units<V, R, 1>(a, a_stride, ka, A, b, b_stride, kb, B, bias_a, bias_b, j, out, out_stride);
  activate_rows<V>(act, R, n, out, out_stride);
}

template <class V>
void cell_forward(Activation act, int64_t rows, const typename V::T* a, int64_t a_stride,
                  int64_t ka, const typename V::T* A, const typename V::T* b, int64_t b_stride,
                  int64_t kb, const typename V::T* B, const typename V::T* bias_a,
                  const typename V::T* bias_b, int64_t n, typename V::T* out, int64_t out_stride) {
  int64_t r = 0;
  for (; r + 2 <= rows; r += 2)
    cell_rows<V, 2>(act, a + r * a_stride, a_stride, ka, A, b + r * b_stride, b_stride, kb, B,
                    bias_a, bias_b, n, out + r * out_stride, out_stride);
  if (r < rows)
    cell_rows<V, 1>(act, a + r * a_stride, a_stride, ka, A, b + r * b_stride, b_stride, kb, B,
                    bias_a, bias_b, n, out + r * out_stride, out_stride);
}

template <class V>
Kernels<typename V::T> make_kernels(const char* isa) {
  return Kernels<typename V::T>{isa,
                                V::kWidth,
                                &rows_times_matrix<V>,
                                &rows_times_matrix<V, /*kTransposedX=*/true>,
                                &activate_rows<V>,
                                &activation_backward_rows<V>,
                                &cell_forward<V>};
}
