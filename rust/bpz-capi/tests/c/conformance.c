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
 * by rows, and (raw tensors, mmap) viewed in place. A versioned archive must
 * list the expected versions (number, time, bytes added, metadata, whether
 * an unfinished append was skipped), and each version, opened by number and
 * counting back from the latest, must hold the expected tensors. Every
 * invalid file, opened at its version, must fail with the code of its error
 * kind at its stage: open, list (bpz_open lists the tensors, so at open in
 * C), or read/verify. Exit status 0 when everything matched.
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

typedef struct tensor_list {
    expected_tensor *tensors;
    size_t n, cap;
} tensor_list;

typedef struct expected_version {
    uint64_t number, time_ns, bytes_added, count;
    char *metadata;
    tensor_list list;
} expected_version;

typedef struct golden {
    char *file, *tree, *metadata;
    uint64_t count;
    expected_tensor *tensors;
    size_t n, cap;
    /* From the `versions` line: how many, whether an unfinished append was skipped. */
    uint64_t version_count;
    int recovered, has_versions_line;
    expected_version *versions; /* the `version` lines (none for a 1.0 file) */
    size_t nv, capv;
} golden;

/* A new zeroed slot at the end of `list`. */
static expected_tensor *push_tensor(tensor_list *list) {
    if (list->n == list->cap) {
        expected_tensor *bigger;
        list->cap = list->cap ? 2 * list->cap : 16;
        bigger = (expected_tensor *)realloc(list->tensors, list->cap * sizeof *bigger);
        if (!bigger) {
            fprintf(stderr, "conformance: out of memory\n");
            exit(2);
        }
        list->tensors = bigger;
    }
    memset(&list->tensors[list->n], 0, sizeof list->tensors[0]);
    return &list->tensors[list->n++];
}

static void tensors_free(expected_tensor *tensors, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) {
        expected_tensor *t = &tensors[i];
        free(t->name), free(t->dtype), free(t->shape), free(t->storage), free(t->filter), free(t->sha256);
    }
    free(tensors);
}

static void golden_free(golden *g) {
    size_t i;
    tensors_free(g->tensors, g->n);
    for (i = 0; i < g->nv; i++) {
        tensors_free(g->versions[i].list.tensors, g->versions[i].list.n);
        free(g->versions[i].metadata);
    }
    free(g->versions), free(g->file), free(g->tree), free(g->metadata);
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

/* One version of a golden archive, opened with bpz_open_version(`selector`). */
static void check_version_opened(const char *path, const char *file, int backend, int64_t selector,
                                 const golden *g, const expected_version *v) {
    bpz_archive *a = NULL;
    size_t i, count;
    const char *json;
    snprintf(context, sizeof context, "%s (%s) version %llu opened as %lld", file, backend_name(backend),
             (unsigned long long)v->number, (long long)selector);
    if (!expect_code(bpz_open_version(path, backend, selector, &a), BPZ_OK, "bpz_open_version")) return;
    if (bpz_version_number(a) != v->number) fail("bpz_version_number gives %llu", (unsigned long long)bpz_version_number(a));
    if (bpz_version_count(a) != g->version_count)
        fail("%lu versions listed from an older version, expected %llu", (unsigned long)bpz_version_count(a),
             (unsigned long long)g->version_count);
    count = bpz_tensor_count(a);
    if (count != v->count || count != v->list.n) fail("%lu tensors, expected %llu", (unsigned long)count, (unsigned long long)v->count);
    json = bpz_metadata_json(a);
    if (!json || strcmp(json, v->metadata) != 0) fail("metadata %s, expected %s", json ? json : "(NULL)", v->metadata);
    for (i = 0; i < count && i < v->list.n; i++) {
        check_tensor(a, backend, i, &v->list.tensors[i]);
        snprintf(context, sizeof context, "%s (%s) version %llu opened as %lld", file, backend_name(backend),
                 (unsigned long long)v->number, (long long)selector);
    }
    expect_code(bpz_verify(a), BPZ_OK, "bpz_verify");
    bpz_close(a);
}

/* The versions of a golden archive: listed from the latest, each opened on its own. */
static void check_versions(const char *dir, const golden *g) {
    static const int backends[2] = {BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD};
    char *path = join_path(dir, "", g->file);
    size_t b, i;
    for (b = 0; b < 2; b++) {
        bpz_archive *a = NULL, *none = (bpz_archive *)&b;
        uint64_t ignored = 12345, latest = g->nv ? g->versions[g->nv - 1].number : 1;
        size_t count;
        int rc;
        snprintf(context, sizeof context, "%s (%s) versions", g->file, backend_name(backends[b]));
        if (!expect_code(bpz_open(path, backends[b], &a), BPZ_OK, "bpz_open")) continue;
        count = bpz_version_count(a);
        if (count != g->version_count) fail("%lu versions, expected %llu", (unsigned long)count, (unsigned long long)g->version_count);
        if (bpz_version_number(a) != latest)
            fail("opened at version %llu, expected the latest, %llu", (unsigned long long)bpz_version_number(a),
                 (unsigned long long)latest);
        rc = bpz_recovered(a, &ignored);
        if (rc != g->recovered) fail("bpz_recovered gives %d, expected %d", rc, g->recovered);
        if ((rc == 1) != (ignored > 0)) fail("bpz_recovered gives %d with %llu bytes ignored", rc, (unsigned long long)ignored);
        if (bpz_recovered(a, NULL) != rc) fail("bpz_recovered with NULL ignored_bytes disagrees");
        if (g->nv == 0 && count == 1) {
            /* A 1.0 archive: one version, number 1, written at an unknown time. */
            struct bpz_version_info info;
            if (expect_code(bpz_version_info(a, 0, &info), BPZ_OK, "bpz_version_info") &&
                (info.number != 1 || info.time_ns != 0))
                fail("1.0 file: version %llu at time %llu", (unsigned long long)info.number, (unsigned long long)info.time_ns);
        }
        for (i = 0; i < g->nv && i < count; i++) {
            const expected_version *v = &g->versions[i];
            struct bpz_version_info info;
            const char *json = NULL;
            if (!expect_code(bpz_version_info(a, i, &info), BPZ_OK, "bpz_version_info")) continue;
            if (info.number != v->number || info.time_ns != v->time_ns || info.bytes_added != v->bytes_added)
                fail("version index %lu: number %llu, time %llu, %llu bytes added; expected %llu, %llu, %llu", (unsigned long)i,
                     (unsigned long long)info.number, (unsigned long long)info.time_ns, (unsigned long long)info.bytes_added,
                     (unsigned long long)v->number, (unsigned long long)v->time_ns, (unsigned long long)v->bytes_added);
            if (expect_code(bpz_version_metadata_json(a, i, &json), BPZ_OK, "bpz_version_metadata_json") &&
                strcmp(json, v->metadata) != 0)
                fail("version %llu: metadata %s, expected %s", (unsigned long long)v->number, json, v->metadata);
        }
        {
            struct bpz_version_info info;
            expect_code(bpz_version_info(a, count, &info), BPZ_ERR_INVALID_ARGUMENT, "bpz_version_info past the end");
        }
        bpz_close(a);
        for (i = 0; i < g->nv; i++) {
            check_version_opened(path, g->file, backends[b], (int64_t)g->versions[i].number, g, &g->versions[i]);
            check_version_opened(path, g->file, backends[b], (int64_t)i - (int64_t)g->nv, g, &g->versions[i]);
        }
        snprintf(context, sizeof context, "%s (%s) versions", g->file, backend_name(backends[b]));
        rc = bpz_open_version(path, backends[b], (int64_t)latest + 1, &none);
        if (expect_code(rc, BPZ_ERR_INVALID_ARGUMENT, "bpz_open_version of a version not in the file") && none != NULL)
            fail("bpz_open_version failed but did not set *out to NULL");
        if (rc == BPZ_OK) bpz_close(none);
    }
    free(path);
}

static void check_invalid(const char *dir, const char *file, const char *kind, const char *stage, int64_t version) {
    static const int backends[2] = {BPZ_BACKEND_MMAP, BPZ_BACKEND_PREAD};
    char *path = join_path(dir, "invalid", file);
    size_t b;
    for (b = 0; b < 2; b++) {
        bpz_archive *a = (bpz_archive *)&b; /* must be overwritten */
        int rc = bpz_open_version(path, backends[b], version, &a);
        snprintf(context, sizeof context, "invalid/%s (%s, version %lld, %s expected at %s)", file, backend_name(backends[b]),
                 (long long)version, kind, stage);
        /* bpz_open lists the tensors (and checks tree and metadata): a listing rule fails it. */
        if (strcmp(stage, "open") == 0 || strcmp(stage, "list") == 0) {
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

/* Checks the golden archive read so far (its archive and its versions). */
static size_t finish_golden(const char *dir, const golden *g) {
    size_t n = check_golden(dir, g);
    if (!g->has_versions_line) {
        fprintf(stderr, "conformance: %s has no versions line\n", g->file);
        exit(2);
    }
    if (g->nv != 0 && g->nv != g->version_count) {
        fprintf(stderr, "conformance: %s: %lu version lines for %llu versions\n", g->file, (unsigned long)g->nv,
                (unsigned long long)g->version_count);
        exit(2);
    }
    check_versions(dir, g);
    return n;
}

int main(int argc, char **argv) {
    FILE *f;
    char *line, *fields[12];
    golden g;
    size_t lineno = 0, archives = 0, tensors = 0, invalid = 0, versioned = 0;
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
            if (g.file) tensors += finish_golden(argv[2], &g), archives++, versioned += g.nv > 0;
            golden_free(&g);
            g.file = xstrdup(fields[1]);
            g.tree = unhex(fields[3], &len);
            g.metadata = unhex(fields[4], &len);
            if (!parse_u64(fields[2], &g.count) || !g.tree || !g.metadata) goto malformed;
        } else if (strcmp(fields[0], "tensor") == 0 && n == 9 && g.file) {
            expected_tensor *t;
            if (g.nv > 0) {
                t = push_tensor(&g.versions[g.nv - 1].list);
            } else {
                /* The latest version's tensors: the golden's own list. */
                tensor_list list;
                list.tensors = g.tensors, list.n = g.n, list.cap = g.cap;
                t = push_tensor(&list);
                g.tensors = list.tensors, g.n = list.n, g.cap = list.cap;
            }
            t->name = unhex(fields[1], &t->name_len);
            t->dtype = xstrdup(fields[2]), t->shape = xstrdup(fields[3]), t->storage = xstrdup(fields[4]);
            t->filter = xstrdup(fields[5]), t->sha256 = xstrdup(fields[8]);
            if (!t->name || !parse_u64(fields[6], &t->chunks) || !parse_u64(fields[7], &t->nbytes)) goto malformed;
        } else if (strcmp(fields[0], "versions") == 0 && n == 3 && g.file && !g.has_versions_line) {
            uint64_t recovered;
            if (!parse_u64(fields[1], &g.version_count) || !parse_u64(fields[2], &recovered) || recovered > 1) goto malformed;
            g.recovered = (int)recovered;
            g.has_versions_line = 1;
        } else if (strcmp(fields[0], "version") == 0 && n == 6 && g.has_versions_line) {
            expected_version *v;
            size_t len;
            if (g.nv == g.capv) {
                expected_version *bigger;
                g.capv = g.capv ? 2 * g.capv : 4;
                bigger = (expected_version *)realloc(g.versions, g.capv * sizeof *bigger);
                if (!bigger) goto malformed;
                g.versions = bigger;
            }
            v = &g.versions[g.nv++];
            memset(v, 0, sizeof *v);
            v->metadata = unhex(fields[5], &len);
            if (!v->metadata || !parse_u64(fields[1], &v->number) || !parse_u64(fields[2], &v->time_ns) ||
                !parse_u64(fields[3], &v->bytes_added) || !parse_u64(fields[4], &v->count))
                goto malformed;
        } else if (strcmp(fields[0], "invalid") == 0 && n == 5) {
            uint64_t version;
            if (!parse_u64(fields[4], &version) || version > (uint64_t)INT64_MAX) goto malformed;
            check_invalid(argv[2], fields[1], fields[2], fields[3], (int64_t)version);
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
    if (g.file) tensors += finish_golden(argv[2], &g), archives++, versioned += g.nv > 0;
    golden_free(&g);
    fclose(f);
    if (archives == 0 || invalid == 0) {
        fprintf(stderr, "conformance: %s holds no vectors\n", argv[1]);
        return 2;
    }
    if (versioned == 0) {
        fprintf(stderr, "conformance: %s holds no versioned archive\n", argv[1]);
        return 2;
    }
    printf("C conformance (libbpz %s): %lu golden archives (%lu tensors, %lu with versions) and %lu invalid "
           "files, each with the mmap and pread backends: %s\n",
           bpz_version(), (unsigned long)archives, (unsigned long)tensors, (unsigned long)versioned,
           (unsigned long)invalid, failures ? "FAILED" : "all as expected");
    if (failures) fprintf(stderr, "%d check(s) failed\n", failures);
    return failures ? 1 : 0;
}
