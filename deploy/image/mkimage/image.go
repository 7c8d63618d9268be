package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/opencontainers/go-digest"
	specsgo "github.com/opencontainers/image-spec/specs-go"
	specs "github.com/opencontainers/image-spec/specs-go/v1"
)

// Where the exporter lives in the image and what it runs as. deploy/'s
// DaemonSet runs it as uid 0 with every capability dropped but four: the
// image carries no file capabilities, on any architecture.
const (
	entrypoint = "/usr/bin/netinspect"
	user       = "0:0"
	// Debian's default PATH: the iptables collector looks up
	// iptables-nft-save and the others on it.
	pathEnv     = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	metricsPort = "10271/tcp"
)

// meta is what the labels, annotations and names of the image say.
type meta struct {
	repository string    // ghcr.io/netinspect/netinspect
	version    string    // git describe
	revision   string    // commit hash
	created    time.Time // SOURCE_DATE_EPOCH: the commit's time
	source     string    // https://github.com/netinspect/netinspect
	licenses   string    // SPDX expression
	base       string    // Debian release, e.g. "debian trixie"
}

// labels are both the config's labels and the manifests' and index's
// annotations (org.opencontainers.image.*, the OCI pre-defined keys).
func (m meta) labels() map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "netinspect",
		"org.opencontainers.image.description": "Kubernetes node networking exporter for Prometheus: conntrack, kube-proxy rules, IPVS, pod veths.",
		"org.opencontainers.image.source":      m.source,
		"org.opencontainers.image.url":         m.source,
		"org.opencontainers.image.revision":    m.revision,
		"org.opencontainers.image.version":     m.version,
		"org.opencontainers.image.licenses":    m.licenses,
		"org.opencontainers.image.created":     m.created.UTC().Format(time.RFC3339),
		"org.opencontainers.image.base.name":   m.base,
	}
}

// platformInput is one architecture's root filesystem and binary.
type platformInput struct {
	arch   string // GOARCH and OCI architecture: amd64, arm64
	rootfs string // rootfs.sh's tarball
	binary string // build.sh's static binary for arch
}

// gzipLayer compresses a layer tar once (ggcr takes gzip input as is, so
// its digest is computed without compressing again). klauspost/compress's
// gzip (the one ggcr's zstd support already brings) is about eight times
// faster than compress/gzip at the default level for 3% more bytes; like
// it, it writes no time or name into the header and compresses on one
// goroutine: the same tar gives the same bytes.
func gzipLayer(tarBytes []byte) (v1.Layer, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if _, err := zw.Write(tarBytes); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// buildImage makes one architecture's image: the Debian layer (the same
// for every netinspect version built from the same packages, so registries
// and nodes keep it across upgrades; its times are all the Unix epoch) and
// the exporter's layer (its time is the commit's).
func buildImage(m meta, p platformInput) (v1.Image, error) {
	f, err := os.Open(p.rootfs)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tree, err := readTar(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p.rootfs, err)
	}
	if err := tree.filter(); err != nil {
		return nil, fmt.Errorf("%s: %w", p.rootfs, err)
	}
	if err := configure(tree); err != nil {
		return nil, fmt.Errorf("%s: %w", p.rootfs, err)
	}
	baseTar, err := tree.layerTar(time.Unix(0, 0))
	if err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(p.binary)
	if err != nil {
		return nil, err
	}
	exporter := fileTree{}
	exporter.addFile(entrypoint[1:], 0o755, bin)
	exporterTar, err := exporter.layerTar(m.created)
	if err != nil {
		return nil, err
	}
	base, err := gzipLayer(baseTar)
	if err != nil {
		return nil, err
	}
	top, err := gzipLayer(exporterTar)
	if err != nil {
		return nil, err
	}

	created := v1.Time{Time: m.created.UTC()}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img,
		mutate.Addendum{Layer: base, MediaType: types.OCILayer, History: v1.History{
			Created: created, CreatedBy: "deploy/image/rootfs.sh " + p.arch + ": " + m.base + " packages of deploy/image/packages",
		}},
		mutate.Addendum{Layer: top, MediaType: types.OCILayer, History: v1.History{
			Created: created, CreatedBy: "deploy/image/build.sh: netinspect " + m.version + " (" + m.revision + ")",
		}},
	)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created = p.arch, "linux", created
	cf.Config = v1.Config{
		Entrypoint:   []string{entrypoint},
		User:         user,
		Env:          []string{pathEnv},
		Labels:       m.labels(),
		ExposedPorts: map[string]struct{}{metricsPort: {}},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	return mutate.Annotations(img, m.labels()).(v1.Image), nil
}

// indexJSON is the multi-architecture OCI index of the images, serialised
// from the OCI image-spec's own Go types rather than go-containerregistry's:
// containers/image (skopeo, podman, CRI-O) re-serialises an index with
// those types when it copies one and, under --preserve-digests, refuses to
// push it if the bytes change. ggcr orders a descriptor's fields
// differently (size before digest) and adds artifactType, so its index
// would either be refused or pushed under another digest than the one
// this build reports.
func indexJSON(m meta, archs []string, imgs []v1.Image) ([]byte, error) {
	idx := specs.Index{
		Versioned:   specsgo.Versioned{SchemaVersion: 2},
		MediaType:   specs.MediaTypeImageIndex,
		Annotations: m.labels(),
	}
	for i, img := range imgs {
		d, err := img.Digest()
		if err != nil {
			return nil, err
		}
		size, err := img.Size()
		if err != nil {
			return nil, err
		}
		idx.Manifests = append(idx.Manifests, specs.Descriptor{
			MediaType: specs.MediaTypeImageManifest,
			Digest:    digest.Digest(d.String()),
			Size:      size,
			Platform:  &specs.Platform{OS: "linux", Architecture: archs[i]},
		})
	}
	return json.Marshal(idx)
}

// writeOCIArchive writes the images and their index as a tar of an OCI
// image layout. index.json names the index twice:
// org.opencontainers.image.ref.name (the tag, what skopeo's
// oci-archive:FILE:TAG selects) and io.containerd.image.name (the full
// name `ctr images import` gives it).
func writeOCIArchive(file string, m meta, imgs []v1.Image, index []byte) error {
	dir, err := os.MkdirTemp(filepath.Dir(file), ".oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		if err := p.WriteImage(img); err != nil {
			return err
		}
	}
	h, size, err := v1.SHA256(bytes.NewReader(index))
	if err != nil {
		return err
	}
	if err := p.WriteBlob(h, io.NopCloser(bytes.NewReader(index))); err != nil {
		return err
	}
	if err := p.AppendDescriptor(v1.Descriptor{
		MediaType: types.OCIImageIndex,
		Digest:    h,
		Size:      size,
		Annotations: map[string]string{
			"org.opencontainers.image.ref.name": m.version,
			"io.containerd.image.name":          m.repository + ":" + m.version,
		},
	}); err != nil {
		return err
	}
	return tarDir(file, dir, m.created)
}

// tarDir writes dir's files to file as a tar with sorted names, one time
// and root ownership, written to a temporary name and renamed, so the file
// is either whole or absent.
func tarDir(file, dir string, mtime time.Time) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			names = append(names, p)
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	tmp := file + ".tmp"
	out, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	tw := tar.NewWriter(out)
	for _, p := range names {
		rel, _ := filepath.Rel(dir, p)
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		h := &tar.Header{Name: filepath.ToSlash(rel), ModTime: mtime, Mode: 0o644, Typeflag: tar.TypeReg, Size: st.Size()}
		if st.IsDir() {
			h.Name, h.Mode, h.Typeflag, h.Size = h.Name+"/", 0o755, tar.TypeDir, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		if !st.IsDir() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// writeDockerArchive writes one architecture's image as a `docker save`
// archive (for `docker load`, `kind load image-archive`, or `ctr images
// import` of one platform).
func writeDockerArchive(file string, m meta, img v1.Image) error {
	tag, err := name.NewTag(m.repository + ":" + m.version)
	if err != nil {
		return fmt.Errorf("image name %s:%s: %w", m.repository, m.version, err)
	}
	tmp := file + ".tmp"
	defer os.Remove(tmp)
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}
