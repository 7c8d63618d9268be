// Package image checks the container image recipe (the repository's
// Dockerfile) without a Docker engine: the build stage must build the binary
// with deploy/image/build.sh, and this test runs that script and checks what
// it produces.
package image

import (
	"bufio"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/netinspect/netinspect/test/testenv"
)

// dockerfileRuns returns the RUN instructions of each stage, keyed by the
// stage's name (or its FROM image when unnamed), joining continued lines.
func dockerfileRuns(t *testing.T) (stages []string, runs map[string][]string, froms map[string]string) {
	t.Helper()
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	runs, froms = map[string][]string{}, map[string]string{}
	var stage, cont string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") || line == "" && cont == "" {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			cont += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, cont = cont+line, ""
		fields := strings.Fields(line)
		switch strings.ToUpper(fields[0]) {
		case "FROM":
			stage = fields[1]
			if len(fields) >= 4 && strings.EqualFold(fields[2], "AS") {
				stage = fields[3]
			}
			stages = append(stages, stage)
			froms[stage] = fields[1]
		case "RUN":
			runs[stage] = append(runs[stage], strings.TrimSpace(line[len("RUN"):]))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages, runs, froms
}

func TestDockerfileBuildsWithTheSharedScript(t *testing.T) {
	stages, runs, froms := dockerfileRuns(t)
	if len(stages) != 2 || stages[0] != "build" {
		t.Fatalf("stages %v, want a build stage and a runtime stage", stages)
	}
	var buildRun string
	for _, r := range runs["build"] {
		if strings.Contains(r, "deploy/image/build.sh") {
			buildRun = r
		}
	}
	if buildRun == "" {
		t.Fatalf("no RUN of deploy/image/build.sh in the build stage: %q", runs["build"])
	}
	if !regexp.MustCompile(`VERSION=\$\{VERSION\} REVISION=\$\{REVISION\} \./deploy/image/build\.sh /out/netinspect$`).MatchString(buildRun) {
		t.Errorf("build RUN %q does not pass VERSION and REVISION to build.sh", buildRun)
	}
	runtime := stages[1]
	if !strings.Contains(froms[runtime], "-slim") {
		t.Errorf("runtime stage FROM %s, want a Debian slim image", froms[runtime])
	}
	var apt string
	for _, r := range runs[runtime] {
		apt += r
	}
	for _, pkg := range []string{"iptables", "nftables"} {
		if !regexp.MustCompile(`\b` + pkg + `\b`).MatchString(apt) {
			t.Errorf("runtime stage does not install %s: %q", pkg, apt)
		}
	}
}

func TestBuildScriptMakesAStaticVersionedBinary(t *testing.T) {
	testenv.RequireCommand(t, "go")
	out := filepath.Join(t.TempDir(), "netinspect")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./build.sh", out)
	cmd.Env = append(os.Environ(), "VERSION=v9.8.7-test", "REVISION=0123abcd")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, b)
	}

	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has a dynamic loader (PT_INTERP): not static")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary links shared libraries %v", libs)
	}

	b, err := exec.CommandContext(ctx, out, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, b)
	}
	if want := "netinspect version v9.8.7-test (revision 0123abcd)"; !strings.Contains(string(b), want) {
		t.Errorf("--version printed %q, want it to contain %q", b, want)
	}
}
