/* sha256.h — a small SHA-256 (FIPS 180-4) for the C tests of libbpz. */
#ifndef BPZ_TEST_SHA256_H
#define BPZ_TEST_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct sha256_ctx {
    uint32_t state[8];
    uint64_t length;          /* bytes hashed so far */
    unsigned char block[64];
    size_t used;              /* bytes waiting in block */
} sha256_ctx;

void sha256_init(sha256_ctx *ctx);
void sha256_update(sha256_ctx *ctx, const void *data, size_t len);
/* Writes the digest as 64 lowercase hex digits and a NUL. */
void sha256_final_hex(sha256_ctx *ctx, char hex[65]);
/* One-shot: the hex digest of len bytes at data (data may be NULL if len is 0). */
void sha256_hex(const void *data, size_t len, char hex[65]);

#endif
