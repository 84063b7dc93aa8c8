// example.cpp — libbpz from C++17: an RAII wrapper around bpz_archive, one
// tensor read (decompressed, checksummed) into a std::vector<float>, and one
// raw tensor viewed in place in the memory map, without a copy.
//
//   example ARCHIVE TENSOR_TO_READ RAW_TENSOR_TO_VIEW
//   example spec/vectors/nested_tree.bpz 'net/E~1I/V' net/l1/W
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bpz.h"

namespace bpzxx {

// A failed bpz call: its code, kind ("checksum_mismatch", ...) and message.
class Error : public std::runtime_error {
public:
    explicit Error(int code)
        : std::runtime_error(std::string(bpz_error_kind_name(code)) + ": " + bpz_last_error_message()),
          code_(code) {}
    int code() const noexcept { return code_; }

private:
    int code_;
};

inline void check(int code) {
    if (code != BPZ_OK) throw Error(code);
}

template <class T> constexpr int dtype_of();
template <> constexpr int dtype_of<float>() { return BPZ_DTYPE_F32; }
template <> constexpr int dtype_of<double>() { return BPZ_DTYPE_F64; }
template <> constexpr int dtype_of<std::int32_t>() { return BPZ_DTYPE_I32; }
template <> constexpr int dtype_of<std::int64_t>() { return BPZ_DTYPE_I64; }
template <> constexpr int dtype_of<std::uint8_t>() { return BPZ_DTYPE_U8; }

// Read-only elements inside the archive's map; valid while the Archive lives.
template <class T> struct View {
    const T *data;
    std::size_t size;
    const T *begin() const { return data; }
    const T *end() const { return data + size; }
    const T &operator[](std::size_t i) const { return data[i]; }
};

// Owns one open archive; closes it on destruction. Movable, not copyable.
class Archive {
public:
    explicit Archive(const std::string &path, int backend = BPZ_BACKEND_MMAP) {
        check(bpz_open(path.c_str(), backend, &archive_));
    }
    ~Archive() { bpz_close(archive_); }
    Archive(const Archive &) = delete;
    Archive &operator=(const Archive &) = delete;
    Archive(Archive &&other) noexcept : archive_(std::exchange(other.archive_, nullptr)) {}
    Archive &operator=(Archive &&other) noexcept {
        if (this != &other) {
            bpz_close(archive_);
            archive_ = std::exchange(other.archive_, nullptr);
        }
        return *this;
    }

    std::size_t size() const { return bpz_tensor_count(archive_); }

    std::size_t index(const std::string &name) const {
        std::size_t i = 0;
        check(bpz_tensor_find(archive_, name.c_str(), &i));
        return i;
    }

    struct bpz_tensor_info info(std::size_t i) const {
        struct bpz_tensor_info out;
        check(bpz_tensor_info(archive_, i, &out));
        return out;
    }

    std::vector<std::uint64_t> shape(const std::string &name) const {
        struct bpz_tensor_info t = info(index(name));
        return std::vector<std::uint64_t>(t.shape, t.shape + t.rank);
    }

    // A copy of the whole tensor, every checksum verified.
    template <class T> std::vector<T> read(const std::string &name) const {
        std::size_t i = index(name);
        struct bpz_tensor_info t = info(i);
        require<T>(t);
        std::vector<T> out(static_cast<std::size_t>(t.nbytes / sizeof(T)));
        check(bpz_read(archive_, i, out.data(), out.size() * sizeof(T)));
        return out;
    }

    // The tensor in place (raw tensors of a memory-mapped archive only; not
    // checksummed: call verify() first if the file is not trusted).
    template <class T> View<T> view(const std::string &name) const {
        std::size_t i = index(name);
        require<T>(info(i));
        const void *data = nullptr;
        std::size_t len = 0;
        check(bpz_tensor_data(archive_, i, &data, &len));
        return View<T>{static_cast<const T *>(data), len / sizeof(T)};
    }

    void verify() const { check(bpz_verify(archive_)); }

private:
    template <class T> static void require(const struct bpz_tensor_info &t) {
        if (t.dtype != dtype_of<T>())
            throw std::invalid_argument(std::string("tensor ") + t.name + " has dtype " + t.dtype_name);
    }

    bpz_archive *archive_ = nullptr;
};

}  // namespace bpzxx

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s ARCHIVE TENSOR_TO_READ RAW_TENSOR_TO_VIEW\n", argv[0]);
        return 2;
    }
    try {
        bpzxx::Archive archive(argv[1]);
        std::printf("%s: %zu tensors (libbpz %s)\n", argv[1], archive.size(), bpz_version());

        std::vector<float> values = archive.read<float>(argv[2]);
        double sum = 0;
        for (float v : values) sum += v;
        std::printf("read %s: %zu floats, sum %g\n", argv[2], values.size(), sum);

        bpzxx::View<float> w = archive.view<float>(argv[3]);
        std::vector<std::uint64_t> shape = archive.shape(argv[3]);
        std::printf("view %s: %zu floats in place, shape [", argv[3], w.size);
        for (std::size_t d = 0; d < shape.size(); d++) std::printf("%s%llu", d ? "," : "", static_cast<unsigned long long>(shape[d]));
        std::printf("], first %g\n", w.size ? w[0] : 0.0f);

        // A compressed tensor has no in-place view: the error says so.
        try {
            archive.view<float>(argv[2]);
            std::printf("view %s: in place too (it is stored raw)\n", argv[2]);
        } catch (const bpzxx::Error &e) {
            if (e.code() != BPZ_ERR_NOT_ZERO_COPY) throw;
            std::printf("view %s: refused as expected (%s)\n", argv[2], bpz_error_kind_name(e.code()));
        }

        bpzxx::Archive moved = std::move(archive);  // ownership moves; closed once
        moved.verify();
        std::printf("verified: every checksum matches\n");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "example: %s\n", e.what());
        return 1;
    }
    return 0;
}
