package image

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/testenv"
)

// A malformed package list is an error naming the file and line, from the
// parser both the Dockerfile and rootfs.sh use.
func TestPackagesScriptRejectsMalformedLists(t *testing.T) {
	tests := []struct{ name, list, want string }{
		{"no suite", "iptables\n", "no suite: line"},
		{"two suites", "suite: trixie\nsuite: bookworm\niptables\n", ":2: second suite: line"},
		{"two words on a line", "suite: trixie\niptables nftables\n", `:2: want one Debian package name, got "iptables nftables"`},
		{"not a package name", "suite: trixie\nIPtables\n", `:2: want one Debian package name, got "IPtables"`},
		{"a package twice", "suite: trixie\niptables\n# x\niptables # again\n", ":4: package iptables listed twice"},
		{"no packages", "suite: trixie\n", "no packages"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "packages")
			if err := os.WriteFile(file, []byte(tt.list), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command("./packages.sh", "list", file).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tt.want) {
				t.Errorf("packages.sh list: %v %q, want an error containing %q", err, out, tt.want)
			}
		})
	}
	out, err := exec.Command("./packages.sh", "list").Output()
	if err != nil || !strings.Contains(string(out), "iptables\n") || strings.Contains(string(out), "#") {
		t.Errorf("packages.sh list of the repository's list: %v %q", err, out)
	}
}

// A package that Debian does not have is a clear error from rootfs.sh
// naming it, and leaves nothing in the cache.
func TestRootfsNamesAPackageMissingFromDebian(t *testing.T) {
	requireImageTools(t)
	dir := t.TempDir()
	list := filepath.Join(dir, "packages")
	suite := packagesScript(t, "suite")[0]
	if err := os.WriteFile(list, []byte("suite: "+suite+"\niptables\nnetinspect-no-such-package\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(dir, "cache")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./rootfs.sh", "amd64")
	cmd.Env = append(os.Environ(), "PACKAGES="+list, "NETINSPECT_CACHE="+cache)
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("rootfs.sh succeeded with a package Debian does not have:\n%s", out)
	}
	want := "package(s) netinspect-no-such-package of " + list + " not found in Debian " + suite + " for amd64"
	if !strings.Contains(string(out), want) {
		t.Errorf("rootfs.sh said:\n%s\nwant it to say %q", out, want)
	}
	tars, _ := filepath.Glob(filepath.Join(cache, "image-rootfs", "*.tar*"))
	for _, f := range tars {
		if !strings.HasSuffix(f, ".lock") {
			t.Errorf("rootfs.sh left %s in the cache", f)
		}
	}
}

// dpkgAlternativesHook runs in an mmdebstrap customize hook ($1 the root)
// and prints "package name link target" for every link update-alternatives
// made, from dpkg's own records (/var/lib/dpkg/alternatives: the mode, the
// master link, then slave name and link pairs, a blank line, the choices).
const dpkgAlternativesHook = `root=$1
for a in "$root"/var/lib/dpkg/alternatives/*; do
	awk -v master="${a##*/}" 'NR==2 { print master, $0; next } NR>2 && $0 == "" { exit } NR>2 { if ((NR % 2) == 1) name = $0; else print name, $0 }' "$a"
done | while read -r name link; do
	target=$(readlink "$root/etc/alternatives/$name" || true)
	[ -n "$target" ] || continue
	owner=$(chroot "$root" dpkg -S "$target" 2>/dev/null | head -1 | cut -d: -f1)
	echo "$owner $name $link $target"
done
`

// The alternatives links of the image, which mkimage makes from the
// packages' postinst scripts without running them, are the ones Debian's
// own dpkg and update-alternatives make when they install the same
// packages for real (amd64, natively, with the slim image's path
// excludes). The reference is cached like the root filesystems, by the
// package list and this hook.
func TestAlternativesAreDpkgs(t *testing.T) {
	b := sharedImage(t)
	testenv.RequireCommand(t, "chroot")
	suite := packagesScript(t, "suite")[0]
	list := packagesScript(t, "list")
	excludes := []string{"path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright", "path-exclude=/usr/share/groff/*",
		"path-exclude=/usr/share/info/*", "path-exclude=/usr/share/linda/*", "path-exclude=/usr/share/lintian/overrides/*",
		"path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/man/*"}
	pkgs, err := os.ReadFile("packages")
	if err != nil {
		t.Fatal(err)
	}
	key := sha256.Sum256([]byte(string(pkgs) + dpkgAlternativesHook + strings.Join(excludes, " ")))
	cache := os.Getenv("NETINSPECT_CACHE")
	if cache == "" {
		cache = filepath.Join(os.Getenv("HOME"), ".cache/netinspect")
	}
	ref := filepath.Join(cache, "image-rootfs", fmt.Sprintf("dpkg-alternatives-%s-amd64-%x.txt", suite, key[:8]))
	if _, err := os.Stat(ref); err != nil {
		dir := t.TempDir()
		hook := filepath.Join(dir, "hook.sh")
		if err := os.WriteFile(hook, []byte(dpkgAlternativesHook), 0o755); err != nil {
			t.Fatal(err)
		}
		args := []string{"--quiet", "--mode=root", "--variant=minbase", "--architectures=amd64", "--include=" + strings.Join(list, ",")}
		for _, e := range excludes {
			args = append(args, "--dpkgopt="+e)
		}
		args = append(args, "--customize-hook="+hook+` "$1" > `+ref+".tmp", suite, "/dev/null", "http://deb.debian.org/debian")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		start := time.Now()
		if out, err := exec.CommandContext(ctx, "mmdebstrap", args...).CombinedOutput(); err != nil {
			os.Remove(ref + ".tmp")
			t.Fatalf("mmdebstrap --variant=minbase: %v\n%s", err, out)
		}
		if err := os.Rename(ref+".tmp", ref); err != nil {
			t.Fatal(err)
		}
		t.Logf("installed the packages with dpkg in %v for the reference %s", time.Since(start).Round(time.Second), ref)
	}
	text, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}

	a := readOCIArchive(t, b.ociTar)
	fs := a.files(t, a.images(t)["amd64"])
	installed := dpkgStatus(t, fs["var/lib/dpkg/status"].data)
	want := map[string]string{} // link or etc/alternatives/NAME -> target, as dpkg made them
	for _, line := range strings.Split(strings.TrimSpace(string(text)), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			continue // an alternative of a minbase package whose owner dpkg -S cannot name
		}
		if _, ok := installed[f[0]]; !ok {
			continue // a minbase package the image does not hold
		}
		want[strings.TrimPrefix(f[2], "/")] = "/etc/alternatives/" + f[1]
		want["etc/alternatives/"+f[1]] = f[3]
	}
	if len(want) < 20 {
		t.Fatalf("dpkg's reference has only %d links for the image's packages:\n%s", len(want), text)
	}
	got := map[string]string{}
	for name, f := range fs {
		if f.hdr.Typeflag == tar.TypeSymlink && (strings.HasPrefix(name, "etc/alternatives/") || strings.HasPrefix(f.hdr.Linkname, "/etc/alternatives/")) {
			got[name] = f.hdr.Linkname
		}
	}
	for link, target := range want {
		if got[link] != target {
			t.Errorf("%s -> %q in the image, dpkg makes it -> %s", link, got[link], target)
		}
	}
	for link, target := range got {
		if _, ok := want[link]; !ok {
			t.Errorf("the image has %s -> %s, which dpkg does not make", link, target)
		}
	}
	t.Logf("%d alternatives links, as dpkg makes them", len(want))
}
