/* Memory bandwidth of this machine, STREAM-style (McCalpin's copy and triad kernels).
 *
 * Measures what the CPU node class in operator/llm_operator/catalog/data/gpus.yaml
 * declares as memoryBandwidthGBps for the e2e cluster's real node: llama.cpp's token
 * generation on CPU streams the weights once per step, so this number bounds it.
 *
 *   gcc -O2 -march=native -pthread -o /tmp/membw bench/membw.c && /tmp/membw [threads] [MiB]
 *
 * Three arrays of doubles, each `MiB` large (default 512, far beyond any last-level
 * cache), split evenly over `threads` POSIX threads (default: online CPUs), every thread
 * touching its own slice first (first-touch placement). Each kernel runs REPS times; the
 * best run is reported, as STREAM does. Bytes are counted as STREAM counts them: copy
 * moves 2 x 8 bytes per element (read a, write c), triad 3 x 8 (read b and c, write a);
 * the write-allocate read of the destination line is NOT counted, so the DRAM traffic is
 * up to 1.5x (copy) / 1.33x (triad) higher than reported. GB = 1e9 bytes.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define REPS 10

static double *a, *b, *c;
static size_t n;
static int threads;
static pthread_barrier_t barrier;
static double best[2] = {1e30, 1e30};

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *worker(void *arg) {
  long id = (long)arg;
  size_t lo = n * (size_t)id / (size_t)threads, hi = n * (size_t)(id + 1) / (size_t)threads;
  for (size_t i = lo; i < hi; i++) {
    a[i] = 1.0;
    b[i] = 2.0;
    c[i] = 0.0;
  }
  for (int r = 0; r < REPS; r++) {
    double t0 = 0;
    pthread_barrier_wait(&barrier);
    if (id == 0) t0 = now();
    for (size_t i = lo; i < hi; i++) c[i] = a[i];
    pthread_barrier_wait(&barrier);
    if (id == 0) {
      double t = now() - t0;
      if (t < best[0]) best[0] = t;
      t0 = now();
    }
    pthread_barrier_wait(&barrier);
    if (id == 0) t0 = now();
    for (size_t i = lo; i < hi; i++) a[i] = b[i] + 3.0 * c[i];
    pthread_barrier_wait(&barrier);
    if (id == 0) {
      double t = now() - t0;
      if (t < best[1]) best[1] = t;
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  threads = argc > 1 ? atoi(argv[1]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 512;
  if (threads < 1 || mib < 1) {
    fprintf(stderr, "usage: %s [threads] [MiB per array]\n", argv[0]);
    return 2;
  }
  n = mib * 1024 * 1024 / sizeof(double);
  a = malloc(n * sizeof(double));
  b = malloc(n * sizeof(double));
  c = malloc(n * sizeof(double));
  if (!a || !b || !c) {
    perror("malloc");
    return 1;
  }
  pthread_t tid[256];
  if (threads > 256) threads = 256;
  pthread_barrier_init(&barrier, NULL, (unsigned)threads);
  for (long i = 0; i < threads; i++) pthread_create(&tid[i], NULL, worker, (void *)i);
  for (int i = 0; i < threads; i++) pthread_join(tid[i], NULL);
  double bytes = (double)n * sizeof(double);
  printf("threads=%d array=%zu MiB reps=%d\n", threads, mib, REPS);
  printf("copy  %.1f GB/s (best %.4f s)\n", 2 * bytes / best[0] / 1e9, best[0]);
  printf("triad %.1f GB/s (best %.4f s)\n", 3 * bytes / best[1] / 1e9, best[1]);
  /* A checksum keeps the compiler from dropping the kernels. */
  double sum = 0;
  for (size_t i = 0; i < n; i += 4096) sum += a[i] + c[i];
  fprintf(stderr, "checksum %g\n", sum);
  return 0;
}
