/* One read of a chunk of per-draw gradients on a CPU: the sums of gradstats.chunk_sums in a single pass.
 *
 * A chunk is `groups` row-major blocks x[g] ([rows, cols_g], float32 where is_float[g], else float64), side by side:
 * group g holds the columns offsets[g] .. offsets[g + 1] of the chunk's `total` columns. Its rows are cut into
 * pieces by bounds[0..pieces]. For each piece p and column j, out[p] = running[p] + [S1, S2, S3, S4, P, N] (a
 * [6, total] float64 array), with S_k = sum over the piece's rows of (x_ij - shift_j)^k, P and N the counts of
 * x_ij > 0 and x_ij < 0; running[p] NULL counts as zeros, and out[p] may be running[p] (the sums in place). Per
 * group and row: dots[g, i] = <x_gi, ref_g> (when ref is not NULL) and norms[g, i] = |x_gi|^2 ([groups, rows];
 * the caller's arrays have room for one such array per thread, zeroed). *check = the total of every piece's S4 over
 * the columns: finite exactly when every sum is (an overflow of the total alone is a false alarm).
 *
 * With ref and ref_norms (the reference's norm over all groups, then per group: [groups + 1]), per piece and
 * column c of [all, group 1, ..., group L]: cosines[p, c] = the sum over the piece's rows of cos(x_i, g) (0 where
 * |x_i| |g| = 0) and descent[p, c] = the count of <x_i, g> > 0 ([pieces, groups + 1] each), from the dots and
 * squared norms above, added over the groups. Where `safe` is not NULL, a group of a draw whose squared norm is
 * nonzero and lies outside [safe[0], safe[1]] (NaN included) leaves them uncomputed and the call returns 1 (the
 * caller takes the path that rescales each group of each draw); else it returns 0 (a squared norm of 0, from a
 * group that is 0 or one whose squares all underflowed, the caller tells apart).
 *
 * The columns are shared among the threads (OpenMP) in equal runs, cut into blocks whose six accumulators stay in
 * the second-level cache; within a block each row is read once, eight rows at a time, then four, then one (the
 * accumulators are read and written once per eight rows: their traffic, not the arithmetic, bounded the speed; on
 * one core of a two-core EPYC, eight rows at a time ran at 0.55-0.77 of the speed of a plain sum over the same
 * chunks, four at 0.38-0.46, sixteen at 0.56-0.65; leaving out the third and fourth powers or the sign counts
 * changed nothing). Blocks of 16384 columns (768 KB of sums) read each row in runs of 128 KB (float64), which the
 * processor's prefetchers follow; blocks of 8192 ran at 0.85-0.9 of this speed (32768 no faster), 512 at about
 * 0.65. Every sum is float64. One call takes every group of a chunk (one team of threads, one start-up), and what
 * follows the read (the threads' partial dots added, the per-draw cosines, the check) is done here too: after a
 * read of the whole chunk, every small operation of the caller starts from a cold cache. Built by gradstats.native
 * with the platform's C compiler.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BLOCK 16384   /* columns of a block: 6 x 16384 float64 accumulators, 768 KB, in the second-level cache */

typedef struct {
    int64_t groups; const void *const *x; const int *is_float; const int64_t *offsets; int64_t rows, total;
    const double *shift; const double *const *running; double *const *out; const int64_t *bounds; int64_t pieces;
    const double *ref; double *dots, *norms;   /* this thread's [groups, rows] partial sums */
} task_t;

/* R rows at a time (R <= 8, a constant): each column's six sums read and written once per R rows. The per-row dot
 * and norm sums are eight named accumulators (the ones past R stay 0 and fold away), which the compiler keeps in
 * vector registers; as arrays it would not. */
#define ROWS_STEP(T, R, DOT)                                                                                     \
    for (; i + (R) <= r1; i += (R)) {                                                                            \
        const T *restrict a = x + i * cols;                                                                      \
        double d0 = 0, d1 = 0, d2 = 0, d3 = 0, d4 = 0, d5 = 0, d6 = 0, d7 = 0;                                   \
        double n0 = 0, n1 = 0, n2 = 0, n3 = 0, n4 = 0, n5 = 0, n6 = 0, n7 = 0;                                   \
        _Pragma("omp simd reduction(+:d0,d1,d2,d3,d4,d5,d6,d7,n0,n1,n2,n3,n4,n5,n6,n7)")                        \
        for (int64_t j = cb; j < ce; j++) {                                                                      \
            double v[8] = {0};                                                                                   \
            for (int r = 0; r < (R); r++) v[r] = a[r * cols + j];                                                \
            double m = shift[j], t1 = 0, t2 = 0, t3 = 0, t4 = 0, tp = 0, tn = 0;                                 \
            for (int r = 0; r < (R); r++) {                                                                      \
                double c = v[r] - m, q = c * c;                                                                  \
                t1 += c; t2 += q; t3 += q * c; t4 += q * q;                                                      \
                tp += v[r] > 0 ? 1.0 : 0.0; tn += v[r] < 0 ? 1.0 : 0.0;                                          \
            }                                                                                                    \
            s1[j] += t1; s2[j] += t2; s3[j] += t3; s4[j] += t4; sp[j] += tp; sn[j] += tn;                        \
            if (DOT) {                                                                                           \
                double g = ref[j];                                                                               \
                d0 += v[0] * g; d1 += v[1] * g; d2 += v[2] * g; d3 += v[3] * g;                                  \
                d4 += v[4] * g; d5 += v[5] * g; d6 += v[6] * g; d7 += v[7] * g;                                  \
            }                                                                                                    \
            n0 += v[0] * v[0]; n1 += v[1] * v[1]; n2 += v[2] * v[2]; n3 += v[3] * v[3];                          \
            n4 += v[4] * v[4]; n5 += v[5] * v[5]; n6 += v[6] * v[6]; n7 += v[7] * v[7];                          \
        }                                                                                                        \
        double dd[8] = {d0, d1, d2, d3, d4, d5, d6, d7}, nn[8] = {n0, n1, n2, n3, n4, n5, n6, n7};               \
        for (int r = 0; r < (R); r++) {                                                                          \
            if (DOT) dots[i + r] += dd[r];                                                                       \
            norms[i + r] += nn[r];                                                                               \
        }                                                                                                        \
    }

/* Rows r0 .. r1 of columns cb .. ce: eight rows at a time, then four, then one. */
#define ROWS_KERNEL(T, NAME, DOT)                                                                                \
static void NAME(const T *restrict x, int64_t cols, int64_t r0, int64_t r1, int64_t cb, int64_t ce,             \
                 const double *restrict shift, double *restrict s, int64_t ld, const double *restrict ref,       \
                 double *restrict dots, double *restrict norms) {                                                \
    double *restrict s1 = s, *restrict s2 = s + ld, *restrict s3 = s + 2 * ld, *restrict s4 = s + 3 * ld;       \
    double *restrict sp = s + 4 * ld, *restrict sn = s + 5 * ld;                                                 \
    int64_t i = r0;                                                                                              \
    ROWS_STEP(T, 8, DOT)                                                                                         \
    ROWS_STEP(T, 4, DOT)                                                                                         \
    ROWS_STEP(T, 1, DOT)                                                                                         \
}
ROWS_KERNEL(double, rows_double_dot, 1)
ROWS_KERNEL(double, rows_double, 0)
ROWS_KERNEL(float, rows_float_dot, 1)
ROWS_KERNEL(float, rows_float, 0)

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
                for (int k = 0; k < 6; k++) {   /* this block of the piece's sums starts from its running sums */
                    if (run == NULL) memset(s + k * t->total + cb, 0, (ce - cb) * sizeof(double));
                    else if (run != s) memcpy(s + k * t->total + cb, run + k * t->total + cb, (ce - cb) * sizeof(double));
                }
                int64_t r0 = t->bounds[p], r1 = t->bounds[p + 1];
                double *so = s + off;
                if (t->is_float[g]) {
                    if (ref) rows_float_dot(t->x[g], cols, r0, r1, cb - off, ce - off, t->shift + off, so, t->total, ref, dots, norms);
                    else rows_float(t->x[g], cols, r0, r1, cb - off, ce - off, t->shift + off, so, t->total, ref, dots, norms);
                } else {
                    if (ref) rows_double_dot(t->x[g], cols, r0, r1, cb - off, ce - off, t->shift + off, so, t->total, ref, dots, norms);
                    else rows_double(t->x[g], cols, r0, r1, cb - off, ce - off, t->shift + off, so, t->total, ref, dots, norms);
                }
                const double *s4 = s + 3 * t->total;
                _Pragma("omp simd reduction(+:check)")
                for (int64_t j = cb; j < ce; j++) check += s4[j];
            }
        }
    }
    return check;
}

/* The per-draw cosines and descent counts of each piece (see the head of this file); 1 where a squared norm leaves
 * `safe`. dots and norms: [groups, rows], added over the threads. */
static int per_draw(int64_t groups, int64_t rows, const double *dots, const double *norms, const double *ref_norms,
                    const int64_t *bounds, int64_t pieces, const double *safe, double *cosines, double *descent) {
    if (safe) {
        for (int64_t g = 0; g < groups; g++)
            for (int64_t i = 0; i < rows; i++) {
                double n = norms[g * rows + i];
                if (n != 0 && !(n >= safe[0] && n <= safe[1])) return 1;
            }
    }
    memset(cosines, 0, pieces * (groups + 1) * sizeof(double));
    memset(descent, 0, pieces * (groups + 1) * sizeof(double));
    for (int64_t p = 0; p < pieces; p++) {
        double *cp = cosines + p * (groups + 1), *dp = descent + p * (groups + 1);
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

/* Returns 0, or 1 where a draw's squared norm left `safe` (the cosines are then not computed). Built with OpenMP, the
 * threads are the process's OpenMP team: in a process that has loaded torch, torch's own (its libgomp.so.1), so
 * the kernel does not compete with torch's threads, which spin for a while after each parallel operation. Built
 * without, one thread. */
int gradstats_chunk_sums(int64_t groups, const void *const *x, const int *is_float, const int64_t *offsets,
                         int64_t rows, const double *shift, const double *const *running, double *const *out,
                         const int64_t *bounds, int64_t pieces, const double *ref, double *dots, double *norms,
                         int threads, const double *ref_norms, const double *safe, double *cosines, double *descent,
                         double *check) {
    int64_t total = offsets[groups], blocks = (total + BLOCK - 1) / BLOCK, size = groups * rows;
    if (threads > blocks) threads = (int)blocks;
    if (threads < 1) threads = 1;
    int used = 1;
    double sum4 = 0;
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
        task_t t = {groups, x, is_float, offsets, rows, total, shift, running, out, bounds, pieces, ref,
                    dots + k * size, norms + k * size};
        /* equal runs of columns, cut at multiples of 8 (whole cache lines of float64 sums) */
        int64_t c0 = total * k / team / 8 * 8, c1 = k + 1 == team ? total : total * (k + 1) / team / 8 * 8;
        sum4 += work(&t, c0, c1);
    }
    *check = sum4;
    for (int k = 1; k < used; k++) {   /* the threads' partial sums, into the first's */
        for (int64_t i = 0; i < size; i++) norms[i] += norms[k * size + i];
        if (ref) for (int64_t i = 0; i < size; i++) dots[i] += dots[k * size + i];
    }
    if (ref == NULL || ref_norms == NULL) return 0;
    return per_draw(groups, rows, dots, norms, ref_norms, bounds, pieces, safe, cosines, descent);
}
