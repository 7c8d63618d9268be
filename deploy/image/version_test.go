package image

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/test/testenv"
)

// shippedFields are the committed files that name the image's version, and
// how each says it: the first group of the pattern is the version.
var shippedFields = []struct {
	file, what string
	re         *regexp.Regexp
}{
	{"deploy/kustomization.yaml", "images: newTag", regexp.MustCompile(`(?m)^    newTag: (\S+)$`)},
	{"deploy/daemonset.yaml", "image", regexp.MustCompile(`(?m)^ +image: ghcr\.io/netinspect/netinspect:(\S+)$`)},
	{"deploy/helm/netinspect/Chart.yaml", "appVersion", regexp.MustCompile(`(?m)^appVersion: (\S+)$`)},
	{"deploy/helm/netinspect/Chart.yaml", "version (without the v)", regexp.MustCompile(`(?m)^version: (\S+)$`)},
	{"deploy/helm/netinspect/values.yaml", "image.tag", regexp.MustCompile(`(?m)^  tag: (\S+)$`)},
	{"CHANGELOG.md", "newest release section", regexp.MustCompile(`(?m)^## (v\S+)`)},
}

// shippedVersions reads each field under root; the chart's version gets
// its v back so that all compare equal.
func shippedVersions(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, f := range shippedFields {
		b, err := os.ReadFile(filepath.Join(root, f.file))
		if err != nil {
			t.Fatal(err)
		}
		m := f.re.FindSubmatch(b)
		if m == nil {
			t.Errorf("%s: no %s", f.file, f.what)
			continue
		}
		v := string(m[1])
		if strings.HasPrefix(f.what, "version") {
			v = "v" + v
		}
		out[f.file+" "+f.what] = v
	}
	return out
}

var releaseVersion = regexp.MustCompile(`^v(\d+)\.(\d+)\.(\d+)$`)

// notOlder reports whether release a is b or newer.
func notOlder(a, b string) bool {
	ma, mb := releaseVersion.FindStringSubmatch(a), releaseVersion.FindStringSubmatch(b)
	for i := 1; i <= 3; i++ {
		x, _ := strconv.Atoi(ma[i])
		y, _ := strconv.Atoi(mb[i])
		if x != y {
			return x > y
		}
	}
	return true
}

// The manifests ship one release version, CHANGELOG.md's newest: the
// newest git tag, or the release being prepared after it.
func TestShippedVersionsAgree(t *testing.T) {
	got := shippedVersions(t, "../..")
	want := got["CHANGELOG.md newest release section"]
	if !releaseVersion.MatchString(want) {
		t.Fatalf("CHANGELOG.md's newest section is %q, want a release vMAJOR.MINOR.PATCH", want)
	}
	for field, v := range got {
		if v != want {
			t.Errorf("%s is %s, CHANGELOG.md's newest release is %s: run `make release-version RELEASE=%s`", field, v, want, want)
		}
	}
	out, err := exec.Command("git", "tag", "--list", "v*", "--merged", "HEAD").Output()
	if err != nil {
		t.Fatalf("git tag: %v", err)
	}
	var newest string
	for _, tag := range strings.Fields(string(out)) {
		if releaseVersion.MatchString(tag) && (newest == "" || notOlder(tag, newest)) {
			newest = tag
		}
	}
	if newest == "" {
		t.Logf("no release tag yet: the manifests name %s, the first release (tag it on the commit that ships it)", want)
		return
	}
	if !notOlder(want, newest) {
		t.Errorf("the manifests name %s, older than the newest tag %s", want, newest)
	}
}

// No file we ship names the image `latest` or leaves its tag out.
func TestNothingShippedSaysLatest(t *testing.T) {
	files := []string{"../../Dockerfile"}
	err := filepath.WalkDir("..", func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch filepath.Ext(p) {
		case ".yaml", ".yml", ".tpl":
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	latest := regexp.MustCompile(`(?i)(:|tag: *|newTag: *|appVersion: *)"?latest\b`)
	untagged := regexp.MustCompile(`(?m)^\s*image: *"?ghcr\.io/netinspect/netinspect"?\s*$`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if m := latest.Find(b); m != nil {
			t.Errorf("%s names latest: %q", f, m)
		}
		if m := untagged.Find(b); m != nil {
			t.Errorf("%s names the image without a tag: %q", f, m)
		}
	}
	if len(files) < 10 {
		t.Errorf("only %d files checked: %v", len(files), files)
	}
}

// release-version.sh rewrites every field, and only those, and refuses
// what is not a release or has no CHANGELOG.md section.
func TestReleaseVersionRewritesEveryField(t *testing.T) {
	root := t.TempDir()
	originals := map[string]string{}
	for _, f := range shippedFields {
		b, err := os.ReadFile(filepath.Join("../..", f.file))
		if err != nil {
			t.Fatal(err)
		}
		if f.file == "CHANGELOG.md" {
			b = []byte(strings.Replace(string(b), "\n## ", "\n## v9.8.7\n\nA test release.\n\n## ", 1))
		}
		dst := filepath.Join(root, f.file)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		originals[f.file] = string(b)
	}
	run := func(v string) (string, int) {
		out, err := exec.Command("./release-version.sh", v, root).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return string(out), ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), 0
	}
	for _, bad := range []struct {
		v    string
		code int
		want string
	}{
		{"v9.8.7-3-gabc1234", 2, "not a release version"},
		{"abc1234-dirty", 2, "not a release version"},
		{"latest", 2, "not a release version"},
		{"", 2, "not a release version"},
		{"v9.9.9", 1, `CHANGELOG.md has no "## v9.9.9" section`},
	} {
		if out, code := run(bad.v); code != bad.code || !strings.Contains(out, bad.want) {
			t.Errorf("release-version.sh %q: exit %d %q, want exit %d and %q", bad.v, code, out, bad.code, bad.want)
		}
	}
	if out, code := run("v9.8.7"); code != 0 {
		t.Fatalf("release-version.sh v9.8.7: exit %d\n%s", code, out)
	}
	for field, v := range shippedVersions(t, root) {
		if v != "v9.8.7" {
			t.Errorf("after release-version.sh v9.8.7, %s is %s", field, v)
		}
	}
	// Nothing but those lines changed: one per field, the CHANGELOG's
	// heading (read, not written) excepted.
	changed := 0
	for file, was := range originals {
		b, _ := os.ReadFile(filepath.Join(root, file))
		wasLines, nowLines := strings.Split(was, "\n"), strings.Split(string(b), "\n")
		if len(wasLines) != len(nowLines) {
			t.Fatalf("%s: %d lines, was %d", file, len(nowLines), len(wasLines))
		}
		for j := range wasLines {
			if wasLines[j] != nowLines[j] {
				changed++
			}
		}
	}
	if want := len(shippedFields) - 1; changed != want {
		t.Errorf("release-version.sh changed %d lines, want %d", changed, want)
	}
}

// A checkout with uncommitted changes builds -dirty versions: make's
// VERSION for the binary (--version, build_info) and the image tag, which
// make image-push refuses.
func TestDirtyTreeGivesDirtyVersions(t *testing.T) {
	testenv.RequireCommand(t, "git")
	testenv.RequireCommand(t, "go")
	testenv.RequireCommand(t, "make")
	clone := t.TempDir()
	if out, err := exec.Command("git", "clone", "--quiet", "--no-hardlinks", "../..", clone).CombinedOutput(); err != nil {
		t.Fatalf("git clone: %v\n%s", err, out)
	}
	version := func() string {
		t.Helper()
		out, err := exec.Command(filepath.Join(clone, "deploy/image/version.sh")).Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	clean := version()
	if strings.HasSuffix(clean, "-dirty") || clean == "dev" {
		t.Fatalf("a fresh clone's version is %q", clean)
	}
	readme := filepath.Join(clone, "README.md")
	b, err := os.ReadFile(readme)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(readme, append(b, "\nan uncommitted change\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	dirty := version()
	if dirty != clean+"-dirty" {
		t.Errorf("with an uncommitted change the version is %q, want %q", dirty, clean+"-dirty")
	}

	// build.sh and image.sh take the version from version.sh (the image
	// tests check the binary's and the image's against it); make passes
	// it on.
	out, err := exec.Command("make", "-C", clone, "--no-print-directory", "-n", "build").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "VERSION="+dirty+" ") {
		t.Errorf("make -n build in the dirty clone: %v\n%s\nwant VERSION=%s", err, out, dirty)
	}
	out, err = exec.Command("make", "-C", clone, "--no-print-directory", "-n", "image").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "VERSION="+dirty+" ") {
		t.Errorf("make -n image in the dirty clone: %v\n%s\nwant VERSION=%s", err, out, dirty)
	}
	out, err = exec.Command("make", "-C", clone, "--no-print-directory", "image-push", "REGISTRY=registry.example.com/team").CombinedOutput()
	if err == nil || !strings.Contains(string(out), fmt.Sprintf("refusing to push registry.example.com/team/netinspect:%s: the version says -dirty", dirty)) {
		t.Errorf("make image-push in the dirty clone: %v\n%s", err, out)
	}
}
