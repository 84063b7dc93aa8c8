// Command bpzdump prints one line per tensor, for comparing readers written
// in different languages (the same format as rust/bpz-capi/tests/c/bpz_dump.c):
//
//	NAME<TAB>DTYPE<TAB>SHAPE<TAB>SHA256
//
// NAME escapes `\`, tab, newline, carriage return and other bytes below 0x20
// (and 0x7f); SHAPE is `[4,3]`; SHA256 is the hex digest of the decoded bytes.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"

	bpz "bpz.dev/reader"
)

func escape(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\t':
			b.WriteString(`\t`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: bpzdump ARCHIVE")
		os.Exit(2)
	}
	a, err := bpz.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer a.Close()
	if n, ok := a.Recovered(); ok {
		fmt.Fprintf(os.Stderr, "bpzdump: %s ends in an unfinished append: %d bytes after the last committed version ignored\n", os.Args[1], n)
	}
	tensors, err := a.Tensors()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, t := range tensors {
		sum := sha256.New() // streamed: memory stays at one chunk whatever the tensor's size
		if _, err := a.ReadTo(t.Name, sum); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		dims := make([]string, len(t.Shape))
		for i, d := range t.Shape {
			dims[i] = fmt.Sprint(d)
		}
		fmt.Printf("%s\t%s\t[%s]\t%s\n", escape(t.Name), t.DType, strings.Join(dims, ","), hex.EncodeToString(sum.Sum(nil)))
	}
}
