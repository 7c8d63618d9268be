package collector

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/netinspect/netinspect/source/conntrack"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// TestConntrackSettingsMatchSysctlInANamespace changes the namespace's own
// conntrack timeouts and TCP flags and checks every settings series
// against `sysctl` run in that namespace (nf_conntrack_buckets is the
// host's there, read-only).
func TestConntrackSettingsMatchSysctlInANamespace(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "sysctl")
	ns := netns.New(t, "ct-settings")
	changed := map[string]string{
		"nf_conntrack_tcp_timeout_established": "7200",
		"nf_conntrack_tcp_timeout_time_wait":   "61",
		"nf_conntrack_tcp_timeout_close_wait":  "3601",
		"nf_conntrack_tcp_timeout_syn_sent":    "17",
		"nf_conntrack_udp_timeout":             "11",
		"nf_conntrack_udp_timeout_stream":      "99",
		"nf_conntrack_tcp_loose":               "0",
		"nf_conntrack_tcp_be_liberal":          "1",
		"nf_conntrack_timestamp":               "1",
	}
	for k, v := range changed {
		ns.SetSysctl("net.netfilter."+k, v)
	}
	c := in(must(NewConntrack(ConntrackConfig{}, Deps{Logger: zap.NewNop(), Paths: Paths{ProcFS: "/proc"}}))(t), ns)
	got := gather(t, c)

	sysctl := func(name string) float64 {
		t.Helper()
		v, err := strconv.ParseFloat(strings.TrimSpace(ns.MustRun("sysctl", "-n", "net.netfilter."+name)), 64)
		if err != nil {
			t.Fatalf("sysctl -n net.netfilter.%s: %v", name, err)
		}
		return v
	}
	want := map[string]float64{
		"netinspect_conntrack_buckets":        sysctl("nf_conntrack_buckets"),
		"netinspect_conntrack_tcp_loose":      sysctl("nf_conntrack_tcp_loose"),
		"netinspect_conntrack_tcp_be_liberal": sysctl("nf_conntrack_tcp_be_liberal"),
		"netinspect_conntrack_timestamp":      sysctl("nf_conntrack_timestamp"),
	}
	for _, s := range conntrack.SettingsTimeoutSysctls {
		if _, err := os.Stat(filepath.Join("/proc/sys/net/netfilter", s.Sysctl)); err != nil && s.Optional {
			continue // not in this kernel
		}
		want[fmt.Sprintf("netinspect_conntrack_timeout_seconds{protocol=%q,state=%q}", s.Protocol, s.State)] = sysctl(s.Sysctl)
	}
	compareSeries(t, got, want, "netinspect_conntrack_buckets", "netinspect_conntrack_timeout_seconds",
		"netinspect_conntrack_tcp_", "netinspect_conntrack_timestamp")
	// The changed values are the namespace's own, not the host's.
	for k, series := range map[string]string{
		"nf_conntrack_tcp_timeout_established": `netinspect_conntrack_timeout_seconds{protocol="tcp",state="established"}`,
		"nf_conntrack_udp_timeout_stream":      `netinspect_conntrack_timeout_seconds{protocol="udp",state="stream"}`,
		"nf_conntrack_tcp_be_liberal":          "netinspect_conntrack_tcp_be_liberal",
	} {
		if v, _ := strconv.ParseFloat(changed[k], 64); got[series] != v {
			t.Errorf("%s = %v, want the namespace's %s", series, got[series], changed[k])
		}
	}
}

// TestConntrackSettingsBadInput: a procfs without nf_conntrack_buckets and
// with an unreadable sysctl keeps the collector succeeding with the
// entries and the sysctls it could read, logs the problem once at debug
// level, and leaves out only the series it could not read.
func TestConntrackSettingsBadInput(t *testing.T) {
	testenv.RequireRoot(t)
	ns := netns.New(t, "ct-badproc")
	root := t.TempDir()
	dir := filepath.Join(root, conntrack.SettingsDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range map[string]string{
		"nf_conntrack_max":                     "262144",
		"nf_conntrack_tcp_timeout_established": "432000",
		"nf_conntrack_udp_timeout":             "30",
		"nf_conntrack_tcp_be_liberal":          "not a number",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A sysctl that cannot be read (a directory where the file should be).
	if err := os.Mkdir(filepath.Join(dir, "nf_conntrack_tcp_loose"), 0o755); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	c := in(must(NewConntrack(ConntrackConfig{}, Deps{Logger: zap.New(core), Paths: Paths{ProcFS: root}}))(t), ns)
	for range 3 {
		got := gather(t, c) // fails the test unless the collector succeeded
		compareSeries(t, got, map[string]float64{
			`netinspect_conntrack_timeout_seconds{protocol="tcp",state="established"}`: 432000,
			`netinspect_conntrack_timeout_seconds{protocol="udp",state="unreplied"}`:   30,
		}, "netinspect_conntrack_buckets", "netinspect_conntrack_timeout_seconds", "netinspect_conntrack_tcp_", "netinspect_conntrack_timestamp")
		if _, ok := got["netinspect_conntrack_entries"]; !ok {
			t.Fatal("netinspect_conntrack_entries missing")
		}
	}
	entries := logs.FilterMessageSnippet("conntrack sysctls").All()
	if len(entries) != 1 || entries[0].Level != zapcore.DebugLevel {
		t.Fatalf("%d log entries about the sysctls, want one at debug level: %v", len(entries), entries)
	}
	msg := fmt.Sprint(entries[0].ContextMap()["error"])
	for _, want := range []string{"nf_conntrack_buckets", "nf_conntrack_tcp_loose", "nf_conntrack_tcp_be_liberal"} {
		if !strings.Contains(msg, want) {
			t.Errorf("log %q does not name %s", msg, want)
		}
	}
}
