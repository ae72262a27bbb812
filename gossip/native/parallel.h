/* Threads for the kernels: parallel_for(count, grain, threads, body, context) runs
 * body(context, first, last, part) over [0, count) split into at most `threads` parts of whole
 * grains (the last one may be short).  Built with OpenMP (-fopenmp), the parts run on the process's
 * OpenMP pool, which is torch's own (the loader reuses the libgomp torch loaded): no threads to
 * start, and none left spinning against ours after a torch op.  Without OpenMP, on POSIX threads
 * started per call.  Inputs of one grain run on the calling thread.
 */
#ifndef GOSSIP_PARALLEL_H
#define GOSSIP_PARALLEL_H

#include <pthread.h>
#include <stdint.h>

#define INLINE static inline __attribute__((always_inline))
#define MAX_THREADS 64

typedef void (*range_body)(void *context, int64_t first, int64_t last, int part);

/* Number of parts parallel_for splits `count` into (at least one grain each). */
static inline int parts_for(int64_t count, int64_t grain, int threads) {
    int64_t grains = (count + grain - 1) / grain;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    return grains < threads ? (grains < 1 ? 1 : (int)grains) : threads;
}

typedef struct {
    range_body body;
    void *context;
    int64_t first, last;
    int part;
} range_task;

static inline void *run_task(void *argument) {
    range_task *task = (range_task *)argument;
    task->body(task->context, task->first, task->last, task->part);
    return NULL;
}

static inline void parallel_for(int64_t count, int64_t grain, int threads, range_body body, void *context) {
    int parts = parts_for(count, grain, threads);
    int64_t grains = (count + grain - 1) / grain;
    range_task tasks[MAX_THREADS];
    for (int p = 0; p < parts; p++) {
        int64_t first = grains * p / parts * grain, last = grains * (p + 1) / parts * grain;
        tasks[p] = (range_task){body, context, first, last < count ? last : count, p};
    }
#if defined(_OPENMP)
#pragma omp parallel for num_threads(parts) schedule(static, 1) if (parts > 1)
    for (int p = 0; p < parts; p++) run_task(&tasks[p]);
#else
    pthread_t handles[MAX_THREADS];
    int started[MAX_THREADS];
    for (int p = 1; p < parts; p++)
        started[p] = pthread_create(&handles[p], NULL, run_task, &tasks[p]) == 0;
    run_task(&tasks[0]);
    for (int p = 1; p < parts; p++) {
        if (started[p])
            pthread_join(handles[p], NULL);
        else
            run_task(&tasks[p]); /* no thread to spare: do it here */
    }
#endif
}

#endif
