/*
 * bpz.h — the C interface of bpz, an archive format for named tensors.
 *
 * Link with libbpz (built by `cargo build -p bpz-capi --release`:
 * target/release/libbpz.so and libbpz.a). The format is specified in
 * spec/FORMAT.md; this header only reads archives.
 *
 * Conventions
 * -----------
 * - Every function returning `int` returns BPZ_OK (0) on success or a
 *   negative BPZ_ERR_* code (bpz_recovered() answers 1 or 0 instead of
 *   BPZ_OK). bpz_last_error_message() then describes the failure (naming
 *   the file and the tensor at fault).
 * - Versions: a format 1.1 archive holds every version appended to it.
 *   bpz_open() opens the latest, bpz_open_version() any other; the
 *   versions are listed by bpz_version_count() and bpz_version_info().
 * - Every pointer argument is checked: NULL gives BPZ_ERR_NULL_ARGUMENT
 *   (except where NULL is documented as accepted). Indices, row ranges and
 *   buffer lengths are checked against the archive: a mismatch gives
 *   BPZ_ERR_INVALID_ARGUMENT, never a read or write out of bounds.
 * - Ownership: every pointer a bpz function returns is owned by bpz. Never
 *   free() it. Strings are NUL-terminated UTF-8. Pointers into an archive
 *   (names, shapes, views, JSON) stay valid until bpz_close() of that archive.
 * - Threads: an open archive may be used from many threads at once (every
 *   function taking `const bpz_archive *`); bpz_close() must not race with
 *   them. Reads decode the chunks they need in parallel on an internal pool.
 * - Reads verify crc32c checksums; a zero-copy view (bpz_tensor_data) does
 *   not — call bpz_verify() when the file is not trusted.
 * - A file truncated in place while open (rather than replaced) makes reads
 *   and checks fail with BPZ_ERR_TRUNCATED; but a zero-copy view of bytes
 *   past the new end raises SIGBUS when touched, as with any memory map.
 */
#ifndef BPZ_H
#define BPZ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ codes */

/**
 * Status codes. One per error kind of spec/FORMAT.md §10 (the name that
 * bpz_error_kind_name() returns is that kind's), plus this interface's own.
 */
enum bpz_status {
    BPZ_OK = 0,
    /** The operating system failed (open, read, map): missing file, permission... */
    BPZ_ERR_IO = -1,
    /** Not a bpz archive, or one mangled by a text-mode or 7-bit transfer. */
    BPZ_ERR_BAD_MAGIC = -2,
    /** The file was cut short or never completely written. */
    BPZ_ERR_TRUNCATED = -3,
    /** A major format version this library does not read. */
    BPZ_ERR_UNSUPPORTED_VERSION = -4,
    /** A required feature, dtype, storage or filter this library does not know. */
    BPZ_ERR_UNSUPPORTED_FEATURE = -5,
    /** A crc32c does not match: the file is corrupt. */
    BPZ_ERR_CHECKSUM_MISMATCH = -6,
    /** The index (or superblock alignment, or trailer placement) is malformed. */
    BPZ_ERR_INVALID_INDEX = -7,
    /** A size or count over the format's limits (spec/FORMAT.md §11). */
    BPZ_ERR_LIMIT_EXCEEDED = -8,
    /** Compressed data that does not decode, or non-zero padding. */
    BPZ_ERR_CORRUPT_DATA = -9,
    /** No tensor of that name. */
    BPZ_ERR_TENSOR_NOT_FOUND = -10,
    /** A view of a compressed tensor, or of an archive opened without a map. */
    BPZ_ERR_NOT_ZERO_COPY = -11,
    /** A bad argument: index or row range out of range, wrong buffer length... */
    BPZ_ERR_INVALID_ARGUMENT = -12,
    /** A pointer argument that must not be NULL was NULL. */
    BPZ_ERR_NULL_ARGUMENT = -13,
    /** An internal error (a bug in bpz, caught at the boundary): please report it. */
    BPZ_ERR_PANIC = -14,
    /** An error kind newer than this interface. */
    BPZ_ERR_UNKNOWN = -15,
    /** A buffer for a read could not be allocated: the process is short of memory
     *  (the file is not at fault; a size over the format's limits is
     *  BPZ_ERR_LIMIT_EXCEEDED). */
    BPZ_ERR_OUT_OF_MEMORY = -16
};

/** How bpz_open() accesses the file. */
enum bpz_backend {
    /** Memory-map the file: raw tensors can be viewed in place. */
    BPZ_BACKEND_MMAP = 0,
    /** Positioned reads (pread) of only what is asked for; no views. */
    BPZ_BACKEND_PREAD = 1
};

/** How a tensor is stored (spec/FORMAT.md §4). */
enum bpz_storage {
    /** One uncompressed, aligned run: viewable in place with the mmap backend. */
    BPZ_STORAGE_RAW = 0,
    /** Independent chunks, each compressed (filter + zstd) or plain. */
    BPZ_STORAGE_CHUNKED = 1
};

/** Element types, in the order and with the names of spec/FORMAT.md §6. All little-endian. */
enum bpz_dtype {
    BPZ_DTYPE_BOOL = 0,
    BPZ_DTYPE_U8 = 1,
    BPZ_DTYPE_U16 = 2,
    BPZ_DTYPE_U32 = 3,
    BPZ_DTYPE_U64 = 4,
    BPZ_DTYPE_I8 = 5,
    BPZ_DTYPE_I16 = 6,
    BPZ_DTYPE_I32 = 7,
    BPZ_DTYPE_I64 = 8,
    BPZ_DTYPE_F16 = 9,
    BPZ_DTYPE_BF16 = 10,
    BPZ_DTYPE_F32 = 11,
    BPZ_DTYPE_F64 = 12,
    BPZ_DTYPE_C64 = 13,
    BPZ_DTYPE_C128 = 14,
    BPZ_DTYPE_F8_E4M3 = 15,
    BPZ_DTYPE_F8_E5M2 = 16,
    BPZ_DTYPE_F8_E4M3FNUZ = 17,
    BPZ_DTYPE_F8_E5M2FNUZ = 18,
    BPZ_DTYPE_F8_E8M0 = 19
};

/* ---------------------------------------------------------------- library */

/** The library's version, e.g. "0.1.0". Static; never NULL. */
const char *bpz_version(void);

/**
 * A description of the last failure of a bpz function on the calling thread
 * ("" if none has failed yet). Successful calls do not reset it: look at it
 * only after a function reported failure. Owned by bpz, thread-local; valid
 * until the next bpz call on the same thread. Never NULL.
 */
const char *bpz_last_error_message(void);

/**
 * The name of a status code: "ok", the error kind of spec/FORMAT.md §10
 * ("checksum_mismatch", ...), "null_argument", "panic", or "unknown" for any
 * other number. Static; never NULL.
 */
const char *bpz_error_kind_name(int code);

/** Bytes per element of a BPZ_DTYPE_* value; 0 for any other number. */
size_t bpz_dtype_size(int dtype);

/* ------------------------------------------------------------- open/close */

/** An open archive. Opaque; create with bpz_open(), destroy with bpz_close(). */
typedef struct bpz_archive bpz_archive;

/**
 * Opens the archive at `path` (a NUL-terminated path, bytes as the OS takes
 * them; UTF-8 on Windows) and validates its superblock, trailer and index —
 * cost proportional to the index, not the data. `backend` is a BPZ_BACKEND_*.
 * A versioned archive (format 1.1) opens at its latest committed version;
 * a file that ends in an unfinished append opens at its last committed
 * version, which bpz_recovered() reports. Same as
 * bpz_open_version(path, backend, 0, out).
 *
 * On success `*out` receives the archive, which the caller owns and must
 * release with bpz_close(). On failure `*out` is set to NULL (when `out` is
 * not NULL) and the code says why (BPZ_ERR_IO, BPZ_ERR_BAD_MAGIC, ...).
 */
int bpz_open(const char *path, int backend, bpz_archive **out);

/**
 * Opens one version of the archive at `path`, as bpz_open() opens the latest.
 * `version` selects it:
 *   0       the latest committed version (as bpz_open());
 *   k > 0   the version numbered k (numbers are those of bpz_version_info(),
 *           1 for the first version written; compaction may leave gaps);
 *   k < 0   counting back from the latest: -1 is the latest, -2 the one
 *           before it, and so on.
 * A 1.0 file holds one version, number 1. Opening an older version costs
 * one more read of its index; everything else (tensors, tree, metadata,
 * reads, views) then describes that version. A version the file does not
 * hold gives BPZ_ERR_INVALID_ARGUMENT, whose message lists the versions
 * present; damage to that version's index gives its error kind as
 * bpz_open() does. Ownership of `*out` as for bpz_open(); `*out` is set to
 * NULL on failure.
 */
int bpz_open_version(const char *path, int backend, int64_t version, bpz_archive **out);

/**
 * Opens the latest version of a remote archive: `url` is http(s)://host/path,
 * s3://bucket/key, gs://bucket/key or az://container/path. Reads are ranged
 * requests (opening costs one request in the common case: the archive's tail);
 * every byte fetched is checksum-verified and every request is pinned to the
 * object's ETag, so an object replaced meanwhile fails (BPZ_ERR_IO) instead of
 * mixing two files. There are no zero-copy views (bpz_tensor_data gives
 * BPZ_ERR_NOT_ZERO_COPY): read tensors with bpz_read(), bpz_read_many() (one
 * batch of parallel ranged requests) or bpz_read_rows().
 *
 * `options_json` is NULL or a JSON object of store options whose values are
 * strings, numbers or booleans, e.g.
 *   {"endpoint": "http://127.0.0.1:7070", "region": "us-east-1",
 *    "access_key_id": "...", "secret_access_key": "...", "anonymous": true}
 * Options not given come from the standard environment variables (AWS_*,
 * GOOGLE_*, AZURE_*). Unknown keys give BPZ_ERR_INVALID_ARGUMENT naming the key.
 * Credentials never appear in error messages. Ownership of `*out` as for
 * bpz_open(); `*out` is set to NULL on failure.
 */
int bpz_open_url(const char *url, const char *options_json, bpz_archive **out);

/**
 * Closes an archive and frees everything it owns: every pointer obtained from
 * it (names, shapes, views, JSON) becomes invalid. NULL is accepted and does
 * nothing. Closing an archive twice is undefined behaviour.
 */
void bpz_close(bpz_archive *archive);

/* ------------------------------------------------------------------ index */

/** The number of tensors (0 if `archive` is NULL). Tensors are numbered 0..count-1 in file order. */
size_t bpz_tensor_count(const bpz_archive *archive);

/**
 * Finds the tensor named `name` (NUL-terminated UTF-8) and stores its index
 * in `*index`. BPZ_ERR_TENSOR_NOT_FOUND if there is none (`*index` unchanged).
 */
int bpz_tensor_find(const bpz_archive *archive, const char *name, size_t *index);

/**
 * What the index says about one tensor, filled in by the function of the same
 * name. Like `struct stat` and stat(), the struct is always spelled with its
 * tag: `struct bpz_tensor_info info;` (in C++ too).
 */
struct bpz_tensor_info {
    /** The name (spec/FORMAT.md §9). Owned by the archive; valid until bpz_close(). */
    const char *name;
    /** A BPZ_DTYPE_* value. */
    int dtype;
    /** The dtype's name ("F32", ...). Static. */
    const char *dtype_name;
    /** Number of dimensions; 0 for a 0-d tensor (one element). */
    size_t rank;
    /** `rank` dimensions, outermost first. Owned by the archive; valid until
        bpz_close(). Never NULL (but not to be read when rank is 0). */
    const uint64_t *shape;
    /** Decoded size in bytes: product(shape) * bpz_dtype_size(dtype). */
    uint64_t nbytes;
    /** Bytes the tensor occupies in the file (compressed size). */
    uint64_t stored_bytes;
    /** A BPZ_STORAGE_* value. */
    int storage;
    /** The filter of compressed chunks: "none", "shuffle", "delta_shuffle" or "bitpack". Static. */
    const char *filter;
    /** Number of stored chunks. */
    size_t chunks;
};

/**
 * Fills `*out` with tensor `index`'s description. BPZ_ERR_INVALID_ARGUMENT if
 * `index` >= bpz_tensor_count() (`*out` unchanged).
 */
int bpz_tensor_info(const bpz_archive *archive, size_t index, struct bpz_tensor_info *out);

/**
 * The archive's user metadata as compact JSON text ("null" if none).
 * Owned by the archive; valid until bpz_close(). NULL only if `archive` is NULL.
 */
const char *bpz_metadata_json(const bpz_archive *archive);

/**
 * The tree (the structure the tensors were saved from, spec/FORMAT.md §8) as
 * compact JSON text ("null" if none). Owned by the archive; valid until
 * bpz_close(). NULL only if `archive` is NULL.
 */
const char *bpz_tree_json(const bpz_archive *archive);

/* --------------------------------------------------------------- versions */

/**
 * The number of versions in the file (0 if `archive` is NULL): every
 * committed version still in the file, whichever one `archive` was opened
 * at. 1 for a 1.0 file. Versions are indexed 0..count-1, oldest first.
 */
size_t bpz_version_count(const bpz_archive *archive);

/**
 * One version of an archive, filled in by bpz_version_info(). Spelled with
 * its tag, like struct bpz_tensor_info.
 */
struct bpz_version_info {
    /** Its number: 1, 2, ... in the order written (compaction may leave gaps).
        What bpz_open_version() takes. */
    uint64_t number;
    /** When it was written: nanoseconds since 1970-01-01 UTC; 0 if unknown
        (always 0 in a 1.0 file). */
    uint64_t time_ns;
    /** Bytes this version added to the file: its new chunks and their
        padding, its index and trailer (spec/FORMAT.md §16.4). Chunks it
        shares with the version before it are not counted. */
    uint64_t bytes_added;
};

/**
 * Fills `*out` with version `index` (0 = the oldest; bpz_version_count() - 1
 * = the latest). BPZ_ERR_INVALID_ARGUMENT if `index` >= bpz_version_count()
 * (`*out` unchanged). `index` is a position, not a version number.
 */
int bpz_version_info(const bpz_archive *archive, size_t index, struct bpz_version_info *out);

/**
 * Stores in `*json` the metadata of version `index` (a position, as for
 * bpz_version_info()) as compact JSON text ("null" if it has none). For the
 * version the archive was opened at, it is bpz_metadata_json(); for another,
 * that version's index is read and checked (once: later calls return the
 * same string), so it can fail with that index's error kind. The string is
 * owned by the archive and valid until bpz_close(); never free() it. On
 * failure `*json` is set to NULL (when `json` is not NULL).
 */
int bpz_version_metadata_json(const bpz_archive *archive, size_t index, const char **json);

/**
 * The number of the version `archive` was opened at (the latest unless
 * bpz_open_version() chose another); 0 if `archive` is NULL.
 */
uint64_t bpz_version_number(const bpz_archive *archive);

/**
 * Whether opening skipped an unfinished append at the end of the file (a
 * writer killed while appending, spec/FORMAT.md §16.7): 1 if it did — the
 * archive then shows the last committed version, and the bytes after it are
 * ignored — 0 if the file ends with a committed version. When
 * `ignored_bytes` is not NULL it receives the number of bytes ignored (0
 * when the answer is 0). Readers never change the file; the next append
 * cuts the unfinished tail. Unlike other functions returning `int`, the
 * answer is 1 or 0; a negative BPZ_ERR_* code (BPZ_ERR_NULL_ARGUMENT for a
 * NULL `archive`) reports a failure, so test the result with `> 0`.
 */
int bpz_recovered(const bpz_archive *archive, uint64_t *ignored_bytes);

/* ------------------------------------------------------------------- data */

/**
 * Zero-copy access to a raw tensor: stores in `*data` the address of its
 * `*len` (= nbytes) bytes inside the memory map. The bytes are read-only,
 * aligned to the archive's alignment (at least 16), and valid until
 * bpz_close(); they are NOT checksummed (see bpz_verify()). An empty tensor
 * gives a non-NULL `*data` and `*len` 0. If the file is truncated in place
 * while open, touching view bytes past its new end raises SIGBUS: read files
 * that others may cut with bpz_read().
 *
 * BPZ_ERR_NOT_ZERO_COPY if the tensor is stored compressed or the archive
 * was opened with BPZ_BACKEND_PREAD: use bpz_read() then. On any failure
 * `*data` is set to NULL and `*len` to 0 (when they are not NULL).
 */
int bpz_tensor_data(const bpz_archive *archive, size_t index, const void **data, size_t *len);

/**
 * Reads tensor `index` — its nbytes decoded bytes, little-endian, C order —
 * into `buf`. `buf_len` must equal the tensor's nbytes exactly
 * (BPZ_ERR_INVALID_ARGUMENT otherwise). Every chunk's checksum is verified;
 * chunks are decoded in parallel. `buf` may be NULL when `buf_len` is 0.
 * The caller owns `buf`; on failure its contents are unspecified.
 */
int bpz_read(const bpz_archive *archive, size_t index, void *buf, size_t buf_len);

/**
 * Reads `n` whole tensors at once: tensor `indices[i]` into `bufs[i]`, whose
 * length `buf_lens[i]` must equal its nbytes exactly, as for bpz_read(). Faster
 * than `n` calls of bpz_read() for many small tensors: neighbouring small
 * chunks are read from the file together, and everything is decoded in
 * parallel. To read a whole archive, pass indices 0 .. bpz_tensor_count()-1.
 * The buffers must not overlap (BPZ_ERR_INVALID_ARGUMENT, before anything is
 * written); an index may repeat with a buffer of its own. `indices`, `bufs`
 * and `buf_lens` may be NULL when `n` is 0, and `bufs[i]` when `buf_lens[i]`
 * is 0. Every index and length is checked before any read; on failure the
 * buffers' contents are unspecified.
 */
int bpz_read_many(const bpz_archive *archive, const size_t *indices, size_t n,
                  void *const *bufs, const size_t *buf_lens);

/**
 * Reads rows [start, stop) of the leading axis of tensor `index` into `buf`.
 * The tensor has shape[0] rows (a 0-d tensor has one); `buf_len` must equal
 * (stop - start) times the bytes of one row (product(shape[1:]) times the
 * dtype's size) exactly. Only the chunks overlapping the rows are read and
 * decoded, in parallel, with checksums verified.
 * BPZ_ERR_INVALID_ARGUMENT if start > stop or stop exceeds the row count.
 * `buf` may be NULL when `buf_len` is 0.
 */
int bpz_read_rows(const bpz_archive *archive, size_t index, uint64_t start, uint64_t stop,
                  void *buf, size_t buf_len);

/**
 * Checks the whole file without decoding: every stored byte against its
 * checksum (superblock, chunks, index and trailer, read again from the file)
 * and every padding byte zero. Costs one read of the file. BPZ_OK if intact;
 * otherwise BPZ_ERR_CHECKSUM_MISMATCH, BPZ_ERR_CORRUPT_DATA,
 * BPZ_ERR_TRUNCATED (the file was cut since it was opened)... naming the part
 * at fault. Same as bpz_verify_with(archive, 0, 0).
 */
int bpz_verify(const bpz_archive *archive);

/**
 * bpz_verify(), and if `decode` is non-zero also decodes every compressed
 * chunk: that finds frames that match their checksum but do not decode to
 * their declared size (BPZ_ERR_CORRUPT_DATA; a file written that way, not
 * damaged later). A small file can declare terabytes of zeros, so when the
 * compressed chunks declare more than `max_decoded_bytes` decoded bytes in
 * all, nothing is decoded and BPZ_ERR_LIMIT_EXCEEDED is returned. 0 means
 * the default budget: 256 times the file size, and at least 4 GiB.
 */
int bpz_verify_with(const bpz_archive *archive, int decode, uint64_t max_decoded_bytes);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* BPZ_H */
