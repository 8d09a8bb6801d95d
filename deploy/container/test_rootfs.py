#!/usr/bin/env python3
"""Tests of the container images' root filesystem (rootfs.py) and Containerfiles, without buildah.

They assemble the root filesystem of a real adyton-server, by default the debug build that
`cargo test` leaves in target/debug (ADYTON_IMAGE_TEST_BINARY names another), and check that it
holds exactly the libraries `ldd` lists, no shell, a non-root user, fixed owners, modes and
times, and that two assemblies give the same bytes. scripts/build_image does the buildah half.

    python3 deploy/container/test_rootfs.py
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rootfs  # noqa: E402

EPOCH = 1764720000

# ldd's output for adyton-server on Debian 12, as recorded on the build machine.
LDD_RECORDED = """\
\tlinux-vdso.so.1 (0x00007ff91d873000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007ff91d842000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007ff91d762000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007ff91ae1e000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007ff91d875000)
"""


def test_binary() -> Path:
    if "ADYTON_IMAGE_TEST_BINARY" in os.environ:
        return Path(os.environ["ADYTON_IMAGE_TEST_BINARY"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", HERE.parent.parent / "target"))
    return target / "debug" / "adyton-server"


def ldd_paths(binary: Path) -> set[str]:
    """The libraries' paths as read here from ldd, independently of rootfs.py's parser."""
    output = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"(/\S+) \(0x", output))


def members(archive: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: m for m in tar.getmembers()}


def member_data(archive: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.extractfile(name).read()


def assemble_tar(image: str, binary: Path, epoch: int = EPOCH) -> bytes:
    fs, _ = rootfs.assemble(image, binary, "0123abc", "0.1.0")
    out = io.BytesIO()
    rootfs.write_tar(fs, epoch, out)
    return out.getvalue()


class ParseLdd(unittest.TestCase):
    def test_recorded_output(self):
        self.assertEqual(
            rootfs.parse_ldd(LDD_RECORDED),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ],
        )

    def test_missing_library_is_refused(self):
        with self.assertRaisesRegex(rootfs.RootfsError, "libonnxruntime.so.1 is not found"):
            rootfs.parse_ldd(LDD_RECORDED + "\tlibonnxruntime.so.1 => not found\n")

    def test_unknown_line_is_refused(self):
        with self.assertRaisesRegex(rootfs.RootfsError, "does not understand"):
            rootfs.parse_ldd(LDD_RECORDED + "\tsomething else entirely\n")

    def test_relative_path_is_refused(self):
        with self.assertRaisesRegex(rootfs.RootfsError, "relative path"):
            rootfs.parse_ldd("\tlibx.so.1 => lib/libx.so.1 (0x0000000000001000)\n")


class ServerRootfs(unittest.TestCase):
    binary: Path
    archive: bytes

    @classmethod
    def setUpClass(cls):
        cls.binary = test_binary()
        if not cls.binary.is_file():
            raise FileNotFoundError(
                f"{cls.binary} is missing: cargo build -p adyton-server,"
                " or name a binary in ADYTON_IMAGE_TEST_BINARY"
            )
        cls.archive = assemble_tar("server", cls.binary)
        cls.members = members(cls.archive)

    def test_exactly_the_binary_ldd_libraries_and_configuration(self):
        libraries = ldd_paths(self.binary)
        self.assertIn("/lib64/ld-linux-x86-64.so.2", libraries)
        files = {"/" + name for name, m in self.members.items() if m.isfile()}
        packages = {"libc6", "libgcc-s1"}
        expected = libraries | {
            "/usr/local/bin/adyton-server",
            "/etc/passwd",
            "/etc/group",
            "/etc/nsswitch.conf",
            "/usr/share/adyton/packages.txt",
        } | {f"/usr/share/doc/{p}/copyright" for p in packages}
        self.assertEqual(files, expected)
        # Only regular files and directories: no link that could lead anywhere else.
        for m in self.members.values():
            self.assertTrue(m.isfile() or m.isdir(), m.name)

    def test_library_bytes_are_the_machines(self):
        for path in ldd_paths(self.binary):
            data = member_data(self.archive, path.lstrip("/"))
            self.assertEqual(data, Path(path).read_bytes(), path)
        data = member_data(self.archive, "usr/local/bin/adyton-server")
        self.assertEqual(data, self.binary.read_bytes())

    def test_no_shell_and_nothing_else_executable(self):
        for name, m in self.members.items():
            self.assertNotIn(Path(name).name, rootfs.SHELLS, name)
            if m.isfile() and m.mode & 0o111:
                self.assertTrue(
                    name == "usr/local/bin/adyton-server" or "/" + name in ldd_paths(self.binary),
                    f"{name} is executable",
                )
        for name in self.members:
            self.assertFalse(name.startswith(("bin", "sbin", "usr/bin", "usr/sbin")), name)

    def test_non_root_user_whose_home_is_the_state_directory(self):
        passwd = member_data(self.archive, "etc/passwd").decode()
        user = "adyton:x:65532:65532:adyton:/var/lib/adyton:/usr/sbin/nologin"
        self.assertIn(user, passwd.splitlines())
        group = member_data(self.archive, "etc/group").decode()
        self.assertIn("adyton:x:65532:", group.splitlines())
        state = self.members["var/lib/adyton"]
        self.assertTrue(state.isdir())
        self.assertEqual((state.uid, state.gid, state.mode), (65532, 65532, 0o700))

    def test_fixed_owners_and_times(self):
        for name, m in self.members.items():
            self.assertEqual(m.mtime, EPOCH, name)
            if name != "var/lib/adyton":
                self.assertEqual((m.uid, m.gid), (0, 0), name)
            self.assertEqual(m.mode & 0o7022, 0, f"{name} is writable by others or setuid")
        self.assertEqual(list(self.members), sorted(self.members))

    def test_manifest_names_each_library_package_and_version(self):
        manifest = member_data(self.archive, "usr/share/adyton/packages.txt").decode()
        for path in ldd_paths(self.binary):
            line = next(l for l in manifest.splitlines() if l.startswith(path + " "))
            _, package, version = line.split(" ")
            installed = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", package],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            self.assertEqual(version, installed)
        self.assertRegex(
            manifest,
            r"/usr/local/bin/adyton-server adyton 0\.1\.0 \(revision 0123abc; sha256 [0-9a-f]{64}\)",
        )

    def test_same_inputs_give_the_same_bytes(self):
        self.assertEqual(assemble_tar("server", self.binary), self.archive)
        # And the epoch is what sets the times: another one changes the bytes.
        self.assertNotEqual(assemble_tar("server", self.binary, EPOCH + 1), self.archive)

    def test_server_image_has_no_ca_certificates(self):
        self.assertNotIn(rootfs.CA_BUNDLE, self.members)

    def test_operator_image_has_mozillas_roots_and_no_local_ones(self):
        archive = assemble_tar("adyton", self.binary)
        bundle = member_data(archive, rootfs.CA_BUNDLE)
        mozilla = sorted(rootfs.MOZILLA_CERTIFICATES.glob("*.crt"))
        self.assertEqual(bundle.count(b"-----BEGIN CERTIFICATE-----"), len(mozilla))
        # A machine's own CAs (a proxy's, a company's) must not reach an image.
        local = [p for p in Path("/usr/local/share/ca-certificates").rglob("*.crt")]
        for path in local:
            body = b"".join(path.read_bytes().split(b"-----")[2].split())
            self.assertNotIn(body, b"".join(bundle.split()), path)
        self.assertIn("usr/share/doc/ca-certificates/copyright", members(archive))

    def test_not_an_executable_is_refused(self):
        with self.assertRaisesRegex(rootfs.RootfsError, "not an ELF"):
            rootfs.assemble("server", HERE / "rootfs.py", "r", "v")
        with self.assertRaisesRegex(rootfs.RootfsError, "does not exist"):
            rootfs.assemble("server", HERE / "no-such-binary", "r", "v")


class Containerfiles(unittest.TestCase):
    def check(self, image: str, binary: str):
        text = (HERE / f"Containerfile.{image}").read_text()
        lines = text.splitlines()
        instructions = [l.split()[0] for l in lines if l and not l[0].isspace() and l[0] != "#"]
        self.assertEqual(instructions[0], "FROM")
        self.assertIn("FROM scratch\n", text)
        # Nothing runs at build time (no shell to run it with), and one layer: the archive.
        self.assertNotIn("RUN", instructions)
        added = [l for l in lines if l.startswith(("ADD", "COPY"))]
        self.assertEqual(added, ["ADD rootfs.tar /"])
        self.assertIn("USER 65532:65532\n", text)
        self.assertIn(f'ENTRYPOINT ["/usr/local/bin/{binary}"]\n', text)
        self.assertIn("org.opencontainers.image.revision", text)

    def test_server(self):
        self.check("server", "adyton-server")
        self.assertIn("dev.adyton.sim-measurement", (HERE / "Containerfile.server").read_text())

    def test_adyton(self):
        self.check("adyton", "adyton")


if __name__ == "__main__":
    unittest.main(verbosity=1)
