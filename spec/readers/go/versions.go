package bpz

import (
	"encoding/json"
	"time"
)

// VersionInfo describes one version of an archive (section 16.4).
type VersionInfo struct {
	Number      uint64          // 1, 2, … in the order written (compaction may leave gaps)
	TimeNS      uint64          // when it was written, ns since 1970-01-01 UTC; 0 if unknown (always for a 1.0 file)
	DataStart   uint64          // file offset where the version's bytes begin
	IndexOffset uint64          // its index (the end of its data region)
	IndexLength uint64          // its index's length
	BytesAdded  uint64          // index_offset + index_length + 32 − data_start
	Metadata    json.RawMessage // the version's metadata ("null" if none)
}

// Time is TimeNS as a time.Time, or the zero time when unknown.
func (v VersionInfo) Time() time.Time {
	if v.TimeNS == 0 {
		return time.Time{}
	}
	return time.Unix(0, int64(v.TimeNS)).UTC()
}

// OpenVersion opens version v of the archive at path (0: the latest; k > 0: version
// number k; k < 0: the k-th from the latest), with otherwise default Options.
func OpenVersion(path string, v int64) (*Archive, error) {
	return OpenWith(path, Options{Version: v})
}

// VersionNumber is the number of the version this Archive reads (1 for a 1.0 file).
func (a *Archive) VersionNumber() uint64 { return a.cur.number }

// LatestVersionNumber is the number of the file's latest committed version.
func (a *Archive) LatestVersionNumber() uint64 { return a.versions[len(a.versions)-1].number }

// Versions lists every version in the file, oldest first, with its metadata. It reads
// the head and the metadata section of each version (one version, read on open, for a
// 1.0 file).
func (a *Archive) Versions() ([]VersionInfo, error) {
	out := make([]VersionInfo, len(a.versions))
	for pos, r := range a.versions {
		v, err := a.viewAt(pos)
		if err != nil {
			return nil, err
		}
		m, err := a.viewMetadata(v)
		if err != nil {
			return nil, err
		}
		end, _ := trailerEnd(r.indexOffset, r.indexLength)
		out[pos] = VersionInfo{Number: r.number, TimeNS: r.timeNS, DataStart: r.dataStart,
			IndexOffset: r.indexOffset, IndexLength: r.indexLength, BytesAdded: end - r.dataStart,
			Metadata: append(json.RawMessage(nil), m...)}
	}
	return out, nil
}

// Recovered reports whether the file ends in an unfinished append (section 16.7): a
// writer stopped after its last committed version. The Archive then reads the
// committed versions and ignores the ignoredBytes after them; the file itself is not
// changed (the next append truncates them). ok is false for an intact file.
func (a *Archive) Recovered() (ignoredBytes int64, ok bool) {
	return int64(a.ignored), a.ignored > 0
}
