package main

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// buildVersion returns the version and revision the binary reports
// (--version, netinspect_build_info): those deploy/image/build.sh sets with
// -ldflags -X from `git describe --tags --always --dirty`, else, for a
// binary built by `go install github.com/netinspect/netinspect/cmd/netinspect@v0.1.0`,
// the module version and the commit the Go toolchain recorded.
func buildVersion(ldVersion, ldRevision string, info *debug.BuildInfo) (string, string) {
	v, r := ldVersion, ldRevision
	if info == nil {
		return v, r
	}
	if v == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		v = info.Main.Version
	}
	if r == "unknown" {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				r = s.Value
			}
		}
	}
	return v, r
}

// versionText is what --version prints: the version and revision, the Go
// version and the platform the binary was built for (so an image's binary
// says which architecture it is).
func versionText(v, r string) string {
	return fmt.Sprintf("netinspect version %s (revision %s)\n  %s %s/%s", v, r, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
