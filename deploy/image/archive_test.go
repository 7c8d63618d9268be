package image

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	specs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/netinspect/netinspect/test/testenv"
)

// The tests read the image archive with the standard library and the OCI
// image-spec types only, not with go-containerregistry that wrote it, and
// cross-check it with skopeo (containers/image, a third implementation).

// built is one run of image.sh.
type built struct {
	dir      string // image.sh's OUTDIR
	version  string
	revision string
	epoch    time.Time
	ociTar   string // OUTDIR/netinspect-VERSION.oci.tar
	digest   string // OUTDIR/netinspect-VERSION.digest
}

var (
	sharedOnce  sync.Once
	sharedBuild *built
	sharedErr   error
	sharedDir   string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}

// requireImageTools stops the test unless image.sh can run: root
// (mmdebstrap's root mode), mmdebstrap, dpkg-deb, go and skopeo.
func requireImageTools(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, c := range []string{"mmdebstrap", "dpkg-deb", "go", "skopeo"} {
		testenv.RequireCommand(t, c)
	}
}

// runImageSh runs image.sh into outdir with env added and returns what it
// built. The Debian root filesystems come from the cache rootfs.sh keeps
// (NETINSPECT_CACHE when env sets it).
func runImageSh(t *testing.T, outdir string, env ...string) (*built, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./image.sh", outdir)
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("image.sh: %w\n%s", err, out.Bytes())
	}
	t.Logf("image.sh %s took %v", strings.Join(env, " "), time.Since(start).Round(time.Second))
	b := &built{dir: outdir}
	for _, x := range []struct {
		dst  *string
		what string
	}{{&b.version, "version"}, {&b.revision, "revision"}} {
		v, err := exec.Command("./version.sh", x.what).Output()
		if err != nil {
			return nil, err
		}
		*x.dst = strings.TrimSpace(string(v))
	}
	e, err := exec.Command("./version.sh", "epoch").Output()
	if err != nil {
		return nil, err
	}
	var sec int64
	fmt.Sscan(string(e), &sec)
	b.epoch = time.Unix(sec, 0).UTC()
	last := strings.Split(strings.TrimSpace(out.String()), "\n")
	b.ociTar = last[len(last)-1]
	if want := filepath.Join(outdir, "netinspect-"+b.version+".oci.tar"); b.ociTar != want {
		return nil, fmt.Errorf("image.sh's last line %q, want %s\n%s", b.ociTar, want, out.Bytes())
	}
	d, err := os.ReadFile(strings.TrimSuffix(b.ociTar, ".oci.tar") + ".digest")
	if err != nil {
		return nil, err
	}
	b.digest = strings.TrimSpace(string(d))
	return b, nil
}

// sharedImage is the image built once for the tests that only read it.
func sharedImage(t *testing.T) *built {
	t.Helper()
	requireImageTools(t)
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "netinspect-image-test-")
		if sharedErr == nil {
			sharedBuild, sharedErr = runImageSh(t, sharedDir)
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedBuild
}

// ociArchive is an OCI image layout archive read into memory.
type ociArchive struct {
	entries map[string][]byte // by path in the archive
}

func readOCIArchive(t *testing.T, file string) *ociArchive {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	a := &ociArchive{entries: map[string][]byte{}}
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return a
		}
		if err != nil {
			t.Fatalf("read %s: %v", file, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			a.entries[h.Name] = b
		}
	}
}

// blob returns a blob by digest, checking that its content has that digest.
func (a *ociArchive) blob(t *testing.T, d string) []byte {
	t.Helper()
	hexd, ok := strings.CutPrefix(d, "sha256:")
	if !ok {
		t.Fatalf("digest %s is not sha256", d)
	}
	b, ok := a.entries["blobs/sha256/"+hexd]
	if !ok {
		t.Fatalf("blob %s not in the archive", d)
	}
	if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != hexd {
		t.Fatalf("blob %s has digest sha256:%x", d, sum)
	}
	return b
}

func (a *ociArchive) decode(t *testing.T, d string, into any) {
	t.Helper()
	if err := json.Unmarshal(a.blob(t, d), into); err != nil {
		t.Fatalf("decode blob %s: %v", d, err)
	}
}

// layoutIndex is index.json; index is the image index it names.
func (a *ociArchive) layoutIndex(t *testing.T) specs.Index {
	t.Helper()
	var idx specs.Index
	if err := json.Unmarshal(a.entries["index.json"], &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	return idx
}

func (a *ociArchive) index(t *testing.T) (specs.Index, specs.Descriptor) {
	t.Helper()
	top := a.layoutIndex(t)
	if len(top.Manifests) != 1 || top.Manifests[0].MediaType != specs.MediaTypeImageIndex {
		t.Fatalf("index.json holds %+v, want one image index", top.Manifests)
	}
	var idx specs.Index
	a.decode(t, string(top.Manifests[0].Digest), &idx)
	return idx, top.Manifests[0]
}

// platformImage is one architecture's manifest and config.
type platformImage struct {
	desc     specs.Descriptor
	manifest specs.Manifest
	config   specs.Image
}

func (a *ociArchive) images(t *testing.T) map[string]platformImage {
	t.Helper()
	idx, _ := a.index(t)
	out := map[string]platformImage{}
	for _, d := range idx.Manifests {
		if d.Platform == nil {
			t.Fatalf("index entry %s has no platform", d.Digest)
		}
		var p platformImage
		p.desc = d
		a.decode(t, string(d.Digest), &p.manifest)
		a.decode(t, string(p.manifest.Config.Digest), &p.config)
		out[d.Platform.Architecture] = p
	}
	return out
}

// layerFile is one entry of an image's file system.
type layerFile struct {
	hdr  tar.Header
	data []byte
}

// files applies an image's layers in order (no layer of this image
// deletes anything: a whiteout is an error) and checks each layer's
// uncompressed digest against the config's diff_ids.
func (a *ociArchive) files(t *testing.T, p platformImage) map[string]*layerFile {
	t.Helper()
	if len(p.manifest.Layers) != len(p.config.RootFS.DiffIDs) {
		t.Fatalf("%d layers, %d diff_ids", len(p.manifest.Layers), len(p.config.RootFS.DiffIDs))
	}
	fs := map[string]*layerFile{}
	for i, l := range p.manifest.Layers {
		if l.MediaType != specs.MediaTypeImageLayerGzip {
			t.Errorf("layer %s media type %s", l.Digest, l.MediaType)
		}
		zr, err := gzip.NewReader(bytes.NewReader(a.blob(t, string(l.Digest))))
		if err != nil {
			t.Fatal(err)
		}
		raw, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(raw); "sha256:"+hex.EncodeToString(sum[:]) != string(p.config.RootFS.DiffIDs[i]) {
			t.Errorf("layer %d: uncompressed digest sha256:%x, config's diff_id %s", i, sum, p.config.RootFS.DiffIDs[i])
		}
		tr := tar.NewReader(bytes.NewReader(raw))
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := strings.Trim(path.Clean("/"+h.Name), "/")
			if strings.HasPrefix(path.Base(name), ".wh.") {
				t.Fatalf("layer %d deletes %s: no layer of this image should", i, name)
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			fs[name] = &layerFile{hdr: *h, data: b}
		}
	}
	return fs
}

// resolve follows symlinks in an image's file system as the kernel would
// inside the container and returns the final path. It is mkimage's
// fileTree.resolve written again on purpose: the tests check the image
// without the code that made it.
func resolve(fs map[string]*layerFile, name string) (string, error) {
	cur := ""
	rest := strings.Split(strings.Trim(name, "/"), "/")
	for hops := 0; len(rest) > 0; {
		part := rest[0]
		rest = rest[1:]
		switch part {
		case "", ".":
			continue
		case "..":
			if cur = path.Dir(cur); cur == "." {
				cur = ""
			}
			continue
		}
		next := path.Join(cur, part)
		f, ok := fs[next]
		if !ok {
			return "", fmt.Errorf("%s: %s does not exist", name, next)
		}
		if f.hdr.Typeflag != tar.TypeSymlink {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", fmt.Errorf("%s: too many levels of symbolic links", name)
		}
		if strings.HasPrefix(f.hdr.Linkname, "/") {
			cur = ""
		}
		rest = append(strings.Split(strings.Trim(f.hdr.Linkname, "/"), "/"), rest...)
	}
	return cur, nil
}

// unpack extracts an image's layers into a new directory with GNU tar, as
// a container runtime would apply them, for running what is inside.
func unpack(t *testing.T, a *ociArchive, p platformImage) string {
	t.Helper()
	dir := t.TempDir()
	for _, l := range p.manifest.Layers {
		cmd := exec.Command("tar", "-xzf", "-", "-C", dir, "--same-owner", "--numeric-owner")
		cmd.Stdin = bytes.NewReader(a.blob(t, string(l.Digest)))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("unpack layer %s: %v\n%s", l.Digest, err, out)
		}
	}
	return dir
}
