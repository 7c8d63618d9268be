package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestBuildVersion(t *testing.T) {
	tests := []struct {
		name                 string
		ldVersion, ldRev     string
		info                 *debug.BuildInfo
		wantVersion, wantRev string
	}{
		{
			name:      "build.sh's -ldflags win",
			ldVersion: "v0.1.0-3-gabc1234-dirty", ldRev: "abc1234",
			info:        &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}},
			wantVersion: "v0.1.0-3-gabc1234-dirty", wantRev: "abc1234",
		},
		{
			name:      "go install of a module version",
			ldVersion: "dev", ldRev: "unknown",
			info:        &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123"}}},
			wantVersion: "v0.1.0", wantRev: "0123",
		},
		{
			name:      "go build in a checkout: no module version",
			ldVersion: "dev", ldRev: "unknown",
			info:        &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}},
			wantVersion: "dev", wantRev: "unknown",
		},
		{
			name:      "no build info",
			ldVersion: "dev", ldRev: "unknown",
			wantVersion: "dev", wantRev: "unknown",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, r := buildVersion(tt.ldVersion, tt.ldRev, tt.info)
			if v != tt.wantVersion || r != tt.wantRev {
				t.Errorf("buildVersion = %q, %q; want %q, %q", v, r, tt.wantVersion, tt.wantRev)
			}
		})
	}
}

func TestVersionTextNamesThePlatform(t *testing.T) {
	got := versionText("v1.2.3", "abc")
	for _, want := range []string{"netinspect version v1.2.3 (revision abc)", runtime.Version(), runtime.GOOS + "/" + runtime.GOARCH} {
		if !strings.Contains(got, want) {
			t.Errorf("versionText = %q, want it to contain %q", got, want)
		}
	}
}
