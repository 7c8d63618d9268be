package neighbour

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// procStatSample is /proc/net/stat/arp_cache of a 2-CPU machine (Linux
// 6.18): the entries column repeats the global count on every line.
const procStatSample = `entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs unresolved_discards table_fulls
00000002 00000002 00000000 00000000   00000000 00000000 00000000   00000000         00000000         00000014         00000000       00000000            00000001
00000002 00000010 00000003 00000001   00000008 00000004 00000000   00000000         00000000         00000000         00000002       00000007            00000000
`

func TestParseProcStatSumsCPUsAndKeepsTheGlobalCount(t *testing.T) {
	entries, s, err := ParseProcStat([]byte(procStatSample))
	if err != nil {
		t.Fatal(err)
	}
	want := Stats{Allocs: 0x12, Destroys: 3, HashGrows: 1, Lookups: 8, Hits: 4, PeriodicGCRuns: 0x14, ForcedGCRuns: 2,
		TableFulls: 1, HasTableFulls: true}
	if entries != 2 || s != want {
		t.Errorf("entries %d stats %+v, want 2 %+v", entries, s, want)
	}
}

func TestParseProcStatWithoutTableFulls(t *testing.T) {
	in := `entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs
0000000a 00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000
`
	entries, s, err := ParseProcStat([]byte(in))
	if err != nil || entries != 10 || s.HasTableFulls || s.Allocs != 1 {
		t.Errorf("entries %d stats %+v err %v", entries, s, err)
	}
}

func TestParseProcStatRejectsMalformedInput(t *testing.T) {
	header, rows, _ := strings.Cut(procStatSample, "\n")
	for name, in := range map[string]string{
		"empty":              "",
		"header only":        header + "\n",
		"no entries column":  strings.Replace(procStatSample, "entries ", "entriez ", 1),
		"no allocs column":   strings.Replace(procStatSample, "allocs ", "alloc ", 1),
		"not hexadecimal":    header + "\n" + strings.Replace(rows, "00000014", "0000001g", 1),
		"a missing field":    header + "\n00000002 00000002\n",
		"a field too many":   header + "\n" + strings.Replace(rows, "\n", " 0\n", 1),
		"a negative counter": header + "\n" + strings.Replace(rows, "00000014", "-0000014", 1),
	} {
		if _, _, err := ParseProcStat([]byte(in)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzParseProcStat(f *testing.F) {
	f.Add([]byte(procStatSample))
	f.Add([]byte("entries allocs\n1 2\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		entries, s, err := ParseProcStat(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if entries != 0 || s != (Stats{}) {
				t.Fatalf("an error with values: %d %+v", entries, s)
			}
		}
	})
}

// procRoot writes a procfs root holding the given files.
func procRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestReadProcFSReadsStatisticsAndThresholds(t *testing.T) {
	root := procRoot(t, map[string]string{
		"net/stat/arp_cache":                      procStatSample,
		"sys/net/ipv4/neigh/default/gc_thresh1":   "128\n",
		"sys/net/ipv4/neigh/default/gc_thresh2":   "512\n",
		"sys/net/ipv4/neigh/default/gc_thresh3":   "1024\n",
		"sys/net/ipv4/neigh/default/gc_interval":  "30\n",
		"sys/net/ipv6/neigh/default/gc_thresh1":   "1\n", // IPv6 sysctls without its statistics file: left out
		"sys/net/ipv6/neigh/default/gc_interval":  "30\n",
		"sys/net/ipv4/neigh/default/unres_qlen":   "101\n",
		"sys/net/ipv4/neigh/eth0/base_reachable_": "x\n",
	})
	tables, err := ReadProcFS(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(tables) != 1 {
		t.Fatalf("tables %+v, want arp_cache only", tables)
	}
	got := tables[0]
	if got.Family != FamilyIPv4 || got.Name != "arp_cache" || got.Source != SourceProcFS || got.Entries != 2 ||
		got.GCThresh1 != 128 || got.GCThresh2 != 512 || got.GCThresh3 != 1024 || got.GCInterval != 30*time.Second || got.Stats.Allocs != 0x12 {
		t.Errorf("got %+v", got)
	}
}

func TestReadProcFSErrors(t *testing.T) {
	if _, err := ReadProcFS(procRoot(t, nil)); !errors.Is(err, ErrAbsent) {
		t.Errorf("empty root: %v, want ErrAbsent", err)
	}
	// Statistics without thresholds, or a threshold that is not a number:
	// an error that names the file, never made-up thresholds.
	for name, files := range map[string]map[string]string{
		"no thresholds": {"net/stat/arp_cache": procStatSample},
		"bad threshold": {
			"net/stat/arp_cache":                     procStatSample,
			"sys/net/ipv4/neigh/default/gc_thresh1":  "128\n",
			"sys/net/ipv4/neigh/default/gc_thresh2":  "lots\n",
			"sys/net/ipv4/neigh/default/gc_thresh3":  "1024\n",
			"sys/net/ipv4/neigh/default/gc_interval": "30\n",
		},
		"bad statistics": {"net/stat/arp_cache": "entries\nzz\n"},
	} {
		_, err := ReadProcFS(procRoot(t, files))
		if err == nil || errors.Is(err, ErrAbsent) {
			t.Errorf("%s: err = %v", name, err)
		}
		if err != nil && !strings.Contains(err.Error(), "arp_cache") && !strings.Contains(err.Error(), "gc_thresh") {
			t.Errorf("%s: %v names no file", name, err)
		}
	}
}
