package bpz

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// checkJSON validates b as one RFC 8259 JSON text under the index's extra rules
// (section 7): nesting at most maxDepth deep (the outermost value is depth 1), no
// object with two members of the same name, no number outside the binary64 range, no
// unpaired surrogate escape. It assumes b is valid UTF-8. The returned error says what
// is wrong and where; errDepth marks a nesting-limit failure.
func checkJSON(b []byte, maxDepth int) error {
	p := jsonChecker{b: b, maxDepth: maxDepth}
	p.ws()
	if err := p.value(1); err != nil {
		return err
	}
	p.ws()
	if p.i != len(p.b) {
		return p.fail("data after the JSON value")
	}
	return nil
}

var errDepth = errors.New("JSON nesting too deep")

type jsonChecker struct {
	b        []byte
	i        int
	maxDepth int
	key      []byte // scratch for decoded member names
}

func (p *jsonChecker) fail(format string, args ...any) error {
	return fmt.Errorf("byte %d: %s", p.i, fmt.Sprintf(format, args...))
}

func (p *jsonChecker) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonChecker) value(depth int) error {
	if p.i >= len(p.b) {
		return p.fail("unexpected end of JSON")
	}
	switch c := p.b[p.i]; {
	case c == '{' || c == '[':
		if depth > p.maxDepth {
			return fmt.Errorf("byte %d: %w (over %d)", p.i, errDepth, p.maxDepth)
		}
		if c == '{' {
			return p.object(depth)
		}
		return p.array(depth)
	case c == '"':
		_, err := p.str(false)
		return err
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	default:
		for _, lit := range []string{"true", "false", "null"} {
			if len(p.b)-p.i >= len(lit) && string(p.b[p.i:p.i+len(lit)]) == lit {
				p.i += len(lit)
				return nil
			}
		}
		return p.fail("invalid character %q", c)
	}
}

func (p *jsonChecker) object(depth int) error {
	p.i++ // '{'
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		return nil
	}
	var names []string
	var set map[string]struct{}
	for {
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != '"' {
			return p.fail("expected a member name")
		}
		at := p.i
		name, err := p.str(true)
		if err != nil {
			return err
		}
		// Duplicate member names (section 7): linear for small objects, a set beyond.
		dup := false
		if set != nil {
			_, dup = set[name]
			set[name] = struct{}{}
		} else {
			for _, n := range names {
				if n == name {
					dup = true
					break
				}
			}
			names = append(names, name)
			if len(names) > 16 {
				set = make(map[string]struct{}, 2*len(names))
				for _, n := range names {
					set[n] = struct{}{}
				}
			}
		}
		if dup {
			return fmt.Errorf("byte %d: two members named %s in one object", at, shortName(name))
		}
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return p.fail("expected ':'")
		}
		p.i++
		p.ws()
		if err := p.value(depth + 1); err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.b) {
			return p.fail("unexpected end of JSON in an object")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return nil
		default:
			return p.fail("expected ',' or '}'")
		}
	}
}

func (p *jsonChecker) array(depth int) error {
	p.i++ // '['
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == ']' {
		p.i++
		return nil
	}
	for {
		p.ws()
		if err := p.value(depth + 1); err != nil {
			return err
		}
		p.ws()
		if p.i >= len(p.b) {
			return p.fail("unexpected end of JSON in an array")
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return nil
		default:
			return p.fail("expected ',' or ']'")
		}
	}
}

func hex4(b []byte) (rune, bool) {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	return r, true
}

// str scans a string; if decode is set it returns its value.
func (p *jsonChecker) str(decode bool) (string, error) {
	p.i++ // '"'
	p.key = p.key[:0]
	for {
		if p.i >= len(p.b) {
			return "", p.fail("unterminated string")
		}
		c := p.b[p.i]
		switch {
		case c == '"':
			p.i++
			return string(p.key), nil
		case c < 0x20:
			return "", p.fail("control character 0x%02X in a string", c)
		case c == '\\':
			if p.i+1 >= len(p.b) {
				return "", p.fail("unterminated escape")
			}
			e := p.b[p.i+1]
			if e != 'u' {
				v, ok := map[byte]byte{'"': '"', '\\': '\\', '/': '/', 'b': '\b', 'f': '\f', 'n': '\n', 'r': '\r', 't': '\t'}[e]
				if !ok {
					return "", p.fail("invalid escape \\%c", e)
				}
				if decode {
					p.key = append(p.key, v)
				}
				p.i += 2
				continue
			}
			if p.i+6 > len(p.b) {
				return "", p.fail("truncated \\u escape")
			}
			r, ok := hex4(p.b[p.i+2 : p.i+6])
			if !ok {
				return "", p.fail("invalid \\u escape")
			}
			p.i += 6
			if utf16.IsSurrogate(r) {
				// A high surrogate must be followed by an escaped low surrogate.
				var r2 rune
				ok := r < 0xDC00 && p.i+6 <= len(p.b) && p.b[p.i] == '\\' && p.b[p.i+1] == 'u'
				if ok {
					r2, ok = hex4(p.b[p.i+2 : p.i+6])
				}
				if ok {
					r = utf16.DecodeRune(r, r2)
					ok = r != utf8.RuneError
				}
				if !ok {
					return "", p.fail("unpaired surrogate escape")
				}
				p.i += 6
			}
			if decode {
				p.key = utf8.AppendRune(p.key, r)
			}
		default:
			if decode {
				p.key = append(p.key, c)
			}
			p.i++
		}
	}
}

func (p *jsonChecker) number() error {
	start := p.i
	digits := func() int {
		n := 0
		for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	if p.b[p.i] == '-' {
		p.i++
	}
	if p.i < len(p.b) && p.b[p.i] == '0' {
		p.i++
	} else if digits() == 0 {
		return p.fail("invalid number")
	}
	exp := false
	if p.i < len(p.b) && p.b[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return p.fail("invalid number")
		}
	}
	if p.i < len(p.b) && (p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		exp = true
		p.i++
		if p.i < len(p.b) && (p.b[p.i] == '+' || p.b[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return p.fail("invalid number")
		}
	}
	// Only an exponent or over 300 digits can leave the binary64 range.
	if exp || p.i-start > 300 {
		if _, err := strconv.ParseFloat(string(p.b[start:p.i]), 64); err != nil {
			return fmt.Errorf("byte %d: number %.40s is outside the binary64 range", start, p.b[start:p.i])
		}
	}
	return nil
}
