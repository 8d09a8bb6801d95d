#!/usr/bin/env python3
"""Assembles the root filesystem of an Adyton container image as one reproducible tar archive.

The images are built FROM scratch (docs/deploy-container.md): the archive is all they hold. It
has the binary, exactly the shared libraries that `ldd` lists for it (each at the path `ldd`
names, copied from this machine's Debian packages, whose names and versions are written into
/usr/share/adyton/packages.txt with their copyright files), a minimal /etc/passwd and /etc/group
with the unprivileged user 65532, /etc/nsswitch.conf, and for the operator's image Mozilla's CA
certificates. No shell, no package manager, nothing else.

Every entry's owner, mode and modification time is fixed (owner 0 but for the state directory,
the time SOURCE_DATE_EPOCH) and the entries are sorted by name, so that the same inputs give the
same bytes, wherever and whenever the archive is made.

    deploy/container/rootfs.py --image server --binary target/tee/adyton-server \\
        --epoch 1764720000 --out rootfs.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

# The unprivileged user the images run as: the number distroless images use, which no Debian
# system user or group takes.
USER_ID = 65532
USER_NAME = "adyton"

# Where each image's binary goes, by image name.
BINARIES = {"server": "adyton-server", "adyton": "adyton"}

# Mozilla's roots as Debian's ca-certificates package ships them. Only these: the machine's own
# additions (/usr/local/share/ca-certificates, /etc/ca-certificates.conf) are never copied into an
# image, and the bundle is built here rather than taken from /etc/ssl/certs, which holds them.
MOZILLA_CERTIFICATES = Path("/usr/share/ca-certificates/mozilla")
CA_BUNDLE = "etc/ssl/certs/ca-certificates.crt"

# Names that would give a shell to whoever gets into the container; none may be in an image.
SHELLS = frozenset({"sh", "bash", "dash", "ash", "zsh", "ksh", "busybox", "toybox", "su", "sudo"})

# The user's home is the state directory, the one place it may write: container runtimes set HOME
# from this file, and the SIM attester keeps its key under $HOME/.local/share/adyton. The login
# shell names a file that is not in the image.
STATE_DIR = "var/lib/adyton"
PASSWD = (
    "root:x:0:0:root:/root:/usr/sbin/nologin\n"
    f"{USER_NAME}:x:{USER_ID}:{USER_ID}:{USER_NAME}:/{STATE_DIR}:/usr/sbin/nologin\n"
)
GROUP = f"root:x:0:\n{USER_NAME}:x:{USER_ID}:\n"
# glibc's default without this file asks DNS before /etc/hosts; a container runtime writes the
# pod's own names into /etc/hosts, which should win.
NSSWITCH = "passwd: files\ngroup: files\nhosts: files dns\n"


# ldd, dpkg and dpkg-query in the C locale, so that their output parses the same everywhere.
TOOL_ENV = {"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class RootfsError(Exception):
    """Input that cannot make an image: a missing binary or library, an unknown package."""


@dataclass(frozen=True)
class Library:
    """One shared library as `ldd` names it, and the file that provides it."""

    path: str  # absolute, as ldd prints it: where the loader looks for it in the image too
    source: Path  # the file on this machine (symbolic links resolved)


@dataclass(frozen=True)
class Package:
    name: str  # with its architecture, e.g. libc6:amd64
    version: str


@dataclass
class Entry:
    """One archive member: a directory (data None) or a regular file."""

    name: str  # relative, no leading slash
    mode: int
    data: bytes | None = None
    uid: int = 0


@dataclass
class Rootfs:
    entries: dict[str, Entry] = field(default_factory=dict)

    def directory(self, name: str, mode: int = 0o755, uid: int = 0) -> None:
        self._parents(name)
        self.entries[name] = Entry(name, mode, None, uid)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        if name in self.entries:
            raise RootfsError(f"/{name} would be written twice")
        self.entries[name] = Entry(name, mode, data)

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            self.entries.setdefault(parent, Entry(parent, 0o755))


# `ldd` lines: "\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", the loader as
# "\t/lib64/ld-linux-x86-64.so.2 (0x...)", the vDSO as "\tlinux-vdso.so.1 (0x...)" (in the
# kernel, not a file), and "\tlibfoo.so => not found" for a library this machine lacks.
LDD_MAPPED = re.compile(r"^\s*(\S+) => (\S+)(?: \(0x[0-9a-f]+\))?$")
LDD_DIRECT = re.compile(r"^\s*(/\S+) \(0x[0-9a-f]+\)$")
LDD_VDSO = re.compile(r"^\s*linux-(vdso|gate)\.so\.\d+ \(0x[0-9a-f]+\)$")


def parse_ldd(output: str) -> list[str]:
    """The absolute paths of the libraries in `ldd`'s output, sorted; refuses a missing one."""
    paths = set()
    for line in output.splitlines():
        if not line.strip() or LDD_VDSO.match(line):
            continue
        if "statically linked" in line:
            continue
        mapped = LDD_MAPPED.match(line)
        direct = LDD_DIRECT.match(line)
        if "=> not found" in line:
            raise RootfsError(f"ldd: {line.split()[0]} is not found on this machine")
        if mapped:
            path = mapped.group(2)
        elif direct:
            path = direct.group(1)
        else:
            raise RootfsError(
                f"ldd printed a line this script does not understand: {line.strip()!r}"
            )
        if not path.startswith("/"):
            raise RootfsError(f"ldd named a library by a relative path: {path!r}")
        paths.add(path)
    return sorted(paths)


def shared_libraries(binary: Path) -> list[Library]:
    """Every library that `ldd` lists for the binary, with the file behind each path."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=TOOL_ENV)
    if result.returncode != 0:
        if "not a dynamic executable" in result.stdout + result.stderr:
            return []
        message = result.stderr.strip() or result.stdout.strip()
        raise RootfsError(f"ldd {binary} failed: {message}")
    return [Library(path, Path(path).resolve(strict=True)) for path in parse_ldd(result.stdout)]


def owning_package(path: str) -> Package:
    """The installed Debian package that ships `path` (as named, else its resolved file)."""
    for candidate in dict.fromkeys([path, str(Path(path).resolve())]):
        result = subprocess.run(
            ["dpkg", "-S", candidate], capture_output=True, text=True, env=TOOL_ENV
        )
        if result.returncode == 0:
            # "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"; a diversion line starts otherwise.
            for line in result.stdout.splitlines():
                if line.endswith(f": {candidate}") and not line.startswith("diversion"):
                    return package_version(line.split(": ", 1)[0].split(",")[0].strip())
    raise RootfsError(f"{path} belongs to no installed Debian package (dpkg -S)")


def package_version(name: str) -> Package:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True, env=TOOL_ENV
    )
    if result.returncode != 0 or not result.stdout:
        raise RootfsError(f"dpkg-query knows no installed package {name}")
    return Package(name, result.stdout.strip())


def copyright_file(package: Package) -> Path:
    base = package.name.split(":")[0]
    path = Path("/usr/share/doc") / base / "copyright"
    if not path.is_file():
        raise RootfsError(f"{path} is missing: the licence of {package.name} goes into the image")
    return path


def ca_bundle() -> tuple[bytes, int]:
    """Mozilla's roots from the ca-certificates package, in name order, and their number."""
    files = sorted(MOZILLA_CERTIFICATES.glob("*.crt"))
    if not files:
        raise RootfsError(
            f"no certificates in {MOZILLA_CERTIFICATES}: apt-get install ca-certificates"
        )
    parts = []
    for path in files:
        pem = path.read_bytes()
        if b"-----BEGIN CERTIFICATE-----" not in pem:
            raise RootfsError(f"{path} is not a PEM certificate")
        parts.append(pem if pem.endswith(b"\n") else pem + b"\n")
    return b"".join(parts), len(files)


def assemble(image: str, binary: Path, revision: str, version: str) -> tuple[Rootfs, list[str]]:
    """The image's root filesystem, and the lines of its package manifest."""
    if image not in BINARIES:
        raise RootfsError(f"unknown image {image!r}: server or adyton")
    if not binary.is_file():
        raise RootfsError(f"the binary {binary} does not exist")
    name = BINARIES[image]
    data = binary.read_bytes()
    if not data.startswith(b"\x7fELF"):
        raise RootfsError(f"{binary} is not an ELF executable")

    rootfs = Rootfs()
    rootfs.file(f"usr/local/bin/{name}", data, 0o755)

    packages: dict[str, Package] = {}
    library_lines = []
    for library in shared_libraries(binary):
        package = owning_package(library.path)
        packages[package.name] = package
        mode = library.source.stat().st_mode & 0o755
        rootfs.file(library.path.lstrip("/"), library.source.read_bytes(), mode)
        library_lines.append(f"{library.path} {package.name} {package.version}")

    certificate_lines = []
    if image == "adyton":
        # The registry's S3 client (object_store, on reqwest's platform verifier) checks the
        # bucket's certificate against the system's roots; the server image needs none (its
        # clients have Mozilla's roots compiled in, webpki-roots).
        bundle, count = ca_bundle()
        rootfs.file(CA_BUNDLE, bundle)
        package = package_version("ca-certificates")
        packages[package.name] = package
        certificate_lines.append(
            f"/{CA_BUNDLE} {package.name} {package.version} ({count} certificates, Mozilla's)"
        )

    for package in packages.values():
        base = package.name.split(":")[0]
        rootfs.file(f"usr/share/doc/{base}/copyright", copyright_file(package).read_bytes())

    rootfs.file("etc/passwd", PASSWD.encode())
    rootfs.file("etc/group", GROUP.encode())
    rootfs.file("etc/nsswitch.conf", NSSWITCH.encode())
    # Writable by the user alone, and its home: the server's state_dir (an offline device's
    # sealed models) and SIM key, or the operator's registry and key broker files; a volume is
    # mounted here for them to outlive the container.
    rootfs.directory(STATE_DIR, 0o700, USER_ID)

    sha256 = hashlib.sha256(data).hexdigest()
    manifest = [
        "# What this image holds, and where each file came from.",
        "# path package version",
        f"/usr/local/bin/{name} adyton {version} (revision {revision}; sha256 {sha256})",
        *library_lines,
        *certificate_lines,
    ]
    rootfs.file("usr/share/adyton/packages.txt", ("\n".join(manifest) + "\n").encode())
    return rootfs, manifest


def write_tar(rootfs: Rootfs, epoch: int, out) -> None:
    """The archive, byte for byte the same for the same entries and epoch."""
    # USTAR: no PAX headers, so no access or change times; every name here fits its 100 bytes.
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(rootfs.entries):
            entry = rootfs.entries[name]
            info = tarfile.TarInfo(name)
            info.mode = entry.mode
            info.uid = info.gid = entry.uid
            info.uname = info.gname = ""
            info.mtime = epoch
            if entry.data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image", required=True, choices=sorted(BINARIES))
    parser.add_argument("--binary", required=True, type=Path)
    parser.add_argument("--epoch", required=True, type=int, help="every file's time")
    parser.add_argument("--revision", default="unknown", help="the source revision")
    parser.add_argument("--version", default="unknown", help="the binary's version")
    parser.add_argument("--out", required=True, type=Path, help="the tar archive to write")
    args = parser.parse_args(argv)
    try:
        if args.epoch < 0:
            raise RootfsError("the epoch must not be negative")
        rootfs, manifest = assemble(args.image, args.binary, args.revision, args.version)
        buffer = io.BytesIO()
        write_tar(rootfs, args.epoch, buffer)
    except (RootfsError, OSError) as error:
        print(f"rootfs: {error}", file=sys.stderr)
        return 1
    archive = buffer.getvalue()
    args.out.write_bytes(archive)
    files = sum(1 for e in rootfs.entries.values() if e.data is not None)
    digest = hashlib.sha256(archive).hexdigest()
    print(f"rootfs: {args.out}: {files} files, {len(archive)} bytes, sha256 {digest}")
    for line in manifest[2:]:
        print(f"    {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
