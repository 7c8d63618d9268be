package conntrack

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netlinkattr"
)

// statsPayload is an answer to IPCTNL_MSG_CT_GET_STATS_CPU as the kernel
// sends it: nfgenmsg with the CPU in res_id (big endian), then the
// statistics as big-endian u32 attributes.
func statsPayload(cpu uint16, attrs ...[2]uint32) []byte {
	b := []byte{0, 0, byte(cpu >> 8), byte(cpu)}
	for _, a := range attrs {
		b = netlinkattr.AppendBE32(b, uint16(a[0]), a[1])
	}
	return b
}

func TestParseCPUStats(t *testing.T) {
	cpu, err := ParseCPUStats(statsPayload(3, [2]uint32{2, 100}, [2]uint32{10, 7}, [2]uint32{14, 1}, [2]uint32{99, 5}))
	if err != nil {
		t.Fatal(err)
	}
	if cpu.CPU != 3 || cpu.Counters[StatFound] != 100 || cpu.Counters[StatDrop] != 7 || cpu.Counters[StatClashResolve] != 1 {
		t.Errorf("decoded %+v", cpu)
	}
	if !cpu.Present[StatFound] || cpu.Present[StatChainTooLong] {
		t.Errorf("present %v: want found, not chaintoolong (the kernel did not send it)", cpu.Present)
	}
	if _, err := ParseCPUStats([]byte{0, 0}); !errors.Is(err, ErrMalformed) {
		t.Errorf("short payload: %v, want ErrMalformed", err)
	}
	if _, err := ParseCPUStats(append(statsPayload(0), 40, 0, 2, 0)); !errors.Is(err, ErrMalformed) {
		t.Errorf("attribute past the end: %v, want ErrMalformed", err)
	}
}

func TestParseGlobalStats(t *testing.T) {
	entries, limit, err := ParseGlobalStats(statsPayload(0, [2]uint32{1, 196608}, [2]uint32{2, 262144}))
	if err != nil || entries != 196608 || limit != 262144 {
		t.Errorf("entries %d limit %d err %v", entries, limit, err)
	}
}

func TestCheckTable(t *testing.T) {
	dir := t.TempDir()
	if err := CheckTable(dir); !errors.Is(err, source.ErrAbsent) {
		t.Errorf("without nf_conntrack_max: %v, want an error matching source.ErrAbsent", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "sys/net/netfilter"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sys/net/netfilter/nf_conntrack_max"), []byte("262144\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckTable(dir); err != nil {
		t.Errorf("with nf_conntrack_max: %v", err)
	}
}

func FuzzParseCPUStats(f *testing.F) {
	f.Add(statsPayload(1, [2]uint32{2, 100}, [2]uint32{15, 3}))
	f.Add([]byte{0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		cpu, err := ParseCPUStats(b)
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("error does not wrap ErrMalformed: %v", err)
		}
		if err == nil && len(b) < netlinkattr.NfgenLen {
			t.Fatalf("decoded %+v from %d bytes", cpu, len(b))
		}
		_, _, _ = ParseGlobalStats(b)
	})
}
