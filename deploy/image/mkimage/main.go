// Command mkimage assembles the netinspect image from the Debian root
// filesystems of deploy/image/rootfs.sh and the static binaries of
// deploy/image/build.sh, without a container engine: one image per
// architecture, a multi-architecture OCI index, written as an OCI image
// layout archive and, per architecture, a `docker save` archive.
// deploy/image/image.sh (`make image`) runs it; see there for the paths.
//
// The output depends only on its inputs: every time in the image is
// -epoch (the commit's time, SOURCE_DATE_EPOCH) or, for the Debian layer,
// the Unix epoch; entries are sorted; owners are numeric; gzip writes no
// time. The same source and package versions give the same digests.
//
// It uses go-containerregistry (google/go-containerregistry) for the
// manifests, index and layout, and nothing else outside the standard
// library, so that the image's bytes are computed in this repository.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// platformFlags collects repeated -platform linux/ARCH=ROOTFS,BINARY.
type platformFlags []platformInput

func (p *platformFlags) String() string { return fmt.Sprint(*p) }

func (p *platformFlags) Set(v string) error {
	plat, files, ok := strings.Cut(v, "=")
	rootfs, binary, ok2 := strings.Cut(files, ",")
	arch, found := strings.CutPrefix(plat, "linux/")
	if !ok || !ok2 || !found || arch == "" || rootfs == "" || binary == "" {
		return fmt.Errorf("want linux/ARCH=ROOTFS.tar,BINARY, got %q", v)
	}
	for _, q := range *p {
		if q.arch == arch {
			return fmt.Errorf("platform linux/%s given twice", arch)
		}
	}
	*p = append(*p, platformInput{arch: arch, rootfs: rootfs, binary: binary})
	return nil
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "mkimage: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	var (
		m         meta
		epoch     = fs.String("epoch", "", "SOURCE_DATE_EPOCH: the commit's time in seconds, the time of the image")
		ociOut    = fs.String("oci", "", "write the multi-architecture OCI image layout archive here")
		dockerOut = fs.String("docker-prefix", "", "write PREFIX-linux-ARCH.docker.tar per architecture (none when empty)")
		platforms platformFlags
	)
	fs.StringVar(&m.repository, "repository", "", "image name without tag, e.g. ghcr.io/netinspect/netinspect")
	fs.StringVar(&m.version, "version", "", "version (git describe): the tag and org.opencontainers.image.version")
	fs.StringVar(&m.revision, "revision", "", "commit hash: org.opencontainers.image.revision")
	fs.StringVar(&m.source, "source", "", "source repository URL: org.opencontainers.image.source")
	fs.StringVar(&m.licenses, "licenses", "", "SPDX licence expression: org.opencontainers.image.licenses")
	fs.StringVar(&m.base, "base", "", "the Debian release the packages come from, e.g. debian:trixie")
	fs.Var(&platforms, "platform", "linux/ARCH=ROOTFS.tar,BINARY (repeatable, one per architecture)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	sec, err := strconv.ParseInt(*epoch, 10, 64)
	if err != nil || sec < 0 {
		return fmt.Errorf("-epoch %q: want seconds since 1970 (git log -1 --format=%%ct)", *epoch)
	}
	m.created = time.Unix(sec, 0).UTC()
	for flagName, v := range map[string]string{"-repository": m.repository, "-version": m.version, "-revision": m.revision,
		"-source": m.source, "-licenses": m.licenses, "-base": m.base, "-oci": *ociOut} {
		if v == "" {
			return fmt.Errorf("%s is required", flagName)
		}
	}
	if len(platforms) == 0 {
		return errors.New("no -platform given")
	}

	archs := make([]string, len(platforms))
	var imgs []v1.Image
	for i, p := range platforms {
		img, err := buildImage(m, p)
		if err != nil {
			return fmt.Errorf("linux/%s: %w", p.arch, err)
		}
		archs[i] = p.arch
		imgs = append(imgs, img)
		d, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("linux/%s\t%s\n", p.arch, d)
		if *dockerOut != "" {
			file := fmt.Sprintf("%s-linux-%s.docker.tar", *dockerOut, p.arch)
			if err := writeDockerArchive(file, m, img); err != nil {
				return fmt.Errorf("linux/%s: write %s: %w", p.arch, file, err)
			}
		}
	}
	index, err := indexJSON(m, archs, imgs)
	if err != nil {
		return err
	}
	if err := writeOCIArchive(*ociOut, m, imgs, index); err != nil {
		return fmt.Errorf("write %s: %w", *ociOut, err)
	}
	d, _, err := v1.SHA256(bytes.NewReader(index))
	if err != nil {
		return err
	}
	fmt.Printf("index\t%s\n", d)
	return nil
}
