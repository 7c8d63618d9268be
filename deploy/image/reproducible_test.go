package image

import (
	"bytes"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Built twice from the same source, the image is the same to the byte:
// the archives, the index digest a registry will report, every manifest.
// The second build runs the Go builds and the assembly again on the cached
// Debian root filesystems; a third builds the amd64 root filesystem afresh
// with mmdebstrap from the mirror, which must give the same image when it
// downloads the same package versions.
func TestImageIsReproducible(t *testing.T) {
	a := sharedImage(t)
	b, err := runImageSh(t, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if a.digest != b.digest {
		t.Errorf("index digest %s, then %s", a.digest, b.digest)
	}
	for _, name := range []string{
		"netinspect-" + a.version + ".oci.tar",
		"netinspect-" + a.version + "-linux-amd64.docker.tar",
		"netinspect-" + a.version + "-linux-arm64.docker.tar",
		"netinspect-linux-amd64",
		"netinspect-linux-arm64",
	} {
		x, err := os.ReadFile(filepath.Join(a.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(filepath.Join(b.dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between two builds", name)
		}
	}

	want := readOCIArchive(t, a.ociTar)
	wantImg := want.images(t)["amd64"]
	fresh := func() (*ociArchive, platformImage) {
		c, err := runImageSh(t, t.TempDir(), "NETINSPECT_CACHE="+t.TempDir(), "PLATFORMS=linux/amd64")
		if err != nil {
			t.Fatal(err)
		}
		arc := readOCIArchive(t, c.ociTar)
		return arc, arc.images(t)["amd64"]
	}
	got, gotImg := fresh()
	if gotImg.desc.Digest == wantImg.desc.Digest {
		return
	}
	// Debian may have published a package between the cached build and
	// this one: then compare two fresh builds instead.
	versions := func(a *ociArchive, p platformImage) string {
		return strings.Join(sortedPackages(dpkgStatus(t, a.files(t, p)["var/lib/dpkg/status"].data)), " ")
	}
	if vw, vg := versions(want, wantImg), versions(got, gotImg); vw != vg {
		t.Logf("the cached root filesystem has other package versions than the mirror now:\ncached: %s\nmirror: %s", vw, vg)
		again, againImg := fresh()
		if againImg.desc.Digest != gotImg.desc.Digest {
			t.Errorf("two fresh linux/amd64 builds: manifests %s and %s (packages %s and %s)",
				gotImg.desc.Digest, againImg.desc.Digest, versions(got, gotImg), versions(again, againImg))
		}
		return
	}
	t.Errorf("linux/amd64 from a fresh root filesystem: manifest %s, from the cached one %s, with the same package versions;\nlayers %v and %v",
		gotImg.desc.Digest, wantImg.desc.Digest, gotImg.manifest.Layers, wantImg.manifest.Layers)
}

func sortedPackages(m map[string]dpkgPackage) []string {
	var out []string
	for p, st := range m {
		out = append(out, p+"="+st.version)
	}
	sort.Strings(out)
	return out
}
