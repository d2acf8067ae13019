/* Few-row linear layers for CPU decoding: y[m, :] = x[m, :] @ w.T + b for M <= 16 rows.
 *
 * A decoding step multiplies one (or a few) activation rows by every weight matrix, so its
 * speed is how fast the weights stream from memory. MKL's float32 matrix-vector product runs
 * on one core, and on CPUs without bf16 instructions torch's bfloat16 path converts the whole
 * weight before multiplying. Here each thread streams its own block of weight rows once,
 * converts bf16 in registers, and reuses the block (hot in L1) for every activation row.
 *
 * Built at first use by danlu/lm/cpu/kernels.py with -O3 -march=native -fopenmp; the OpenMP
 * runtime is the one torch already loaded, so the thread count is torch.get_num_threads().
 * Sums run in float32; bf16 outputs are rounded to nearest even, as torch rounds them.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define DANLU_SIMD 1
#else
#define DANLU_SIMD 0
#endif

int danlu_simd(void) { return DANLU_SIMD; }

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float load_scalar(const void *p, int64_t i, int bf16) {
    return bf16 ? bf16_to_f32(((const uint16_t *)p)[i]) : ((const float *)p)[i];
}

static inline void store_scalar(void *p, int64_t i, float v, int bf16) {
    if (bf16)
        ((uint16_t *)p)[i] = f32_to_bf16(v);
    else
        ((float *)p)[i] = v;
}

#if DANLU_SIMD
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

static inline __m256 load8(const void *p, int64_t i, int bf16) {
    if (bf16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)p + i);
}

/* Four weight rows (n .. n+3) times rows m0 .. m0+mr-1 of x (mr is 1 or 2), k from 0 to K8. */
static inline __attribute__((always_inline)) void tile(const void *x, const void *w, int64_t n, int64_t m0,
                                                       int mr, int64_t K, int64_t K8, int xb, int wb,
                                                       float out[2][4]) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    const int64_t r0 = n * K, r1 = r0 + K, r2 = r1 + K, r3 = r2 + K;
    const int64_t x0 = m0 * K, x1 = x0 + K;
    for (int64_t k = 0; k < K8; k += 8) {
        if (wb && (k & 31) == 0) {
            /* bf16 rows stream slower than the hardware prefetcher fetches them by itself (not so
             * for float32, where this costs time): ask for each row's line 2 KB ahead */
            const char *wc = (const char *)w;
            const int64_t s = wb ? 2 : 4, ahead = 2048;
            _mm_prefetch(wc + (r0 + k) * s + ahead, _MM_HINT_T0);
            _mm_prefetch(wc + (r1 + k) * s + ahead, _MM_HINT_T0);
            _mm_prefetch(wc + (r2 + k) * s + ahead, _MM_HINT_T0);
            _mm_prefetch(wc + (r3 + k) * s + ahead, _MM_HINT_T0);
        }
        __m256 w0 = load8(w, r0 + k, wb), w1 = load8(w, r1 + k, wb);
        __m256 w2 = load8(w, r2 + k, wb), w3 = load8(w, r3 + k, wb);
        __m256 xv = load8(x, x0 + k, xb);
        a00 = _mm256_fmadd_ps(w0, xv, a00);
        a01 = _mm256_fmadd_ps(w1, xv, a01);
        a02 = _mm256_fmadd_ps(w2, xv, a02);
        a03 = _mm256_fmadd_ps(w3, xv, a03);
        if (mr == 2) {
            xv = load8(x, x1 + k, xb);
            a10 = _mm256_fmadd_ps(w0, xv, a10);
            a11 = _mm256_fmadd_ps(w1, xv, a11);
            a12 = _mm256_fmadd_ps(w2, xv, a12);
            a13 = _mm256_fmadd_ps(w3, xv, a13);
        }
    }
    out[0][0] = hsum(a00), out[0][1] = hsum(a01), out[0][2] = hsum(a02), out[0][3] = hsum(a03);
    out[1][0] = hsum(a10), out[1][1] = hsum(a11), out[1][2] = hsum(a12), out[1][3] = hsum(a13);
}

/* The row loop of one dtype. OpenMP outlines a parallel loop before constants propagate,
 * so each dtype gets its own function (LINEAR below) and the inner loop has no dtype branch. */
static inline __attribute__((always_inline)) void rows_block(const void *x, const void *w, const void *b,
                                                             void *y, int64_t M, int64_t N, int64_t K,
                                                             int64_t q, int xb, int wb) {
    const int64_t K8 = K - K % 8, n = q * 4;
    for (int64_t m = 0; m < M; m += 2) {
        const int mr = M - m >= 2 ? 2 : 1;
        float s[2][4];
        if (mr == 2) /* constant mr: the compiler drops the second row's work for M = 1 */
            tile(x, w, n, m, 2, K, K8, xb, wb, s);
        else
            tile(x, w, n, m, 1, K, K8, xb, wb, s);
        for (int i = 0; i < mr; i++)
            for (int j = 0; j < 4; j++) {
                float v = s[i][j];
                for (int64_t k = K8; k < K; k++)
                    v += load_scalar(w, (n + j) * K + k, wb) * load_scalar(x, (m + i) * K + k, xb);
                if (b) v += load_scalar(b, n + j, xb);
                store_scalar(y, (m + i) * N + n + j, v, xb);
            }
    }
}

static void rows_tail(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N, int64_t K,
                      int xb, int wb) {
    for (int64_t n = N - N % 4; n < N; n++)
        for (int64_t m = 0; m < M; m++) {
            float v = 0.f;
            for (int64_t k = 0; k < K; k++) v += load_scalar(w, n * K + k, wb) * load_scalar(x, m * K + k, xb);
            if (b) v += load_scalar(b, n, xb);
            store_scalar(y, m * N + n, v, xb);
        }
}

/* dynamic: a thread the OS pauses mid-call (a busy machine) leaves its rows to the others
 * instead of making every call wait for it; as fast as static on an idle machine */
#define LINEAR(NAME, XB, WB)                                                                              \
    static void NAME(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N, int64_t K) { \
        _Pragma("omp parallel for schedule(dynamic, 8)") for (int64_t q = 0; q < N / 4; q++)              \
            rows_block(x, w, b, y, M, N, K, q, XB, WB);                                                    \
        rows_tail(x, w, b, y, M, N, K, XB, WB);                                                            \
    }
LINEAR(linear_f32, 0, 0)
LINEAR(linear_bf16, 1, 1)
LINEAR(linear_f32_bf16w, 0, 1) /* bf16 weights, float32 activations */
#endif

/* ---------------------------------------------------------------- int8 weights (q8_0-like)
 *
 * The int8 tier (danlu.lm.cpu.quantize): each weight row is cut into groups of 32 and stored
 * as int8 values q with one float32 scale per group (w ~= scale * q, symmetric, as llama.cpp's
 * q8_0), so a decoding step streams a quarter of the float32 bytes plus an eighth for the
 * scales. Activations stay float32: a group's 32 int8 weights are widened to float in
 * registers, multiplied into the row's partial sum for the group, and that sum is scaled once.
 * One tile is four weight rows times one or two activation rows, as for float32 above.
 */
#define Q8_GROUP 32
#if DANLU_SIMD
#if defined(__AVX512F__)
/* 32 int8 weights -> two vectors of 16 floats */
static inline void widen32_512(const int8_t *q, __m512 *lo, __m512 *hi) {
    __m256i v = _mm256_loadu_si256((const __m256i *)q);
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(v, 1)));
}
#endif

/* 32 int8 weights -> four vectors of 8 floats; each 8-byte load folds into the widening
 * instruction (vpmovsxbd ymm, m64), which costs less than widening halves of a 32-byte load */
static inline void widen32(const int8_t *q, __m256 out[4]) {
    for (int t = 0; t < 4; t++)
        out[t] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * t))));
}

/* Weight rows n .. n+3 (int8, K per row, scales K / 32 per row) times activation rows m0 ..
 * m0+mr-1 (mr is 1 or 2); K is a multiple of 32. */
static inline __attribute__((always_inline)) void tile_q8(const float *x, const int8_t *q, const float *sc,
                                                          int64_t n, int64_t m0, int mr, int64_t K,
                                                          float out[2][4]) {
    const int64_t G = K / Q8_GROUP;
    const float *x0 = x + m0 * K, *x1 = x0 + K;
#if defined(__AVX512F__)
    __m512 acc[2][4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm512_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const int64_t k = g * Q8_GROUP;
        const __m512 xa = _mm512_loadu_ps(x0 + k), xb = _mm512_loadu_ps(x0 + k + 16);
        __m512 ya = xa, yb = xb;
        if (mr == 2) ya = _mm512_loadu_ps(x1 + k), yb = _mm512_loadu_ps(x1 + k + 16);
        for (int j = 0; j < 4; j++) {
            __m512 lo, hi;
            widen32_512(q + (n + j) * K + k, &lo, &hi);
            const __m512 s = _mm512_set1_ps(sc[(n + j) * G + g]);
            acc[0][j] = _mm512_fmadd_ps(_mm512_fmadd_ps(lo, xa, _mm512_mul_ps(hi, xb)), s, acc[0][j]);
            if (mr == 2)
                acc[1][j] = _mm512_fmadd_ps(_mm512_fmadd_ps(lo, ya, _mm512_mul_ps(hi, yb)), s, acc[1][j]);
        }
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) out[i][j] = _mm512_reduce_add_ps(acc[i][j]);
#else
    __m256 acc[2][4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; g++) {
        const int64_t k = g * Q8_GROUP;
        __m256 xv[4], yv[4];
        for (int t = 0; t < 4; t++) xv[t] = _mm256_loadu_ps(x0 + k + 8 * t);
        if (mr == 2)
            for (int t = 0; t < 4; t++) yv[t] = _mm256_loadu_ps(x1 + k + 8 * t);
        for (int j = 0; j < 4; j++) {
            __m256 w[4];
            widen32(q + (n + j) * K + k, w);
            const __m256 s = _mm256_set1_ps(sc[(n + j) * G + g]);
            __m256 p = _mm256_mul_ps(w[0], xv[0]);
            p = _mm256_fmadd_ps(w[1], xv[1], p);
            p = _mm256_fmadd_ps(w[2], xv[2], p);
            p = _mm256_fmadd_ps(w[3], xv[3], p);
            acc[0][j] = _mm256_fmadd_ps(p, s, acc[0][j]);
            if (mr == 2) {
                __m256 r = _mm256_mul_ps(w[0], yv[0]);
                r = _mm256_fmadd_ps(w[1], yv[1], r);
                r = _mm256_fmadd_ps(w[2], yv[2], r);
                r = _mm256_fmadd_ps(w[3], yv[3], r);
                acc[1][j] = _mm256_fmadd_ps(r, s, acc[1][j]);
            }
        }
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) out[i][j] = hsum(acc[i][j]);
#endif
}

static void linear_q8(const float *x, const int8_t *q, const float *sc, const float *b, float *y, int64_t M,
                      int64_t N, int64_t K) {
    const int64_t G = K / Q8_GROUP;
#pragma omp parallel for schedule(dynamic, 8)
    for (int64_t blk = 0; blk < (N + 3) / 4; blk++) {
        const int64_t n = blk * 4;
        for (int64_t m = 0; m < M; m += 2) {
            const int mr = M - m >= 2 ? 2 : 1;
            float s[2][4] = {{0}};
            if (n + 4 <= N) {
                if (mr == 2)
                    tile_q8(x, q, sc, n, m, 2, K, s);
                else
                    tile_q8(x, q, sc, n, m, 1, K, s);
            } else {
                for (int i = 0; i < mr; i++)
                    for (int j = 0; n + j < N; j++)
                        for (int64_t g = 0; g < G; g++) {
                            float part = 0.f;
                            for (int64_t k = g * Q8_GROUP; k < (g + 1) * Q8_GROUP; k++)
                                part += (float)q[(n + j) * K + k] * x[(m + i) * K + k];
                            s[i][j] += part * sc[(n + j) * G + g];
                        }
            }
            for (int i = 0; i < mr; i++)
                for (int j = 0; j < 4 && n + j < N; j++)
                    y[(m + i) * N + n + j] = s[i][j] + (b ? b[n + j] : 0.f);
        }
    }
}
#endif

/* y = x @ (scale * q).T + b with x (M, K) float32, q (N, K) int8, scales (N, K / 32) float32,
 * b (N,) float32 or NULL, y (M, N) float32, all contiguous. Returns 0, or -1 when this build
 * has no SIMD path or K is not a multiple of 32 (the caller then uses torch). */
int danlu_linear_q8(const float *x, const int8_t *q, const float *scales, const float *b, float *y, int64_t M,
                    int64_t N, int64_t K) {
#if DANLU_SIMD
    if (K % Q8_GROUP) return -1;
    linear_q8(x, q, scales, b, y, M, N, K);
    return 0;
#else
    (void)x, (void)q, (void)scales, (void)b, (void)y, (void)M, (void)N, (void)K;
    return -1;
#endif
}

/* 1 when this build multiplies int8 weights with AVX-512, 0 with AVX2, -1 without SIMD. */
int danlu_q8_isa(void) {
#if DANLU_SIMD && defined(__AVX512F__)
    return 1;
#elif DANLU_SIMD
    return 0;
#else
    return -1;
#endif
}

/* ---------------------------------------------------------------- one decoding step of a block
 *
 * A GPT block at batch <= 16 and one new token per row, done in one call and one OpenMP
 * region: the Python version spends ~25 torch ops and 4 kernel calls per block, which at a
 * few microseconds each is a fifth of a bf16 step on two cores. It mirrors Block.forward
 * (danlu/models/gpt.py) for float32 activations, with float32 or bf16 weights:
 *   x += c_proj(attention(ln_1(x)));  x += mlp_proj(gelu(c_fc(ln_2(x))))
 * writing this step's keys and values into the (M, H, L, D) cache at `pos`.
 */
#if DANLU_SIMD
/* exp for 8 floats: Cephes' expf (range reduction by ln 2, degree-5 polynomial), ~1 ulp */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

/* GELU of 8 floats: tanh form (GPT-2's gelu_new, F.gelu(approximate="tanh")), or the erf
 * form with Abramowitz & Stegun 7.1.26 for erf (error < 1.5e-7, below float32's step near 1) */
static inline __m256 gelu8(__m256 x, int tanh_form) {
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 u, t;
    if (tanh_form) {
        /* tanh(u) = sign(u) (1 - e) / (1 + e), e = exp(-2|u|) */
        __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
        __m256 a = _mm256_andnot_ps(sign_bit, u);
        __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), a));
        t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
    } else {
        /* erf(u) = sign(u) (1 - poly(s) exp(-u^2)), s = 1 / (1 + p |u|) */
        u = _mm256_mul_ps(x, _mm256_set1_ps(0.7071067811865476f));
        __m256 a = _mm256_andnot_ps(sign_bit, u);
        __m256 s = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, one));
        __m256 p = _mm256_set1_ps(1.061405429f);
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-1.453152027f));
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(1.421413741f));
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(-0.284496736f));
        p = _mm256_fmadd_ps(p, s, _mm256_set1_ps(0.254829592f));
        p = _mm256_mul_ps(p, s);
        __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
        t = _mm256_fnmadd_ps(p, e, one);
    }
    t = _mm256_or_ps(t, _mm256_and_ps(sign_bit, u)); /* t >= 0 here, so this copies u's sign */
    return _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t));
}

static float gelu1(float x, int tanh_form) {
    float in[8] = {x}, out[8];
    _mm256_storeu_ps(out, gelu8(_mm256_loadu_ps(in), tanh_form));
    return out[0];
}

/* y = layer_norm(x) over C, for M rows; b may be NULL. Two passes in float, as torch's. */
static void layer_norm(const float *x, const float *g, const float *b, float *y, int64_t M, int64_t C,
                       float eps) {
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * C;
        float *yr = y + m * C;
        float mean = 0.f, var = 0.f;
        for (int64_t c = 0; c < C; c++) mean += xr[c];
        mean /= (float)C;
        for (int64_t c = 0; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
        const float rstd = 1.0f / sqrtf(var / (float)C + eps);
        for (int64_t c = 0; c < C; c++) yr[c] = (xr[c] - mean) * rstd * g[c] + (b ? b[c] : 0.f);
    }
}

enum { OUT_SET, OUT_ADD, OUT_GELU_TANH, OUT_GELU_ERF };
enum { W_F32, W_BF16, W_INT8 }; /* the weights of a block: float32, bfloat16, or int8 with scales */

/* y = x @ w.T + b (out = OUT_SET), y += that (OUT_ADD, the residual), or y = gelu(that), with
 * the weight rows split over the threads of the enclosing parallel region; ends with the
 * loop's barrier */
static inline __attribute__((always_inline)) void linear_for(const float *x, const void *w, const float *sc,
                                                             const float *b, float *y, int64_t M, int64_t N,
                                                             int64_t K, int wb, int out) {
    const int64_t K8 = K - K % 8;
#pragma omp for schedule(dynamic, 8)
    for (int64_t q = 0; q < (N + 3) / 4; q++) {
        const int64_t n = q * 4;
        for (int64_t m = 0; m < M; m += 2) {
            const int mr = M - m >= 2 ? 2 : 1;
            float s[2][4] = {{0}};
            if (wb == W_INT8) { /* K is a multiple of Q8_GROUP (prepare_block checks) */
                if (n + 4 <= N) {
                    if (mr == 2)
                        tile_q8(x, (const int8_t *)w, sc, n, m, 2, K, s);
                    else
                        tile_q8(x, (const int8_t *)w, sc, n, m, 1, K, s);
                } else {
                    for (int i = 0; i < mr; i++)
                        for (int j = 0; j < 4 && n + j < N; j++)
                            for (int64_t g = 0; g < K / Q8_GROUP; g++) {
                                float part = 0.f;
                                for (int64_t k = g * Q8_GROUP; k < (g + 1) * Q8_GROUP; k++)
                                    part += (float)((const int8_t *)w)[(n + j) * K + k] * x[(m + i) * K + k];
                                s[i][j] += part * sc[(n + j) * (K / Q8_GROUP) + g];
                            }
                }
            } else if (n + 4 <= N) {
                if (mr == 2)
                    tile(x, w, n, m, 2, K, K8, 0, wb, s);
                else
                    tile(x, w, n, m, 1, K, K8, 0, wb, s);
            }
            for (int i = 0; i < mr; i++)
                for (int j = 0; j < 4; j++) {
                    if (n + j >= N) {
                        s[i][j] = 0.f;
                        continue;
                    }
                    if (wb != W_INT8)
                        for (int64_t k = n + 4 <= N ? K8 : 0; k < K; k++)
                            s[i][j] += load_scalar(w, (n + j) * K + k, wb) * x[(m + i) * K + k];
                    if (b) s[i][j] += b[n + j];
                }
            if (out >= OUT_GELU_TANH) /* the tile's eight sums through one vector GELU */
                _mm256_storeu_ps(&s[0][0], gelu8(_mm256_loadu_ps(&s[0][0]), out == OUT_GELU_TANH));
            for (int i = 0; i < mr; i++)
                for (int j = 0; j < 4 && n + j < N; j++) {
                    float *o = y + (m + i) * N + n + j;
                    *o = out == OUT_ADD ? *o + s[i][j] : s[i][j];
                }
        }
    }
}

/* One query per row against the `pos + 1` cached keys of each head; writes this step's key
 * and value into the cache first. key_mask (M, mask_stride), 1 where a key may be seen, or
 * NULL for every key. */
static inline __attribute__((always_inline)) void attention_for(const float *qkv, float *kc, float *vc,
                                                                const uint8_t *key_mask, int64_t mask_stride,
                                                                float *out, float *scores, int64_t M,
                                                                int64_t C, int64_t H, int64_t L, int64_t pos) {
    const int64_t D = C / H;
    const float scale = 1.0f / sqrtf((float)D);
#pragma omp for schedule(static)
    for (int64_t mh = 0; mh < M * H; mh++) {
        const int64_t m = mh / H, h = mh % H;
        const float *q = qkv + m * 3 * C + h * D;
        float *K = kc + mh * L * D, *V = vc + mh * L * D;
        memcpy(K + pos * D, q + C, D * sizeof(float));
        memcpy(V + pos * D, q + 2 * C, D * sizeof(float));
        const uint8_t *mask = key_mask ? key_mask + m * mask_stride : NULL;
        float *p = scores + mh * (pos + 1);
        float top = -INFINITY;
        for (int64_t t = 0; t <= pos; t++) {
            if (mask && !mask[t]) {
                p[t] = -INFINITY;
                continue;
            }
            __m256 acc = _mm256_setzero_ps();
            int64_t d = 0;
            for (; d + 8 <= D; d += 8)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(K + t * D + d), acc);
            float dot = hsum(acc);
            for (; d < D; d++) dot += q[d] * K[t * D + d];
            p[t] = dot * scale;
            top = p[t] > top ? p[t] : top;
        }
        float total = 0.f;
        for (int64_t t = 0; t <= pos; t++) {
            p[t] = p[t] == -INFINITY ? 0.f : expf(p[t] - top);
            total += p[t];
        }
        float *o = out + m * C + h * D;
        for (int64_t d = 0; d < D; d++) o[d] = 0.f;
        for (int64_t t = 0; t <= pos; t++) {
            const float w = p[t] / total;
            if (w == 0.f) continue;
            for (int64_t d = 0; d < D; d++) o[d] += w * V[t * D + d];
        }
    }
}

typedef struct {
    const float *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    const void *attn_w, *proj_w, *fc_w, *mlp_proj_w; /* (3C, C), (C, C), (4C, C), (C, 4C) */
    const float *attn_b, *proj_b, *fc_b, *mlp_proj_b; /* NULL without biases */
    const float *attn_s, *proj_s, *fc_s, *mlp_proj_s; /* int8 weights: scales (N, K / 32); else NULL */
} danlu_block;

/* Scratch layout: qkv (M, 3C), attention output (M, C), MLP hidden (M, 4C), attention
 * scores (M, H, pos + 1), then one (M, C) layer-norm output per thread: every thread
 * normalises x itself, which costs less than the barrier sharing one copy would on a busy
 * machine, where each barrier may wait out a paused thread. */
static int64_t shared_floats(int64_t M, int64_t C, int64_t H, int64_t pos) { return 8 * M * C + M * H * (pos + 1); }

/* The body of the parallel region: four barriers besides the linear layers' */
static inline __attribute__((always_inline)) void block_body(const danlu_block *p, float *x, float *kc, float *vc,
                                                             const uint8_t *key_mask, int64_t mask_stride,
                                                             float *scratch, int64_t M, int64_t C, int64_t H,
                                                             int64_t L, int64_t pos, float eps, int tanh_form,
                                                             int wb) {
    float *qkv = scratch, *att = qkv + 3 * M * C, *f = att + M * C, *scores = f + 4 * M * C;
    float *h = scratch + shared_floats(M, C, H, pos) + omp_get_thread_num() * M * C;
    layer_norm(x, p->ln1_w, p->ln1_b, h, M, C, eps);
    linear_for(h, p->attn_w, p->attn_s, p->attn_b, qkv, M, 3 * C, C, wb, OUT_SET);
    attention_for(qkv, kc, vc, key_mask, mask_stride, att, scores, M, C, H, L, pos);
    linear_for(att, p->proj_w, p->proj_s, p->proj_b, x, M, C, C, wb, OUT_ADD);
    layer_norm(x, p->ln2_w, p->ln2_b, h, M, C, eps);
    linear_for(h, p->fc_w, p->fc_s, p->fc_b, f, M, 4 * C, C, wb, tanh_form ? OUT_GELU_TANH : OUT_GELU_ERF);
    linear_for(f, p->mlp_proj_w, p->mlp_proj_s, p->mlp_proj_b, x, M, C, 4 * C, wb, OUT_ADD);
}

/* constant wb inside each region, so the inner loops carry no dtype test */
static void block_f32w(int threads, const danlu_block *p, float *x, float *kc, float *vc, const uint8_t *km,
                       int64_t ms, float *s, int64_t M, int64_t C, int64_t H, int64_t L, int64_t pos, float eps,
                       int tf) {
#pragma omp parallel num_threads(threads)
    block_body(p, x, kc, vc, km, ms, s, M, C, H, L, pos, eps, tf, 0);
}

static void block_bf16w(int threads, const danlu_block *p, float *x, float *kc, float *vc, const uint8_t *km,
                        int64_t ms, float *s, int64_t M, int64_t C, int64_t H, int64_t L, int64_t pos, float eps,
                        int tf) {
#pragma omp parallel num_threads(threads)
    block_body(p, x, kc, vc, km, ms, s, M, C, H, L, pos, eps, tf, 1);
}
static void block_q8w(int threads, const danlu_block *p, float *x, float *kc, float *vc, const uint8_t *km,
                        int64_t ms, float *s, int64_t M, int64_t C, int64_t H, int64_t L, int64_t pos, float eps,
                        int tf) {
#pragma omp parallel num_threads(threads)
    block_body(p, x, kc, vc, km, ms, s, M, C, H, L, pos, eps, tf, W_INT8);
}
#endif

/* GELU of n floats, as danlu_block_step computes it (for tests). Returns -1 without SIMD. */
int danlu_gelu(const float *x, float *y, int64_t n, int tanh_form) {
#if DANLU_SIMD
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, gelu8(_mm256_loadu_ps(x + i), tanh_form));
    for (; i < n; i++) y[i] = gelu1(x[i], tanh_form);
    return 0;
#else
    (void)x, (void)y, (void)n, (void)tanh_form;
    return -1;
#endif
}

/* Scratch size, in floats, that danlu_block_step needs with the current thread count. */
int64_t danlu_block_scratch(int64_t M, int64_t C, int64_t H, int64_t pos) {
#if DANLU_SIMD
    return shared_floats(M, C, H, pos) + omp_get_max_threads() * M * C;
#else
    (void)H, (void)pos;
    return M * C;
#endif
}

/* One decoding step of a block, in place on x (M, C) float32; the weights in p are all
 * float32 (w_kind = 0), all bfloat16 (1) or all int8 with their scales (2), row-major; k_cache/v_cache (M, H, L, C / H) float32;
 * scratch holds scratch_len floats (danlu_block_scratch). Returns 0, or -1 without a SIMD path. */
int danlu_block_step(const danlu_block *p, float *x, float *k_cache, float *v_cache, const uint8_t *key_mask,
                     int64_t mask_stride, float *scratch, int64_t scratch_len, int64_t M, int64_t C, int64_t H,
                     int64_t L, int64_t pos, float eps, int tanh_form, int w_kind) {
#if DANLU_SIMD
    /* no more threads than the scratch has layer-norm rows for */
    int64_t fit = (scratch_len - shared_floats(M, C, H, pos)) / (M * C);
    int threads = omp_get_max_threads() < fit ? omp_get_max_threads() : (int)fit;
    if (threads < 1) return -1;
    if (w_kind == W_INT8)
        block_q8w(threads, p, x, k_cache, v_cache, key_mask, mask_stride, scratch, M, C, H, L, pos, eps, tanh_form);
    else if (w_kind == W_BF16)
        block_bf16w(threads, p, x, k_cache, v_cache, key_mask, mask_stride, scratch, M, C, H, L, pos, eps, tanh_form);
    else
        block_f32w(threads, p, x, k_cache, v_cache, key_mask, mask_stride, scratch, M, C, H, L, pos, eps, tanh_form);
    return 0;
#else
    (void)p, (void)x, (void)k_cache, (void)v_cache, (void)key_mask, (void)mask_stride, (void)scratch;
    (void)scratch_len, (void)M, (void)C, (void)H, (void)L, (void)pos, (void)eps, (void)tanh_form, (void)w_kind;
    return -1;
#endif
}

/* x: (M, K), w: (N, K) row-major, b: (N,) or NULL, y: (M, N); all contiguous. w is float32
 * (w_bf16 = 0) or bfloat16; x, y and the bias are float32 (x_bf16 = 0) or, with bf16 weights
 * only, bfloat16. Returns 0, or -1 when this build has no SIMD path or the dtypes are not
 * one of those (the caller then uses torch). */
int danlu_linear(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N, int64_t K,
                 int x_bf16, int w_bf16) {
#if DANLU_SIMD
    if (x_bf16 && w_bf16)
        linear_bf16(x, w, b, y, M, N, K);
    else if (w_bf16)
        linear_f32_bf16w(x, w, b, y, M, N, K);
    else if (!x_bf16)
        linear_f32(x, w, b, y, M, N, K);
    else
        return -1;
    return 0;
#else
    (void)x, (void)w, (void)b, (void)y, (void)M, (void)N, (void)K, (void)x_bf16, (void)w_bf16;
    return -1;
#endif
}
