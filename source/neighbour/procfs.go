package neighbour

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// procTables says where procfs keeps each table: the statistics file under
// net/stat and the sysctl directory of the default parameters.
var procTables = []struct {
	family, name, sysctlDir string
}{
	{FamilyIPv4, "arp_cache", "sys/net/ipv4/neigh/default"},
	{FamilyIPv6, "ndisc_cache", "sys/net/ipv6/neigh/default"},
}

// ReadProcFS reads the neighbour tables from procfs under procfs (normally
// /proc): /proc/net/stat/arp_cache and ndisc_cache, and the gc_thresh1/2/3
// and gc_interval sysctls of net.ipv4.neigh.default and
// net.ipv6.neigh.default. The kernel creates all of them only in the
// initial network namespace (neigh_table_init registers the statistics
// file under init_net; the thresholds are not per namespace), so from
// any other namespace this returns an error wrapping ErrAbsent. A table
// whose statistics file is absent (IPv6 disabled) is left out.
func ReadProcFS(procfs string) ([]Table, error) {
	var tables []Table
	for _, pt := range procTables {
		statPath := filepath.Join(procfs, "net/stat", pt.name)
		b, err := os.ReadFile(statPath)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", statPath, err)
		}
		t := Table{Family: pt.family, Name: pt.name, Source: SourceProcFS}
		if t.Entries, t.Stats, err = ParseProcStat(b); err != nil {
			return nil, fmt.Errorf("%s: %w", statPath, err)
		}
		dir := filepath.Join(procfs, pt.sysctlDir)
		var interval uint64
		for _, v := range []struct {
			name string
			dst  *uint64
		}{{"gc_thresh1", &t.GCThresh1}, {"gc_thresh2", &t.GCThresh2}, {"gc_thresh3", &t.GCThresh3}, {"gc_interval", &interval}} {
			if *v.dst, err = readProcUint(filepath.Join(dir, v.name)); err != nil {
				return nil, err
			}
		}
		t.GCInterval = time.Duration(interval) * time.Second // proc_dointvec_jiffies: seconds
		tables = append(tables, t)
	}
	if len(tables) == 0 {
		return nil, fmt.Errorf("no %s/net/stat/arp_cache or ndisc_cache (not the initial network namespace?): %w", procfs, ErrAbsent)
	}
	return tables, nil
}

func readProcUint(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", path, err)
	}
	v, err := strconv.ParseUint(strings.TrimRight(string(b), "\n"), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %q is not a non-negative integer", ErrMalformed, path, strings.TrimSpace(string(b)))
	}
	return v, nil
}

// procStatColumns maps the column headers of /proc/net/stat/*_cache
// (net/core/neighbour.c, neigh_stat_seq_show) to the counters. Columns
// not listed (unresolved_discards) are ignored; table_fulls is optional
// (older kernels lack it).
var procStatColumns = map[string]func(*Stats) *uint64{
	"allocs":           func(s *Stats) *uint64 { return &s.Allocs },
	"destroys":         func(s *Stats) *uint64 { return &s.Destroys },
	"hash_grows":       func(s *Stats) *uint64 { return &s.HashGrows },
	"res_failed":       func(s *Stats) *uint64 { return &s.ResFailed },
	"lookups":          func(s *Stats) *uint64 { return &s.Lookups },
	"hits":             func(s *Stats) *uint64 { return &s.Hits },
	"rcv_probes_mcast": func(s *Stats) *uint64 { return &s.RcvProbesMcast },
	"rcv_probes_ucast": func(s *Stats) *uint64 { return &s.RcvProbesUcast },
	"periodic_gc_runs": func(s *Stats) *uint64 { return &s.PeriodicGCRuns },
	"forced_gc_runs":   func(s *Stats) *uint64 { return &s.ForcedGCRuns },
	"table_fulls":      func(s *Stats) *uint64 { return &s.TableFulls },
}

// ParseProcStat parses /proc/net/stat/arp_cache or ndisc_cache: a header
// line of column names, then one line per possible CPU of hexadecimal
// values. The kernel prints the table's entry count (global, not per CPU)
// in the entries column of every line; the counters are per CPU and are
// summed.
func ParseProcStat(b []byte) (entries uint64, s Stats, err error) {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	header := strings.Fields(lines[0])
	col := map[string]int{}
	for i, h := range header {
		col[h] = i
	}
	entriesCol, ok := col["entries"]
	if !ok {
		return 0, Stats{}, fmt.Errorf("%w: no entries column in header %q", ErrMalformed, lines[0])
	}
	for name := range procStatColumns {
		if _, ok := col[name]; !ok && name != "table_fulls" {
			return 0, Stats{}, fmt.Errorf("%w: no %s column in header %q", ErrMalformed, name, lines[0])
		}
	}
	_, s.HasTableFulls = col["table_fulls"]
	if len(lines) < 2 {
		return 0, Stats{}, fmt.Errorf("%w: no CPU lines", ErrMalformed)
	}
	for i, line := range lines[1:] {
		fields := strings.Fields(line)
		if len(fields) != len(header) {
			return 0, Stats{}, fmt.Errorf("%w: line %d has %d fields, the header %d", ErrMalformed, i+2, len(fields), len(header))
		}
		for j, f := range fields {
			v, err := strconv.ParseUint(f, 16, 64)
			if err != nil {
				return 0, Stats{}, fmt.Errorf("%w: line %d column %s: %q is not hexadecimal", ErrMalformed, i+2, header[j], f)
			}
			if j == entriesCol {
				if i == 0 {
					entries = v
				}
				continue
			}
			if dst, ok := procStatColumns[header[j]]; ok {
				*dst(&s) += v
			}
		}
	}
	return entries, s, nil
}
