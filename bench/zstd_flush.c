/* The per-record zstd flush timed in C, with no Python around it.
 *
 * bench/run.py builds this when a C compiler is at hand and runs it on the
 * benchmark's own records, to tell how much of the per-record cost is zstd's and
 * how much is Python's. libzstd is loaded at run time (no headers needed); the
 * few declarations below are zstd's stable API.
 *
 *   zstd_flush RECORDS LEVEL PER_BLOCK ROUNDS
 *
 * RECORDS holds the records, each as a 4-byte little-endian length and its bytes.
 * Each record is one ZSTD_compressStream2(..., ZSTD_e_flush) call, as the cache
 * makes one per record; the stream starts again every PER_BLOCK records, as the
 * cache starts one per block. Prints: the zstd version, the median over ROUNDS of
 * microseconds per record, and input bytes / output bytes.
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct { const void *src; size_t size; size_t pos; } ZSTD_inBuffer;
typedef struct { void *dst; size_t size; size_t pos; } ZSTD_outBuffer;
enum { ZSTD_c_compressionLevel = 100, ZSTD_e_flush = 1, ZSTD_reset_session_only = 1 };

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: zstd_flush RECORDS LEVEL PER_BLOCK ROUNDS\n");
        return 2;
    }
    const char *names[] = {"libzstd.so.1", "libzstd.so", "libzstd.1.dylib",
                           "/opt/homebrew/lib/libzstd.1.dylib", "/usr/local/lib/libzstd.1.dylib"};
    void *lib = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !lib; i++)
        lib = dlopen(names[i], RTLD_NOW);
    if (!lib) {
        fprintf(stderr, "no libzstd on this machine\n");
        return 3;
    }
    ZSTD_CCtx *(*create)(void) = (ZSTD_CCtx * (*)(void)) dlsym(lib, "ZSTD_createCCtx");
    size_t (*set)(ZSTD_CCtx *, int, int) =
        (size_t(*)(ZSTD_CCtx *, int, int))dlsym(lib, "ZSTD_CCtx_setParameter");
    size_t (*reset)(ZSTD_CCtx *, int) = (size_t(*)(ZSTD_CCtx *, int))dlsym(lib, "ZSTD_CCtx_reset");
    size_t (*stream)(ZSTD_CCtx *, ZSTD_outBuffer *, ZSTD_inBuffer *, int) =
        (size_t(*)(ZSTD_CCtx *, ZSTD_outBuffer *, ZSTD_inBuffer *, int))dlsym(
            lib, "ZSTD_compressStream2");
    unsigned (*is_error)(size_t) = (unsigned (*)(size_t))dlsym(lib, "ZSTD_isError");
    const char *(*version)(void) = (const char *(*)(void))dlsym(lib, "ZSTD_versionString");
    if (!create || !set || !reset || !stream || !is_error || !version) {
        fprintf(stderr, "libzstd lacks the streaming API\n");
        return 3;
    }

    FILE *f = fopen(argv[1], "rb");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(size > 0 ? (size_t)size : 1);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 2;
    }
    fclose(f);
    size_t count = 0, cap = 1024;
    const unsigned char **recs = malloc(cap * sizeof *recs);
    size_t *lens = malloc(cap * sizeof *lens);
    for (long at = 0; at + 4 <= size;) {
        uint32_t n = data[at] | data[at + 1] << 8 | data[at + 2] << 16 | (uint32_t)data[at + 3] << 24;
        if (at + 4 + (long)n > size) break;
        if (count == cap) {
            cap *= 2;
            recs = realloc(recs, cap * sizeof *recs);
            lens = realloc(lens, cap * sizeof *lens);
        }
        recs[count] = data + at + 4;
        lens[count++] = n;
        at += 4 + (long)n;
    }
    int level = atoi(argv[2]), per_block = atoi(argv[3]), rounds = atoi(argv[4]);
    if (count == 0 || per_block < 1 || rounds < 1) {
        fprintf(stderr, "nothing to do\n");
        return 2;
    }

    ZSTD_CCtx *ctx = create();
    if (!ctx || is_error(set(ctx, ZSTD_c_compressionLevel, level))) {
        fprintf(stderr, "cannot set up a zstd context at level %d\n", level);
        return 3;
    }
    static unsigned char out[1 << 20];
    double *us = malloc((size_t)rounds * sizeof *us);
    size_t in_bytes = 0, out_bytes = 0;
    for (int r = 0; r < rounds; r++) {
        struct timespec t0, t1;
        in_bytes = out_bytes = 0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (size_t i = 0; i < count; i++) {
            if (i % (size_t)per_block == 0) reset(ctx, ZSTD_reset_session_only);
            ZSTD_inBuffer in = {recs[i], lens[i], 0};
            ZSTD_outBuffer o = {out, sizeof out, 0};
            size_t left = stream(ctx, &o, &in, ZSTD_e_flush);
            if (is_error(left) || left != 0 || in.pos != in.size) {
                fprintf(stderr, "zstd did not flush record %zu\n", i);
                return 3;
            }
            in_bytes += lens[i];
            out_bytes += o.pos;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        us[r] = ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / (double)count;
    }
    qsort(us, (size_t)rounds, sizeof *us, by_value);
    printf("%s %.4f %.4f\n", version(), us[rounds / 2], (double)in_bytes / (double)out_bytes);
    return 0;
}
