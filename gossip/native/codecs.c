/* Fused CPU kernels of the message codecs (gossip/compression.py).
 *
 * Each kernel does in one or two passes over memory what the torch fallback does in several
 * elementwise passes, and produces bit-identical results: the same float operations in the same
 * order (compiled with -ffp-contract=off, no fast-math), the same counter-based randomness, the same
 * selection rule, the same wire layout.  The sums, sign's ||x||_1 and QSGD's ||x||_2^2, are
 * accumulated in double on both paths (in a fixed order here), so the fp32 scale agrees unless the
 * double sums straddle an fp32 rounding point.  gossip/native/__init__.py compiles this file on
 * first use, once per instruction set, and calls it through ctypes on contiguous CPU tensors; work
 * is split over `threads` threads (OpenMP's, else POSIX) in whole blocks of BLOCK elements (a
 * multiple of 64, so a block starts on a whole byte of every packed stream and on a whole word of a
 * bitmap).
 */
#include <float.h>
#include <math.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "parallel.h"

#define BLOCK (1 << 16)

/* Reads of x are hinted this far ahead, a line at a time.  The hardware prefetchers stop at 4 KiB
 * page boundaries, so on 4 KiB pages (torch's tensors, unless transparent huge pages are asked
 * for) a compute-bound pass over x otherwise waits for the first lines of every page. */
#define AHEAD_BYTES 8192
INLINE void prefetch_ahead(const float *p) { __builtin_prefetch((const void *)((uintptr_t)p + AHEAD_BYTES)); }

/* ----------------------------------------------------------------------------------------------
 * Rounding noise: word w of the stream is splitmix64's output for counter w; element i uses the
 * signed 16-bit lane i % 4 of word i / 4 (little-endian), as compression._rounding_noise does.
 * -------------------------------------------------------------------------------------------- */
#define GOLDEN 0x9E3779B97F4A7C15ull

/* splitmix64's output from its state z = seed + (counter + 1) * GOLDEN. */
INLINE uint64_t mix64_state(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

INLINE uint64_t mix64(uint64_t seed, uint64_t counter) { return mix64_state(seed + (counter + 1) * GOLDEN); }

/* ----------------------------------------------------------------------------------------------
 * Quantise and pack: codes of `bits` bits, eight per `bits` bytes, little-endian bit stream.
 * Work goes in steps of STEP elements (eight packed lanes); a partial last step is read through a
 * zero-padded copy and only the stream's own bytes are written.  quantize_lanes is inlined with
 * constant kind and bits for every pair, so that each loop is compiled for its own codec.
 * -------------------------------------------------------------------------------------------- */
enum { SIGN = 0, QSGD = 1, MONIQUA = 2 };

typedef struct {
    const float *x;
    float scale, offset; /* QSGD: top, top / norm; MONIQUA: n * 2^16, n * 2^15 */
    uint64_t seed;
    uint8_t *out;
    double *abs_sums; /* SIGN: one per block */
    int kind, bits;
} quantize_job;

/* The first `bytes` bytes of `lane` (little-endian hosts: every one torch supports). */
INLINE void store_bytes(uint8_t *out, uint64_t lane, int64_t bytes) {
    switch (bytes) {
    case 8: memcpy(out, &lane, 8); return;
    case 4: memcpy(out, &lane, 4); return;
    case 2: memcpy(out, &lane, 2); return;
    case 1: *out = (uint8_t)lane; return;
    default:
        for (int64_t b = 0; b < bytes; b++) out[b] = (uint8_t)(lane >> (8 * b));
    }
}

/* Elements quantised per step: stage by stage through small arrays, so each stage vectorises. */
#define STEP 64

/* Float vectors as wide as the build's instruction set, for the clamps: compilers turn the scalar
 * `a > b ? a : b` into a compare and a blend, while max/min instructions return the same (the
 * second operand when either is NaN) in one.  The clamps put the value second, so that a NaN
 * passes through them as through torch's. */
#if defined(__AVX512F__)
typedef __m512 vfloat;
#define VWIDTH 16
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vset _mm512_set1_ps
#define vmax _mm512_max_ps
#define vmin _mm512_min_ps
#define vmul _mm512_mul_ps
#define vadd _mm512_add_ps
#define vabs _mm512_abs_ps
#elif defined(__AVX__)
typedef __m256 vfloat;
#define VWIDTH 8
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vset _mm256_set1_ps
#define vmax _mm256_max_ps
#define vmin _mm256_min_ps
#define vmul _mm256_mul_ps
#define vadd _mm256_add_ps
#define vabs(x) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x)
#elif defined(__SSE2__)
typedef __m128 vfloat;
#define VWIDTH 4
#define vload _mm_loadu_ps
#define vstore _mm_storeu_ps
#define vset _mm_set1_ps
#define vmax _mm_max_ps
#define vmin _mm_min_ps
#define vmul _mm_mul_ps
#define vadd _mm_add_ps
#define vabs(x) _mm_andnot_ps(_mm_set1_ps(-0.0f), x)
#else
typedef float vfloat;
#define VWIDTH 1
#define vload(p) (*(p))
#define vstore(p, x) (*(p) = (x))
#define vset(x) (x)
#define vmax(a, b) ((a) > (b) ? (a) : (b))
#define vmin(a, b) ((a) < (b) ? (a) : (b))
#define vmul(a, b) ((a) * (b))
#define vadd(a, b) ((a) + (b))
#define vabs fabsf
#endif

/* Eight lanes of eight codes each (one code per byte), as one vector: GCC/Clang vector extensions,
 * lowered to whatever vector unit the library is built for. */
typedef uint64_t lanes8 __attribute__((vector_size(64)));
typedef uint32_t lanes8_u32 __attribute__((vector_size(32)));
typedef uint16_t lanes8_u16 __attribute__((vector_size(16)));
typedef uint8_t lanes8_u8 __attribute__((vector_size(8)));

/* An int64 mask of the low `width` bits of every `period`-bit field. */
INLINE uint64_t field_mask(int width, int period) {
    uint64_t ones = period == 64 ? 1 : UINT64_MAX / ((1ull << period) - 1); /* bit 0 of every field */
    return ((1ull << width) - 1) * ones;
}

/* Each lane's eight codes packed into its low `bits` bytes (pack_bits's stream): neighbouring
 * groups of 1, 2, then 4 codes close up; for one bit, where vectors multiply 64-bit lanes
 * (AVX-512DQ), one multiply gathers them. */
INLINE lanes8 pack_lanes(lanes8 lanes, int bits) {
    if (bits == 8) return lanes;
    lanes &= 0x0101010101010101ull * ((1u << bits) - 1);
#if defined(__AVX512DQ__)
    if (bits == 1) return (lanes * 0x0102040810204080ull) >> 56;
#endif
    for (int step = 0; step < 3; step++) {
        int group = 1 << step;
        uint64_t low = field_mask(group * bits, 16 << step);
        lanes = (lanes & low) | ((lanes >> (group * (8 - bits))) & (low << (group * bits)));
    }
    return lanes;
}

#if defined(__AVX2__) && !defined(__AVX512F__)
/* AVX2 cannot truncate 64-bit lanes (compilers move them out one by one): the low `bytes` (1, 2 or
 * 4) of each lane are shuffled to consecutive places, those of the upper 128-bit half after those
 * of the lower, and the halves ORed: 4 * bytes bytes from four lanes. */
static const int8_t low_bytes_shuffles[3][32] = {
    {0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
     -1, -1, 0, 8, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1},
    {0, 1, 8, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
     -1, -1, -1, -1, 0, 1, 8, 9, -1, -1, -1, -1, -1, -1, -1, -1},
    {0, 1, 2, 3, 8, 9, 10, 11, -1, -1, -1, -1, -1, -1, -1, -1,
     -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 2, 3, 8, 9, 10, 11},
};

INLINE void store_low_bytes(uint8_t *out, lanes8 lanes, int bytes) {
    __m256i halves[2];
    memcpy(halves, &lanes, sizeof halves);
    __m256i shuffle = _mm256_loadu_si256((const __m256i *)low_bytes_shuffles[bytes / 2]);
    for (int h = 0; h < 2; h++) {
        __m256i picked = _mm256_shuffle_epi8(halves[h], shuffle);
        __m128i joined = _mm_or_si128(_mm256_castsi256_si128(picked), _mm256_extracti128_si256(picked, 1));
        memcpy(out + 4 * bytes * h, &joined, (size_t)(4 * bytes));
    }
}
#define STORE_NARROW(out, lanes, bytes, type) store_low_bytes(out, lanes, bytes)
#else
#define STORE_NARROW(out, lanes, bytes, type)                                                              \
    do {                                                                                                   \
        type narrow = __builtin_convertvector(lanes, type);                                                \
        memcpy(out, &narrow, 8 * (bytes));                                                                 \
    } while (0)
#endif

/* Stores packed lanes of `bits` bytes each one after another: for 1, 2 or 4 bits, each lane's
 * truncation to 8, 16 or 32 bits, all lanes at once. */
INLINE void store_lanes(uint8_t *out, lanes8 lanes, int bits) {
    switch (bits) {
    case 1: STORE_NARROW(out, lanes, 1, lanes8_u8); return;
    case 2: STORE_NARROW(out, lanes, 2, lanes8_u16); return;
    case 4: STORE_NARROW(out, lanes, 4, lanes8_u32); return;
    case 8: memcpy(out, &lanes, 64); return;
    default: /* whole words in lane order, each lane's spare bytes overwritten by the lanes after it;
                the last lanes, whose word would pass the step's 8 * bits bytes, byte by byte */
        for (int lane = 0; lane < 8; lane++) {
            uint64_t word = lanes[lane];
            if (lane * bits + 8 <= 8 * bits) memcpy(out + lane * bits, &word, 8);
            else store_bytes(out + lane * bits, word, bits);
        }
    }
}

/* Stores the STEP codes, each in a 32-bit lane and below 2^bits, packed (pack_bits's stream).  With
 * AVX-512 or AVX2, saturating packs narrow them to bytes (exact: each is below 256) and one dword
 * permute undoes the packs' interleaving of 128-bit lanes; codes of 1 and 4 bits (and 2, with
 * AVX-512) are then packed by a byte test or by multiply-adds of neighbouring bytes, the others by
 * pack_lanes. */
INLINE void store_codes(const uint32_t codes[STEP], int bits, uint8_t *packed) {
    lanes8 eight; /* the 64 code bytes, for the widths packed by pack_lanes */
#if defined(__AVX512BW__)
    __m512i lanes[4];
    for (int j = 0; j < 4; j++) lanes[j] = _mm512_loadu_si512(codes + 16 * j);
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    __m512i bytes = _mm512_permutexvar_epi32(order, _mm512_packus_epi16(_mm512_packus_epi32(lanes[0], lanes[1]),
                                                                        _mm512_packus_epi32(lanes[2], lanes[3])));
    if (bits == 1) {
        uint64_t bitmap = _mm512_test_epi8_mask(bytes, bytes);
        memcpy(packed, &bitmap, 8);
        return;
    }
    if (bits == 2) {
        __m512i nibbles = _mm512_maddubs_epi16(bytes, _mm512_set1_epi16(0x0401));
        __m128i packed_bytes = _mm512_cvtepi32_epi8(_mm512_madd_epi16(nibbles, _mm512_set1_epi32(0x00100001)));
        memcpy(packed, &packed_bytes, 16);
        return;
    }
    if (bits == 4) {
        __m256i packed_bytes = _mm512_cvtepi16_epi8(_mm512_maddubs_epi16(bytes, _mm512_set1_epi16(0x1001)));
        memcpy(packed, &packed_bytes, 32);
        return;
    }
    memcpy(&eight, &bytes, sizeof eight);
#elif defined(__AVX2__)
    __m256i halves[2]; /* bytes of codes 0..31 and 32..63, each half as the AVX-512 path's whole */
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int h = 0; h < 2; h++) {
        const uint32_t *half = codes + 32 * h;
        __m256i low = _mm256_packus_epi32(_mm256_loadu_si256((const __m256i *)half), _mm256_loadu_si256((const __m256i *)(half + 8)));
        __m256i high = _mm256_packus_epi32(_mm256_loadu_si256((const __m256i *)(half + 16)), _mm256_loadu_si256((const __m256i *)(half + 24)));
        halves[h] = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(low, high), order);
    }
    if (bits == 1) {
        uint64_t bitmap = (uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(halves[0], 7)) |
                          (uint64_t)(uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(halves[1], 7)) << 32;
        memcpy(packed, &bitmap, 8);
        return;
    }
    if (bits == 4) { /* pairs of codes into words below 256, narrowed by one more pack */
        __m256i pairs[2];
        for (int h = 0; h < 2; h++) pairs[h] = _mm256_maddubs_epi16(halves[h], _mm256_set1_epi16(0x1001));
        __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(pairs[0], pairs[1]), 0xD8);
        memcpy(packed, &bytes, 32);
        return;
    }
    memcpy(&eight, halves, sizeof eight);
#else
    uint8_t bytes[STEP];
    for (int j = 0; j < STEP; j++) bytes[j] = (uint8_t)codes[j];
    memcpy(&eight, bytes, sizeof eight);
#endif
    store_lanes(packed, pack_lanes(eight, bits), bits);
}

/* The packed codes of x[group, group + STEP) (group a multiple of 8), `kind` and `bits` constant
 * after inlining.  Stochastic rounding: add a 16-bit noise lane to the fixed-point value (2^16
 * steps per unit, non-negative) and keep bits 16..23 (QSGD: twice those plus the sign), of which
 * the stream keeps the low `bits`. */
INLINE void step_codes(const float *v, int kind, int bits, float scale, float offset, uint64_t seed,
                       int64_t group, uint8_t *packed) {
    uint32_t codes[STEP], mask = (1u << bits) - 1;
    if (kind == SIGN) {
        for (int j = 0; j < STEP; j++) codes[j] = v[j] >= 0.0f;
    } else {
        float fixed[STEP];
        uint64_t words[STEP / 4];
        uint16_t noise[STEP]; /* signed noise lane n plus 2^15: the bits of n with the top one flipped */
        for (int j = 0; j < STEP; j += VWIDTH) { /* QSGD: min(|v| offset, scale); MONIQUA: clamp, scale, offset */
            vfloat value = vload(v + j);
            if (kind == QSGD) vstore(fixed + j, vmin(vset(scale), vmul(vabs(value), vset(offset))));
            else vstore(fixed + j, vadd(vmul(vmin(vset(0.5f), vmax(vset(-0.5f), value)), vset(scale)), vset(offset)));
        }
        uint64_t state = seed + ((uint64_t)group / 4 + 1) * GOLDEN; /* word w's state: state + w GOLDEN */
        for (int w = 0; w < STEP / 4; w++) words[w] = mix64_state(state + (uint64_t)w * GOLDEN) ^ 0x8000800080008000ull;
        memcpy(noise, words, sizeof noise);
        for (int j = 0; j < STEP; j++) { /* wrapping, as torch's int32 (NaN converts to INT32_MIN on both) */
            uint32_t steps = (uint32_t)(int32_t)fixed[j] + noise[j];
            codes[j] = kind == QSGD ? ((steps >> 15) & mask & ~1u) | (v[j] < 0.0f) : (steps >> 16) & mask;
        }
    }
    store_codes(codes, bits, packed);
}

/* Lanes of a block's double sums (element i into lane i % LANES): enough independent additions to
 * hide their latency (four vectors of eight). */
#define LANES 32

/* sums[l] += |v[LANES i + l]| for the STEP values of v, in order (vectorised; a local copy of the
 * sums spilled on AVX2's sixteen registers). */
INLINE void add_abs(double sums[LANES], const float *v) {
    for (int i = 0; i < STEP; i += LANES)
        for (int l = 0; l < LANES; l++) sums[l] += fabsf(v[i + l]);
}

/* The lanes of a block's sums added pairwise: a fixed order, whatever the thread split. */
INLINE double lanes_total(double sums[LANES]) {
    for (int width = LANES / 2; width >= 1; width /= 2)
        for (int l = 0; l < width; l++) sums[l] += sums[l + width];
    return sums[0];
}

/* Blocks of BLOCK elements; for SIGN, also each block's sum of |x| in LANES double lanes. */
INLINE void quantize_lanes(const quantize_job *job, int64_t first, int64_t last, int kind, int bits) {
    const float *x = job->x;
    uint8_t *out = job->out;
    float scale = job->scale, offset = job->offset;
    uint64_t seed = job->seed;
    for (int64_t block = first; block < last; block += BLOCK) {
        int64_t end = block + BLOCK < last ? block + BLOCK : last, group = block;
        double sums[LANES] = {0};
        for (; group + STEP <= end; group += STEP) {
            for (int line = 0; line < STEP; line += 16) prefetch_ahead(x + group + line);
            step_codes(x + group, kind, bits, scale, offset, seed, group, out + group / 8 * bits);
            if (kind == SIGN) add_abs(sums, x + group);
        }
        if (group < end) { /* through zero-padded copies; only the stream's own bytes are written */
            float padded[STEP] = {0};
            uint8_t packed[STEP];
            memcpy(padded, x + group, (size_t)(end - group) * sizeof(float));
            step_codes(padded, kind, bits, scale, offset, seed, group, packed);
            int64_t used = (end - group) * bits; /* the stream's last byte is zero-padded */
            if (used % 8) packed[used / 8] &= (uint8_t)((1u << (used % 8)) - 1);
            memcpy(out + group / 8 * bits, packed, (size_t)((used + 7) / 8));
            if (kind == SIGN) add_abs(sums, padded);
        }
        if (kind == SIGN) job->abs_sums[block / BLOCK] = lanes_total(sums);
    }
}

#define BITS_CASES(kind)                                                                                  \
    switch (job->bits) {                                                                                   \
    case 1: quantize_lanes(job, first, last, kind, 1); return;                                             \
    case 2: quantize_lanes(job, first, last, kind, 2); return;                                             \
    case 3: quantize_lanes(job, first, last, kind, 3); return;                                             \
    case 4: quantize_lanes(job, first, last, kind, 4); return;                                             \
    case 5: quantize_lanes(job, first, last, kind, 5); return;                                             \
    case 6: quantize_lanes(job, first, last, kind, 6); return;                                             \
    case 7: quantize_lanes(job, first, last, kind, 7); return;                                             \
    default: quantize_lanes(job, first, last, kind, 8); return;                                            \
    }

static void quantize_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const quantize_job *job = (const quantize_job *)context;
    if (job->kind == SIGN) quantize_lanes(job, first, last, SIGN, 1);
    else if (job->kind == QSGD) BITS_CASES(QSGD)
    else BITS_CASES(MONIQUA)
}

/* The sum of x^2 in double: per block in LANES lanes, blocks added in order (QSGD's norm). */
static double square_sum(const float *x, int64_t count, double *block_sums, int threads);

/* One whole message into `wire` (compression.py's wire formats): SIGN: fp32 ||x||_1 / count, then the
 * signs; QSGD: fp32 ||x||_2, then the codes of levels `levels` (factor levels 2^16 / ||x||_2, 0 for a
 * zero norm, clamped to the largest float); MONIQUA: the `bits`-bit codes only.  The sums accumulate
 * in double, per block in a fixed order.  Returns 0, or -1 (nothing written) when the per-block sums
 * cannot be allocated. */
int gossip_quantize_pack(const float *x, int64_t count, int kind, int bits, int levels, uint64_t seed,
                         uint8_t *wire, int threads) {
    int64_t blocks = (count + BLOCK - 1) / BLOCK;
    double *block_sums = kind == MONIQUA ? NULL : malloc((size_t)blocks * sizeof(double));
    if (kind != MONIQUA && !block_sums) return -1;
    quantize_job job = {x, 0.0f, 0.0f, seed, kind == MONIQUA ? wire : wire + 4, block_sums, kind, bits};
    float header = 0.0f;
    if (kind == QSGD) {
        float top = (float)levels * 65536.0f, norm = (float)sqrt(square_sum(x, count, block_sums, threads));
        float factor = norm > 0.0f ? top / norm : 0.0f; /* fp32 division, as torch's */
        job.scale = top, job.offset = factor < FLT_MAX ? factor : FLT_MAX, header = norm;
    } else if (kind == MONIQUA) {
        float levels_minus_one = (float)((1 << bits) - 1);
        job.scale = levels_minus_one * 65536.0f, job.offset = levels_minus_one * 32768.0f;
    }
    parallel_for(count, BLOCK, threads, quantize_range, &job);
    if (kind == SIGN) {
        double total = 0.0;
        for (int64_t b = 0; b < blocks; b++) total += block_sums[b];
        header = (float)(total / (double)count);
    }
    if (kind != MONIQUA) memcpy(wire, &header, 4);
    free(block_sums);
    return 0;
}

/* ----------------------------------------------------------------------------------------------
 * QSGD's squared 2-norm: sum of x^2 in double, per block in LANES lanes, blocks added in order.
 * -------------------------------------------------------------------------------------------- */
typedef struct {
    const float *x;
    double *block_sums;
} squares_job;

/* sum + v^2 in double.  The square of a float is exact in double (24-bit significands), so a
 * fused multiply-add, where the build has one, rounds exactly as the multiply and the add do. */
INLINE double add_square(double sum, float v) {
#if defined(__AVX512F__) || defined(__FMA__)
    return __builtin_fma((double)v, (double)v, sum);
#else
    return sum + (double)v * (double)v;
#endif
}

static void squares_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const squares_job *job = (const squares_job *)context;
    for (int64_t block = first; block < last; block += BLOCK) {
        int64_t end = block + BLOCK < last ? block + BLOCK : last, i = block;
        double sums[LANES] = {0};
        for (; i + LANES <= end; i += LANES) {
            for (int line = 0; line < LANES; line += 16) prefetch_ahead(job->x + i + line);
            for (int l = 0; l < LANES; l++) sums[l] = add_square(sums[l], job->x[i + l]);
        }
        for (int l = 0; i < end; i++, l++) sums[l] = add_square(sums[l], job->x[i]);
        job->block_sums[block / BLOCK] = lanes_total(sums);
    }
}

/* `block_sums` holds ceil(count / BLOCK) doubles. */
static double square_sum(const float *x, int64_t count, double *block_sums, int threads) {
    squares_job job = {x, block_sums};
    parallel_for(count, BLOCK, threads, squares_range, &job);
    double total = 0.0;
    for (int64_t b = 0; b < (count + BLOCK - 1) / BLOCK; b++) total += block_sums[b];
    return total;
}

/* ----------------------------------------------------------------------------------------------
 * Decode through a table: out[i] = table[code i] for the packed `bits`-bit codes of `wire`, where
 * table[c] = base[c] * scale / divisor in fp32 (the torch path's operations).  With AVX-512 or AVX2,
 * a vector of codes is cut out of the stream at once (its bytes shuffled into place and shifted) and
 * looked up by a permute (tables of up to 16 or 8 entries) or a gather; otherwise, when `bits`
 * divides 8, each byte's 8 / bits values are copied at once from a table of all 256 bytes.
 * -------------------------------------------------------------------------------------------- */
typedef struct {
    const uint8_t *wire;
    int64_t wire_bytes;
    int bits;
    const float *table;      /* 2^bits entries */
    const float *byte_table; /* 256 rows of 8 / bits values when bits divides 8 (no vector path) */
    float *out;
} lookup_job;

#if defined(__AVX512BW__)
#define CODES_PER_VECTOR 16
typedef __m512i vcodes;
#elif defined(__AVX2__)
#define CODES_PER_VECTOR 8
typedef __m256i vcodes;
#else
#define CODES_PER_VECTOR 0
#endif

#if CODES_PER_VECTOR
/* Where code j of a vector sits in its 16-byte window: the shuffle taking its one or two bytes
 * into int32 lane j, and the right shift that leaves the code in the low bits. */
typedef struct {
    int8_t shuffle[4 * CODES_PER_VECTOR];
    int32_t shift[CODES_PER_VECTOR];
} code_places;

static code_places places_for(int bits) {
    code_places places;
    memset(places.shuffle, -1, sizeof places.shuffle); /* -1: a zero byte */
    for (int j = 0; j < CODES_PER_VECTOR; j++) {
        int bit = j * bits;
        places.shuffle[4 * j] = (int8_t)(bit / 8);
        if (bit % 8 + bits > 8) places.shuffle[4 * j + 1] = (int8_t)(bit / 8 + 1);
        places.shift[j] = bit % 8;
    }
    return places;
}

/* out[0, CODES_PER_VECTOR) := the table entries of the codes whose stream starts at `window`
 * (16 readable bytes); `bits` constant after inlining. */
INLINE void lookup_vector(const uint8_t *window, const code_places *places, const float *table, int bits,
                          float *out) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)window);
#if defined(__AVX512BW__)
    __m512i picked = _mm512_shuffle_epi8(_mm512_broadcast_i32x4(bytes), _mm512_loadu_si512(places->shuffle));
    __m512i codes = _mm512_and_si512(_mm512_srlv_epi32(picked, _mm512_loadu_si512(places->shift)),
                                     _mm512_set1_epi32((1 << bits) - 1));
    __m512 values = bits <= 4 ? _mm512_permutexvar_ps(codes, _mm512_loadu_ps(table))
                  : bits == 5 ? _mm512_permutex2var_ps(_mm512_loadu_ps(table), codes, _mm512_loadu_ps(table + 16))
                              : _mm512_i32gather_ps(codes, table, 4);
    _mm512_storeu_ps(out, values);
#else
    __m256i picked = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes),
                                         _mm256_loadu_si256((const __m256i *)places->shuffle));
    __m256i codes = _mm256_and_si256(_mm256_srlv_epi32(picked, _mm256_loadu_si256((const __m256i *)places->shift)),
                                     _mm256_set1_epi32((1 << bits) - 1));
    __m256 values;
    if (bits <= 3) values = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table), codes);
    else if (bits == 4) /* two 8-entry halves, chosen by bit 3 (moved to the sign bit) */
        values = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(table), codes),
                                  _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), codes),
                                  _mm256_castsi256_ps(_mm256_slli_epi32(codes, 28)));
    else values = _mm256_i32gather_ps(table, codes, 4);
    _mm256_storeu_ps(out, values);
#endif
}

/* Codes [first, last) by vectors, as far as each vector's 16-byte window lies inside the wire;
 * returns where it stopped. */
INLINE int64_t lookup_vectors(const lookup_job *job, int64_t first, int64_t last, int bits) {
    code_places places = places_for(bits);
    int64_t group = first;
    for (; group + CODES_PER_VECTOR <= last && group / 8 * bits + 16 <= job->wire_bytes; group += CODES_PER_VECTOR)
        lookup_vector(job->wire + group / 8 * bits, &places, job->table, bits, job->out + group);
    return group;
}
#endif

INLINE void lookup_bytes(const lookup_job *job, int64_t first, int64_t last, int per_byte) {
    const uint8_t *wire = job->wire + first / per_byte; /* first: a multiple of BLOCK */
    const float *rows = job->byte_table;
    float *out = job->out + first;
    int64_t bytes = (last - first) / per_byte;
#pragma GCC unroll 8
    for (int64_t b = 0; b < bytes; b++)
        memcpy(out + b * per_byte, rows + per_byte * wire[b], (size_t)per_byte * sizeof(float));
}

static void lookup_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const lookup_job *job = (const lookup_job *)context;
    int bits = job->bits;
    int64_t done = job->byte_table ? first + (last - first) / (8 / bits) * (8 / bits) : first;
    switch (job->byte_table ? bits : 0) {
    case 1: lookup_bytes(job, first, done, 8); break;
    case 2: lookup_bytes(job, first, done, 4); break;
    case 4: lookup_bytes(job, first, done, 2); break;
    case 8: lookup_bytes(job, first, done, 1); break;
    }
#if CODES_PER_VECTOR
    switch (bits) {
    case 1: done = lookup_vectors(job, first, last, 1); break;
    case 2: done = lookup_vectors(job, first, last, 2); break;
    case 3: done = lookup_vectors(job, first, last, 3); break;
    case 4: done = lookup_vectors(job, first, last, 4); break;
    case 5: done = lookup_vectors(job, first, last, 5); break;
    case 6: done = lookup_vectors(job, first, last, 6); break;
    case 7: done = lookup_vectors(job, first, last, 7); break;
    default: done = lookup_vectors(job, first, last, 8); break;
    }
#endif
    uint64_t mask = (1u << bits) - 1;
    for (int64_t group = done; group < last; group += 8) { /* what is left: eight codes at a time */
        int64_t end = group + 8 < last ? group + 8 : last;
        int64_t bit = group * bits, bytes = ((end - group) * bits + bit % 8 + 7) / 8;
        uint64_t lane = 0;
        for (int64_t b = 0; b < bytes; b++) lane |= (uint64_t)job->wire[bit / 8 + b] << (8 * b);
        lane >>= bit % 8;
        for (int64_t i = group; i < end; i++) job->out[i] = job->table[(lane >> (bits * (i - group))) & mask];
    }
}

/* With `scaled`, the wire starts with the fp32 scale and the codes follow; else the scale is 1. */
void gossip_lookup_decode(const uint8_t *wire, int64_t count, int bits, const float *base, int scaled,
                          float divisor, float *out, int threads) {
    float scale = 1.0f, table[256] = {0}; /* whole vectors of it are loaded: no unset entries */
    if (scaled) memcpy(&scale, wire, 4), wire += 4;
    for (int code = 0; code < 1 << bits; code++) table[code] = base[code] * scale / divisor;
    lookup_job job = {wire, (count * bits + 7) / 8, bits, table, NULL, out};
    float byte_table[256 * 8];
    if (!CODES_PER_VECTOR && 8 % bits == 0) {
        int per_byte = 8 / bits;
        for (int byte = 0; byte < 256; byte++)
            for (int j = 0; j < per_byte; j++)
                byte_table[byte * per_byte + j] = table[(byte >> (bits * j)) & ((1 << bits) - 1)];
        job.byte_table = byte_table;
    }
    parallel_for(count, BLOCK, threads, lookup_range, &job);
}

/* ----------------------------------------------------------------------------------------------
 * Top-k: the k entries of largest magnitude key (the bits of |x| as a uint32: the order of |x|,
 * NaN above infinity), ties to the lower index, ascending, as compression._largest_k selects them.
 * Candidates are the entries whose key is not below a threshold key; each part writes its own
 * into a share of the buffer in one read of x (when a share overflows: a count first, then shares
 * of the counted sizes), the shares are closed up, and the k-th largest key among the candidates
 * is found by a radix select.
 * -------------------------------------------------------------------------------------------- */
INLINE uint32_t magnitude_key(float value) {
    uint32_t bits;
    memcpy(&bits, &value, 4);
    return bits & 0x7FFFFFFFu;
}

typedef struct {
    const float *x;
    uint32_t threshold;
    int32_t *indices;
    float *values;
    /* per part: the slots it writes from and up to (write), and the candidates it found (-1 when
     * they did not fit) */
    int64_t offset[MAX_THREADS], limit[MAX_THREADS], found[MAX_THREADS];
    int counting;
} candidates_job;

/* Whether any of x[0, 16) is a candidate: a vector compare, its lanes ORed as eight words. */
typedef uint32_t keys16 __attribute__((vector_size(64)));
INLINE int any_candidate(const float *x, uint32_t threshold) {
    keys16 keys;
    memcpy(&keys, x, sizeof keys);
    keys16 hit = (keys16)((keys & 0x7FFFFFFFu) >= threshold);
    uint64_t words[8], any = 0;
    memcpy(words, &hit, sizeof words);
    for (int w = 0; w < 8; w++) any |= words[w];
    return any != 0;
}

static void candidates_range(void *context, int64_t first, int64_t last, int part) {
    candidates_job *job = (candidates_job *)context;
    const float *x = job->x;
    uint32_t threshold = job->threshold;
    if (job->counting) { /* int32 sums per block vectorise without widening */
        int64_t found = 0;
        for (int64_t block = first; block < last; block += BLOCK) {
            int32_t hits = 0;
            for (int64_t i = block; i < (block + BLOCK < last ? block + BLOCK : last); i++)
                hits += magnitude_key(x[i]) >= threshold;
            found += hits;
        }
        job->found[part] = found;
        return;
    }
    int64_t at = job->offset[part], limit = job->limit[part], i = first;
    job->found[part] = -1;
#if defined(__AVX512F__) /* the hits of each group of 16, compressed */
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF), bound = _mm512_set1_epi32((int32_t)threshold);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (; i + 16 <= last; i += 16) {
        prefetch_ahead(x + i);
        __m512 group = _mm512_loadu_ps(x + i);
        __mmask16 hits = _mm512_cmpge_epu32_mask(_mm512_and_si512(_mm512_castps_si512(group), magnitude), bound);
        if (at + 16 > limit) return; /* the stores below write 16 slots, the hits first */
        _mm512_storeu_si512(job->indices + at, _mm512_maskz_compress_epi32(hits, _mm512_add_epi32(_mm512_set1_epi32((int32_t)i), lanes)));
        _mm512_storeu_ps(job->values + at, _mm512_maskz_compress_ps(hits, group));
        at += __builtin_popcount(hits);
    }
#else
    for (; i + 16 <= last; i += 16) /* most groups hold no candidate */
        if (any_candidate(x + i, threshold))
            for (int j = 0; j < 16; j++)
                if (magnitude_key(x[i + j]) >= threshold) {
                    if (at == limit) return;
                    job->indices[at] = (int32_t)(i + j), job->values[at++] = x[i + j];
                }
#endif
    for (; i < last; i++)
        if (magnitude_key(x[i]) >= threshold) {
            if (at == limit) return;
            job->indices[at] = (int32_t)i, job->values[at++] = x[i];
        }
    job->found[part] = at - job->offset[part];
}

/* The key of rank k (1 = largest) among the keys of `values`; *ties_taken := how many entries with
 * that key are among the k largest, *ties := how many there are.  A radix select over the bits in
 * which the keys differ (found first by an AND and an OR of all keys), at most 11 bits per pass,
 * counting into four histograms in turn so that repeated bins do not serialise the increments.
 * After each pass the keys that still share the decided prefix are copied out, so that later passes
 * read only those (when the copy cannot be allocated, every pass reads all keys). */
static uint32_t kth_largest_key(const float *values, int64_t count, int64_t k, int64_t *ties_taken,
                                int64_t *ties) {
    uint32_t common = ~0u, any = 0;
    for (int64_t i = 0; i < count; i++) common &= magnitude_key(values[i]), any |= magnitude_key(values[i]);
    int low = (common ^ any) ? 32 - __builtin_clz(common ^ any) : 0; /* bits 0 .. low - 1 differ */
    uint32_t decided = (uint32_t)(~0ull << low), prefix = common & decided;
    int64_t needed = k, kept = 0;
    uint32_t *keys = NULL; /* the keys that share the prefix, once copied out */
    *ties = count; /* all keys are equal unless a pass below finds otherwise */
    while (low > 0) {
        int width = low < 11 ? low : 11, shift = low - width;
        uint32_t counts[4][2049]; /* bin 2048: keys outside the prefix */
        memset(counts, 0, sizeof counts);
        if (keys)
            for (int64_t i = 0; i < kept; i++) counts[i & 3][(keys[i] >> shift) & ((1u << width) - 1)]++;
        else
            for (int64_t i = 0; i < count; i++) {
                uint32_t key = magnitude_key(values[i]);
                uint32_t bin = (key & decided) == prefix ? (key >> shift) & ((1u << width) - 1) : 2048;
                counts[i & 3][bin]++;
            }
        int bin = (1 << width) - 1;
        for (;; bin--) {
            *ties = (int64_t)counts[0][bin] + counts[1][bin] + counts[2][bin] + counts[3][bin];
            if (*ties >= needed || bin == 0) break;
            needed -= *ties;
        }
        prefix |= (uint32_t)bin << shift;
        decided |= ((1u << width) - 1) << shift;
        low = shift;
        if (low > 0 && keys) { /* in place: the write position never passes the read position */
            int64_t at = 0;
            for (int64_t i = 0; i < kept; i++) keys[at] = keys[i], at += (keys[i] & decided) == prefix;
            kept = at;
        } else if (low > 0 && (keys = malloc((size_t)*ties * sizeof(uint32_t))) != NULL) {
            for (int64_t i = 0; i < count; i++) {
                uint32_t key = magnitude_key(values[i]);
                if ((key & decided) == prefix) keys[kept++] = key;
            }
        }
    }
    free(keys);
    *ties_taken = needed;
    return prefix;
}

/* The threshold key: the rank-th largest key (1 = largest) of the sample, the entries x[i] with
 * i % period < run (runs of consecutive entries: few cache lines read); 0 (everything a candidate)
 * when the sample cannot be allocated. */
uint32_t gossip_sample_threshold(const float *x, int64_t count, int64_t period, int64_t run, int64_t rank) {
    int64_t size = count / period * run + (count % period < run ? count % period : run), at = 0, ties_taken, ties;
    float *sample = malloc((size_t)size * sizeof(float));
    if (!sample) return 0;
    for (int64_t start = 0; start < count; start += period) {
        int64_t length = count - start < run ? count - start : run;
        memcpy(sample + at, x + start, (size_t)length * sizeof(float));
        at += length;
    }
    uint32_t threshold = kth_largest_key(sample, size, rank, &ties_taken, &ties);
    free(sample);
    return threshold;
}

/* Slots a part's share of the candidate buffer has beyond its candidates (a whole vector store). */
#define SLACK 16

/* Returns the number of candidates, or more when they do not fit in `capacity` less SLACK slots per
 * thread; writes the k selected (indices ascending) into out_indices and out_values (exactly k
 * slots each: they may be the two halves of a message) only when they fit and are at least k.
 * One read of x when each part's candidates fit in an equal share of the capacity; else a count
 * first, and shares of the counted sizes. */
int64_t gossip_topk_select(const float *x, int64_t count, uint32_t threshold, int64_t k, int32_t *indices,
                           float *values, int64_t capacity, int32_t *out_indices, float *out_values, int threads) {
    candidates_job job;
    memset(&job, 0, sizeof job);
    job.x = x;
    job.threshold = threshold;
    job.indices = indices;
    job.values = values;
    int parts = parts_for(count, BLOCK, threads), fitted = 1;
    for (int p = 0; p < parts; p++) job.offset[p] = capacity * p / parts, job.limit[p] = capacity * (p + 1) / parts;
    parallel_for(count, BLOCK, threads, candidates_range, &job);
    for (int p = 0; p < parts; p++) fitted &= job.found[p] >= 0;
    if (!fitted) {
        job.counting = 1;
        parallel_for(count, BLOCK, threads, candidates_range, &job);
        int64_t needed = 0;
        for (int p = 0; p < parts; p++) {
            job.offset[p] = needed;
            needed += job.found[p] + SLACK;
            job.limit[p] = needed;
        }
        if (needed > capacity) return needed;
        job.counting = 0;
        parallel_for(count, BLOCK, threads, candidates_range, &job);
    }
    int64_t total = 0;
    for (int p = 0; p < parts; p++) { /* close up the parts' shares */
        memmove(indices + total, indices + job.offset[p], (size_t)job.found[p] * sizeof(int32_t));
        memmove(values + total, values + job.offset[p], (size_t)job.found[p] * sizeof(float));
        total += job.found[p];
    }
    if (total < k) return total;
    int64_t ties_taken, ties, i = 0, taken = 0;
    uint32_t kth = kth_largest_key(values, total, k, &ties_taken, &ties);
#if defined(__AVX512F__)
    if (ties_taken == ties) /* every key not below the k-th is taken: compress groups of 16 */
        for (; i + 16 <= total; i += 16) {
            __m512 group = _mm512_loadu_ps(values + i);
            __mmask16 take = _mm512_cmpge_epu32_mask(
                _mm512_and_si512(_mm512_castps_si512(group), _mm512_set1_epi32(0x7FFFFFFF)), _mm512_set1_epi32((int32_t)kth));
            int kept = __builtin_popcount(take);
            __mmask16 used = (__mmask16)((1u << kept) - 1); /* the compressed lanes only */
            _mm512_mask_storeu_epi32(out_indices + taken, used, _mm512_maskz_compress_epi32(take, _mm512_loadu_si512(indices + i)));
            _mm512_mask_storeu_ps(out_values + taken, used, _mm512_maskz_compress_ps(take, group));
            taken += kept;
        }
#endif
    for (; i < total && taken < k; i++) { /* without branches, but never past slot k - 1 */
        uint32_t key = magnitude_key(values[i]);
        int tie = key == kth, take = (key > kth) | (tie & (ties_taken > 0));
        ties_taken -= tie & take;
        out_indices[taken] = indices[i];
        out_values[taken] = values[i];
        taken += take;
    }
    return total;
}

/* ----------------------------------------------------------------------------------------------
 * Sparse decode: out := zeros with values[j] at indices[j], for indices strictly ascending in
 * [0, count); each part finds its first index by bisection, then zeroes one block at a time and
 * writes the block's values while it is still in cache (one memset per block, not one per gap).
 * -------------------------------------------------------------------------------------------- */
typedef struct {
    const int32_t *indices;
    const float *values;
    int64_t k;
    float *out;
} sparse_job;

static void sparse_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const sparse_job *job = (const sparse_job *)context;
    int64_t j = 0, high = job->k; /* the first j with indices[j] >= first */
    while (j < high) {
        int64_t middle = (j + high) / 2;
        if (job->indices[middle] < first) j = middle + 1;
        else high = middle;
    }
    for (int64_t block = first; block < last; block += BLOCK) {
        int64_t end = block + BLOCK < last ? block + BLOCK : last;
        memset(job->out + block, 0, (size_t)(end - block) * sizeof(float));
        for (; j < job->k && job->indices[j] < end; j++) job->out[job->indices[j]] = job->values[j];
    }
}

/* Returns 0, writing nothing, unless the indices are strictly ascending in [0, count). */
int gossip_sparse_scatter(const int32_t *indices, const float *values, int64_t k, int64_t count, float *out,
                          int threads) {
    for (int64_t j = 0; j < k; j++)
        if (indices[j] < 0 || indices[j] >= count || (j > 0 && indices[j] <= indices[j - 1])) return 0;
    sparse_job job = {indices, values, k, out};
    parallel_for(count, BLOCK, threads, sparse_range, &job);
    return 1;
}

/* ----------------------------------------------------------------------------------------------
 * Random-k index sets as a bitmap of d bits (uint64 words, bit i of word w is index 64w + i).
 * Draw j of a message is floor(u * d) with u = (splitmix64 word j >> 11) * 2^-53, the same double
 * operations as compression._index_draws, capped at d - 1.
 * -------------------------------------------------------------------------------------------- */
/* Draw j of a message: an index below d. */
INLINE int64_t index_draw(uint64_t seed, int64_t d, uint64_t j) {
    int64_t index = (int64_t)((double)(int64_t)(mix64(seed, j) >> 11) * 0x1p-53 * (double)d);
    return index < d - 1 ? index : d - 1;
}

/* Draws computed per batch (a vectorised loop) before they are marked one by one. */
#define DRAWS 64

/* Marks draws 0, 1, ... until `k` bits are set (k <= d); returns the draws used. */
int64_t gossip_randomk_bitmap(uint64_t seed, int64_t d, int64_t k, uint64_t *bitmap) {
    int64_t distinct = 0, drawn = 0;
    while (distinct < k) { /* each round draws as many as are missing, as the torch path does */
        int64_t round_end = drawn + (k - distinct);
        for (; drawn < round_end; drawn += DRAWS) {
            int64_t batch[DRAWS];
            for (int j = 0; j < DRAWS; j++) batch[j] = index_draw(seed, d, (uint64_t)(drawn + j));
            for (int j = 0; j < DRAWS && drawn + j < round_end; j++) {
                uint64_t bit = 1ull << (batch[j] & 63);
                distinct += !(bitmap[batch[j] >> 6] & bit);
                bitmap[batch[j] >> 6] |= bit;
            }
        }
        drawn = round_end;
    }
    return drawn;
}

typedef struct {
    const uint64_t *bitmap;
    const float *source; /* gather: the dense x; scatter: the k values */
    float *out;
} bitmap_job;

/* The number of set bits before `first` (a multiple of 64): the rank a part starts at. */
static int64_t rank_before(const uint64_t *bitmap, int64_t first) {
    int64_t rank = 0;
    for (int64_t w = 0; w < first / 64; w++) rank += __builtin_popcountll(bitmap[w]);
    return rank;
}

/* out[j] = x[j-th set index] (bound by the cache misses of the loads). */
static void gather_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const bitmap_job *job = (const bitmap_job *)context;
    float *out = job->out + rank_before(job->bitmap, first);
    for (int64_t w = first / 64; w * 64 < last; w++)
        for (uint64_t word = job->bitmap[w]; word; word &= word - 1) *out++ = job->source[64 * w + __builtin_ctzll(word)];
}

/* out[i] = values[j] at the j-th set index i, zero elsewhere. */
static void scatter_range(void *context, int64_t first, int64_t last, int part) {
    (void)part;
    const bitmap_job *job = (const bitmap_job *)context;
    const float *values = job->source + rank_before(job->bitmap, first);
    for (int64_t w = first / 64; w * 64 < last; w++) {
        int64_t end = 64 * w + 64 < last ? 64 * w + 64 : last;
        memset(job->out + 64 * w, 0, (size_t)(end - 64 * w) * sizeof(float));
        for (uint64_t word = job->bitmap[w]; word; word &= word - 1) job->out[64 * w + __builtin_ctzll(word)] = *values++;
    }
}

void gossip_bitmap_gather(const uint64_t *bitmap, const float *x, int64_t d, float *out, int threads) {
    bitmap_job job = {bitmap, x, out};
    parallel_for(d, BLOCK, threads, gather_range, &job);
}

void gossip_bitmap_scatter(const uint64_t *bitmap, const float *values, int64_t d, float *out, int threads) {
    bitmap_job job = {bitmap, values, out};
    parallel_for(d, BLOCK, threads, scatter_range, &job);
}
