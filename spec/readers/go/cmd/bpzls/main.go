// Command bpzls lists the tensors of bpz archives.
//
//	go run ./cmd/bpzls [-verify] [-version N] [-log] FILE.bpz...
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	bpz "bpz.dev/reader"
)

func main() {
	verify := flag.Bool("verify", false, "also verify every version: chunks, hashes, padding")
	version := flag.Int64("version", 0, "the version to list: 0 the latest, k version k, -k the k-th from the latest")
	log := flag.Bool("log", false, "list the versions instead of the tensors")
	flag.Parse()
	status := 0
	for _, path := range flag.Args() {
		if err := list(path, *version, *log, *verify); err != nil {
			fmt.Fprintln(os.Stderr, err)
			status = 1
		}
	}
	os.Exit(status)
}

func list(path string, version int64, log, verify bool) error {
	a, err := bpz.OpenWith(path, bpz.Options{Version: version})
	if err != nil {
		return err
	}
	defer a.Close()
	if n, ok := a.Recovered(); ok {
		fmt.Printf("%s: WARNING: unfinished append: %d bytes after the last committed version are ignored\n", path, n)
	}
	major, minor := a.Version()
	if log {
		versions, err := a.Versions()
		if err != nil {
			return err
		}
		fmt.Printf("%s: bpz %d.%d, %d versions\n", path, major, minor, len(versions))
		for _, v := range versions {
			when := "time unknown"
			if !v.Time().IsZero() {
				when = v.Time().Format("2006-01-02 15:04:05.000 MST")
			}
			fmt.Printf("  %6d  %s  %12d bytes added  metadata %s\n", v.Number, when, v.BytesAdded, v.Metadata)
		}
	} else {
		tensors, err := a.Tensors()
		if err != nil {
			return err
		}
		fmt.Printf("%s: bpz %d.%d, version %d of %d, alignment %d, %d tensors\n", path, major, minor,
			a.VersionNumber(), a.LatestVersionNumber(), a.Alignment(), len(tensors))
		for _, t := range tensors {
			dims := make([]string, len(t.Shape))
			for i, d := range t.Shape {
				dims[i] = fmt.Sprint(d)
			}
			fmt.Printf("  %-24s %-6s [%s] %s/%s  %d chunks (%d encoded)  %d stored / %d decoded bytes\n",
				t.Name, t.DType, strings.Join(dims, ", "), t.Storage, t.Filter,
				len(t.Chunks), t.EncodedChunks(), t.StoredBytes, t.NBytes)
		}
	}
	if verify {
		if err := a.Verify(); err != nil {
			return err
		}
		fmt.Println("  verified (every version)")
	}
	return nil
}
