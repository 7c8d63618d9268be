package conntrack

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// settingsFS returns a sysctl directory holding every sysctl the reader
// knows, each with a distinct value (its index + 100), then with the
// changes applied (a value of "" removes the file).
func settingsFS(changes map[string]string) fstest.MapFS {
	fsys := fstest.MapFS{}
	names := []string{sysctlBuckets, sysctlMax, sysctlTCPLoose, sysctlTCPBeLiberal, sysctlTimestamp}
	for _, t := range SettingsTimeoutSysctls {
		names = append(names, t.Sysctl)
	}
	for i, n := range names {
		fsys[n] = &fstest.MapFile{Data: []byte(strconv.Itoa(100+i) + "\n")}
	}
	for n, v := range changes {
		if v == "" {
			delete(fsys, n)
			continue
		}
		fsys[n] = &fstest.MapFile{Data: []byte(v)}
	}
	return fsys
}

func TestSettingsParseAKernelWithEverything(t *testing.T) {
	s, err := ParseSettings(settingsFS(map[string]string{
		sysctlBuckets: "65536\n", sysctlMax: "262144\n", sysctlTCPLoose: "1\n", sysctlTCPBeLiberal: "0\n", sysctlTimestamp: "0\n",
		"nf_conntrack_tcp_timeout_established": "432000\n", "nf_conntrack_udp_timeout_stream": "120\n",
	}), "/proc/sys/net/netfilter")
	if err != nil {
		t.Fatal(err)
	}
	want := Settings{
		Buckets: SettingsUint{65536, true}, Max: SettingsUint{262144, true},
		TCPLoose: SettingsBool{true, true}, TCPBeLiberal: SettingsBool{false, true}, Timestamp: SettingsBool{false, true},
	}
	if s.Buckets != want.Buckets || s.Max != want.Max || s.TCPLoose != want.TCPLoose || s.TCPBeLiberal != want.TCPBeLiberal || s.Timestamp != want.Timestamp {
		t.Errorf("got %+v, want %+v", s, want)
	}
	if len(s.Timeouts) != len(SettingsTimeoutSysctls) {
		t.Fatalf("%d timeouts, want %d", len(s.Timeouts), len(SettingsTimeoutSysctls))
	}
	for i, tt := range s.Timeouts {
		ks := SettingsTimeoutSysctls[i]
		if tt.Protocol != ks.Protocol || tt.State != ks.State || tt.Sysctl != ks.Sysctl {
			t.Errorf("timeout %d is %+v, want the one of %+v", i, tt, ks)
		}
	}
	for _, c := range []struct {
		protocol, state string
		want            time.Duration
	}{
		{"tcp", "established", 432000 * time.Second},
		{"udp", "stream", 120 * time.Second},
	} {
		if got, ok := s.Timeout(c.protocol, c.state); !ok || got != c.want {
			t.Errorf("Timeout(%s, %s) = %v, %v; want %v", c.protocol, c.state, got, ok, c.want)
		}
	}
}

func TestSettingsWithoutOptionalSysctlsAreComplete(t *testing.T) {
	changes := map[string]string{sysctlTimestamp: ""}
	for _, ks := range SettingsTimeoutSysctls {
		if ks.Optional {
			changes[ks.Sysctl] = ""
		}
	}
	s, err := ParseSettings(settingsFS(changes), "d")
	if err != nil {
		t.Fatalf("a kernel without SCTP, GRE and timestamps: %v", err)
	}
	if s.Timestamp.OK {
		t.Error("timestamp read although absent")
	}
	if _, ok := s.Timeout("sctp", "established"); ok {
		t.Error("sctp timeout read although absent")
	}
	if _, ok := s.Timeout("tcp", "established"); !ok {
		t.Error("tcp established not read")
	}
}

func TestSettingsMissingSysctlsGivePartialResults(t *testing.T) {
	s, err := ParseSettings(settingsFS(map[string]string{
		sysctlBuckets: "", "nf_conntrack_udp_timeout_stream": "", sysctlMax: "131072\n",
	}), "/p/sys/net/netfilter")
	if !errors.Is(err, ErrSettingsIncomplete) || errors.Is(err, ErrSettingsAbsent) {
		t.Fatalf("err = %v, want ErrSettingsIncomplete only", err)
	}
	var me *SettingsMissingError
	if !errors.As(err, &me) || strings.Join(me.Missing, ",") != "nf_conntrack_buckets,nf_conntrack_udp_timeout_stream" {
		t.Fatalf("missing = %+v", me)
	}
	if !strings.Contains(err.Error(), "/p/sys/net/netfilter") {
		t.Errorf("error %q does not say where", err)
	}
	if s.Buckets.OK || !s.Max.OK || s.Max.Value != 131072 {
		t.Errorf("buckets %+v, max %+v", s.Buckets, s.Max)
	}
	if _, ok := s.Timeout("udp", "stream"); ok {
		t.Error("udp stream read although absent")
	}
	if _, ok := s.Timeout("udp", "unreplied"); !ok {
		t.Error("udp unreplied not read")
	}
}

func TestSettingsWithoutConntrackAreAbsent(t *testing.T) {
	for name, fsys := range map[string]fstest.MapFS{
		"empty directory": {},
		"other sysctls":   {"nf_log_all_netns": &fstest.MapFile{Data: []byte("0\n")}},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := ParseSettings(fsys, "d")
			if !errors.Is(err, ErrSettingsAbsent) || errors.Is(err, ErrSettingsIncomplete) {
				t.Fatalf("err = %v, want ErrSettingsAbsent only", err)
			}
			if s.Max.OK || len(s.Timeouts) != 0 {
				t.Errorf("got values from nothing: %+v", s)
			}
		})
	}
	// A procfs root without the directory at all, through the file system.
	if _, err := ReadSettings(t.TempDir()); !errors.Is(err, ErrSettingsAbsent) {
		t.Errorf("ReadSettings of an empty root: %v, want ErrSettingsAbsent", err)
	}
}

func TestSettingsMalformedValuesAreErrorsAndTheRestIsRead(t *testing.T) {
	s, err := ParseSettings(settingsFS(map[string]string{
		sysctlMax:                              "lots\n",
		"nf_conntrack_tcp_timeout_time_wait":   "-1\n",
		"nf_conntrack_tcp_timeout_close_wait":  "60\n",
		"nf_conntrack_tcp_timeout_established": "\n",
	}), "d")
	if !errors.Is(err, ErrSettingsMalformed) || errors.Is(err, ErrSettingsIncomplete) {
		t.Fatalf("err = %v, want ErrSettingsMalformed", err)
	}
	for _, name := range []string{sysctlMax, "time_wait", "established"} {
		if !strings.Contains(err.Error(), name) {
			t.Errorf("error %q does not name %s", err, name)
		}
	}
	if s.Max.OK {
		t.Error("malformed max reported as read")
	}
	if _, ok := s.Timeout("tcp", "time_wait"); ok {
		t.Error("malformed time_wait reported as read")
	}
	if got, ok := s.Timeout("tcp", "close_wait"); !ok || got != time.Minute {
		t.Errorf("close_wait = %v, %v", got, ok)
	}
}

func TestSettingsUnreadableSysctlIsAnErrorAndTheRestIsRead(t *testing.T) {
	fsys := settingsFS(nil)
	// A directory where the file should be: reading fails, but not with
	// ErrNotExist (what EACCES or EIO would look like).
	fsys["nf_conntrack_buckets/x"] = &fstest.MapFile{Data: []byte("1")}
	delete(fsys, sysctlBuckets)
	s, err := ParseSettings(fsys, "d")
	if err == nil || errors.Is(err, ErrSettingsIncomplete) || errors.Is(err, ErrSettingsAbsent) || !strings.Contains(err.Error(), "read d/nf_conntrack_buckets") {
		t.Fatalf("err = %v, want a read error naming the file", err)
	}
	if s.Buckets.OK || !s.Max.OK || len(s.Timeouts) != len(SettingsTimeoutSysctls) {
		t.Errorf("got %+v", s)
	}
}

func TestParseSysctlValue(t *testing.T) {
	for _, c := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"262144\n", 262144, true},
		{"0\n", 0, true},
		{"30", 30, true},
		{"007\n", 7, true},
		{"", 0, false},
		{"\n", 0, false},
		{"-1\n", 0, false},
		{"+5\n", 0, false},
		{"1 2\n", 0, false},
		{" 5\n", 0, false},
		{"5\n\n", 5, true},
		{"0x10\n", 0, false},
		{"18446744073709551615\n", 0, false}, // fits uint64, not a Duration in seconds
		{"99999999999999999999999\n", 0, false},
	} {
		got, err := ParseSysctlValue([]byte(c.in))
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseSysctlValue(%q) = %d, %v; want %d, ok=%v", c.in, got, err, c.want, c.ok)
		}
		if err != nil && !errors.Is(err, ErrSettingsMalformed) {
			t.Errorf("ParseSysctlValue(%q): %v does not wrap ErrSettingsMalformed", c.in, err)
		}
	}
}

func FuzzParseSysctlValue(f *testing.F) {
	for _, s := range []string{"262144\n", "0\n", "-1\n", "", "9223372036\n", "1e9\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseSysctlValue(b)
		if err != nil {
			if !errors.Is(err, ErrSettingsMalformed) {
				t.Fatalf("error %v does not wrap ErrSettingsMalformed", err)
			}
			return
		}
		if v > sysctlMaxSeconds {
			t.Fatalf("accepted %d, above the bound", v)
		}
		if d := time.Duration(v) * time.Second; d < 0 {
			t.Fatalf("%d seconds overflow a Duration", v)
		}
		if again, err := ParseSysctlValue([]byte(strconv.FormatUint(v, 10) + "\n")); err != nil || again != v {
			t.Fatalf("%d does not round-trip: %d, %v", v, again, err)
		}
	})
}

// FuzzParseSettings feeds arbitrary contents to three sysctls: each is
// reported exactly when ParseSysctlValue accepts it, with its value, and
// the other sysctls are read regardless.
func FuzzParseSettings(f *testing.F) {
	f.Add([]byte("65536\n"), []byte("262144\n"), []byte("432000\n"))
	f.Add([]byte(""), []byte("x"), []byte("-3"))
	f.Fuzz(func(t *testing.T, buckets, max, established []byte) {
		fsys := settingsFS(nil)
		fsys[sysctlBuckets] = &fstest.MapFile{Data: buckets}
		fsys[sysctlMax] = &fstest.MapFile{Data: max}
		fsys["nf_conntrack_tcp_timeout_established"] = &fstest.MapFile{Data: established}
		s, err := ParseSettings(fsys, "d")
		if err != nil && !errors.Is(err, ErrSettingsMalformed) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		malformed := false
		for _, c := range []struct {
			name string
			in   []byte
			got  SettingsUint
		}{
			{"buckets", buckets, s.Buckets},
			{"max", max, s.Max},
			{"established", established, func() SettingsUint {
				d, ok := s.Timeout("tcp", "established")
				return SettingsUint{uint64(d / time.Second), ok}
			}()},
		} {
			v, perr := ParseSysctlValue(c.in)
			malformed = malformed || perr != nil
			if want := (SettingsUint{v, perr == nil}); c.got != want {
				t.Fatalf("%s = %+v from %q, want %+v", c.name, c.got, c.in, want)
			}
		}
		if malformed != (err != nil) {
			t.Fatalf("malformed input %v, error %v", malformed, err)
		}
		if d, ok := s.Timeout("tcp", "time_wait"); !ok || d <= 0 {
			t.Fatal("an untouched sysctl was not read")
		}
	})
}

// settingsSysctlTool lists net.netfilter.* as the sysctl tool prints them
// inside ns: the ground truth.
func settingsSysctlTool(t *testing.T, ns *netns.NS) map[string]uint64 {
	t.Helper()
	out := ns.MustRun("sysctl", "net.netfilter")
	m := map[string]uint64{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, " = ")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			continue // nf_log entries are names
		}
		m[strings.TrimPrefix(k, "net.netfilter.")] = n
	}
	if len(m) == 0 {
		t.Fatalf("sysctl net.netfilter printed nothing numeric: %q", out)
	}
	return m
}

// TestSettingsMatchSysctlInANamespace changes timeouts and the TCP flags in
// a test namespace with `sysctl -w` and reads them from a thread inside
// it: every value equals what `sysctl` prints there, the changed ones are
// the namespace's own (the host keeps its values), and nf_conntrack_max and
// nf_conntrack_buckets are the host's (read-only in a namespace).
func TestSettingsMatchSysctlInANamespace(t *testing.T) {
	testenv.RequireCommand(t, "sysctl")
	host, err := ReadSettings("/proc")
	testenv.Require(t, !errors.Is(err, ErrSettingsAbsent), "nf_conntrack loaded (no conntrack sysctls on this host)")
	if err != nil {
		t.Fatalf("host settings: %v", err)
	}
	ns := netns.New(t, "ctset")
	changed := map[string]uint64{
		"nf_conntrack_tcp_timeout_established": 1234,
		"nf_conntrack_tcp_timeout_time_wait":   77,
		"nf_conntrack_tcp_timeout_close_wait":  88,
		"nf_conntrack_tcp_timeout_syn_sent":    99,
		"nf_conntrack_udp_timeout":             45,
		"nf_conntrack_udp_timeout_stream":      190,
		"nf_conntrack_icmp_timeout":            12,
		"nf_conntrack_generic_timeout":         321,
		sysctlTCPLoose:                         1 - settingsBoolUint(host.TCPLoose.Value),
		sysctlTCPBeLiberal:                     1 - settingsBoolUint(host.TCPBeLiberal.Value),
	}
	if _, ok := host.Timeout("sctp", "established"); ok {
		changed["nf_conntrack_sctp_timeout_established"] = 4321
	}
	for name, v := range changed {
		ns.SetSysctl("net.netfilter."+name, strconv.FormatUint(v, 10))
	}

	var s Settings
	if err := ns.Do(func() error {
		var err error
		s, err = ReadSettings("/proc")
		return err
	}); err != nil {
		t.Fatalf("read settings in %s: %v", ns.Name, err)
	}
	truth := settingsSysctlTool(t, ns)

	check := func(name string, got uint64, ok bool) {
		t.Helper()
		want, present := truth[name]
		switch {
		case ok != present:
			t.Errorf("%s: read=%v, sysctl lists it=%v", name, ok, present)
		case ok && got != want:
			t.Errorf("%s = %d, sysctl says %d", name, got, want)
		}
		if c, isChanged := changed[name]; isChanged && got != c {
			t.Errorf("%s = %d, set to %d in the namespace", name, got, c)
		}
	}
	check(sysctlBuckets, s.Buckets.Value, s.Buckets.OK)
	check(sysctlMax, s.Max.Value, s.Max.OK)
	check(sysctlTCPLoose, settingsBoolUint(s.TCPLoose.Value), s.TCPLoose.OK)
	check(sysctlTCPBeLiberal, settingsBoolUint(s.TCPBeLiberal.Value), s.TCPBeLiberal.OK)
	check(sysctlTimestamp, settingsBoolUint(s.Timestamp.Value), s.Timestamp.OK)
	for _, ks := range SettingsTimeoutSysctls {
		d, ok := s.Timeout(ks.Protocol, ks.State)
		check(ks.Sysctl, uint64(d/time.Second), ok)
	}
	if s.Max != host.Max || s.Buckets != host.Buckets {
		t.Errorf("namespace max %+v buckets %+v, host %+v %+v: a namespace shows the host's", s.Max, s.Buckets, host.Max, host.Buckets)
	}

	// The host kept its own values.
	after, err := ReadSettings("/proc")
	if err != nil {
		t.Fatal(err)
	}
	hostEst, _ := host.Timeout("tcp", "established")
	if est, _ := after.Timeout("tcp", "established"); est != hostEst {
		t.Errorf("the host's tcp established timeout changed during the test: %v, then %v", hostEst, est)
	}
}

func settingsBoolUint(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// BenchmarkReadSettings is what a scrape pays for the settings: one read
// of each sysctl, against the baseline of reading nf_conntrack_max alone
// (what the conntrack collector already does) in the same run.
func BenchmarkReadSettings(b *testing.B) {
	if _, err := ReadSettings("/proc"); errors.Is(err, ErrSettingsAbsent) {
		testenv.Require(b, false, "nf_conntrack loaded")
	}
	b.Run("settings", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ReadSettings("/proc"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("baseline-max-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_max"); err != nil {
				b.Fatal(err)
			}
		}
	})
}
