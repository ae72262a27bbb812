/* PowerGossip's sweep over one matrix (gossip/edge.py: sweep), fused into one pass over memory.
 *
 * A round adds the low-rank update of every neighbour to a matrix M (rows × cols, row-major) and
 * projects the updated M for every edge: side 0 sends M v̂ (v̂ of length cols), side 1 sends
 * Mᵀ v̂ (v̂ of length rows).  Done with separate matrix products, that is one pass over M for the
 * update and one per edge (or cache-sized chunks of M in turn, each a handful of small BLAS calls);
 * here each row is updated and projected while it sits in the first-level cache, so M moves
 * through memory once per round, read and written.  Side 0 updates a row and takes its dot products
 * in one pass over it, the sums in vector registers; side 1 updates ROW_GROUP rows at a time and
 * adds them into its column sums in one pass, so that each sum is loaded and stored once per group.
 * A row's last columns (fewer than a vector) go through masked vector loads and stores.
 * gossip_round sweeps all of a worker's rank-1 matrices of a round in one call, reading their
 * vectors and writing their messages at their places in the round's buffers (no view or copy per
 * matrix), and gossip_normalize normalises the round's vectors, all of them in one call.
 *
 * Results do not depend on the number of threads or on the build: the threads split the rows in
 * whole blocks of a fixed number of rows (a function of cols alone); an entry's update is 0 plus
 * sum_k left[i][k] right[k][j] in k order, added to M; on side 0 a row's dot products are summed in
 * LANES lanes (whatever the vector width; the row zero-padded to whole steps of LANES) and then a
 * fixed tree; on side 1 each block sums its rows in row order and the blocks' sums are added in
 * block order.
 */
#if defined(__AVX__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

/* Floats as one vector of the build's vector unit (GCC/Clang vector extensions); vloadu/vstoreu move
 * them to and from any float address. */
#if defined(__AVX512F__)
#define WIDTH 16
#elif defined(__AVX__)
#define WIDTH 8
#else
#define WIDTH 4
#endif
typedef float vec __attribute__((vector_size(4 * WIDTH)));
typedef float vec_unaligned __attribute__((vector_size(4 * WIDTH), aligned(4)));
INLINE vec vloadu(const float *p) { return *(const vec_unaligned *)p; }
INLINE void vstoreu(float *p, vec v) { *(vec_unaligned *)p = v; }

#if defined(__AVX__) && !defined(__AVX512F__)
/* Masks of maskload/maskstore: the 8 entries from prefix_masks + 8 - n enable the first n lanes. */
static const int32_t prefix_masks[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
#endif

/* The first n (0 to WIDTH) floats at p, zeros in the lanes after them; nothing past p + n is read
 * (masked loads), so that a row's tail goes through the vector code like its other columns. */
INLINE vec vload_first(const float *p, int64_t n) {
#if defined(__AVX512F__)
    return (vec)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p);
#elif defined(__AVX__)
    return (vec)_mm256_maskload_ps(p, _mm256_loadu_si256((const __m256i *)(prefix_masks + 8 - n)));
#else
    float part[WIDTH] = {0};
    for (int64_t j = 0; j < n; j++) part[j] = p[j];
    return vloadu(part);
#endif
}

/* The first n (0 to WIDTH) lanes of v stored at p; nothing past p + n is written. */
INLINE void vstore_first(float *p, vec v, int64_t n) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v);
#elif defined(__AVX__)
    _mm256_maskstore_ps(p, _mm256_loadu_si256((const __m256i *)(prefix_masks + 8 - n)), (__m256)v);
#else
    float part[WIDTH];
    vstoreu(part, v);
    for (int64_t j = 0; j < n; j++) p[j] = part[j];
#endif
}

/* Lanes of a dot product (LANES / WIDTH vectors, whatever the vector unit: the same sums on every
 * build). */
#define LANES 32
/* Entries of M per block of rows (at least one row): smaller matrices run on fewer threads. */
#define GRAIN_FLOATS (1 << 14)

typedef struct {
    float *matrix;
    int64_t rows, cols;
    const float *left, *right; /* the update M += left @ right: rows × width and width × cols */
    int64_t right_stride;      /* right[k][j] at right + k * right_stride + j */
    int64_t width;             /* 0: no update */
    int64_t left_strides[2];   /* left[i][k] at left + i * left_strides[0] + k * left_strides[1] */
    int64_t edges, rank;
    const float *vectors;      /* pair p's vector at vectors + p * vector_stride (pair p: edge p / rank's */
    int64_t vector_stride;     /* column p % rank; length cols on side 0, rows on side 1) */
    float *messages;           /* edge e's message (length × rank, row-major) at messages + e * stride */
    int64_t stride;
    int64_t block_rows;        /* rows per block of the thread split (and of side 1's sums) */
    float *block_sums;         /* side 1: per block, per vector, cols partial sums (`padded` apart) */
    int64_t padded;            /* cols rounded up to whole vectors */
} sweep_job;

/* The sum of v's lanes by a fixed tree: lanes l and l + WIDTH / 2, then l and l + WIDTH / 4, ...,
 * then l and l + 1 (in registers where the vector unit has the shuffles). */
INLINE float lanes_total(vec v) {
#if defined(__AVX__)
#if defined(__AVX512F__)
    __m512 whole = (__m512)v;
    __m256 eight = _mm256_add_ps(_mm512_castps512_ps256(whole),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(whole), 1)));
#else
    __m256 eight = (__m256)v;
#endif
    __m128 four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)));
#else
    float lanes[WIDTH];
    vstoreu(lanes, v);
    for (int half = WIDTH / 2; half >= 1; half /= 2)
        for (int l = 0; l < half; l++) lanes[l] += lanes[l + half];
    return lanes[0];
#endif
}

/* The `n` (at most WIDTH) entries at p: loaded or stored whole, or masked in a row's last columns. */
INLINE vec load_part(const float *p, int64_t n) { return n == WIDTH ? vloadu(p) : vload_first(p, n); }
INLINE void store_part(float *p, vec v, int64_t n) {
    if (n == WIDTH) vstoreu(p, v);
    else vstore_first(p, v, n);
}

/* Row i's `n` (at most WIDTH) entries from column `start`, updated (when width > 0: stored back as
 * the entry plus (0 plus sum_k factors[k] right[k][j] in k order)) and returned. */
INLINE vec updated_part(const sweep_job *job, int64_t i, int64_t start, int64_t n, const float *factors,
                        int64_t width) {
    float *at = job->matrix + i * job->cols + start;
    vec x = load_part(at, n);
    if (width) {
        vec sum = {0};
        for (int64_t k = 0; k < width; k++)
            sum += factors[k] * load_part(job->right + k * job->right_stride + start, n);
        x += sum;
        store_part(at, x, n);
    }
    return x;
}

/* Row i's update factors left[i][k]. */
INLINE void row_factors(const sweep_job *job, int64_t i, int64_t width, float *factors) {
    for (int64_t k = 0; k < width; k++) factors[k] = job->left[i * job->left_strides[0] + k * job->left_strides[1]];
}

/* Side 0 on row i, in one pass over the row: each entry updated, then row · v for each of the
 * `pairs` vectors (edge e's column c is pair e * rank + c): lane l sums the products of columns
 * j = l (mod LANES) in order, the row zero-padded to whole steps of LANES (a padding product adds
 * +0), then the lanes are added by a fixed tree (l and l + 16, then l and l + 8, 4, 2, 1).  Inlined
 * with constant `width` and `pairs` for the usual ones, so that the sums stay in registers. */
INLINE void row_dots(const sweep_job *job, int64_t i, int64_t width, int64_t pairs) {
    enum { PARTS = LANES / WIDTH };
    int64_t cols = job->cols, j = 0;
    float factors[width + 1];
    row_factors(job, i, width, factors);
    vec parts[pairs ? pairs : 1][PARTS]; /* pairs 0: an update only */
    memset(parts, 0, sizeof parts);
    for (; j + LANES <= cols; j += LANES)
        for (int q = 0; q < PARTS; q++) {
            vec x = updated_part(job, i, j + q * WIDTH, WIDTH, factors, width);
            for (int64_t p = 0; p < pairs; p++)
                parts[p][q] += x * vloadu(job->vectors + p * job->vector_stride + j + q * WIDTH);
        }
    for (int q = 0; q < PARTS && j + q * WIDTH < cols; q++) { /* the partial last step */
        int64_t start = j + q * WIDTH, n = cols - start < WIDTH ? cols - start : WIDTH;
        vec x = updated_part(job, i, start, n, factors, width);
        for (int64_t p = 0; p < pairs; p++)
            parts[p][q] += x * load_part(job->vectors + p * job->vector_stride + start, n);
    }
    for (int64_t p = 0; p < pairs; p++) {
        for (int half = LANES / 2; half >= WIDTH; half /= 2)
            for (int q = 0; q < half / WIDTH; q++) parts[p][q] += parts[p][q + half / WIDTH];
        job->messages[p / job->rank * job->stride + i * job->rank + p % job->rank] = lanes_total(parts[p][0]);
    }
}

/* Rows side 1 adds into its sums together: each sum is loaded and stored once per group. */
#define ROW_GROUP 8

/* rows_into_sums on the `n` (at most WIDTH) columns from column j. */
INLINE void sums_part(const sweep_job *job, int64_t i, int64_t count, int64_t j, int64_t n,
                      const float *factors, const float *weights, float *sums, int64_t width, int64_t pairs) {
    vec totals[pairs ? pairs : 1];
    for (int64_t p = 0; p < pairs; p++) totals[p] = vloadu(sums + p * job->padded + j);
    for (int64_t r = 0; r < count; r++) {
        vec x = updated_part(job, i + r, j, n, factors + r * (width + 1), width);
        for (int64_t p = 0; p < pairs; p++) totals[p] += x * weights[r * pairs + p];
    }
    for (int64_t p = 0; p < pairs; p++) vstoreu(sums + p * job->padded + j, totals[p]);
}

/* Side 1 on `count` (at most ROW_GROUP) rows from row i, in one pass over them: each entry updated,
 * then added, times the `pairs` vectors' entry for its row, into sums (pair p's at sums + p *
 * padded, with room up to whole vectors), row after row.  Inlined like row_dots. */
INLINE void rows_into_sums(const sweep_job *job, int64_t i, int64_t count, float *sums, int64_t width,
                           int64_t pairs) {
    int64_t cols = job->cols;
    float factors[ROW_GROUP * (width + 1)], weights[ROW_GROUP * (pairs ? pairs : 1)];
    for (int64_t r = 0; r < count; r++) {
        row_factors(job, i + r, width, factors + r * (width + 1));
        for (int64_t p = 0; p < pairs; p++) weights[r * pairs + p] = job->vectors[p * job->vector_stride + i + r];
    }
    int64_t j = 0;
    for (; j + WIDTH <= cols; j += WIDTH) sums_part(job, i, count, j, WIDTH, factors, weights, sums, width, pairs);
    if (j < cols) sums_part(job, i, count, j, cols - j, factors, weights, sums, width, pairs);
}

/* The call `body(job, ..., width, pairs)` with the job's width (0 to 4) and pairs (1 or 2) as
 * constants, so that each pair of them gets its own loop; other values as variables. */
#define WITH_PAIRS(call, width, pairs)                                                                    \
    switch (pairs) {                                                                                       \
    case 1: call(width, 1); break;                                                                         \
    case 2: call(width, 2); break;                                                                         \
    default: call(width, pairs);                                                                           \
    }
#define WITH_WIDTH_AND_PAIRS(call, width, pairs)                                                          \
    switch (width) {                                                                                       \
    case 0: WITH_PAIRS(call, 0, pairs) break;                                                              \
    case 1: WITH_PAIRS(call, 1, pairs) break;                                                              \
    case 2: WITH_PAIRS(call, 2, pairs) break;                                                              \
    case 3: WITH_PAIRS(call, 3, pairs) break;                                                              \
    case 4: WITH_PAIRS(call, 4, pairs) break;                                                              \
    default: WITH_PAIRS(call, width, pairs)                                                                \
    }

/* Side 0 (and update only): rows [first, last), each updated and dotted with every pair's vector. */
static void rows_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const sweep_job *job = (const sweep_job *)context;
    int64_t pairs = job->edges * job->rank;
    for (int64_t i = first; i < last; i++) {
#define ROW_DOTS(width, pairs) row_dots(job, i, width, pairs)
        WITH_WIDTH_AND_PAIRS(ROW_DOTS, job->width, pairs)
#undef ROW_DOTS
    }
}

/* Side 1 on row blocks [first, last) (whole blocks of `block_rows` rows): each row updated, then
 * added, times each pair's vector entry for that row, into its block's sums (one row of cols floats
 * per pair, `padded` apart), in row order; gossip_sweep adds the blocks' sums in block order. */
static void blocks_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const sweep_job *job = (const sweep_job *)context;
    int64_t pairs = job->edges * job->rank;
    for (int64_t block = first; block < last; block += job->block_rows) {
        float *sums = job->block_sums + block / job->block_rows * pairs * job->padded;
        memset(sums, 0, (size_t)(pairs * job->padded) * sizeof(float));
        int64_t end = block + job->block_rows < last ? block + job->block_rows : last;
        for (int64_t i = block; i < end; i += ROW_GROUP) {
            int64_t count = end - i < ROW_GROUP ? end - i : ROW_GROUP;
#define INTO_SUMS(width, pairs) rows_into_sums(job, i, count, sums, width, pairs)
            WITH_WIDTH_AND_PAIRS(INTO_SUMS, job->width, pairs)
#undef INTO_SUMS
        }
    }
}

/* A job's fields that depend on the matrix alone. */
INLINE sweep_job matrix_job(float *matrix, int64_t rows, int64_t cols) {
    return (sweep_job){.matrix = matrix, .rows = rows, .cols = cols, .block_rows = (GRAIN_FLOATS + cols - 1) / cols,
                       .padded = (cols + WIDTH - 1) / WIDTH * WIDTH};
}

/* Floats of side 1's block sums for a matrix_job with `pairs` vectors. */
INLINE int64_t block_sums_floats(const sweep_job *job, int64_t pairs) {
    return (job->rows + job->block_rows - 1) / job->block_rows * pairs * job->padded;
}

/* The job's sweep on `side`; side 1 with vectors needs block_sums_floats(job, pairs) floats at
 * block_sums. */
static void run_sweep(sweep_job *job, int side, float *block_sums, int threads) {
    int64_t rows = job->rows, cols = job->cols, pairs = job->edges * job->rank;
    if (side == 0 || pairs == 0) {
        parallel_for(rows, job->block_rows, threads, rows_range, job);
        return;
    }
    int64_t blocks = (rows + job->block_rows - 1) / job->block_rows;
    job->block_sums = block_sums;
    parallel_for(rows, job->block_rows, threads, blocks_range, job);
    for (int64_t p = 0; p < pairs; p++) {
        float *message = job->messages + p / job->rank * job->stride + p % job->rank;
        for (int64_t j = 0; j < cols; j++) {
            float total = block_sums[p * job->padded + j];
            for (int64_t b = 1; b < blocks; b++) total += block_sums[(b * pairs + p) * job->padded + j];
            message[j * job->rank] = total;
        }
    }
}

/* M += left @ right (when width > 0), then for each of `edges` edges the projection of the updated
 * M with its `rank` vectors: side 0, message = M v̂ (rows × rank); side 1, message = Mᵀ v̂ (cols ×
 * rank).  `left` is strided, `right`'s rows contiguous, `right_stride` apart; `vectors` holds the
 * columns of each edge's v̂, pair p (edge p / rank's column p % rank) contiguous from vectors + p *
 * vector_stride.  Returns 0, or -1 when there is no memory for side 1's block sums (nothing
 * written). */
int gossip_sweep(float *matrix, int64_t rows, int64_t cols, const float *left, int64_t left_row_stride,
                 int64_t left_column_stride, const float *right, int64_t right_stride, int64_t width, int side,
                 const float *vectors, int64_t vector_stride, int64_t edges, int64_t rank, float *messages,
                 int64_t stride, int threads) {
    sweep_job job = matrix_job(matrix, rows, cols);
    job.left = left, job.left_strides[0] = left_row_stride, job.left_strides[1] = left_column_stride;
    job.right = right, job.right_stride = right_stride, job.width = width;
    job.edges = edges, job.rank = rank, job.vectors = vectors, job.vector_stride = vector_stride;
    job.messages = messages, job.stride = stride;
    float *block_sums = NULL;
    if (side == 1 && edges > 0 && rank > 0) {
        block_sums = malloc((size_t)block_sums_floats(&job, edges * rank) * sizeof(float));
        if (!block_sums) return -1; /* before any write: M is not half updated */
    }
    run_sweep(&job, side, block_sums, threads);
    free(block_sums);
    return 0;
}

/* One matrix of a worker's round (gossip/edge.py: Neighbourhood): M (rows × cols, contiguous) and
 * where its rank-1 vectors and messages sit in a row of the round's buffers: offsets[0] in the
 * layout of length-rows blocks (side 0's messages, side 1's vectors), offsets[1] in that of
 * length-cols blocks. */
typedef struct {
    float *matrix;
    int64_t rows, cols;
    int64_t offsets[2];
} round_matrix;

/* A worker's round on `count` matrices at once, rank 1, `edges` edges, each buffer one row per edge
 * (rows `..._stride` floats apart): when `left` is not NULL, each M += sum_e left_e right_eᵀ (edge
 * e's left vector at offsets[0] of its row of `left`, its right one at offsets[1] of `right`); then,
 * when `vectors` is not NULL, edge e's message on `side` (M v̂ at offsets[0] of its row of
 * `messages`, or Mᵀ v̂ at offsets[1]) from its v̂ in `vectors` (at offsets[1], or offsets[0]).  The
 * same as gossip_sweep on each matrix in turn.  Returns 0, or -1 when there is no memory for side
 * 1's block sums (nothing written). */
int gossip_round(const round_matrix *matrices, int64_t count, int64_t edges, const float *left, int64_t left_stride,
                 const float *right, int64_t right_stride, int side, const float *vectors, int64_t vectors_stride,
                 float *messages, int64_t messages_stride, int threads) {
    int64_t pairs = vectors ? edges : 0, most = 0;
    for (int64_t m = 0; m < count; m++) {
        sweep_job job = matrix_job(matrices[m].matrix, matrices[m].rows, matrices[m].cols);
        int64_t floats = block_sums_floats(&job, pairs);
        most = floats > most ? floats : most;
    }
    float *block_sums = NULL;
    if (side == 1 && most) {
        block_sums = malloc((size_t)most * sizeof(float));
        if (!block_sums) return -1; /* before any write: no matrix is updated */
    }
    for (int64_t m = 0; m < count; m++) {
        const round_matrix *at = &matrices[m];
        sweep_job job = matrix_job(at->matrix, at->rows, at->cols);
        if (left) {
            job.left = left + at->offsets[0], job.left_strides[0] = 1, job.left_strides[1] = left_stride;
            job.right = right + at->offsets[1], job.right_stride = right_stride, job.width = edges;
        }
        job.edges = pairs, job.rank = 1;
        job.vectors = vectors ? vectors + at->offsets[1 - side] : NULL, job.vector_stride = vectors_stride;
        job.messages = vectors ? messages + at->offsets[side] : NULL, job.stride = messages_stride;
        run_sweep(&job, side, block_sums, threads);
    }
    free(block_sums);
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * The rank-1 vectors of a round normalised (gossip/edge.py: orthonormalize), every edge and matrix
 * of a worker in one call.
 * -------------------------------------------------------------------------------------------- */

/* Lanes of a vector's sum of squares: independent additions, then a fixed tree. */
#define SQUARE_LANES 16

/* Each of the `count` vectors in each of the `rows` rows of `vectors` (rows `row_stride` floats
 * apart; vector s is lengths[s] floats from offsets[s]) into the same place of `out`: divided by its
 * 2-norm, or, when the norm is not positive (zero, or NaN), set to 1 / sqrt(length), so that a pair
 * that reached consensus on a matrix can pick the iteration up again.  The squares are summed in
 * double, entry i into lane i % SQUARE_LANES in order, the lanes by a fixed tree; the norm is the
 * fp32 rounding of the square root, the division fp32: results depend on the vector alone. */
void gossip_normalize(const float *vectors, float *out, int64_t rows, int64_t row_stride, const int64_t *offsets,
                      const int64_t *lengths, int64_t count) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t s = 0; s < count; s++) {
            const float *v = vectors + r * row_stride + offsets[s];
            float *o = out + r * row_stride + offsets[s];
            int64_t length = lengths[s], i = 0;
            double sums[SQUARE_LANES] = {0};
            for (; i + SQUARE_LANES <= length; i += SQUARE_LANES)
                for (int l = 0; l < SQUARE_LANES; l++) sums[l] += (double)v[i + l] * (double)v[i + l];
            for (int l = 0; i < length; i++, l++) sums[l] += (double)v[i] * (double)v[i];
            for (int half = SQUARE_LANES / 2; half >= 1; half /= 2)
                for (int l = 0; l < half; l++) sums[l] += sums[l + half];
            float norm = (float)sqrt(sums[0]);
            if (norm > 0.0f)
                for (i = 0; i < length; i++) o[i] = v[i] / norm;
            else
                for (i = 0, norm = (float)(1.0 / sqrt((double)length)); i < length; i++) o[i] = norm;
        }
}
