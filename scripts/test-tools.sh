#!/usr/bin/env bash
# Make sure the system tools the real-block-device tests need are installed: loop
# devices and mounts (util-linux, mount), xfs and ext4 tools (xfsprogs, e2fsprogs),
# fuser (psmisc), curl, with which the broker bootstrap reads instance metadata
# (deploy/ tests; a minimal Debian image has no curl), and User-Mode Linux with insmod
# (user-mode-linux, kmod), in whose guest kernel the ext4 growth runs when this
# machine's root lacks CAP_SYS_RESOURCE (test/umlrun). Run by `make test` (target
# test-tools).
#
# When every tool is present it returns at once and changes nothing. Otherwise, as
# root with apt-get (Debian, Ubuntu: CI), it installs the missing packages, updating
# the package lists first only if the install cannot find them. Anywhere else it
# prints what is missing and how to install it, and returns 0: those tests then skip,
# or fail under CI=true, naming the same tools (test/loopdev, test/umlrun).
set -euo pipefail

# tool:package, one per tool the tests run.
tools=(
	losetup:mount mount:mount umount:mount
	blockdev:util-linux findmnt:util-linux blkid:util-linux mountpoint:util-linux
	mkfs.xfs:xfsprogs xfs_growfs:xfsprogs xfs_repair:xfsprogs
	mkfs.ext4:e2fsprogs resize2fs:e2fsprogs e2fsck:e2fsprogs
	fuser:psmisc
	curl:curl
	linux.uml:user-mode-linux insmod:kmod
)

PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin

missing=() packages=()
for entry in "${tools[@]}"; do
	tool=${entry%%:*} package=${entry#*:}
	if ! command -v "$tool" >/dev/null; then
		missing+=("$tool")
		[[ " ${packages[*]} " == *" $package "* ]] || packages+=("$package")
	fi
done
((${#missing[@]} > 0)) || exit 0

echo "test-tools: missing ${missing[*]} (packages: ${packages[*]})"
if ((EUID != 0)) || ! command -v apt-get >/dev/null; then
	echo "test-tools: not root or no apt-get: install them yourself (apt-get install ${packages[*]});" \
		"until then the real-block-device tests skip (fail under CI=true)" >&2
	exit 0
fi
install() {
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		-o DPkg::Lock::Timeout=300 "${packages[@]}"
}
if ! install; then
	apt-get update -q -o DPkg::Lock::Timeout=300
	install
fi
echo "test-tools: installed ${packages[*]}"
