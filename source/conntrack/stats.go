package conntrack

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Stat names one per-CPU conntrack statistic, in the contract's spelling
// (netinspect_conntrack_stat_<name>_total).
type Stat int

// The conntrack statistics netinspect exports.
const (
	StatFound Stat = iota
	StatInvalid
	StatInsert
	StatInsertFailed
	StatDrop
	StatEarlyDrop
	StatError
	StatSearchRestart
	StatClashResolve
	StatChainTooLong
	// NumStats is the number of statistics.
	NumStats
)

var statNames = [NumStats]string{
	StatFound:         "found",
	StatInvalid:       "invalid",
	StatInsert:        "insert",
	StatInsertFailed:  "insert_failed",
	StatDrop:          "drop",
	StatEarlyDrop:     "early_drop",
	StatError:         "error",
	StatSearchRestart: "search_restart",
	StatClashResolve:  "clash_resolve",
	StatChainTooLong:  "chaintoolong",
}

// String returns the statistic's name as used in metric names.
func (s Stat) String() string { return statNames[s] }

// CPUStats are the statistics of one CPU.
type CPUStats struct {
	CPU int
	// Counters holds each statistic; Present says which ones the kernel
	// reported (older kernels lack clash_resolve and chaintoolong).
	Counters [NumStats]uint64
	Present  [NumStats]bool
}

// procStatColumns maps the column headers of /proc/net/stat/nf_conntrack to
// statistics. The kernel prints the "error" counter as icmp_error, and
// clash_resolve and chaintoolong as clashres and chainlength
// (net/netfilter/nf_conntrack_standalone.c, ct_cpu_seq_show). Columns not
// listed (entries, searched, new, ignore, delete, delete_list, expect_*) are
// not exported: "entries" repeats the global count on every CPU line, the
// others are no longer updated by the kernel.
var procStatColumns = map[string]Stat{
	"found":          StatFound,
	"invalid":        StatInvalid,
	"insert":         StatInsert,
	"insert_failed":  StatInsertFailed,
	"drop":           StatDrop,
	"early_drop":     StatEarlyDrop,
	"icmp_error":     StatError,
	"error":          StatError,
	"search_restart": StatSearchRestart,
	"clashres":       StatClashResolve,
	"clash_resolve":  StatClashResolve,
	"chainlength":    StatChainTooLong,
	"chaintoolong":   StatChainTooLong,
}

// ErrMalformedStat is wrapped by ParseProcStat on input it cannot read.
var ErrMalformedStat = errors.New("malformed nf_conntrack stat file")

// ParseProcStat parses /proc/net/stat/nf_conntrack: a header line of
// column names, then one line of hexadecimal values per possible CPU, in CPU
// order. Columns are found by name, not position, since kernels renamed and
// reordered them over time.
func ParseProcStat(r io.Reader) ([]CPUStats, error) {
	sc := bufio.NewScanner(r)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read header: %w", err)
		}
		return nil, fmt.Errorf("%w: empty", ErrMalformedStat)
	}
	header := strings.Fields(sc.Text())
	if len(header) == 0 {
		return nil, fmt.Errorf("%w: empty header line", ErrMalformedStat)
	}
	cols := make([]Stat, len(header))
	known := false
	for i, name := range header {
		stat, ok := procStatColumns[name]
		if !ok {
			cols[i] = -1
			continue
		}
		cols[i] = stat
		known = true
	}
	if !known {
		return nil, fmt.Errorf("%w: no known column in header %q", ErrMalformedStat, sc.Text())
	}

	var out []CPUStats
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != len(header) {
			return nil, fmt.Errorf("%w: line %d has %d values, header has %d", ErrMalformedStat, len(out)+2, len(fields), len(header))
		}
		cpu := CPUStats{CPU: len(out)}
		for i, f := range fields {
			if cols[i] < 0 {
				continue
			}
			v, err := strconv.ParseUint(f, 16, 64)
			if err != nil {
				return nil, fmt.Errorf("%w: column %s of line %d: %v", ErrMalformedStat, header[i], len(out)+2, err)
			}
			cpu.Counters[cols[i]] = v
			cpu.Present[cols[i]] = true
		}
		out = append(out, cpu)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read stat lines: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no CPU lines", ErrMalformedStat)
	}
	return out, nil
}
