#!/usr/bin/env bash
# Installs the Debian packages the integration tests need, only when one is
# missing, so a warm machine pays nothing.
set -euo pipefail

packages=(
	iproute2      # ip netns, veth, bridges
	conntrack     # conntrack -S/-C/-F: ground truth for the conntrack tests
	iptables      # iptables-save, both backends
	nftables      # nft
	ipset         # test/vm: kube-proxy's IPVS mode in the guest runs ipset
	util-linux    # setpriv: run the exporter without CAP_NET_ADMIN
	procps        # sysctl
	qemu-system-x86         # test/vm: a second kernel (Debian's 6.1, with IPVS) under emulation
	busybox-static          # test/vm: the guest's userland
	cpio                    # test/vm: the initramfs
	kmod                    # test/vm: depmod for the guest's module order
	prometheus              # promtool and Prometheus for alerts/ and test/e2e
	prometheus-alertmanager # Alertmanager for test/e2e
	mmdebstrap                  # deploy/image: the image's Debian root filesystems (make image)
	skopeo                      # deploy/image: make image-push, reading the image archive
	docker-registry             # deploy/image: a real registry (CNCF distribution) to push to
	qemu-user                   # deploy/image: the arm64 exporter and tools under qemu-aarch64
	containerd                  # deploy/image: ctr images import; test/node: the real node's container runtime
	runc                        # test/node: containerd's OCI runtime
	containernetworking-plugins # test/node: CNI bridge, ptp, host-local, loopback (/usr/lib/cni)
	gcc                         # test/node: the pause program, linked statically
	libc6-dev                   # test/node: libc.a for gcc -static
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "install-deps: missing packages ${missing[*]}; run as root or install them" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The tests start their own Prometheus, Alertmanager and registry on
# loopback inside network namespaces; the packaged services must not run
# beside them.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl disable --now prometheus prometheus-alertmanager prometheus-node-exporter docker-registry 2>/dev/null || true
fi
