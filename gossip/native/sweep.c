/* PowerGossip's sweep over one matrix (gossip/edge.py: sweep), fused into one pass over memory.
 *
 * A round adds the low-rank update of every neighbour to a matrix M (rows × cols, row-major) and
 * projects the updated M for every edge: side 0 sends M v̂ (v̂ of length cols), side 1 sends
 * Mᵀ v̂ (v̂ of length rows).  Done with separate matrix products, that is one pass over M for the
 * update and one per edge (or cache-sized chunks of M in turn, each a handful of small BLAS calls);
 * here each row is updated and projected while it sits in the first-level cache, so M moves
 * through memory once per round, read and written.
 *
 * Results do not depend on the number of threads or on the build: the threads split the rows in
 * whole blocks of a fixed number of rows (a function of cols alone); an entry's update is 0 plus
 * sum_k left[i][k] right[k][j] in k order, added to M; on side 0 a row's dot products are summed in
 * LANES lanes (whatever the vector width) and then a fixed tree; on side 1 each block sums its rows
 * in row order and the blocks' sums are added in block order.
 */
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

/* Lanes of a dot product (LANES / WIDTH vectors, whatever the vector unit: the same sums on every
 * build). */
#define LANES 32
/* Entries of M per block of rows (at least one row): smaller matrices run on fewer threads. */
#define GRAIN_FLOATS (1 << 14)

typedef struct {
    float *matrix;
    int64_t rows, cols;
    const float *left, *right; /* the update M += left @ right: rows × width and width × cols */
    int64_t width;             /* 0: no update */
    int64_t left_strides[2];   /* left[i][k] at left + i * left_strides[0] + k * left_strides[1] */
    int64_t edges, rank;
    const float *vectors;      /* edges × rank × length (length: cols on side 0, rows on side 1) */
    float *messages;           /* edge e's message (length × rank, row-major) at messages + e * stride */
    int64_t stride;
    int64_t block_rows;        /* rows per block of the thread split (and of side 1's sums) */
    float *block_sums;         /* side 1: per block, per vector, cols partial sums */
} sweep_job;

/* row += l @ right (l: the row's `width` factors, `step` apart; right: width × cols): per
 * entry, 0 plus the products in k order, then added to the row.  Inlined with a constant width for
 * the small ones (update_row), so that the factors are loaded once per row. */
INLINE void update_columns(float *row, const float *l, int64_t step, const float *right, int64_t width, int64_t cols) {
    float factors[width];
    for (int64_t k = 0; k < width; k++) factors[k] = l[k * step];
    int64_t j = 0;
    for (; j + WIDTH <= cols; j += WIDTH) {
        vec sum = {0};
        for (int64_t k = 0; k < width; k++) sum += factors[k] * vloadu(right + k * cols + j);
        vstoreu(row + j, vloadu(row + j) + sum);
    }
    for (; j < cols; j++) {
        float sum = 0.0f;
        for (int64_t k = 0; k < width; k++) sum += factors[k] * right[k * cols + j];
        row[j] += sum;
    }
}

/* Row i of the job's matrix updated over all its columns. */
static void update_row(const sweep_job *job, int64_t i) {
    float *row = job->matrix + i * job->cols;
    const float *l = job->left + i * job->left_strides[0];
    int64_t step = job->left_strides[1];
    switch (job->width) {
    case 0: return;
    case 1: update_columns(row, l, step, job->right, 1, job->cols); return;
    case 2: update_columns(row, l, step, job->right, 2, job->cols); return;
    case 3: update_columns(row, l, step, job->right, 3, job->cols); return;
    case 4: update_columns(row, l, step, job->right, 4, job->cols); return;
    default: update_columns(row, l, step, job->right, job->width, job->cols);
    }
}

/* sum_j row[j] v[j] over `count` entries: lane l sums the products of columns j = l (mod LANES) in
 * order up to the last whole step of LANES, the lanes are added by a fixed tree (l and l + 16, then
 * l and l + 8, 4, 2, 1), and the remaining products after that, in order. */
INLINE float dot(const float *row, const float *v, int64_t count) {
    vec parts[LANES / WIDTH] = {{0}};
    int64_t j = 0;
    for (; j + LANES <= count; j += LANES)
        for (int q = 0; q < LANES / WIDTH; q++) parts[q] += vloadu(row + j + q * WIDTH) * vloadu(v + j + q * WIDTH);
    int half = LANES / 2;
    for (; half >= WIDTH; half /= 2)
        for (int q = 0; q < half / WIDTH; q++) parts[q] += parts[q + half / WIDTH];
    float lanes[WIDTH];
    vstoreu(lanes, parts[0]);
    for (; half >= 1; half /= 2)
        for (int l = 0; l < half; l++) lanes[l] += lanes[l + half];
    float total = lanes[0];
    for (; j < count; j++) total += row[j] * v[j];
    return total;
}

/* sums[j] += row[j] * weight for `count` entries. */
INLINE void add_scaled(float *sums, const float *row, float weight, int64_t count) {
    int64_t j = 0;
    for (; j + WIDTH <= count; j += WIDTH) vstoreu(sums + j, vloadu(sums + j) + vloadu(row + j) * weight);
    for (; j < count; j++) sums[j] += row[j] * weight;
}

/* Side 0 (and update only): rows [first, last), each updated, then dotted with every edge's
 * vectors. */
static void rows_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const sweep_job *job = (const sweep_job *)context;
    int64_t cols = job->cols;
    for (int64_t i = first; i < last; i++) {
        float *row = job->matrix + i * cols;
        update_row(job, i);
        for (int64_t e = 0; e < job->edges; e++)
            for (int64_t c = 0; c < job->rank; c++)
                job->messages[e * job->stride + i * job->rank + c] =
                    dot(row, job->vectors + (e * job->rank + c) * cols, cols);
    }
}

/* Side 1 on row blocks [first, last) (whole blocks of `block_rows` rows): each row updated, then
 * added, times each edge's vector entry for that row, into its block's sums (one row of cols
 * floats per vector), in row order; gossip_sweep adds the blocks' sums in block order. */
static void blocks_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const sweep_job *job = (const sweep_job *)context;
    int64_t cols = job->cols, rows = job->rows, pairs = job->edges * job->rank;
    for (int64_t block = first; block < last; block += job->block_rows) {
        float *sums = job->block_sums + block / job->block_rows * pairs * cols;
        memset(sums, 0, (size_t)(pairs * cols) * sizeof(float));
        int64_t end = block + job->block_rows < last ? block + job->block_rows : last;
        for (int64_t i = block; i < end; i++) {
            float *row = job->matrix + i * cols;
            update_row(job, i);
            for (int64_t p = 0; p < pairs; p++) add_scaled(sums + p * cols, row, job->vectors[p * rows + i], cols);
        }
    }
}

/* M += left @ right (when width > 0), then for each of `edges` edges the projection of the updated
 * M with its `rank` vectors: side 0, message = M v̂ (rows × rank); side 1, message = Mᵀ v̂ (cols ×
 * rank).  `right` is contiguous, `left` strided; `vectors` holds each edge's v̂ transposed (rank ×
 * length).  Returns 0, or -1 when there is no memory for side 1's block sums (nothing written). */
int gossip_sweep(float *matrix, int64_t rows, int64_t cols, const float *left, int64_t left_row_stride,
                 int64_t left_column_stride, const float *right, int64_t width, int side, const float *vectors,
                 int64_t edges, int64_t rank, float *messages, int64_t stride, int threads) {
    int64_t block_rows = (GRAIN_FLOATS + cols - 1) / cols, pairs = edges * rank;
    sweep_job job = {.matrix = matrix, .rows = rows, .cols = cols, .left = left, .right = right, .width = width,
                     .left_strides = {left_row_stride, left_column_stride},
                     .edges = side == 0 ? edges : 0, .rank = rank, .vectors = vectors, .messages = messages,
                     .stride = stride, .block_rows = block_rows};
    if (side == 0 || pairs == 0) {
        parallel_for(rows, block_rows, threads, rows_range, &job);
        return 0;
    }
    int64_t blocks = (rows + block_rows - 1) / block_rows;
    job.edges = edges;
    job.block_sums = malloc((size_t)(blocks * pairs * cols) * sizeof(float));
    if (!job.block_sums) return -1; /* before any write: M is not half updated */
    parallel_for(rows, block_rows, threads, blocks_range, &job);
    for (int64_t p = 0; p < pairs; p++) {
        float *message = messages + p / rank * stride + p % rank;
        for (int64_t j = 0; j < cols; j++) {
            float total = job.block_sums[p * cols + j];
            for (int64_t b = 1; b < blocks; b++) total += job.block_sums[(b * pairs + p) * cols + j];
            message[j * rank] = total;
        }
    }
    free(job.block_sums);
    return 0;
}
