/* Few-row linear layers for CPU decoding: y[m, :] = x[m, :] @ w.T + b for M <= 16 rows.
 *
 * A decoding step multiplies one (or a few) activation rows by every weight matrix, so its
 * speed is how fast the weights stream from memory. MKL's float32 matrix-vector product runs
 * on one core, and on CPUs without bf16 instructions torch's bfloat16 path converts the whole
 * weight before multiplying. Here each thread streams its own block of weight rows once,
 * converts bf16 in registers, and reuses the block (hot in L1) for every activation row.
 *
 * Built at first use by danlu/cpu_kernels.py with -O3 -march=native -fopenmp; the OpenMP
 * runtime is the one torch already loaded, so the thread count is torch.get_num_threads().
 * Sums run in float32; bf16 outputs are rounded to nearest even, as torch rounds them.
 */
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
