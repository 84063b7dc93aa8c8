// Command bpzls lists the tensors of bpz archives.
//
//	go run ./cmd/bpzls [-verify] FILE.bpz...
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	bpz "bpz.dev/reader"
)

func main() {
	verify := flag.Bool("verify", false, "also verify every chunk and the padding")
	flag.Parse()
	status := 0
	for _, path := range flag.Args() {
		if err := list(path, *verify); err != nil {
			fmt.Fprintln(os.Stderr, err)
			status = 1
		}
	}
	os.Exit(status)
}

func list(path string, verify bool) error {
	a, err := bpz.Open(path)
	if err != nil {
		return err
	}
	defer a.Close()
	major, minor := a.Version()
	fmt.Printf("%s: bpz %d.%d, alignment %d, %d tensors\n", path, major, minor, a.Alignment(), len(a.Tensors()))
	for _, t := range a.Tensors() {
		dims := make([]string, len(t.Shape))
		for i, d := range t.Shape {
			dims[i] = fmt.Sprint(d)
		}
		fmt.Printf("  %-24s %-6s [%s] %s/%s  %d chunks (%d encoded)  %d stored / %d decoded bytes\n",
			t.Name, t.DType, strings.Join(dims, ", "), t.Storage, t.Filter,
			len(t.Chunks), t.EncodedChunks(), t.StoredBytes, t.NBytes)
	}
	if verify {
		if err := a.Verify(); err != nil {
			return err
		}
		fmt.Println("  verified")
	}
	return nil
}
