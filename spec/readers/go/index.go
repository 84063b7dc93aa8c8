package bpz

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
)

// This file parses the index JSON (section 7) into plain Go values: the syntactic
// half of step 8 of section 10. The semantic checks (steps 9–10) are in reader.go.

// parsedIndex is the index with every member type-checked but not yet validated.
type parsedIndex struct {
	tensors  []parsedTensor
	tree     json.RawMessage // "null" when absent
	metadata json.RawMessage // "null" when absent
	writer   *Writer
}

type parsedTensor struct {
	name       string
	dtype      string
	shape      []uint64 // integers ≥ 2^64 saturate to MaxUint64
	storage    string
	filter     string
	chunkElems uint64
	chunks     [][4]uint64 // offset, stored_length, crc32c, encoded
}

// Writer is the optional "writer" member of the index.
type Writer struct {
	Name    string
	Version string
}

// indexError is an invalid_index / limit_exceeded error before the file name is known.
type indexError struct {
	kind string
	part string
	msg  string
}

func (e *indexError) Error() string { return e.part + ": " + e.msg }

func invalid(part, format string, args ...any) *indexError {
	return &indexError{kind: KindInvalidIndex, part: part, msg: fmt.Sprintf(format, args...)}
}

// jsonDepth returns the maximum nesting depth of arrays and objects in b (the
// outermost object or array is depth 1), stopping as soon as it exceeds limit.
// It skips string contents (with their escapes) and needs no valid JSON.
func jsonDepth(b []byte, limit int) int {
	depth, max := 0, 0
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inString {
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case '[', '{':
			depth++
			if depth > max {
				max = depth
				if max > limit {
					return max
				}
			}
		case ']', '}':
			if depth > 0 {
				depth--
			}
		}
	}
	return max
}

// validateJSONText checks b as one JSON text under section 7's rules: nesting, UTF-8,
// syntax, duplicate members, number range, surrogates. It returns an *indexError.
func validateJSONText(b []byte) error {
	if d := jsonDepth(b, MaxJSONDepth); d > MaxJSONDepth {
		return &indexError{kind: KindLimitExceeded, part: "index",
			msg: fmt.Sprintf("JSON nesting deeper than %d", MaxJSONDepth)}
	}
	if !utf8.Valid(b) {
		return invalid("index", "not valid UTF-8")
	}
	if err := checkJSON(b, MaxJSONDepth); err != nil {
		if errors.Is(err, errDepth) {
			return &indexError{kind: KindLimitExceeded, part: "index", msg: err.Error()}
		}
		return invalid("index", "not valid JSON: %v", err)
	}
	return nil
}

// parseIndex performs step 8 of section 10 on the index bytes.
func parseIndex(b []byte) (*parsedIndex, error) {
	if err := validateJSONText(b); err != nil {
		return nil, err
	}
	// From here on encoding/json cannot fail on syntax.
	top, ok, err := objectMembers(b)
	if err != nil {
		return nil, invalid("index", "%v", err)
	}
	if !ok {
		return nil, invalid("index", "not a JSON object")
	}
	idx := &parsedIndex{tree: json.RawMessage("null"), metadata: json.RawMessage("null")}
	haveTensors := false
	for _, m := range top {
		switch m.key {
		case "tensors":
			haveTensors = true
			elems, ok := asArray(m.val)
			if !ok {
				return nil, invalid("index", `member "tensors" is not an array`)
			}
			idx.tensors = make([]parsedTensor, len(elems))
			for i, e := range elems {
				if err := parseTensor(i, e, &idx.tensors[i]); err != nil {
					return nil, err
				}
			}
		case "tree":
			if c := firstByte(m.val); c != '{' && c != 'n' {
				return nil, invalid("index", `member "tree" is neither a tree node (object) nor null`)
			}
			idx.tree = m.val
		case "metadata":
			idx.metadata = m.val
		case "writer":
			w, err := parseWriter(m.val)
			if err != nil {
				return nil, err
			}
			idx.writer = w
		default:
			// Unknown members are ignored (section 7, section 12).
		}
	}
	if !haveTensors {
		return nil, invalid("index", `required member "tensors" is missing`)
	}
	return idx, nil
}

func parseWriter(raw json.RawMessage) (*Writer, error) {
	members, ok, err := objectMembers(raw)
	if err != nil {
		return nil, invalid("index", `member "writer": %v`, err)
	}
	if !ok {
		return nil, invalid("index", `member "writer" is not an object`)
	}
	w := &Writer{}
	seen := 0
	for _, m := range members {
		switch m.key {
		case "name", "version":
			s, ok := asString(m.val)
			if !ok {
				return nil, invalid("index", `member "writer.%s" is not a string`, m.key)
			}
			seen++
			if m.key == "name" {
				w.Name = s
			} else {
				w.Version = s
			}
		}
	}
	if seen != 2 {
		return nil, invalid("index", `member "writer" lacks "name" or "version"`)
	}
	return w, nil
}

func parseTensor(i int, raw json.RawMessage, t *parsedTensor) error {
	part := fmt.Sprintf("tensor #%d", i)
	members, ok, err := objectMembers(raw)
	if err != nil {
		return invalid(part, "%v", err)
	}
	if !ok {
		return invalid(part, "tensor entry is not an object")
	}
	// Name first, so that later messages can name the tensor.
	for _, m := range members {
		if m.key == "name" {
			s, ok := asString(m.val)
			if !ok {
				return invalid(part, `member "name" is not a string`)
			}
			t.name = s
			part = fmt.Sprintf("tensor #%d %s", i, shortName(s))
		}
	}
	seen := map[string]bool{}
	for _, m := range members {
		seen[m.key] = true
		var ok bool
		switch m.key {
		case "name":
			ok = true
		case "dtype":
			t.dtype, ok = asString(m.val)
		case "storage":
			t.storage, ok = asString(m.val)
		case "filter":
			t.filter, ok = asString(m.val)
		case "shape":
			var elems []json.RawMessage
			if elems, ok = asArray(m.val); ok {
				t.shape = make([]uint64, len(elems))
				for k, e := range elems {
					if t.shape[k], ok = asUint(e); !ok {
						break
					}
				}
			}
		case "chunk_elems":
			t.chunkElems, ok = asUint(m.val)
		case "chunks":
			var elems []json.RawMessage
			if elems, ok = asArray(m.val); ok {
				t.chunks = make([][4]uint64, len(elems))
				for k, e := range elems {
					var fields []json.RawMessage
					if fields, ok = asArray(e); !ok || len(fields) != 4 {
						return invalid(part, "chunk %d is not an array [offset, stored_length, crc32c, encoded]", k)
					}
					for f := range fields {
						if t.chunks[k][f], ok = asUint(fields[f]); !ok {
							return invalid(part, "chunk %d: element %d is not an integer ≥ 0", k, f)
						}
					}
				}
			}
		default:
			ok = true // unknown members are ignored
		}
		if !ok {
			want := map[string]string{
				"dtype": "a string", "storage": "a string", "filter": "a string",
				"shape": "an array of integers ≥ 0", "chunk_elems": "an integer ≥ 0",
				"chunks": "an array",
			}[m.key]
			return invalid(part, "member %q is not %s", m.key, want)
		}
	}
	for _, k := range []string{"name", "dtype", "shape", "storage", "filter", "chunk_elems", "chunks"} {
		if !seen[k] {
			return invalid(part, "required member %q is missing", k)
		}
	}
	return nil
}

// JSON helpers. Their input is always a syntactically valid JSON value.

type member struct {
	key string
	val json.RawMessage
}

// objectMembers returns the members of a JSON object in order, failing on a duplicate
// member name; ok is false if raw is not an object.
func objectMembers(raw []byte) (members []member, ok bool, err error) {
	if firstByte(raw) != '{' {
		return nil, false, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if _, err := dec.Token(); err != nil { // '{'
		return nil, true, err
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, true, err
		}
		key, _ := tok.(string)
		if seen[key] {
			return nil, true, fmt.Errorf("duplicate member %q", key)
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, true, err
		}
		members = append(members, member{key, v})
	}
	return members, true, nil
}

func firstByte(raw []byte) byte {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return 0
	}
	return raw[0]
}

func asString(raw []byte) (string, bool) {
	if firstByte(raw) != '"' {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

func asArray(raw []byte) ([]json.RawMessage, bool) {
	if firstByte(raw) != '[' {
		return nil, false
	}
	var a []json.RawMessage
	if err := json.Unmarshal(raw, &a); err != nil {
		return nil, false
	}
	return a, true
}

// asUint parses a JSON integer ≥ 0 written without fraction or exponent. Values that
// do not fit 64 bits saturate to MaxUint64 (every limit check then rejects them).
func asUint(raw []byte) (uint64, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, false
	}
	var v uint64
	saturated := false
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, false
		}
		if !saturated {
			p, ok1 := mulChecked(v, 10)
			s, ok2 := addChecked(p, uint64(c-'0'))
			if ok1 && ok2 {
				v = s
			} else {
				saturated = true
			}
		}
	}
	if saturated {
		return ^uint64(0), true
	}
	return v, true
}
