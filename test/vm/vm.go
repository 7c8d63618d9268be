// Package vm runs a package's Go tests inside a qemu virtual machine booted
// on Debian's kernel, for kernel features the host lacks (IPVS here) and as a
// second kernel for any integration test.
//
// Run builds the package's test binary statically (CGO_ENABLED=0 go test -c),
// packs it with busybox-static, the closure of the requested kernel modules
// (from modules.dep, made with depmod -b) and any host commands with their
// shared libraries into an initramfs, boots it with qemu-system-x86_64 on a
// serial console, and fails the host test when the guest's tests fail, when
// the VM hangs past its timeout, or when it never reports an exit status.
//
// The kernel package (linux-image-amd64's dependency) is fetched with
// apt-get download and unpacked once per version under
// ${NETINSPECT_CACHE:-$HOME/.cache/netinspect}/vm.
//
// Inside the guest, /init sets NETINSPECT_IN_VM=1; tests that only make sense
// there call RequireGuest, which skips them elsewhere. The host-side test that
// boots the VM must then check, with Result.RequirePassed, that the guest
// really ran them, so the pair cannot pass silently.
package vm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/testenv"
)

// GuestEnv is the environment variable /init sets in the guest.
const GuestEnv = "NETINSPECT_IN_VM"

// InGuest reports whether the code runs inside a VM booted by Run.
func InGuest() bool { return os.Getenv(GuestEnv) == "1" }

// RequireGuest skips the test outside the VM. It skips even under CI=true:
// the host-side test that boots the VM is what CI runs, and it asserts with
// Result.RequirePassed that the guest ran the test.
func RequireGuest(t testing.TB) {
	t.Helper()
	if !InGuest() {
		t.Skipf("runs only inside the qemu VM (%s=1); the host-side test boots it", GuestEnv)
	}
}

// DefaultModules are the kernel modules most networking tests need: netfilter
// conntrack and its netlink interface, veth, bridge, dummy, and IPVS with the
// rr and wrr schedulers. Their dependencies are added from modules.dep.
var DefaultModules = []string{
	"crc32c_generic", // libcrc32c asks the crypto API for crc32c; with no modprobe in the guest it must be loaded first
	"nf_conntrack", "nf_conntrack_netlink", "nfnetlink",
	"veth", "bridge", "dummy",
	"ip_vs", "ip_vs_rr", "ip_vs_wrr",
}

// Config says what to run in the VM.
type Config struct {
	// Package is the package whose tests run, as given to go test -c,
	// relative to the host test's working directory ("." is the package of
	// the calling test).
	Package string
	// Run, Bench and Args are passed to the test binary as -test.run,
	// -test.bench and extra flags; -test.v is always set.
	Run, Bench string
	Args       []string
	// Env is added to the guest test's environment.
	Env map[string]string
	// Modules are kernel modules to load, in order, with their dependencies
	// first. Nil means DefaultModules.
	Modules []string
	// Commands are host executables (looked up on PATH) copied into the
	// guest with their shared libraries, e.g. "ip" for test/netns.
	Commands []string
	// Files are host files or directories copied to the same paths in the
	// guest, for what ldd does not show: plugins a command dlopens (e.g.
	// iptables' extensions in /usr/lib/x86_64-linux-gnu/xtables) and data
	// files it reads (/etc/protocols). Paths are absolute; directories are
	// copied whole, symlinks within them kept; ELF files bring their shared
	// libraries.
	Files []string
	// KernelPackage is the Debian kernel image package; "" means the one
	// linux-image-amd64 depends on.
	KernelPackage string
	// MemoryMiB and CPUs size the VM; 0 means 1536 and 2.
	MemoryMiB, CPUs int
	// Timeout bounds the whole run (build excluded); 0 means 5 minutes.
	Timeout time.Duration
	// Collect are guest files (e.g. a -test.memprofile output) sent back
	// over the console after the tests; they end up in Result.Files.
	Collect []string
	// Network, when set, gives the guest a network interface (see Network);
	// nil leaves it with loopback only.
	Network *Network
}

// Result is what the guest printed.
type Result struct {
	// Output is the serial console, kernel messages included.
	Output string
	// ExitCode is the test binary's exit status.
	ExitCode int
	// Boot is how long qemu ran.
	Boot time.Duration
	// Files holds the Config.Collect files the guest sent back, by path.
	Files map[string][]byte
}

var passRE = regexp.MustCompile(`(?m)^\s*--- PASS: (\S+) \(`)

// Passed returns the names of the tests (and subtests) that passed.
func (r *Result) Passed() []string {
	var out []string
	for _, m := range passRE.FindAllStringSubmatch(r.Output, -1) {
		out = append(out, m[1])
	}
	return out
}

// RequirePassed fails t unless every named test printed "--- PASS" in the
// guest, so a guest test that skipped or never ran cannot pass silently.
func (r *Result) RequirePassed(t testing.TB, names ...string) {
	t.Helper()
	passed := map[string]bool{}
	for _, n := range r.Passed() {
		passed[n] = true
	}
	for _, n := range names {
		if !passed[n] {
			t.Errorf("guest did not report --- PASS: %s", n)
		}
	}
}

// Run boots the VM, runs the tests and returns what the guest printed. It
// fails t (Fatal) when the guest tests fail, the VM hangs or does not report
// its exit status; with missing prerequisites it skips locally and fails
// under CI.
func Run(t testing.TB, cfg Config) *Result {
	t.Helper()
	if InGuest() {
		t.Skip("already inside the VM")
	}
	testenv.RequireRoot(t)
	qemu := testenv.RequireCommand(t, "qemu-system-x86_64")
	testenv.RequireCommand(t, "cpio")
	testenv.RequireCommand(t, "depmod")
	busybox := findBusybox(t)
	for _, c := range cfg.Commands {
		testenv.RequireCommand(t, c)
	}
	for _, f := range cfg.Files {
		_, err := os.Stat(f)
		testenv.Require(t, err == nil, fmt.Sprintf("host file %s for the guest: %v", f, err))
	}
	if cfg.Modules == nil {
		cfg.Modules = DefaultModules
	}
	if cfg.Network != nil {
		if err := cfg.Network.check(); err != nil {
			t.Fatal(err)
		}
		cfg.Modules = withNetworkModules(cfg, cfg.Modules)
	}
	if cfg.MemoryMiB == 0 {
		cfg.MemoryMiB = 1536
	}
	if cfg.CPUs == 0 {
		cfg.CPUs = 2
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 5 * time.Minute
	}

	k, err := kernel(cfg.KernelPackage)
	testenv.Require(t, err == nil, fmt.Sprintf("Debian kernel for the VM: %v", err))

	work := t.TempDir()
	root := filepath.Join(work, "root")
	testBin := filepath.Join(root, "test.bin")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := buildTest(cfg.Package, testBin); err != nil {
		t.Fatalf("build guest test binary: %v", err)
	}
	nonce := randomHex(t)
	if err := populate(root, busybox, k, cfg, nonce); err != nil {
		t.Fatalf("initramfs tree: %v", err)
	}
	initrd := filepath.Join(work, "initrd.cpio")
	if err := packCPIO(root, initrd); err != nil {
		t.Fatalf("pack initramfs: %v", err)
	}

	res, err := boot(t, qemu, k.vmlinuz, initrd, cfg, nonce)
	if err != nil {
		t.Fatalf("VM run: %v\n--- guest console ---\n%s", err, tail(res.Output, 20000))
	}
	if res.ExitCode != 0 || testing.Verbose() {
		t.Logf("guest console (%s, exit %d):\n%s", res.Boot.Round(time.Millisecond), res.ExitCode, tail(res.Output, 60000))
	}
	if res.ExitCode != 0 {
		t.Fatalf("guest tests failed with exit status %d", res.ExitCode)
	}
	return res
}

func findBusybox(t testing.TB) string {
	t.Helper()
	// busybox-static installs /bin/busybox; a dynamic busybox would not run
	// in the guest, which has no libc.
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		out, err := exec.Command("file", "-L", p).CombinedOutput()
		if err == nil && bytes.Contains(out, []byte("statically linked")) {
			return p
		}
		if _, err := os.Stat(p); err == nil && errors.Is(exec.Command("file").Run(), exec.ErrNotFound) {
			return p // no file(1) to check; trust the path
		}
	}
	testenv.Require(t, false, "a statically linked busybox (apt-get install busybox-static)")
	return ""
}

func randomHex(t testing.TB) string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func buildTest(pkg, out string) error {
	// A cold build compiles every dependency again for CGO_ENABLED=0 (and
	// client-go is large), so the bound is generous.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "test", "-c", "-vet=off", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go test -c %s: %w: %s", pkg, err, b)
	}
	return nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// populate lays out the guest's root: busybox, /init, modules, commands.
func populate(root, busybox string, k *kernelTree, cfg Config, nonce string) error {
	for _, d := range []string{"bin", "sbin", "bbin", "proc", "sys", "dev", "tmp", "run", "etc", "lib/modules", "pkg"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(busybox, filepath.Join(root, "bin/busybox"), 0o755); err != nil {
		return err
	}
	mods, err := k.closure(cfg.Modules)
	if err != nil {
		return err
	}
	var order []string
	for _, m := range mods {
		base := filepath.Base(m)
		if err := copyFile(filepath.Join(k.modDir, m), filepath.Join(root, "lib/modules", base), 0o644); err != nil {
			return err
		}
		order = append(order, base)
	}
	for _, c := range cfg.Commands {
		if err := copyCommand(root, c); err != nil {
			return err
		}
	}
	for _, f := range cfg.Files {
		if err := copyHostPath(root, f); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/:/bin/sh\n"), 0o644); err != nil {
		return err
	}

	// The guest's own test timeout fires before the VM's, so a hung guest
	// test panics with every goroutine's stack on the console.
	guestTimeout := cfg.Timeout - cfg.Timeout/5
	args := []string{"/test.bin", "-test.v", "-test.timeout", guestTimeout.String()}
	if cfg.Run != "" {
		args = append(args, "-test.run", cfg.Run)
	}
	if cfg.Bench != "" {
		args = append(args, "-test.bench", cfg.Bench)
	}
	args = append(args, cfg.Args...)
	var quoted []string
	for _, a := range args {
		quoted = append(quoted, shellQuote(a))
	}
	var env []string
	keys := make([]string, 0, len(cfg.Env))
	for k := range cfg.Env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		env = append(env, "export "+k+"="+shellQuote(cfg.Env[k]))
	}
	if testenv.InCI() {
		env = append(env, "export CI=true")
	}

	var collect []string
	for _, f := range cfg.Collect {
		collect = append(collect, shellQuote(f))
	}
	init := fmt.Sprintf(`#!/bin/busybox sh
/bin/busybox --install -s /bbin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:/bbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
for m in %s; do
	insmod /lib/modules/$m || echo "netinspect-vm: insmod $m failed"
done
ip link set lo up
%sexport %s=1 HOME=/tmp TMPDIR=/tmp
%s
cd /pkg
echo "netinspect-vm: running tests on $(uname -r)"
%s
rc=$?
for f in %s; do
	[ -f "$f" ] || continue
	echo "NETINSPECT-VM-FILE %s $f"
	base64 < "$f"
	echo "NETINSPECT-VM-FILE-END %s"
done
echo "NETINSPECT-VM-EXIT %s $rc"
poweroff -f
`, strings.Join(order, " "), networkInit(cfg), GuestEnv, strings.Join(env, "\n"), strings.Join(quoted, " "),
		strings.Join(collect, " "), nonce, nonce, nonce)
	return os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755)
}

var lddRE = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// copyCommand copies a host executable and the shared libraries ldd names
// to the same paths in root.
func copyCommand(root, name string) error {
	p, err := exec.LookPath(name)
	if err != nil {
		return fmt.Errorf("command %s: %w", name, err)
	}
	files := []string{p}
	out, err := exec.Command("ldd", p).Output()
	if err == nil { // ldd fails on static binaries: nothing to add
		for _, m := range lddRE.FindAllStringSubmatch(string(out), -1) {
			files = append(files, m[1])
		}
	}
	for _, f := range files {
		if err := copyFile(f, filepath.Join(root, f), 0o755); err != nil {
			return err
		}
	}
	return nil
}

// copyHostPath copies a host file or directory tree (Config.Files) to the
// same path in root. A symlink given by name is followed; symlinks met
// inside a directory are kept when they point within the tree by a
// relative path, and followed otherwise. Modes are kept, and every ELF
// file brings the shared libraries ldd names.
func copyHostPath(root, path string) error {
	path = filepath.Clean(path)
	if !filepath.IsAbs(path) {
		return fmt.Errorf("file %s: not an absolute path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return copyHostFile(root, path, path, fi.Mode())
	}
	tree, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	return filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(tree, p)
		if err != nil {
			return err
		}
		dst := filepath.Join(path, rel) // the path as named, in the guest
		switch {
		case d.IsDir():
			return os.MkdirAll(filepath.Join(root, dst), 0o755)
		case d.Type()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if inside := filepath.Join(filepath.Dir(p), target); !filepath.IsAbs(target) && strings.HasPrefix(inside, tree+string(filepath.Separator)) {
				link := filepath.Join(root, dst)
				os.Remove(link) // a path listed twice
				return os.Symlink(target, link)
			}
			fi, err := os.Stat(p)
			if err != nil {
				return err
			}
			if fi.IsDir() {
				return fmt.Errorf("%s: symlink to a directory is not copied", p)
			}
			return copyHostFile(root, p, dst, fi.Mode())
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return err
			}
			return copyHostFile(root, p, dst, fi.Mode())
		}
		return nil // devices, sockets, fifos: not for an initramfs
	})
}

// copyHostFile copies src to dst in root and, when src is an ELF file, the
// shared libraries ldd names for it.
func copyHostFile(root, src, dst string, mode os.FileMode) error {
	if err := copyFile(src, filepath.Join(root, dst), mode.Perm()); err != nil {
		return err
	}
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	magic := make([]byte, 4)
	_, err = io.ReadFull(f, magic)
	f.Close()
	if err != nil || string(magic) != "\x7fELF" {
		return nil
	}
	out, err := exec.Command("ldd", src).Output()
	if err != nil { // static, or not a dynamic object: nothing to add
		return nil
	}
	for _, m := range lddRE.FindAllStringSubmatch(string(out), -1) {
		lib := filepath.Join(root, m[1])
		if _, err := os.Stat(lib); err == nil {
			continue // a directory of plugins shares its libraries
		}
		if err := copyFile(m[1], lib, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

// packCPIO writes root as a newc cpio archive. It is left uncompressed:
// under software emulation the kernel takes tens of seconds to inflate a
// gzip-compressed initramfs holding a test binary, and copying it is cheap.
func packCPIO(root, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	var stderr bytes.Buffer
	cmd := exec.Command("sh", "-c", "find . -print0 | cpio --null -o -H newc -R 0:0 --quiet")
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = f, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cpio: %w: %s", err, stderr.String())
	}
	return f.Close()
}

var exitRE = regexp.MustCompile(`NETINSPECT-VM-EXIT ([0-9a-f]+) (\d+)`)

// lineWriter logs complete lines to t as they arrive when streaming is on.
type lineWriter struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	stream func(string)
	line   []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if w.stream != nil {
		w.line = append(w.line, p...)
		for {
			i := bytes.IndexByte(w.line, '\n')
			if i < 0 {
				break
			}
			w.stream(strings.TrimRight(string(w.line[:i]), "\r"))
			w.line = w.line[i+1:]
		}
	}
	return len(p), nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return strings.ReplaceAll(w.buf.String(), "\r\n", "\n")
}

func boot(t testing.TB, qemu, vmlinuz, initrd string, cfg Config, nonce string) (*Result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	args := []string{
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none",
		"-m", strconv.Itoa(cfg.MemoryMiB), "-smp", strconv.Itoa(cfg.CPUs),
		"-kernel", vmlinuz, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
	}
	args = append(args, accel()...)
	prog, args := qemuCommand(cfg, qemu, args)
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.WaitDelay = 5 * time.Second
	w := &lineWriter{}
	start := time.Now()
	if os.Getenv("NETINSPECT_VM_STREAM") == "1" {
		w.stream = func(l string) { t.Logf("guest %6.1fs: %s", time.Since(start).Seconds(), l) }
	}
	cmd.Stdout, cmd.Stderr = w, w
	err := cmd.Run()
	res := &Result{Output: w.String(), Boot: time.Since(start), ExitCode: -1}
	if ctx.Err() != nil {
		return res, fmt.Errorf("VM did not power off within %s (hung guest); killed qemu", cfg.Timeout)
	}
	if err != nil {
		return res, fmt.Errorf("qemu: %w", err)
	}
	res.Files = collectedFiles(res.Output, nonce)
	for _, m := range exitRE.FindAllStringSubmatch(res.Output, -1) {
		if m[1] == nonce {
			res.ExitCode, _ = strconv.Atoi(m[2])
			return res, nil
		}
	}
	return res, errors.New("guest powered off without reporting the tests' exit status (kernel panic or /init failure)")
}

// accel is software emulation (TCG) unless NETINSPECT_VM_ACCEL=kvm: on this
// kind of machine /dev/kvm exists but nested KVM aborts in qemu 7.2 ("failed
// to set MSR 0x10a"), so KVM is opt-in.
func accel() []string {
	if os.Getenv("NETINSPECT_VM_ACCEL") == "kvm" {
		return []string{"-accel", "kvm", "-cpu", "host"}
	}
	return []string{"-accel", "tcg", "-cpu", "max"}
}

// collectedFiles decodes the base64 blocks /init printed between
// NETINSPECT-VM-FILE markers.
func collectedFiles(out, nonce string) map[string][]byte {
	files := map[string][]byte{}
	start := "NETINSPECT-VM-FILE " + nonce + " "
	end := "NETINSPECT-VM-FILE-END " + nonce
	var name string
	var b64 strings.Builder
	in := false
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, start):
			name, in = strings.TrimPrefix(l, start), true
			b64.Reset()
		case in && l == end:
			if b, err := base64.StdEncoding.DecodeString(b64.String()); err == nil {
				files[name] = b
			}
			in = false
		case in:
			b64.WriteString(l)
		}
	}
	return files
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "...\n" + s[len(s)-n:]
}

// scanLines is a small helper for parsing command output line by line.
func scanLines(b []byte, f func(string)) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f(sc.Text())
	}
}
