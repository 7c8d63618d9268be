package conntrack

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/netinspect/netinspect/source/netns"
)

// SettingsDir is where the conntrack sysctls live under a procfs root.
const SettingsDir = "sys/net/netfilter"

// Errors of ReadSettings and ParseSettings, checkable with errors.Is.
var (
	// ErrSettingsAbsent: none of the conntrack sysctls exists (nf_conntrack
	// is not loaded, or the procfs root is not a Linux procfs).
	ErrSettingsAbsent = errors.New("conntrack sysctls absent")
	// ErrSettingsIncomplete: some sysctls a current kernel has are missing
	// (an old or oddly configured kernel); the Settings hold the rest.
	ErrSettingsIncomplete = errors.New("conntrack sysctls incomplete")
	// ErrSettingsMalformed: a sysctl holds something other than one
	// non-negative decimal integer.
	ErrSettingsMalformed = errors.New("malformed conntrack sysctl")
)

// SettingsUint is a numeric sysctl as read; OK is false when it was not
// read (absent or unreadable), so that 0, a real value for some of them
// (nf_conntrack_max 0 means no limit), is told apart from unknown.
type SettingsUint struct {
	Value uint64
	OK    bool
}

// SettingsBool is a 0/1 sysctl as read; OK as in SettingsUint.
type SettingsBool struct {
	Value bool
	OK    bool
}

// SettingsTimeout is one conntrack timeout sysctl.
type SettingsTimeout struct {
	// Protocol is the protocol in lower case (tcp, udp, icmp, icmpv6, sctp,
	// gre, generic), as in the contract's protocol label.
	Protocol string
	// State names the timeout within the protocol: the TCP or SCTP state,
	// "unreplied" and "stream" for udp and gre, empty for protocols with
	// one timeout (icmp, icmpv6, generic).
	State string
	// Sysctl is the file name under net/netfilter, e.g.
	// nf_conntrack_tcp_timeout_established.
	Sysctl string
	// Timeout is the value; the kernel keeps these in seconds.
	Timeout time.Duration
}

// Settings are the conntrack sizing and timeout sysctls of one network
// namespace. In a namespace other than the initial one nf_conntrack_max
// and nf_conntrack_buckets show the host's values (read-only there, see
// FACTS.md); the timeouts and the TCP flags are the namespace's own.
type Settings struct {
	// Buckets is nf_conntrack_buckets, the size of the conntrack hash table.
	Buckets SettingsUint
	// Max is nf_conntrack_max, the table's limit (0: no limit).
	Max SettingsUint
	// TCPLoose is nf_conntrack_tcp_loose: pick up connections already
	// established (mid-stream) instead of marking their packets invalid.
	TCPLoose SettingsBool
	// TCPBeLiberal is nf_conntrack_tcp_be_liberal: mark only out-of-window
	// RSTs invalid, accept every other out-of-window packet.
	TCPBeLiberal SettingsBool
	// Timestamp is nf_conntrack_timestamp: whether entries created from now
	// on carry their start time (CTA_TIMESTAMP); off unless enabled.
	Timestamp SettingsBool
	// Timeouts holds the timeouts that were read, in the order of
	// SettingsTimeoutSysctls.
	Timeouts []SettingsTimeout
}

// Timeout returns the timeout of protocol and state, and whether it was read.
func (s Settings) Timeout(protocol, state string) (time.Duration, bool) {
	for _, t := range s.Timeouts {
		if t.Protocol == protocol && t.State == state {
			return t.Timeout, true
		}
	}
	return 0, false
}

// SettingsTimeoutSysctl names one timeout sysctl the reader knows.
type SettingsTimeoutSysctl struct {
	Protocol, State, Sysctl string
	// Optional sysctls exist only with some kernel configurations (SCTP,
	// GRE) or versions; their absence does not make a reading incomplete.
	Optional bool
}

// SettingsTimeoutSysctls lists the timeouts ReadSettings reads, from
// net/netfilter/nf_conntrack_standalone.c (Linux 6.18): the TCP ones since
// 2.6 (unacknowledged since 3.7), udp and udp_stream, icmp, icmpv6 and
// generic; SCTP (CONFIG_NF_CT_PROTO_SCTP; heartbeat_acked was removed in
// 6.4) and GRE (CONFIG_NF_CT_PROTO_GRE) only where configured.
var SettingsTimeoutSysctls = []SettingsTimeoutSysctl{
	{"tcp", "syn_sent", "nf_conntrack_tcp_timeout_syn_sent", false},
	{"tcp", "syn_recv", "nf_conntrack_tcp_timeout_syn_recv", false},
	{"tcp", "established", "nf_conntrack_tcp_timeout_established", false},
	{"tcp", "fin_wait", "nf_conntrack_tcp_timeout_fin_wait", false},
	{"tcp", "close_wait", "nf_conntrack_tcp_timeout_close_wait", false},
	{"tcp", "last_ack", "nf_conntrack_tcp_timeout_last_ack", false},
	{"tcp", "time_wait", "nf_conntrack_tcp_timeout_time_wait", false},
	{"tcp", "close", "nf_conntrack_tcp_timeout_close", false},
	{"tcp", "max_retrans", "nf_conntrack_tcp_timeout_max_retrans", false},
	{"tcp", "unacknowledged", "nf_conntrack_tcp_timeout_unacknowledged", false},
	{"udp", "unreplied", "nf_conntrack_udp_timeout", false},
	{"udp", "stream", "nf_conntrack_udp_timeout_stream", false},
	{"icmp", "", "nf_conntrack_icmp_timeout", false},
	{"icmpv6", "", "nf_conntrack_icmpv6_timeout", true}, // only with IPv6
	{"generic", "", "nf_conntrack_generic_timeout", false},
	{"sctp", "closed", "nf_conntrack_sctp_timeout_closed", true},
	{"sctp", "cookie_wait", "nf_conntrack_sctp_timeout_cookie_wait", true},
	{"sctp", "cookie_echoed", "nf_conntrack_sctp_timeout_cookie_echoed", true},
	{"sctp", "established", "nf_conntrack_sctp_timeout_established", true},
	{"sctp", "shutdown_sent", "nf_conntrack_sctp_timeout_shutdown_sent", true},
	{"sctp", "shutdown_recd", "nf_conntrack_sctp_timeout_shutdown_recd", true},
	{"sctp", "shutdown_ack_sent", "nf_conntrack_sctp_timeout_shutdown_ack_sent", true},
	{"sctp", "heartbeat_sent", "nf_conntrack_sctp_timeout_heartbeat_sent", true},
	{"sctp", "heartbeat_acked", "nf_conntrack_sctp_timeout_heartbeat_acked", true},
	{"gre", "unreplied", "nf_conntrack_gre_timeout", true},
	{"gre", "stream", "nf_conntrack_gre_timeout_stream", true},
}

// The non-timeout sysctls ReadSettings reads.
const (
	sysctlBuckets      = "nf_conntrack_buckets"
	sysctlMax          = "nf_conntrack_max"
	sysctlTCPLoose     = "nf_conntrack_tcp_loose"
	sysctlTCPBeLiberal = "nf_conntrack_tcp_be_liberal"
	sysctlTimestamp    = "nf_conntrack_timestamp" // CONFIG_NF_CONNTRACK_TIMESTAMP
)

// SettingsMissingError says which sysctls were absent. It matches
// ErrSettingsIncomplete, or ErrSettingsAbsent when none was found.
type SettingsMissingError struct {
	// Dir is where they were looked for.
	Dir string
	// Missing lists the absent sysctls that are not optional.
	Missing []string
	// None is true when not one conntrack sysctl was found.
	None bool
}

func (e *SettingsMissingError) Error() string {
	if e.None {
		return fmt.Sprintf("no conntrack sysctls under %s (nf_conntrack is not loaded)", e.Dir)
	}
	return fmt.Sprintf("conntrack sysctls missing under %s: %s", e.Dir, strings.Join(e.Missing, ", "))
}

// Is makes errors.Is match ErrSettingsAbsent or ErrSettingsIncomplete.
func (e *SettingsMissingError) Is(target error) bool {
	if e.None {
		return target == ErrSettingsAbsent
	}
	return target == ErrSettingsIncomplete
}

// ReadSettings reads the conntrack sysctls under procfs (normally /proc)
// as the calling thread's network namespace sees them: /proc/sys/net
// shows the namespace of the thread that opens the files, so a caller that
// wants another namespace's values calls this on a thread inside it.
func ReadSettings(procfs string) (Settings, error) {
	dir := filepath.Join(procfs, SettingsDir)
	return ParseSettings(os.DirFS(dir), dir)
}

// ReadSettingsIn is ReadSettings as the network namespace target sees
// the sysctls: for another namespace than the caller's, on a thread that
// has entered it.
func ReadSettingsIn(target netns.Target, procfs string) (Settings, error) {
	var s Settings
	err := target.Do(func() error {
		var err error
		s, err = ReadSettings(procfs)
		return err
	})
	return s, err
}

// ParseSettings reads the conntrack sysctls from fsys, a directory laid
// out like /proc/sys/net/netfilter; dir names it in errors. It returns
// what it could read, with an error when something was missing
// (SettingsMissingError), unreadable or malformed (ErrSettingsMalformed);
// the errors of several files are joined.
func ParseSettings(fsys fs.FS, dir string) (Settings, error) {
	var (
		s       Settings
		errs    []error
		missing []string
		found   int
	)
	read := func(name string, optional bool) (uint64, bool) {
		b, err := fs.ReadFile(fsys, name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if !optional {
				missing = append(missing, name)
			}
			return 0, false
		case err != nil:
			found++
			errs = append(errs, fmt.Errorf("read %s: %w", filepath.Join(dir, name), err))
			return 0, false
		}
		found++
		v, err := ParseSysctlValue(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", filepath.Join(dir, name), err))
			return 0, false
		}
		return v, true
	}
	readUint := func(name string, optional bool) SettingsUint {
		v, ok := read(name, optional)
		return SettingsUint{Value: v, OK: ok}
	}
	readBool := func(name string, optional bool) SettingsBool {
		v, ok := read(name, optional)
		return SettingsBool{Value: v != 0, OK: ok}
	}

	s.Buckets = readUint(sysctlBuckets, false)
	s.Max = readUint(sysctlMax, false)
	s.TCPLoose = readBool(sysctlTCPLoose, false)
	s.TCPBeLiberal = readBool(sysctlTCPBeLiberal, false)
	s.Timestamp = readBool(sysctlTimestamp, true)
	for _, t := range SettingsTimeoutSysctls {
		v, ok := read(t.Sysctl, t.Optional)
		if !ok {
			continue
		}
		s.Timeouts = append(s.Timeouts, SettingsTimeout{Protocol: t.Protocol, State: t.State, Sysctl: t.Sysctl,
			Timeout: time.Duration(v) * time.Second})
	}

	if found == 0 {
		return s, &SettingsMissingError{Dir: dir, None: true}
	}
	if len(missing) > 0 {
		errs = append([]error{&SettingsMissingError{Dir: dir, Missing: missing}}, errs...)
	}
	return s, errors.Join(errs...)
}

// sysctlMaxSeconds bounds the values ParseSettings accepts, so that a
// timeout in seconds still fits a time.Duration.
const sysctlMaxSeconds = uint64(1<<63-1) / uint64(time.Second)

// ParseSysctlValue parses the content of a numeric sysctl file: one
// non-negative decimal integer, followed by a newline as the kernel writes
// it.
func ParseSysctlValue(b []byte) (uint64, error) {
	s := strings.TrimRight(string(b), "\n")
	if s == "" {
		return 0, fmt.Errorf("%w: empty", ErrSettingsMalformed)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a non-negative integer", ErrSettingsMalformed, settingsTruncate(s, 32))
	}
	if v > sysctlMaxSeconds {
		return 0, fmt.Errorf("%w: %d is out of range", ErrSettingsMalformed, v)
	}
	return v, nil
}

func settingsTruncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
