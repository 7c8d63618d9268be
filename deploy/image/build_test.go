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

// instruction is one Dockerfile instruction, continued lines joined.
type instruction struct {
	stage string // the stage's name, or its FROM image when unnamed; "" before the first FROM
	cmd   string // upper case: FROM, ARG, RUN, COPY, LABEL ...
	args  string
}

// dockerfile reads ../../Dockerfile's instructions and its stages in order.
func dockerfile(t *testing.T) (stages []string, ins []instruction) {
	t.Helper()
	f, err := os.Open("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
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
		cmd, args, _ := strings.Cut(line, " ")
		cmd, args = strings.ToUpper(cmd), strings.TrimSpace(args)
		if cmd == "FROM" {
			fields := strings.Fields(args)
			stage = fields[0]
			if len(fields) >= 3 && strings.EqualFold(fields[1], "AS") {
				stage = fields[2]
			}
			stages = append(stages, stage)
		}
		ins = append(ins, instruction{stage: stage, cmd: cmd, args: args})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return stages, ins
}

// of returns the arguments of stage's instructions of kind cmd.
func of(ins []instruction, stage, cmd string) []string {
	var out []string
	for _, i := range ins {
		if i.stage == stage && i.cmd == cmd {
			out = append(out, i.args)
		}
	}
	return out
}

// packagesScript runs packages.sh (the parser the Dockerfile and rootfs.sh
// share) on the repository's list.
func packagesScript(t *testing.T, what string) []string {
	t.Helper()
	out, err := exec.Command("./packages.sh", what).Output()
	if err != nil {
		t.Fatalf("packages.sh %s: %v", what, err)
	}
	return strings.Fields(string(out))
}

func TestDockerfileBuildsWithTheSharedScript(t *testing.T) {
	stages, ins := dockerfile(t)
	if len(stages) != 2 || stages[0] != "build" {
		t.Fatalf("stages %v, want a build stage and a runtime stage", stages)
	}
	var buildRun string
	for _, r := range of(ins, "build", "RUN") {
		if strings.Contains(r, "deploy/image/build.sh") {
			buildRun = r
		}
	}
	if buildRun == "" {
		t.Fatalf("no RUN of deploy/image/build.sh in the build stage: %q", of(ins, "build", "RUN"))
	}
	if !regexp.MustCompile(`VERSION=\$\{VERSION\} REVISION=\$\{REVISION\} \./deploy/image/build\.sh /out/netinspect$`).MatchString(buildRun) {
		t.Errorf("build RUN %q does not pass VERSION and REVISION to build.sh", buildRun)
	}
}

// The Dockerfile installs deploy/image/packages through packages.sh, the
// list and parser `make image` (rootfs.sh) uses, on the list's Debian
// release, and names no package itself: the two images cannot drift.
func TestDockerfileInstallsThePackageList(t *testing.T) {
	stages, ins := dockerfile(t)
	runtime := stages[len(stages)-1]
	suite := packagesScript(t, "suite")[0]

	args := map[string]string{}
	for _, a := range of(ins, "", "ARG") {
		k, v, _ := strings.Cut(a, "=")
		args[k] = v
	}
	if args["DEBIAN_SUITE"] != suite {
		t.Errorf("Dockerfile ARG DEBIAN_SUITE=%q, deploy/image/packages says suite: %s", args["DEBIAN_SUITE"], suite)
	}
	if got := of(ins, runtime, "FROM"); len(got) != 1 || got[0] != "debian:${DEBIAN_SUITE}-slim" {
		t.Errorf("runtime stage FROM %q, want debian:${DEBIAN_SUITE}-slim", got)
	}
	if got := of(ins, "build", "FROM"); len(got) != 1 || !strings.HasPrefix(got[0], "golang:${GO_VERSION}-${DEBIAN_SUITE} ") {
		t.Errorf("build stage FROM %q, want golang:${GO_VERSION}-${DEBIAN_SUITE}", got)
	}
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(gomod); m == nil || args["GO_VERSION"] != string(m[1]) {
		t.Errorf("Dockerfile ARG GO_VERSION=%q, go.mod says go %s", args["GO_VERSION"], m)
	}

	const dir = "/tmp/netinspect-image/"
	copies := strings.Join(of(ins, runtime, "COPY"), "\n")
	if !strings.Contains(copies, "deploy/image/packages deploy/image/packages.sh "+dir) {
		t.Errorf("runtime stage does not COPY deploy/image/packages and packages.sh to %s: %q", dir, copies)
	}
	var install string
	for _, r := range of(ins, runtime, "RUN") {
		if strings.Contains(r, "apt-get install") {
			install = r
		}
	}
	m := regexp.MustCompile(`apt-get install -y --no-install-recommends (\S+ \S+)`).FindStringSubmatch(install)
	if m == nil || m[1] != "$("+dir+"packages.sh list)" {
		t.Errorf("runtime stage's apt-get install %q, want exactly the packages of $(%spackages.sh list)", install, dir)
	}
	if !strings.Contains(install, "$("+dir+"packages.sh suite)") || !strings.Contains(install, "VERSION_CODENAME") {
		t.Errorf("runtime stage does not check the base image is Debian of the list's suite: %q", install)
	}
	for _, pkg := range packagesScript(t, "list") {
		if regexp.MustCompile(`(^|\s)` + regexp.QuoteMeta(pkg) + `(\s|$)`).MatchString(install) {
			t.Errorf("the Dockerfile names package %s itself; it must come from deploy/image/packages only", pkg)
		}
	}
}

// The Dockerfile's labels say what make image's do (mkimage's, from
// image.sh's licenses and source_url).
func TestDockerfileLabelsMatchMakeImage(t *testing.T) {
	stages, ins := dockerfile(t)
	labels := strings.Join(of(ins, stages[len(stages)-1], "LABEL"), " ")
	sh, err := os.ReadFile("image.sh")
	if err != nil {
		t.Fatal(err)
	}
	for key, shVar := range map[string]string{"licenses": "licenses", "source": "source_url"} {
		m := regexp.MustCompile(`(?m)^` + shVar + `=(\S+)$`).FindSubmatch(sh)
		if m == nil {
			t.Fatalf("image.sh sets no %s=", shVar)
		}
		want := `org.opencontainers.image.` + key + `="` + string(m[1]) + `"`
		if !strings.Contains(labels, want) {
			t.Errorf("Dockerfile LABEL %q lacks %s", labels, want)
		}
	}
	for _, want := range []string{`org.opencontainers.image.version="${VERSION}"`, `org.opencontainers.image.revision="${REVISION}"`} {
		if !strings.Contains(labels, want) {
			t.Errorf("Dockerfile LABEL %q lacks %s", labels, want)
		}
	}
	if users := of(ins, stages[len(stages)-1], "USER"); len(users) != 1 || users[0] != "0:0" {
		t.Errorf("runtime USER %q, want 0:0 (mkimage's)", users)
	}
	if eps := of(ins, stages[len(stages)-1], "ENTRYPOINT"); len(eps) != 1 || eps[0] != `["/usr/bin/netinspect"]` {
		t.Errorf("runtime ENTRYPOINT %q, want [\"/usr/bin/netinspect\"] (mkimage's)", eps)
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
