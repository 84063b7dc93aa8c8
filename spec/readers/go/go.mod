module bpz.dev/reader

go 1.25.0

require (
	github.com/klauspost/compress v1.20.3
	lukechampine.com/blake3 v1.4.1
)

require github.com/klauspost/cpuid/v2 v2.0.9 // indirect
