/*
 * bpz_dump.c — one line per tensor of an archive, for comparing readers
 * written in different languages:
 *
 *   bpz_dump [--pread] [--version V] ARCHIVE
 *   bpz_dump [--pread] --versions ARCHIVE
 *   bpz_dump URL
 *
 * A URL (http(s)://, s3://, gs://, az://) is opened with bpz_open_url, its
 * latest version, with the store options of the environment variable
 * BPZ_STORAGE_OPTIONS (a JSON object) if set.
 *
 *   NAME<TAB>DTYPE<TAB>SHAPE<TAB>SHA256
 *
 * for the latest version, or version V (a number; negative counts back from
 * the latest, -1 being the latest; 0 is the latest). With --versions, one
 * line per version of the archive instead, oldest first:
 *
 *   VERSION<TAB>TIME_NS<TAB>BYTES_ADDED<TAB>TENSORS<TAB>METADATA_JSON
 *
 * (TENSORS is that version's tensor count; it opens each version). A file
 * that ends in an unfinished append is noted on stderr.
 *
 * in file order. NAME is the tensor's name as UTF-8 with `\` written `\\`,
 * tab `\t`, newline `\n`, carriage return `\r` and every other byte below
 * 0x20 (and 0x7f) `\xHH`, so each record is one line. DTYPE is the spec's
 * name (F32, BOOL, ...). SHAPE is `[4,3]`, `[]` for a 0-d tensor. SHA256 is
 * the lowercase hex SHA-256 of the tensor's decoded bytes (little-endian, C
 * order), read with checksums verified, a bounded number of rows at a time.
 *
 * Exit status: 0, 1 if the archive can't be read (the error on stderr), 2 on
 * bad usage.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpz.h"
#include "sha256.h"

/* Read at most this much at once (more only when a single row is larger). */
#define BLOCK_BYTES ((uint64_t)32 << 20)

/* digest()'s own failure (bpz codes are 0 or negative). */
#define NO_MEMORY 1

/* The last error; its message names the file and the tensor. */
static int report(int code) {
    fprintf(stderr, "bpz_dump: %s: %s\n", bpz_error_kind_name(code), bpz_last_error_message());
    return 1;
}

static void print_name(const char *name) {
    const unsigned char *p;
    for (p = (const unsigned char *)name; *p; p++) {
        switch (*p) {
            case '\\': fputs("\\\\", stdout); break;
            case '\t': fputs("\\t", stdout); break;
            case '\n': fputs("\\n", stdout); break;
            case '\r': fputs("\\r", stdout); break;
            default:
                if (*p < 0x20 || *p == 0x7f) printf("\\x%02x", *p);
                else putchar(*p);
        }
    }
}

/* The SHA-256 of tensor i, read in blocks of whole rows: BPZ_OK, a bpz code, or NO_MEMORY. */
static int digest(bpz_archive *a, size_t i, const struct bpz_tensor_info *info, char hex[65]) {
    uint64_t rows = info->rank ? info->shape[0] : 1, row, per_block, start;
    unsigned char *buf;
    sha256_ctx ctx;
    sha256_init(&ctx);
    if (info->nbytes == 0) {
        sha256_final_hex(&ctx, hex);
        return BPZ_OK;
    }
    row = info->nbytes / rows;
    per_block = row >= BLOCK_BYTES ? 1 : BLOCK_BYTES / row;
    if (per_block > rows) per_block = rows;
    if (per_block * row > (uint64_t)SIZE_MAX) return NO_MEMORY;
    buf = (unsigned char *)malloc((size_t)(per_block * row));
    if (!buf) return NO_MEMORY;
    for (start = 0; start < rows; start += per_block) {
        uint64_t stop = start + per_block < rows ? start + per_block : rows;
        size_t len = (size_t)((stop - start) * row);
        int rc = bpz_read_rows(a, i, start, stop, buf, len);
        if (rc != BPZ_OK) {
            free(buf);
            return rc;
        }
        sha256_update(&ctx, buf, len);
    }
    free(buf);
    sha256_final_hex(&ctx, hex);
    return BPZ_OK;
}

/* The --versions listing: one line per version, each version opened for its tensor count. */
static int list_versions(const char *path, int backend, bpz_archive *a) {
    size_t i, count = bpz_version_count(a);
    for (i = 0; i < count; i++) {
        struct bpz_version_info info;
        const char *metadata;
        bpz_archive *at;
        size_t tensors;
        int rc = bpz_version_info(a, i, &info);
        if (rc == BPZ_OK) rc = bpz_version_metadata_json(a, i, &metadata);
        if (rc == BPZ_OK) rc = bpz_open_version(path, backend, (int64_t)info.number, &at);
        if (rc != BPZ_OK) return report(rc);
        tensors = bpz_tensor_count(at);
        bpz_close(at);
        printf("%llu\t%llu\t%llu\t%lu\t%s\n", (unsigned long long)info.number, (unsigned long long)info.time_ns,
               (unsigned long long)info.bytes_added, (unsigned long)tensors, metadata);
    }
    return 0;
}

/* A version argument: an integer that fits int64_t. */
static int parse_version(const char *s, int64_t *out) {
    char *end;
    long long v;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0') return 0;
    *out = (int64_t)v;
    return 1;
}

int main(int argc, char **argv) {
    int backend = BPZ_BACKEND_MMAP, rc, versions = 0, arg;
    int64_t version = 0;
    const char *path = NULL;
    bpz_archive *a;
    size_t i, count;
    uint64_t ignored;
    for (arg = 1; arg < argc; arg++) {
        if (strcmp(argv[arg], "--pread") == 0) {
            backend = BPZ_BACKEND_PREAD;
        } else if (strcmp(argv[arg], "--versions") == 0) {
            versions = 1;
        } else if (strcmp(argv[arg], "--version") == 0 && arg + 1 < argc && parse_version(argv[arg + 1], &version)) {
            arg++;
        } else if (argv[arg][0] != '-' && path == NULL) {
            path = argv[arg];
        } else {
            path = NULL;
            break;
        }
    }
    if (path == NULL || (versions && version != 0)) {
        fprintf(stderr, "usage: %s [--pread] [--version V | --versions] ARCHIVE\n", argv[0]);
        return 2;
    }
    if (strstr(path, "://") != NULL) {
        if (versions || version != 0 || backend != BPZ_BACKEND_MMAP) {
            fprintf(stderr, "%s: a URL opens its latest version only (no --pread, --version, --versions)\n", argv[0]);
            return 2;
        }
        rc = bpz_open_url(path, getenv("BPZ_STORAGE_OPTIONS"), &a);
    } else {
        rc = bpz_open_version(path, backend, version, &a);
    }
    if (rc != BPZ_OK) return report(rc);
    if (bpz_recovered(a, &ignored) > 0)
        fprintf(stderr, "bpz_dump: %s ends in an unfinished append: %llu bytes after the last committed version ignored\n",
                path, (unsigned long long)ignored);
    if (versions) {
        rc = list_versions(path, backend, a);
        bpz_close(a);
        return rc != 0 ? rc : fflush(stdout) == 0 ? 0 : 1;
    }
    count = bpz_tensor_count(a);
    for (i = 0; i < count; i++) {
        struct bpz_tensor_info info;
        char hex[65];
        size_t d;
        rc = bpz_tensor_info(a, i, &info);
        if (rc == BPZ_OK) rc = digest(a, i, &info, hex);
        if (rc != BPZ_OK) {
            if (rc == NO_MEMORY) fprintf(stderr, "bpz_dump: %s: out of memory for tensor %s\n", path, info.name);
            else report(rc);
            bpz_close(a);
            return 1;
        }
        print_name(info.name);
        printf("\t%s\t[", info.dtype_name);
        for (d = 0; d < info.rank; d++) printf("%s%llu", d ? "," : "", (unsigned long long)info.shape[d]);
        printf("]\t%s\n", hex);
    }
    bpz_close(a);
    return fflush(stdout) == 0 ? 0 : 1;
}
