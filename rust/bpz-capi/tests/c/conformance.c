/*
 * conformance.c — the conformance vectors (spec/vectors), read from C through
 * libbpz and nothing else.
 *
 *   conformance EXPECTATIONS VECTORS_DIR
 *
 * EXPECTATIONS is the line-based digest of the vectors' .json files written by
 * `cargo run -p bpz-capi --example c_expectations` (its source documents the
 * format). With both backends (mmap, pread), every golden archive must give
 * the expected names, dtypes, shapes, storage, filters, chunk counts, tree and
 * metadata, and the expected SHA-256 of every tensor's bytes — read whole, read
 * by rows, and (raw tensors, mmap) viewed in place. Every invalid file must
 * fail with the code of its error kind at its stage: open, or read/verify.
 * Exit status 0 when everything matched.
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpz.h"
#include "sha256.h"

/* ------------------------------------------------------------ reporting */

static int failures = 0;
static char context[1024] = ""; /* what is being checked, for messages */

static void fail(const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "FAIL %s: ", context);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    failures++;
}

/* Checks a status: `want` exactly, with a message when it is an error. */
static int expect_code(int got, int want, const char *call) {
    if (got == want) {
        if (want != BPZ_OK && bpz_last_error_message()[0] == '\0') {
            fail("%s: %s without a message", call, bpz_error_kind_name(got));
            return 0;
        }
        return 1;
    }
    fail("%s returned %d (%s), expected %d (%s): %s", call, got, bpz_error_kind_name(got), want,
         bpz_error_kind_name(want), got == BPZ_OK ? "" : bpz_last_error_message());
    return 0;
}

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "conformance: out of memory (%lu bytes)\n", (unsigned long)n);
        exit(2);
    }
    return p;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    return (char *)memcpy(xmalloc(n), s, n);
}

/* ------------------------------------------------------ expectations file */

/* The next line without its newline (malloc'd), or NULL at the end. */
static char *read_line(FILE *f) {
    size_t len = 0, cap = 256;
    char *line = (char *)xmalloc(cap);
    int c;
    while ((c = fgetc(f)) != EOF && c != '\n') {
        if (len + 1 == cap) {
            char *bigger = (char *)realloc(line, cap *= 2);
            if (!bigger) {
                fprintf(stderr, "conformance: out of memory reading a line\n");
                exit(2);
            }
            line = bigger;
        }
        line[len++] = (char)c;
    }
    if (c == EOF && len == 0) {
        free(line);
        return NULL;
    }
    if (len > 0 && line[len - 1] == '\r') len--;
    line[len] = '\0';
    return line;
}

/* Splits `line` in place at spaces into at most `max` fields; returns their count. */
static int split(char *line, char **fields, int max) {
    int n = 0;
    char *p = line;
    while (*p && n < max) {
        while (*p == ' ') p++;
        if (!*p) break;
        fields[n++] = p;
        while (*p && *p != ' ') p++;
        if (*p) *p++ = '\0';
    }
    return *p ? max + 1 : n;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes `x` + hex into a malloc'd, NUL-terminated string of *len bytes; NULL if malformed. */
static char *unhex(const char *field, size_t *len) {
    size_t n = strlen(field), i;
    char *out;
    if (n == 0 || field[0] != 'x' || (n - 1) % 2 != 0) return NULL;
    out = (char *)xmalloc((n - 1) / 2 + 1);
    for (i = 0; i < (n - 1) / 2; i++) {
        int hi = hex_value(field[1 + 2 * i]), lo = hex_value(field[2 + 2 * i]);
        if (hi < 0 || lo < 0) {
            free(out);
            return NULL;
        }
        out[i] = (char)(hi << 4 | lo);
    }
    out[i] = '\0';
    *len = i;
    return out;
}

static int parse_u64(const char *s, uint64_t *out) {
    uint64_t v = 0;
    if (!*s) return 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10) return 0;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 1;
}

typedef struct expected_tensor {
    char *name; /* decoded */
    size_t name_len;
    char *dtype, *shape, *storage, *filter, *sha256;
    uint64_t chunks, nbytes;
} expected_tensor;

typedef struct golden {
    char *file, *tree, *metadata;
    uint64_t count;
    expected_tensor *tensors;
    size_t n, cap;
} golden;

static void golden_free(golden *g) {
    size_t i;
    for (i = 0; i < g->n; i++) {
        expected_tensor *t = &g->tensors[i];
        free(t->name), free(t->dtype), free(t->shape), free(t->storage), free(t->filter), free(t->sha256);
    }
    free(g->tensors), free(g->file), free(g->tree), free(g->metadata);
    memset(g, 0, sizeof *g);
}

/* ---------------------------------------------------------------- checks */

static const char *backend_name(int backend) {
    return backend == BPZ_BACKEND_MMAP ? "mmap" : "pread";
}

static char *join_path(const char *dir, const char *sub, const char *file) {
    size_t n = strlen(dir) + strlen(sub) + strlen(file) + 3;
    char *p = (char *)xmalloc(n);
    sprintf(p, "%s/%s%s%s", dir, sub, *sub ? "/" : "", file);
    return p;
}

/* "[4,3]" — the expectations' shape notation. */
static void format_shape(const struct bpz_tensor_info *info, char *out, size_t cap) {
    size_t used = 0, i;
    used += (size_t)snprintf(out + used, cap - used, "[");
    for (i = 0; i < info->rank && used < cap; i++) {
        used += (size_t)snprintf(out + used, cap - used, "%s%llu", i ? "," : "",
                                 (unsigned long long)info->shape[i]);
    }
    if (used < cap) snprintf(out + used, cap - used, "]");
}

static void check_tensor(bpz_archive *a, int backend, size_t i, const expected_tensor *want) {
    struct bpz_tensor_info info;
    char shape[1600], digest[65];
    unsigned char *buf, *rows;
    size_t found = (size_t)-1, nbytes, len = 1;
    const void *data = &len;
    uint64_t nrows, elements = 1, d;
    int rc;

    if (!expect_code(bpz_tensor_info(a, i, &info), BPZ_OK, "bpz_tensor_info")) return;
    snprintf(context + strlen(context), sizeof context - strlen(context), " tensor %lu \"%s\"",
             (unsigned long)i, want->name);
    if (strlen(info.name) != want->name_len || memcmp(info.name, want->name, want->name_len) != 0)
        fail("name \"%s\"", info.name);
    if (strcmp(info.dtype_name, want->dtype) != 0) fail("dtype %s, expected %s", info.dtype_name, want->dtype);
    format_shape(&info, shape, sizeof shape);
    if (strcmp(shape, want->shape) != 0) fail("shape %s, expected %s", shape, want->shape);
    for (d = 0; d < info.rank; d++) elements *= info.shape[d];
    if (bpz_dtype_size(info.dtype) == 0 || elements * bpz_dtype_size(info.dtype) != info.nbytes)
        fail("dtype %d of size %lu and shape %s disagree with nbytes %llu", info.dtype,
             (unsigned long)bpz_dtype_size(info.dtype), shape, (unsigned long long)info.nbytes);
    if (info.storage != (strcmp(want->storage, "raw") == 0 ? BPZ_STORAGE_RAW : BPZ_STORAGE_CHUNKED))
        fail("storage %d, expected %s", info.storage, want->storage);
    if (strcmp(info.filter, want->filter) != 0) fail("filter %s, expected %s", info.filter, want->filter);
    if (info.chunks != want->chunks) fail("%lu chunks, expected %llu", (unsigned long)info.chunks, (unsigned long long)want->chunks);
    if (info.nbytes != want->nbytes) fail("nbytes %llu, expected %llu", (unsigned long long)info.nbytes, (unsigned long long)want->nbytes);
    if (info.storage == BPZ_STORAGE_RAW && info.stored_bytes != info.nbytes) fail("raw, but stores %llu bytes", (unsigned long long)info.stored_bytes);

    if (expect_code(bpz_tensor_find(a, want->name, &found), BPZ_OK, "bpz_tensor_find") && found != i)
        fail("bpz_tensor_find gives index %lu", (unsigned long)found);

    /* The whole tensor, verified. */
    if (info.nbytes > (uint64_t)(SIZE_MAX / 2)) {
        fail("too large for this test");
        return;
    }
    nbytes = (size_t)info.nbytes;
    buf = (unsigned char *)xmalloc(nbytes + 1);
    rows = (unsigned char *)xmalloc(nbytes + 1);
    if (expect_code(bpz_read(a, i, buf, nbytes), BPZ_OK, "bpz_read")) {
        sha256_hex(buf, nbytes, digest);
        if (strcmp(digest, want->sha256) != 0) fail("bpz_read: sha256 %s, expected %s", digest, want->sha256);
    }
    expect_code(bpz_read(a, i, buf, nbytes + 1), BPZ_ERR_INVALID_ARGUMENT, "bpz_read with one byte too many");
    if (nbytes > 0) expect_code(bpz_read(a, i, buf, nbytes - 1), BPZ_ERR_INVALID_ARGUMENT, "bpz_read with one byte too few");

    /* By rows, in two halves, must give the same bytes. */
    nrows = info.rank ? info.shape[0] : 1;
    if (nrows > 0) {
        size_t row = nbytes / (size_t)nrows, half = (size_t)(nrows / 2);
        memset(rows, 0xA5, nbytes);
        if (expect_code(bpz_read_rows(a, i, 0, half, rows, half * row), BPZ_OK, "bpz_read_rows (first half)") &&
            expect_code(bpz_read_rows(a, i, half, nrows, rows + half * row, nbytes - half * row), BPZ_OK,
                        "bpz_read_rows (second half)") &&
            memcmp(rows, buf, nbytes) != 0)
            fail("bpz_read_rows: the rows differ from bpz_read");
        expect_code(bpz_read_rows(a, i, nrows, nrows + 1, rows, row), BPZ_ERR_INVALID_ARGUMENT,
                    "bpz_read_rows past the last row");
    }

    /* In place: raw tensors with the map; nothing else. */
    rc = bpz_tensor_data(a, i, &data, &len);
    if (backend == BPZ_BACKEND_MMAP && info.storage == BPZ_STORAGE_RAW) {
        if (expect_code(rc, BPZ_OK, "bpz_tensor_data")) {
            if (data == NULL || len != nbytes) fail("bpz_tensor_data: %lu bytes at %p", (unsigned long)len, data);
            else if ((uintptr_t)data % 16 != 0) fail("bpz_tensor_data: %p is not aligned", data);
            sha256_hex(data, len, digest);
            if (strcmp(digest, want->sha256) != 0) fail("bpz_tensor_data: sha256 %s, expected %s", digest, want->sha256);
        }
    } else if (expect_code(rc, BPZ_ERR_NOT_ZERO_COPY, "bpz_tensor_data") && (data != NULL || len != 0)) {
        fail("bpz_tensor_data failed but left data %p, len %lu", data, (unsigned long)len);
    }
    free(buf);
    free(rows);
}

/* Every tensor at once with bpz_read_many, in reverse order: the same bytes as bpz_read. */
static void check_read_many(bpz_archive *a, size_t count, const golden *g) {
    size_t *indices = (size_t *)xmalloc(count * sizeof *indices);
    void **bufs = (void **)xmalloc(count * sizeof *bufs);
    size_t *lens = (size_t *)xmalloc(count * sizeof *lens);
    size_t i, ok = 1;
    char digest[65];
    for (i = 0; i < count; i++) {
        struct bpz_tensor_info info;
        indices[i] = count - 1 - i;
        lens[i] = 0;
        if (!expect_code(bpz_tensor_info(a, indices[i], &info), BPZ_OK, "bpz_tensor_info")) ok = 0;
        else lens[i] = (size_t)info.nbytes;
        bufs[i] = xmalloc(lens[i]);
    }
    if (ok && expect_code(bpz_read_many(a, indices, count, (void *const *)bufs, lens), BPZ_OK, "bpz_read_many")) {
        for (i = 0; i < count && indices[i] < g->n; i++) {
            sha256_hex(bufs[i], lens[i], digest);
            if (strcmp(digest, g->tensors[indices[i]].sha256) != 0)
                fail("bpz_read_many: tensor %lu has sha256 %s, expected %s", (unsigned long)indices[i], digest,
                     g->tensors[indices[i]].sha256);
        }
    }
    for (i = 0; i < count; i++) free(bufs[i]);
    free(indices), free(bufs), free(lens);
}

static size_t check_golden(const char *dir, const golden *g) {
    static const int backends[2] = {BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD};
    char *path = join_path(dir, "", g->file);
    size_t b, i, count;
    for (b = 0; b < 2; b++) {
        bpz_archive *a = NULL;
        struct bpz_tensor_info info;
        size_t index = 12345;
        const char *json;
        snprintf(context, sizeof context, "%s (%s)", g->file, backend_name(backends[b]));
        if (!expect_code(bpz_open(path, backends[b], &a), BPZ_OK, "bpz_open")) continue;
        count = bpz_tensor_count(a);
        if (count != g->count || count != g->n) fail("%lu tensors, expected %llu", (unsigned long)count, (unsigned long long)g->count);
        json = bpz_tree_json(a);
        if (!json || strcmp(json, g->tree) != 0) fail("tree %s, expected %s", json ? json : "(NULL)", g->tree);
        json = bpz_metadata_json(a);
        if (!json || strcmp(json, g->metadata) != 0) fail("metadata %s, expected %s", json ? json : "(NULL)", g->metadata);
        for (i = 0; i < count && i < g->n; i++) {
            check_tensor(a, backends[b], i, &g->tensors[i]);
            snprintf(context, sizeof context, "%s (%s)", g->file, backend_name(backends[b]));
        }
        check_read_many(a, count, g);
        expect_code(bpz_tensor_info(a, count, &info), BPZ_ERR_INVALID_ARGUMENT, "bpz_tensor_info past the end");
        expect_code(bpz_tensor_find(a, "no such tensor \x01", &index), BPZ_ERR_TENSOR_NOT_FOUND, "bpz_tensor_find");
        if (index != 12345) fail("bpz_tensor_find changed *index on failure");
        expect_code(bpz_verify(a), BPZ_OK, "bpz_verify");
        expect_code(bpz_verify_with(a, 1, 0), BPZ_OK, "bpz_verify_with");
        bpz_close(a);
    }
    free(path);
    return g->n;
}

static void check_invalid(const char *dir, const char *file, const char *kind, const char *stage) {
    static const int backends[2] = {BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD};
    char *path = join_path(dir, "invalid", file);
    size_t b;
    for (b = 0; b < 2; b++) {
        bpz_archive *a = (bpz_archive *)&b; /* must be overwritten */
        int rc = bpz_open(path, backends[b], &a);
        snprintf(context, sizeof context, "invalid/%s (%s, %s expected at %s)", file, backend_name(backends[b]), kind, stage);
        if (strcmp(stage, "open") == 0) {
            if (rc == BPZ_OK) {
                fail("opened");
                bpz_close(a);
                continue;
            }
            if (a != NULL) fail("bpz_open failed but did not set *out to NULL");
        } else {
            size_t i, count;
            int first_read = BPZ_OK;
            if (!expect_code(rc, BPZ_OK, "bpz_open")) continue;
            count = bpz_tensor_count(a);
            for (i = 0; i < count && first_read == BPZ_OK; i++) {
                struct bpz_tensor_info info;
                void *buf;
                if (!expect_code(bpz_tensor_info(a, i, &info), BPZ_OK, "bpz_tensor_info")) break;
                if (info.nbytes > (64u << 20)) {
                    fail("tensor %lu: %llu bytes, more than this test reads", (unsigned long)i, (unsigned long long)info.nbytes);
                    break;
                }
                buf = xmalloc((size_t)info.nbytes);
                first_read = bpz_read(a, i, buf, (size_t)info.nbytes);
                free(buf);
            }
            /* Decoding too: some invalid vectors are frames that match their checksum. */
            rc = bpz_verify_with(a, 1, 0);
            if (first_read != BPZ_OK && first_read != rc)
                fail("bpz_read failed with %s, bpz_verify with %s", bpz_error_kind_name(first_read), bpz_error_kind_name(rc));
            bpz_close(a);
        }
        if (rc >= 0 || strcmp(bpz_error_kind_name(rc), kind) != 0)
            fail("got %d (%s): %s", rc, bpz_error_kind_name(rc), bpz_last_error_message());
        else if (!strstr(bpz_last_error_message(), file))
            fail("the message does not name the file: %s", bpz_last_error_message());
    }
    free(path);
}

static int sha256_self_test(void) {
    char hex[65];
    sha256_hex("abc", 3, hex);
    if (strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") != 0) return 0;
    sha256_hex(NULL, 0, hex);
    if (strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") != 0) return 0;
    sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 56, hex);
    return strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0;
}

int main(int argc, char **argv) {
    FILE *f;
    char *line, *fields[12];
    golden g;
    size_t lineno = 0, archives = 0, tensors = 0, invalid = 0;
    if (argc != 3) {
        fprintf(stderr, "usage: %s EXPECTATIONS VECTORS_DIR\n", argv[0]);
        return 2;
    }
    if (!sha256_self_test()) {
        fprintf(stderr, "conformance: the SHA-256 implementation is wrong\n");
        return 2;
    }
    f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    memset(&g, 0, sizeof g);
    while ((line = read_line(f)) != NULL) {
        int n = split(line, fields, 10);
        lineno++;
        if (n == 0 || fields[0][0] == '#') {
            free(line);
            continue;
        }
        if (strcmp(fields[0], "golden") == 0 && n == 5) {
            size_t len;
            if (g.file) tensors += check_golden(argv[2], &g), archives++;
            golden_free(&g);
            g.file = xstrdup(fields[1]);
            g.tree = unhex(fields[3], &len);
            g.metadata = unhex(fields[4], &len);
            if (!parse_u64(fields[2], &g.count) || !g.tree || !g.metadata) goto malformed;
        } else if (strcmp(fields[0], "tensor") == 0 && n == 9 && g.file) {
            expected_tensor *t;
            if (g.n == g.cap) {
                expected_tensor *bigger;
                g.cap = g.cap ? 2 * g.cap : 16;
                bigger = (expected_tensor *)realloc(g.tensors, g.cap * sizeof *bigger);
                if (!bigger) goto malformed;
                g.tensors = bigger;
            }
            t = &g.tensors[g.n];
            memset(t, 0, sizeof *t);
            t->name = unhex(fields[1], &t->name_len);
            t->dtype = xstrdup(fields[2]), t->shape = xstrdup(fields[3]), t->storage = xstrdup(fields[4]);
            t->filter = xstrdup(fields[5]), t->sha256 = xstrdup(fields[8]);
            g.n++;
            if (!t->name || !parse_u64(fields[6], &t->chunks) || !parse_u64(fields[7], &t->nbytes)) goto malformed;
        } else if (strcmp(fields[0], "invalid") == 0 && n == 4) {
            check_invalid(argv[2], fields[1], fields[2], fields[3]);
            invalid++;
        } else {
            goto malformed;
        }
        free(line);
        continue;
    malformed:
        fprintf(stderr, "%s:%lu: malformed line\n", argv[1], (unsigned long)lineno);
        return 2;
    }
    if (g.file) tensors += check_golden(argv[2], &g), archives++;
    golden_free(&g);
    fclose(f);
    if (archives == 0 || invalid == 0) {
        fprintf(stderr, "conformance: %s holds no vectors\n", argv[1]);
        return 2;
    }
    printf("C conformance (libbpz %s): %lu golden archives (%lu tensors) and %lu invalid files, "
           "each with the mmap and pread backends: %s\n",
           bpz_version(), (unsigned long)archives, (unsigned long)tensors, (unsigned long)invalid,
           failures ? "FAILED" : "all as expected");
    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
