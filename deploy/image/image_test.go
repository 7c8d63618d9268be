package image

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os/exec"
	"path"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/image-spec/specs-go/v1"
)

// What every architecture's image must say and hold.
const (
	imageName  = "ghcr.io/netinspect/netinspect"
	pathEnv    = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	exporter   = "usr/bin/netinspect"
	sourceURL  = "https://github.com/netinspect/netinspect"
	licenseTag = "NOASSERTION"
)

// arches are the platforms make image builds, with the ELF machine and
// Debian multiarch directory of each.
var arches = map[string]struct {
	machine elf.Machine
	triplet string
}{
	"amd64": {elf.EM_X86_64, "x86_64-linux-gnu"},
	"arm64": {elf.EM_AARCH64, "aarch64-linux-gnu"},
}

func TestImageIndexAndConfig(t *testing.T) {
	b := sharedImage(t)
	a := readOCIArchive(t, b.ociTar)

	var lay specs.ImageLayout
	if err := json.Unmarshal(a.entries["oci-layout"], &lay); err != nil || lay.Version != specs.ImageLayoutVersion {
		t.Errorf("oci-layout %q (%v), want version %s", a.entries["oci-layout"], err, specs.ImageLayoutVersion)
	}
	idx, top := a.index(t)
	if string(top.Digest) != b.digest {
		t.Errorf("index digest %s, image.sh's .digest file says %s", top.Digest, b.digest)
	}
	wantRef := map[string]string{
		"org.opencontainers.image.ref.name": b.version,
		"io.containerd.image.name":          imageName + ":" + b.version,
	}
	for k, v := range wantRef {
		if top.Annotations[k] != v {
			t.Errorf("index.json annotation %s=%q, want %q", k, top.Annotations[k], v)
		}
	}
	wantLabels := map[string]string{
		"org.opencontainers.image.source":   sourceURL,
		"org.opencontainers.image.revision": b.revision,
		"org.opencontainers.image.version":  b.version,
		"org.opencontainers.image.licenses": licenseTag,
		"org.opencontainers.image.created":  b.epoch.Format(time.RFC3339),
		"org.opencontainers.image.title":    "netinspect",
	}
	checkLabels := func(what string, got map[string]string) {
		t.Helper()
		for k, v := range wantLabels {
			if got[k] != v {
				t.Errorf("%s: %s=%q, want %q", what, k, got[k], v)
			}
		}
	}
	checkLabels("index annotations", idx.Annotations)

	var platforms []string
	for _, d := range idx.Manifests {
		platforms = append(platforms, d.Platform.OS+"/"+d.Platform.Architecture)
		if d.MediaType != specs.MediaTypeImageManifest {
			t.Errorf("%s: media type %s", d.Digest, d.MediaType)
		}
	}
	if !slices.Equal(platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Fatalf("index platforms %v, want linux/amd64 and linux/arm64", platforms)
	}
	for arch, img := range a.images(t) {
		t.Run(arch, func(t *testing.T) {
			c := img.config
			if c.Architecture != arch || c.OS != "linux" || img.desc.Platform.Architecture != arch {
				t.Errorf("config says %s/%s, index says %s", c.OS, c.Architecture, img.desc.Platform.Architecture)
			}
			if !slices.Equal(c.Config.Entrypoint, []string{"/" + exporter}) || len(c.Config.Cmd) != 0 {
				t.Errorf("entrypoint %q cmd %q, want [/%s] and none", c.Config.Entrypoint, c.Config.Cmd, exporter)
			}
			if c.Config.User != "0:0" {
				t.Errorf("user %q, want 0:0 (deploy/daemonset.yaml runs as uid 0)", c.Config.User)
			}
			if !slices.Equal(c.Config.Env, []string{pathEnv}) {
				t.Errorf("env %q, want [%s]", c.Config.Env, pathEnv)
			}
			if _, ok := c.Config.ExposedPorts["10271/tcp"]; !ok || len(c.Config.ExposedPorts) != 1 {
				t.Errorf("exposed ports %v, want 10271/tcp", c.Config.ExposedPorts)
			}
			if c.Created == nil || !c.Created.Equal(b.epoch) {
				t.Errorf("created %v, want the commit's time %v", c.Created, b.epoch)
			}
			checkLabels("config labels", c.Config.Labels)
			checkLabels("manifest annotations", img.manifest.Annotations)
			if len(c.History) != len(img.manifest.Layers) {
				t.Errorf("%d history entries for %d layers", len(c.History), len(img.manifest.Layers))
			}
			for _, h := range c.History {
				if h.Created == nil || !h.Created.Equal(b.epoch) || h.CreatedBy == "" {
					t.Errorf("history entry %+v, want created at the commit's time and a created_by", h)
				}
			}
		})
	}
}

func TestImageFiles(t *testing.T) {
	b := sharedImage(t)
	a := readOCIArchive(t, b.ociTar)
	packages := packagesScript(t, "list")
	suite := packagesScript(t, "suite")[0]
	for arch, img := range a.images(t) {
		t.Run(arch, func(t *testing.T) {
			fs := a.files(t, img)
			want := arches[arch]

			// The exporter: a static binary for this architecture.
			bin := fs[exporter]
			if bin == nil || bin.hdr.Typeflag != tar.TypeReg || bin.hdr.Mode&0o777 != 0o755 || bin.hdr.Uid != 0 {
				t.Fatalf("%s: %+v, want a root-owned 0755 file", exporter, bin)
			}
			f, err := elf.NewFile(bytes.NewReader(bin.data))
			if err != nil {
				t.Fatalf("%s: %v", exporter, err)
			}
			if f.Machine != want.machine {
				t.Errorf("%s is for %v, want %v", exporter, f.Machine, want.machine)
			}
			if libs, _ := f.ImportedLibraries(); len(libs) > 0 || slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP }) {
				t.Errorf("%s is not static: needs %v", exporter, libs)
			}
			if !bin.hdr.ModTime.Equal(b.epoch) {
				t.Errorf("%s time %v, want the commit's %v", exporter, bin.hdr.ModTime, b.epoch)
			}

			// What the rule collectors run, and the alternatives that
			// pick the nft backend as Debian's postinst does.
			resolves := map[string]string{
				"usr/sbin/iptables-nft-save":     "usr/sbin/xtables-nft-multi",
				"usr/sbin/ip6tables-nft-save":    "usr/sbin/xtables-nft-multi",
				"usr/sbin/iptables-legacy-save":  "usr/sbin/xtables-legacy-multi",
				"usr/sbin/ip6tables-legacy-save": "usr/sbin/xtables-legacy-multi",
				"usr/sbin/nft":                   "usr/sbin/nft",
				"usr/sbin/conntrack":             "usr/sbin/conntrack",
				"sbin/iptables-save":             "usr/sbin/xtables-nft-multi",
				"bin/awk":                        "usr/bin/mawk",
				"var/run":                        "run",
				"var/lock":                       "run/lock",
			}
			for name, target := range resolves {
				if got, err := resolve(fs, name); err != nil || got != target {
					t.Errorf("%s resolves to %q (%v), want %s", name, got, err, target)
				}
			}
			links := map[string]string{
				"usr/sbin/iptables":               "/etc/alternatives/iptables",
				"etc/alternatives/iptables":       "/usr/sbin/iptables-nft",
				"usr/sbin/iptables-save":          "/etc/alternatives/iptables-save",
				"etc/alternatives/iptables-save":  "/usr/sbin/iptables-nft-save",
				"usr/sbin/ip6tables":              "/etc/alternatives/ip6tables",
				"etc/alternatives/ip6tables":      "/usr/sbin/ip6tables-nft",
				"usr/sbin/ip6tables-save":         "/etc/alternatives/ip6tables-save",
				"etc/alternatives/ip6tables-save": "/usr/sbin/ip6tables-nft-save",
				"usr/sbin/iptables-restore":       "/etc/alternatives/iptables-restore",
				"usr/sbin/ip6tables-restore":      "/etc/alternatives/ip6tables-restore",
			}
			for name, target := range links {
				if l := fs[name]; l == nil || l.hdr.Typeflag != tar.TypeSymlink || l.hdr.Linkname != target {
					t.Errorf("%s: %+v, want a symlink to %s", name, l, target)
				}
			}

			// Every ELF file is for this architecture and finds its
			// loader and libraries in the image, where the loader
			// looks without an ld.so.cache.
			dirs := []string{"lib/" + want.triplet, "usr/lib/" + want.triplet, "lib", "usr/lib"}
			elves := 0
			for name, lf := range fs {
				if lf.hdr.Typeflag != tar.TypeReg || !bytes.HasPrefix(lf.data, []byte("\x7fELF")) {
					continue
				}
				elves++
				ef, err := elf.NewFile(bytes.NewReader(lf.data))
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				if ef.Machine != want.machine {
					t.Errorf("%s is for %v, want %v", name, ef.Machine, want.machine)
				}
				for _, p := range ef.Progs {
					if p.Type != elf.PT_INTERP {
						continue
					}
					interp := make([]byte, p.Filesz)
					p.ReadAt(interp, 0)
					if _, err := resolve(fs, strings.TrimRight(string(interp), "\x00")); err != nil {
						t.Errorf("%s: loader: %v", name, err)
					}
				}
				// DT_RUNPATH/DT_RPATH first ($ORIGIN: the file's own
				// directory; glibc's gconv modules use it).
				var search []string
				for _, tag := range []elf.DynTag{elf.DT_RUNPATH, elf.DT_RPATH} {
					rp, _ := ef.DynString(tag)
					for _, r := range rp {
						for _, d := range strings.Split(r, ":") {
							search = append(search, strings.ReplaceAll(d, "$ORIGIN", "/"+path.Dir(name)))
						}
					}
				}
				search = append(search, dirs...)
				libs, _ := ef.ImportedLibraries()
				for _, lib := range libs {
					if !slices.ContainsFunc(search, func(d string) bool { _, err := resolve(fs, d+"/"+lib); return err == nil }) {
						t.Errorf("%s needs %s, which is in none of %v", name, lib, search)
					}
				}
			}
			if elves < 50 {
				t.Errorf("only %d ELF files in the image", elves)
			}

			// No file capabilities or set-id bits anywhere: the process
			// runs with the capabilities deploy/daemonset.yaml grants,
			// the same on both architectures.
			for name, lf := range fs {
				if lf.hdr.Mode&0o6000 != 0 {
					t.Errorf("%s is set-id (mode %o)", name, lf.hdr.Mode)
				}
				for k := range lf.hdr.PAXRecords {
					if strings.HasPrefix(k, "SCHILY.xattr.") {
						t.Errorf("%s carries extended attribute %s", name, k)
					}
				}
				if lf.hdr.Uname != "" || lf.hdr.Gname != "" {
					t.Errorf("%s has owner names %q/%q, want numeric owners only", name, lf.hdr.Uname, lf.hdr.Gname)
				}
			}
			if tmp := fs["tmp"]; tmp == nil || tmp.hdr.Mode&0o7777 != 0o1777 {
				t.Errorf("tmp: %+v, want a 1777 directory", tmp)
			}
			for _, gone := range []string{"etc/resolv.conf", "etc/hostname", "etc/apt", "var/lib/apt", "var/cache/apt", "dev/null", "usr/share/man/man8/iptables.8.gz"} {
				if fs[gone] != nil {
					t.Errorf("%s is in the image", gone)
				}
			}
			if fs["usr/share/doc/iptables/copyright"] == nil {
				t.Error("iptables's copyright file is not in the image")
			}
			if !bytes.HasPrefix(fs["etc/passwd"].data, []byte("root:x:0:0:")) {
				t.Errorf("etc/passwd: %q", fs["etc/passwd"].data)
			}
			osRelease, err := resolve(fs, "etc/os-release")
			if err != nil || !strings.Contains(string(fs[osRelease].data), "VERSION_CODENAME="+suite+"\n") {
				t.Errorf("etc/os-release (%v) does not say Debian %s", err, suite)
			}

			// The dpkg database lists every package of the list, for
			// this architecture, installed: what image scanners read.
			installed := dpkgStatus(t, fs["var/lib/dpkg/status"].data)
			for _, p := range packages {
				st, ok := installed[p]
				if !ok {
					t.Errorf("package %s of deploy/image/packages is not in var/lib/dpkg/status", p)
					continue
				}
				if st.arch != arch && st.arch != "all" {
					t.Errorf("package %s is for %s", p, st.arch)
				}
			}
			for p, st := range installed {
				if st.status != "install ok installed" || st.version == "" {
					t.Errorf("package %s: status %q version %q", p, st.status, st.version)
				}
				if fs["var/lib/dpkg/info/"+p+".list"] == nil && fs["var/lib/dpkg/info/"+p+":"+st.arch+".list"] == nil {
					t.Errorf("package %s has no file list in var/lib/dpkg/info", p)
				}
			}
			t.Logf("linux/%s: %d files, %d ELF, %d Debian packages", arch, len(fs), elves, len(installed))
		})
	}
}

type dpkgPackage struct{ version, arch, status string }

// dpkgStatus parses /var/lib/dpkg/status: stanzas of "Field: value".
func dpkgStatus(t *testing.T, b []byte) map[string]dpkgPackage {
	t.Helper()
	out := map[string]dpkgPackage{}
	for _, stanza := range strings.Split(strings.TrimSpace(string(b)), "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if k, v, ok := strings.Cut(line, ": "); ok && !strings.HasPrefix(line, " ") {
				fields[k] = v
			}
		}
		if fields["Package"] == "" {
			t.Fatalf("status stanza without Package: %q", stanza)
		}
		out[fields["Package"]] = dpkgPackage{version: fields["Version"], arch: fields["Architecture"], status: fields["Status"]}
	}
	return out
}

// The amd64 and arm64 images hold the same files, but for the multiarch
// directory names and each architecture's dynamic loader (the ELF ABI's
// path for it): the same packages, unpacked and configured the same way.
func TestImagesOfBothArchitecturesHoldTheSameFiles(t *testing.T) {
	b := sharedImage(t)
	a := readOCIArchive(t, b.ociTar)
	imgs := a.images(t)
	lists := map[string][]string{}
	for arch, img := range imgs {
		for name := range a.files(t, img) {
			name = strings.ReplaceAll(name, arches[arch].triplet, "<triplet>")
			name = strings.ReplaceAll(name, ":"+arch+".", ":<arch>.")
			lists[arch] = append(lists[arch], name)
		}
	}
	onlyIn := func(x, y string) []string {
		var out []string
		for _, n := range lists[x] {
			if !slices.Contains(lists[y], n) {
				out = append(out, n)
			}
		}
		sort.Strings(out)
		return out
	}
	loaders := map[string][]string{
		"amd64": {"lib64", "usr/lib/<triplet>/ld-linux-x86-64.so.2", "usr/lib64", "usr/lib64/ld-linux-x86-64.so.2"},
		"arm64": {"usr/lib/<triplet>/ld-linux-aarch64.so.1", "usr/lib/ld-linux-aarch64.so.1"},
	}
	if got := onlyIn("amd64", "arm64"); !slices.Equal(got, loaders["amd64"]) {
		t.Errorf("only in the amd64 image: %q, want its loader only: %q", got, loaders["amd64"])
	}
	if got := onlyIn("arm64", "amd64"); !slices.Equal(got, loaders["arm64"]) {
		t.Errorf("only in the arm64 image: %q, want its loader only: %q", got, loaders["arm64"])
	}
}

// The docker-archives hold the same images, tagged IMAGE:VERSION.
func TestDockerArchives(t *testing.T) {
	b := sharedImage(t)
	imgs := readOCIArchive(t, b.ociTar).images(t)
	for arch, img := range imgs {
		file := fmt.Sprintf("%s/netinspect-%s-linux-%s.docker.tar", b.dir, b.version, arch)
		d := readOCIArchive(t, file) // a tar of files, too
		var manifest []struct {
			Config   string
			RepoTags []string
			Layers   []string
		}
		if err := json.Unmarshal(d.entries["manifest.json"], &manifest); err != nil {
			t.Fatalf("%s: manifest.json: %v", file, err)
		}
		if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{imageName + ":" + b.version}) {
			t.Fatalf("%s: manifest.json %+v, want one image tagged %s:%s", file, manifest, imageName, b.version)
		}
		if want := strings.TrimPrefix(string(img.manifest.Config.Digest), "sha256:"); !strings.Contains(manifest[0].Config, want) {
			t.Errorf("%s holds config %s, the OCI archive's linux/%s image has %s", file, manifest[0].Config, arch, want)
		}
		if len(manifest[0].Layers) != len(img.manifest.Layers) {
			t.Errorf("%s: %d layers, want %d", file, len(manifest[0].Layers), len(img.manifest.Layers))
		}
	}
}

// skopeo (containers/image) reads the archive as an OCI layout and
// finds each architecture's image by platform.
func TestSkopeoReadsTheArchive(t *testing.T) {
	b := sharedImage(t)
	for arch := range arches {
		out, err := exec.Command("skopeo", "inspect", "--override-os", "linux", "--override-arch", arch, "oci-archive:"+b.ociTar).Output()
		if err != nil {
			t.Fatalf("skopeo inspect linux/%s: %v", arch, err)
		}
		var got struct {
			Architecture, Os string
			Labels           map[string]string
			Digest           string
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		if got.Architecture != arch || got.Os != "linux" || got.Labels["org.opencontainers.image.version"] != b.version {
			t.Errorf("skopeo sees linux/%s as %s/%s version %q", arch, got.Os, got.Architecture, got.Labels["org.opencontainers.image.version"])
		}
	}
	raw, err := exec.Command("skopeo", "inspect", "--raw", "oci-archive:"+b.ociTar+":"+b.version).Output()
	if err != nil {
		t.Fatalf("skopeo inspect --raw by tag %s: %v", b.version, err)
	}
	var idx specs.Index
	if err := json.Unmarshal(raw, &idx); err != nil || idx.MediaType != specs.MediaTypeImageIndex || len(idx.Manifests) != 2 {
		t.Errorf("skopeo's raw manifest is not the two-platform index: %v %s", err, raw)
	}
}
