/* One read of a chunk of per-draw gradients on a CPU: the sums of gradstats.chunk_sums in a single pass.
 *
 * A chunk is `groups` row-major blocks x[g] ([rows, cols_g], float32 where is_float[g], else float64), side by side:
 * group g holds the columns offsets[g] .. offsets[g + 1] of the chunk's `total` columns. Its rows are cut into
 * pieces by bounds[0..pieces]. For each piece p and column j, out[p] = running[p] + [S1, S2, S3, S4, P, N] (a
 * [6, total] float64 array, its rows strides[2p + 1] values apart; running[p]'s, strides[2p]), with S_k = sum over
 * the piece's rows of (x_ij - shift_j)^k, P and N the counts of x_ij > 0 and x_ij < 0; running[p] NULL counts as
 * zeros, and out[p] may be running[p] (the sums in place; else they are streamed past the cache: see STORE). Per
 * group and row: dots[g, i] = <x_gi, ref_g> (when ref is not NULL) and norms[g, i] = |x_gi|^2 ([groups, rows];
 * the caller's arrays have room for one such array per thread; their contents are overwritten). *check = the
 * total of every piece's S4 over the columns: finite exactly when every sum is (an overflow of the total alone is a
 * false alarm).
 *
 * With ref and ref_norms (the reference's norm over all groups, then per group: [groups + 1]), per piece and
 * column c of [all, group 1, ..., group L]: per_draw_sums[p, 0, c] = the sum over the piece's rows of cos(x_i, g)
 * (0 where |x_i| |g| = 0) and per_draw_sums[p, 1, c] = the count of <x_i, g> > 0 ([pieces, 2, groups + 1]), from
 * the dots and squared norms above, added over the groups. Where `safe` is not NULL, a group of a draw whose
 * squared norm is nonzero and lies outside [safe[0], safe[1]] (NaN included), or is 0 while the group is not (every
 * square underflowed), leaves them uncomputed and the call returns 1 (the caller takes the path that rescales each
 * group of each draw); else it returns 0.
 *
 * The columns are shared among the threads (OpenMP) in equal runs. Within a run, for each strip of 16 columns
 * (AVX-512; else 4), every row of a group of 32 is read in turn: the strip's six sums stay in registers and are
 * written once a group (the sums of a chunk of up to 32 rows: read and written once, the running sums included),
 * each row's dot and squared norm go to a vector of its own (in L1). The kernel this replaced read eight rows at
 * a time across blocks of 16384 columns, with the six sums in the L2 cache read and written once per eight rows:
 * on a two-core Intel Xeon (AVX-512), over a chunk of benchmarks/byom.py (32 x 116,970 float64) held in cache, it
 * took 1.30-1.35 ms, the strips 1.09-1.17 and a plain sum 0.67-0.69; over a chunk just written by the gradients,
 * 1.6-1.9 ms against 1.4-1.55 (a plain sum 0.8-0.95); built for AVX2 alone (-march=haswell) on the same machine,
 * 4.4 ms against 1.4 (two vectors of four a strip: 1.65). Leaving out the third and fourth powers, the sign counts
 * or the dots made the strips at most 1.1x faster: the reads of 32 rows at a stride, not the arithmetic, bound
 * them (a plain sum reads each row straight through). Every sum is float64.
 * One call takes every group of a chunk (one team of threads, one start-up), and what
 * follows the read (the threads' partial dots added, the per-draw cosines, the check) is done here too: after a
 * read of the whole chunk, every small operation of the caller starts from a cold cache. Built by gradstats.native
 * with the platform's C compiler.
 */
#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>   /* the streaming stores */
#endif
#include <string.h>   /* memset */
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 16384   /* columns of a block: where a piece has more than GROUP rows, its sums stay in the L2 cache */
#define GROUP 32      /* rows a strip of columns is read over at once: their per-row sums, 2 x 32 vectors, in L1 */
#define PREFETCH 64   /* values ahead in a row that each read asks for (512 bytes of float64) */

/* Vectors of LANES float64 (GCC/Clang vector extensions: whatever the target's width, the compiler splits them).
 * With AVX-512, two vectors a strip (16 columns); else one of four (32 vectors of registers hold a strip's twelve
 * column sums and its temporaries only with AVX-512: two vectors of four with AVX2 spilled, and ran 1.2x slower). */
#ifdef __AVX512F__
#define LANES 8
#define STRIP 2
#else
#define LANES 4
#define STRIP 1
#endif
typedef double vd __attribute__((vector_size(LANES * 8), aligned(8)));
typedef long long vl __attribute__((vector_size(LANES * 8), aligned(8)));
typedef float vf __attribute__((vector_size(LANES * 4), aligned(4)));

typedef struct {
    int64_t groups; const void *const *x; const int *is_float; const int64_t *offsets; int64_t rows, total;
    const double *shift; const double *const *running; double *const *out; const int64_t *strides;
    const int64_t *bounds; int64_t pieces;
    const double *ref; double *dots, *norms;   /* this thread's [groups, rows] partial sums */
} task_t;

/* LANES values of x from index i, as float64 (a macro: a vector returned by a function changes the ABI without AVX),
 * and COUNT(t, v, op): t += 1 in the lanes where v op 0 (t: int64 lanes). With AVX-512, by the instructions that do
 * each in one step (a conversion from memory; a masked add), where GCC's generic vectors took five steps for a
 * conversion (two halves, then joined) and three for a count (the mask made a vector of -1s, then subtracted). The
 * strips are bound by their instructions more than by memory: over a float32 chunk of benchmarks/byom.py at one
 * thread, 1.95 ms (2.38 before) against 0.59 for a plain sum. */
#if defined(__AVX512F__) && LANES == 8
#define LOAD(x, is_float, i) ((is_float) ? (vd)_mm512_cvtps_pd(_mm256_loadu_ps((const float *)(x) + (i))) \
                                         : *(const vd *)((const double *)(x) + (i)))
#define COUNT(t, v, op) ((t) = (vl)_mm512_mask_add_epi64((__m512i)(t),                                          \
    _mm512_cmp_pd_mask((__m512d)(v), _mm512_setzero_pd(), op), (__m512i)(t), _mm512_set1_epi64(1)))
#define GREATER _CMP_GT_OQ
#define LESS _CMP_LT_OQ
#else
#define LOAD(x, is_float, i) ((is_float) ? __builtin_convertvector(*(const vf *)((const float *)(x) + (i)), vd) \
                                         : *(const vd *)((const double *)(x) + (i)))
#define COUNT(t, v, op) ((t) -= (vl)((v) op 0))   /* a true comparison is -1 */
#define GREATER >
#define LESS <
#endif

static inline __attribute__((always_inline)) double value(const void *x, int is_float, int64_t i) {
    return is_float ? (double)((const float *)x)[i] : ((const double *)x)[i];
}

/* STORE(p, v, stream): *p = v, or with `stream`, where p is aligned to a whole vector (and the machine has the
 * instruction: AVX-512 or AVX), a streaming (non-temporal) store: the line goes to memory whole, without first
 * being read into the cache for ownership. The caller streams the sums it writes to a buffer other than the running
 * sums it read (a fresh or spare buffer, read again no sooner than the next chunk): a normal store reads each such
 * line first, 5.6 MB more a chunk from memory on benchmarks/byom.py's model. The running sums in place are in the
 * cache already. (A macro, as LOAD.) */
#if defined(__AVX512F__) && LANES == 8
#define STREAMED(p, v) _mm512_stream_pd((p), (__m512d)(v))
#define VECTOR_BYTES 64
#elif defined(__AVX__) && LANES == 4
#define STREAMED(p, v) _mm256_stream_pd((p), (__m256d)(v))
#define VECTOR_BYTES 32
#endif
#ifdef STREAMED
#define STORE(p, v, stream) do { double *p_ = (p);                                                                 \
    if ((stream) && ((uintptr_t)p_ & (VECTOR_BYTES - 1)) == 0) STREAMED(p_, v); else *(vd *)p_ = (v); } while (0)
#else
#define STORE(p, v, stream) ((void)(stream), *(vd *)(p) = (v))
#endif

/* Rows r0 .. r1 and columns cb .. ce of one group (x: [rows, cols], float32 where is_float; shift, ref and the six
 * sums s and run, their rows ld and run_ld apart, indexed by the group's columns): s = run + the rows' sums (run
 * NULL: zeros; run may be s, else the last group's sums are streamed), dots[i] += <x_i, ref> (dot) and norms[i] +=
 * |x_i|^2; returns the total of the new S4 (for the check, as it is written rather than read back). The rows are
 * taken GROUP at a time; for each strip of STRIP x LANES columns, every row of the group is read in turn, the
 * strip's six column sums held in registers and written once, each row's dot and norm added to a vector of its own
 * (in L1) and summed over its lanes at the end. */
static inline __attribute__((always_inline)) double strips(const void *x, int is_float, int dot, int64_t cols,
        int64_t r0, int64_t r1, int64_t cb, int64_t ce, const double *restrict shift, double *s, int64_t ld,
        const double *run, int64_t run_ld, const double *restrict ref, double *restrict dots, double *restrict norms) {
    int stream = run != s;   /* sums written to a buffer of their own: streamed past the cache (see STORE) */
    vd s4 = {0};        /* the new fourth power sums, added up as they are written */
    double total = 0;
    for (int64_t g0 = r0; g0 < r1; g0 += GROUP) {
        int64_t g1 = g0 + GROUP < r1 ? g0 + GROUP : r1, nr = g1 - g0;
        const double *src = g0 == r0 ? run : s;   /* later groups add to what the first wrote */
        int64_t rld = g0 == r0 ? run_ld : ld;
        vd pd[GROUP], pn[GROUP];
        for (int64_t r = 0; r < nr; r++) pd[r] = pn[r] = (vd){0};
        int64_t j = cb;
        for (; j + LANES * STRIP <= ce; j += LANES * STRIP) {
            vd m[STRIP], g[STRIP], t1[STRIP], t2[STRIP], t3[STRIP], t4[STRIP];
            vl tp[STRIP], tn[STRIP];
            for (int k = 0; k < STRIP; k++) {
                m[k] = *(const vd *)(shift + j + k * LANES);
                g[k] = dot ? *(const vd *)(ref + j + k * LANES) : (vd){0};
                t1[k] = t2[k] = t3[k] = t4[k] = (vd){0};
                tp[k] = tn[k] = (vl){0};
            }
            for (int64_t r = 0; r < nr; r++) {
                int64_t at = (g0 + r) * cols + j;
                for (int k = 0; k < STRIP; k++)   /* the row 64 values on: 32 rows at a stride outrun the prefetchers */
                    __builtin_prefetch(is_float ? (const void *)((const float *)x + at + PREFETCH + k * LANES)
                                                : (const void *)((const double *)x + at + PREFETCH + k * LANES));
                vd d = pd[r], n = pn[r];
                for (int k = 0; k < STRIP; k++) {
                    vd v = LOAD(x, is_float, at + k * LANES), c = v - m[k], q = c * c;
                    t1[k] += c; t2[k] += q; t3[k] += q * c; t4[k] += q * q;
                    COUNT(tp[k], v, GREATER); COUNT(tn[k], v, LESS);
                    if (dot) d += v * g[k];
                    n += v * v;
                }
                pd[r] = d; pn[r] = n;
            }
            for (int k = 0; k < STRIP; k++) {
                int64_t o = j + k * LANES;
                vd sums[6] = {t1[k], t2[k], t3[k], t4[k], __builtin_convertvector(tp[k], vd),
                              __builtin_convertvector(tn[k], vd)};
                for (int q = 0; q < 6; q++) {
                    sums[q] += src ? *(const vd *)(src + q * rld + o) : (vd){0};
                    STORE(s + q * ld + o, sums[q], stream && g1 == r1);
                }
                if (g1 == r1) s4 += sums[3];
            }
        }
        for (int64_t r = 0; r < nr; r++) {   /* the rows' lanes, and the columns past the last whole strip */
            double dd = 0, nn = 0;
            for (int l = 0; l < LANES; l++) { dd += pd[r][l]; nn += pn[r][l]; }
            for (int64_t jj = j; jj < ce; jj++) {
                double v = value(x, is_float, (g0 + r) * cols + jj);
                if (dot) dd += v * ref[jj];
                nn += v * v;
            }
            if (dot) dots[g0 + r] += dd;
            norms[g0 + r] += nn;
        }
        for (int64_t jj = j; jj < ce; jj++) {
            double m = shift[jj], t[6] = {0};
            for (int64_t r = g0; r < g1; r++) {
                double v = value(x, is_float, r * cols + jj), c = v - m, q = c * c;
                t[0] += c; t[1] += q; t[2] += q * c; t[3] += q * q; t[4] += v > 0; t[5] += v < 0;
            }
            for (int q = 0; q < 6; q++) s[q * ld + jj] = (src ? src[q * rld + jj] : 0.0) + t[q];
            if (g1 == r1) total += s[3 * ld + jj];
        }
    }
    for (int l = 0; l < LANES; l++) total += s4[l];
    return total;
}

/* strips() compiled once for each kind of chunk and whether dots are taken (constants, inlined). */
#define STRIPS(NAME, IS_FLOAT, DOT)                                                                               \
static double NAME(const void *x, int64_t cols, int64_t r0, int64_t r1, int64_t cb, int64_t ce, const double *shift,\
                   double *s, int64_t ld, const double *run, int64_t run_ld, const double *ref, double *dots,       \
                   double *norms) {                                                                             \
    return strips(x, IS_FLOAT, DOT, cols, r0, r1, cb, ce, shift, s, ld, run, run_ld, ref, dots, norms);          \
}
STRIPS(strips_double_dot, 0, 1)
STRIPS(strips_double, 0, 0)
STRIPS(strips_float_dot, 1, 1)
STRIPS(strips_float, 1, 0)

/* Columns c0 .. c1 of the chunk (in one group or across several), block by block. */
static double work(const task_t *t, int64_t c0, int64_t c1) {
    double check = 0;
    for (int64_t g = 0; g < t->groups; g++) {
        int64_t off = t->offsets[g], cols = t->offsets[g + 1] - off;
        int64_t lo = c0 > off ? c0 : off, hi = c1 < off + cols ? c1 : off + cols;
        double *dots = t->ref ? t->dots + g * t->rows : NULL, *norms = t->norms + g * t->rows;
        const double *ref = t->ref ? t->ref + off : NULL;
        for (int64_t cb = lo; cb < hi; cb += BLOCK) {
            int64_t ce = cb + BLOCK < hi ? cb + BLOCK : hi;
            for (int64_t p = 0; p < t->pieces; p++) {
                double *s = t->out[p];
                const double *run = t->running[p];
                int64_t r0 = t->bounds[p], r1 = t->bounds[p + 1];
                const double *ro = run ? run + off : NULL;
                double *so = s + off;
                double (*kernel)(const void *, int64_t, int64_t, int64_t, int64_t, int64_t, const double *, double *,
                                 int64_t, const double *, int64_t, const double *, double *, double *) =
                    t->is_float[g] ? (ref ? strips_float_dot : strips_float) : (ref ? strips_double_dot : strips_double);
                check += kernel(t->x[g], cols, r0, r1, cb - off, ce - off, t->shift + off, so, t->strides[2 * p + 1],
                                ro, t->strides[2 * p], ref, dots, norms);
            }
        }
    }
    return check;
}

/* Whether row i of a group (x: [rows, cols], float32 where is_float) has a value that is not 0. */
static int nonzero(const void *x, int is_float, int64_t cols, int64_t i) {
    for (int64_t j = i * cols; j < (i + 1) * cols; j++)
        if (value(x, is_float, j) != 0) return 1;
    return 0;
}

/* The per-draw cosines and descent counts of each piece (see the head of this file); 1 where a squared norm leaves
 * `safe`, or is 0 for a group of a draw that is not (read again only there). dots and norms: [groups, rows], added
 * over the threads. */
static int per_draw(const task_t *t, const double *ref_norms, const double *safe, double *sums) {
    int64_t groups = t->groups, rows = t->rows, pieces = t->pieces;
    const double *dots = t->dots, *norms = t->norms;
    const int64_t *bounds = t->bounds;
    if (safe) {
        for (int64_t g = 0; g < groups; g++)
            for (int64_t i = 0; i < rows; i++) {
                double n = norms[g * rows + i];
                if (n != 0 ? !(n >= safe[0] && n <= safe[1])
                           : nonzero(t->x[g], t->is_float[g], t->offsets[g + 1] - t->offsets[g], i)) return 1;
            }
    }
    memset(sums, 0, pieces * 2 * (groups + 1) * sizeof(double));
    for (int64_t p = 0; p < pieces; p++) {
        double *cp = sums + p * 2 * (groups + 1), *dp = cp + groups + 1;
        for (int64_t i = bounds[p]; i < bounds[p + 1]; i++) {
            double in = 0, n = 0;
            for (int64_t g = 0; g < groups; g++) {
                double a = dots[g * rows + i], b = norms[g * rows + i], den = sqrt(b) * ref_norms[g + 1];
                in += a; n += b;
                cp[g + 1] += den > 0 ? a / den : 0.0;
                dp[g + 1] += a > 0 ? 1.0 : 0.0;
            }
            double den = sqrt(n) * ref_norms[0];
            cp[0] += den > 0 ? in / den : 0.0;
            dp[0] += in > 0 ? 1.0 : 0.0;
        }
    }
    return 0;
}

/* Returns 0, or 1 where a group of a draw's squared norm left `safe` or underflowed (the cosines are then not
 * computed). Built with OpenMP, the threads are the process's OpenMP team: in a process that has loaded torch,
 * torch's own (its libgomp.so.1), so the kernel does not compete with torch's threads, which spin for a while after
 * each parallel operation. Built without, one thread. */
int gradstats_chunk_sums(int64_t groups, const void *const *x, const int *is_float, const int64_t *offsets,
                         int64_t rows, const double *shift, const double *const *running, double *const *out,
                         const int64_t *strides, const int64_t *bounds, int64_t pieces, const double *ref,
                         double *dots, double *norms, int threads, const double *ref_norms, const double *safe,
                         double *per_draw_sums, double *check) {
    int64_t total = offsets[groups], blocks = (total + BLOCK - 1) / BLOCK, size = groups * rows;
    if (threads > blocks) threads = (int)blocks;
    if (threads < 1) threads = 1;
    int used = 1;
    double sum4 = 0;
    /* the whole chunk; each thread takes its own partial dots and norms, per_draw() the first's, added */
    task_t all = {groups, x, is_float, offsets, rows, total, shift, running, out, strides, bounds, pieces, ref, dots,
                  norms};
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+:sum4)
#endif
    {
        int k = 0, team = 1;
#ifdef _OPENMP
        k = omp_get_thread_num();
        team = omp_get_num_threads();
        if (k == 0) used = team;
#endif
        task_t t = all;
        t.dots += k * size;
        t.norms += k * size;
        memset(t.norms, 0, size * sizeof(double));
        if (ref) memset(t.dots, 0, size * sizeof(double));
        /* equal runs of columns, cut at multiples of 8 (whole cache lines of float64 sums) */
        int64_t c0 = total * k / team / 8 * 8, c1 = k + 1 == team ? total : total * (k + 1) / team / 8 * 8;
        sum4 += work(&t, c0, c1);
#if defined(__AVX512F__) || defined(__AVX__)
        _mm_sfence();   /* the streamed sums are in memory before another thread or the caller reads them */
#endif
    }
    *check = sum4;
    for (int k = 1; k < used; k++) {   /* the threads' partial sums, into the first's */
        for (int64_t i = 0; i < size; i++) norms[i] += norms[k * size + i];
        if (ref) for (int64_t i = 0; i < size; i++) dots[i] += dots[k * size + i];
    }
    if (ref == NULL || ref_norms == NULL) return 0;
    return per_draw(&all, ref_norms, safe, per_draw_sums);
}
