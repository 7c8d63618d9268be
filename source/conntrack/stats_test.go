package conntrack

import (
	"errors"
	"strings"
	"testing"
)

// Layouts of /proc/net/stat/nf_conntrack as printed by real kernels.
const (
	// 4.19: "searched" and "delete_list" still printed, no clash/chain columns.
	procStatKernel419 = `entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
0000003a  00000000 0000d2f1 00000000 00000011 0001c2a0 00000000 00000000 00000000 00000000 00000000 00000000 00000002  00000000 00000000 00000000 00000001
0000003a  00000000 0000a0b0 00000000 00000004 00011111 00000000 00000000 00000000 00000001 00000003 00000000 00000000  00000000 00000000 00000000 00000000
`
	// 5.10: "clashres" replaced "searched".
	procStatKernel510 = `entries  clashres found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000100  00000005 00000010 00000000 00000001 00000000 00000000 00000000 00000000 00000002 00000000 00000004 00000000  00000000 00000000 00000000 00000000
`
	// 6.18 (this machine): "chainlength" replaced "delete_list".
	procStatKernel618 = `entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00040000  00000001 00000002 00000000 00000003 00000000 00000000 00000007 00000000 00000004 000000ff 00000010 00000005  00000000 00000000 00000000 00000006
00040000  00000001 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000001 00000000 00000000  00000000 00000000 00000000 00000000
`
)

func TestParseProcConntrackStat(t *testing.T) {
	type want struct {
		cpus    int
		sums    map[Stat]uint64
		missing []Stat
	}
	tests := []struct {
		name  string
		input string
		want  want
	}{
		{
			name:  "kernel 4.19 layout",
			input: procStatKernel419,
			want: want{
				cpus: 2,
				sums: map[Stat]uint64{
					StatFound: 0xd2f1 + 0xa0b0, StatInvalid: 0x11 + 0x4, StatInsertFailed: 1,
					StatDrop: 3, StatError: 2, StatSearchRestart: 1,
				},
				missing: []Stat{StatClashResolve, StatChainTooLong},
			},
		},
		{
			name:  "kernel 5.10 layout",
			input: procStatKernel510,
			want: want{
				cpus:    1,
				sums:    map[Stat]uint64{StatClashResolve: 5, StatFound: 0x10, StatInvalid: 1, StatInsertFailed: 2, StatEarlyDrop: 4},
				missing: []Stat{StatChainTooLong},
			},
		},
		{
			name:  "kernel 6.18 layout, entries column not summed",
			input: procStatKernel618,
			want: want{
				cpus: 2,
				sums: map[Stat]uint64{
					StatClashResolve: 2, StatFound: 2, StatInvalid: 3, StatChainTooLong: 7,
					StatInsertFailed: 4, StatDrop: 0x100, StatEarlyDrop: 0x10, StatError: 5, StatSearchRestart: 6,
				},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cpus, err := ParseProcStat(strings.NewReader(tt.input))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if len(cpus) != tt.want.cpus {
				t.Fatalf("got %d CPU lines, want %d", len(cpus), tt.want.cpus)
			}
			for i, c := range cpus {
				if c.CPU != i {
					t.Errorf("line %d has CPU %d", i, c.CPU)
				}
			}
			for s := range NumStats {
				var sum uint64
				present := false
				for _, c := range cpus {
					sum += c.Counters[s]
					present = present || c.Present[s]
				}
				if sum != tt.want.sums[s] {
					t.Errorf("%s: got %d, want %d", s, sum, tt.want.sums[s])
				}
				isMissing := false
				for _, m := range tt.want.missing {
					isMissing = isMissing || m == s
				}
				if present == isMissing {
					t.Errorf("%s: present=%v, want %v", s, present, !isMissing)
				}
			}
		})
	}
}

func TestParseProcConntrackStatRejectsMalformedInput(t *testing.T) {
	tests := map[string]string{
		"empty":              "",
		"blank header":       "   \n00000001\n",
		"no known columns":   "foo bar\n1 2\n",
		"no CPU lines":       "entries found\n",
		"short line":         "entries found drop\n00000001 00000002\n",
		"not hexadecimal":    "entries found\n00000001 zz\n",
		"value out of range": "entries found\n1 1ffffffffffffffffff\n",
	}
	for name, input := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := ParseProcStat(strings.NewReader(input))
			if !errors.Is(err, ErrMalformedStat) {
				t.Fatalf("got error %v, want ErrMalformedStat", err)
			}
		})
	}
}

func FuzzParseProcConntrackStat(f *testing.F) {
	for _, seed := range []string{procStatKernel419, procStatKernel510, procStatKernel618, "", "entries found\n1 2\n"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		cpus, err := ParseProcStat(strings.NewReader(input))
		if err != nil {
			if !errors.Is(err, ErrMalformedStat) {
				t.Fatalf("error does not wrap ErrMalformedStat: %v", err)
			}
			return
		}
		if len(cpus) == 0 {
			t.Fatal("no error and no CPU lines")
		}
	})
}
