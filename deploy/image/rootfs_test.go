package image

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
