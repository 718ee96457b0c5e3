"""The deletion engine on real trees: shapes that break path-based deletion, other
mounts, files that cannot go, and the counts that `find` and `du` give.

Trees deeper than ~1,000 levels or longer than PATH_MAX defeat pytest's own clean-up,
so every tree lives in `site`, which `rm -rf` removes afterwards whatever is left.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from activities.deletion import (
    MaildirCount,
    Progress,
    Stopped,
    TreeCount,
    TreeError,
    count_maildir,
    count_tree,
    delete_tree,
    mounts_below,
    remaining,
)
from activities.paths import UnsafePath

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    top = tmp_path / "site"
    top.mkdir()
    try:
        yield top
    finally:
        subprocess.run(["rm", "-rf", str(top)], check=True)


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def find_count(top: Path, *test: str) -> int:
    """`find TOP ! -type d | wc -l`, one dot per entry so a newline in a name counts once."""
    return len(sh("find", str(top), *(test or ("!", "-type", "d")), "-printf", "."))


def du_bytes(top: Path) -> int:
    return int(sh("du", "-sb", str(top)).split()[0])


def write(dir_fd: int, name: str | bytes, data: bytes = b"x") -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=dir_fd)
    os.write(fd, data)
    os.close(fd)


def chain(top: Path, depth: int, name: str | bytes, side: bool = False) -> None:
    """`depth` directories each inside the last, a file in each; with `side`, each level
    also has a sibling directory holding a file (so levels wait on two children)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(depth):
        write(fd, f"f{level}.php", b"<?php\n")
        if side:
            os.mkdir("side", dir_fd=fd)
            side_fd = os.open("side", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            write(side_fd, "s.txt")
            os.close(side_fd)
        os.mkdir(name, dir_fd=fd)
        below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = below
    write(fd, "bottom.txt", b"bottom")
    os.close(fd)


def messy(top: Path, outside: Path) -> None:
    """Every kind of entry a hosting tree holds, hard links and links out included."""
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "a" / "index.php").write_bytes(b"<?php echo 1;\n" * 300)
    os.link(top / "a" / "index.php", top / "a" / "b" / "hard.php")
    os.link(top / "a" / "index.php", top / "hard-too.php")
    (top / "a" / "b" / "c" / "big.bin").write_bytes(os.urandom(70_000))
    with open(top / "sparse.img", "wb") as f:
        f.truncate(5_000_000)
    os.symlink(outside, top / "a" / "out")
    os.symlink("../index.php", top / "a" / "b" / "in")
    os.symlink("/nowhere/at/all", top / "dangling")
    os.mkfifo(top / "a" / "pipe")
    os.mknod(top / "null", 0o600 | 0o020000, os.makedev(1, 3))


def bind(source: Path, target: Path) -> None:
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {done.stderr.decode().strip()}")


def unmount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=False)


class Hook(Progress):
    """Progress that runs `then` once, at the first update matching `when`."""

    def __init__(self, when: Callable[[int, int, int], bool], then: Callable[[], None]) -> None:
        super().__init__()
        self.when, self.then, self.fired = when, then, False

    def add(self, files: int = 0, bytes: int = 0, dirs: int = 0) -> None:
        super().add(files, bytes, dirs)
        if not self.fired and self.when(files, bytes, dirs):
            self.fired = True
            self.then()


# --- shapes -------------------------------------------------------------------------


def test_depth_2000(site: Path) -> None:
    chain(site, 2000, "d")
    assert count_tree(str(site)) == TreeCount(files=2001, bytes=du_bytes(site), dirs=2001)
    deleted = delete_tree(str(site), threads=4)
    assert (deleted.files, deleted.dirs) == (2001, 2001)
    assert remaining(str(site)) is None


def test_path_longer_than_path_max(site: Path) -> None:
    chain(site, 40, "p" * 250)  # 40 x 251 bytes: a 10,000-byte path to the bottom
    assert count_tree(str(site)).files == 41 == find_count(site)
    assert delete_tree(str(site)).files == 41
    assert not site.exists()


def test_255_byte_names(site: Path) -> None:
    longest = "ñ" * 127 + "a"  # 255 bytes in UTF-8
    assert len(os.fsencode(longest)) == 255
    (site / longest).mkdir()
    (site / longest / longest).write_text("hola")
    (site / ("x" * 255)).write_text("chau")
    before = TreeCount(files=2, bytes=du_bytes(site), dirs=2)
    assert count_tree(str(site)) == before
    assert delete_tree(str(site)) == before
    assert not site.exists()


def test_names_that_are_not_utf8(site: Path) -> None:
    raw = os.fsencode(site)
    os.mkdir(raw + b"/caf\xe9")
    with open(raw + b"/caf\xe9/\xff\xfe.php", "wb") as f:
        f.write(b"<?php")
    with open(raw + b"/new\nline", "wb") as f:
        f.write(b"1")
    assert count_tree(str(site)).files == 2 == find_count(site)
    assert delete_tree(str(site)).files == 2
    assert not site.exists()


def test_links_in_and_out_are_removed_as_links(site: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "dir" / "keep.txt").write_text("customer data")
    (outside / "file.txt").write_text("other data")
    (site / "in").mkdir()
    (site / "in" / "page.html").write_text("<p>")
    os.symlink(outside / "dir", site / "to-dir")
    os.symlink(outside / "file.txt", site / "in" / "to-file")
    os.symlink(site / "in", site / "loop")
    os.symlink("page.html", site / "in" / "relative")
    assert delete_tree(str(site), threads=2).files == 5
    assert not site.exists()
    assert (outside / "dir" / "keep.txt").read_text() == "customer data"
    assert (outside / "file.txt").read_text() == "other data"


def test_top_that_is_a_link_or_a_file_or_missing(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("k")
    os.symlink(target, tmp_path / "link")
    (tmp_path / "plain").write_text("abc")
    assert delete_tree(str(tmp_path / "link")) == TreeCount(files=1, bytes=len(str(target)))
    assert delete_tree(str(tmp_path / "plain")) == TreeCount(files=1, bytes=3)
    assert delete_tree(str(tmp_path / "missing")) == TreeCount()
    assert remaining(str(tmp_path / "missing")) is None
    assert (target / "keep").read_text() == "k"
    assert not os.path.lexists(tmp_path / "link")


def test_fifo_socket_and_device_are_unlinked_never_opened(site: Path) -> None:
    os.mkfifo(site / "pipe")  # no writer: opening it to read would block for ever
    os.mknod(site / "null", 0o600 | 0o020000, os.makedev(1, 3))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(site / "sock"))
    try:
        script = textwrap.dedent(
            f"""
            from activities.deletion import count_tree, delete_tree
            print(count_tree({str(site)!r}).files, delete_tree({str(site)!r}).files)
            """
        )
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    finally:
        server.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["3", "3"]
    assert not site.exists()


# --- mounts and other services' directories ----------------------------------------


def test_bind_mount_inside_is_refused_before_anything_changes(site: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "lib.so").write_text("shared by every jail")
    (site / "jail" / "lib").mkdir(parents=True)
    (site / "index.php").write_text("<?php")
    bind(shared, site / "jail" / "lib")
    try:
        assert mounts_below(str(site)) == [str(site / "jail" / "lib")]
        for walk in (delete_tree, count_tree):
            with pytest.raises(UnsafePath, match=r"holds the mount point .*/site/jail/lib;"):
                walk(str(site))
        assert (site / "index.php").exists()
        assert (shared / "lib.so").read_text() == "shared by every jail"
    finally:
        unmount(site / "jail" / "lib")


def test_bind_mount_at_the_top_is_refused(site: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "data").write_text("theirs")
    bind(other, site)
    try:
        with pytest.raises(UnsafePath, match="is itself a mount point"):
            delete_tree(str(site))
        assert (other / "data").read_text() == "theirs"
    finally:
        unmount(site)


def test_mount_appearing_during_the_walk_is_not_entered(site: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "keep.txt").write_text("shared")
    (site / "a" / "b").mkdir(parents=True)
    (site / "top.txt").write_text("1")
    (site / "a" / "a.txt").write_text("2")
    mounted: list[Path] = []

    def mount_now() -> None:  # the top is listed; a and a/b are not opened yet
        bind(shared, site / "a" / "b")
        mounted.append(site / "a" / "b")

    try:
        with pytest.raises(UnsafePath, match=r"site/a/b is on another mount; not entered"):
            delete_tree(str(site), threads=1, progress=Hook(lambda f, b, d: f > 0, mount_now))
        assert mounted
        assert (shared / "keep.txt").read_text() == "shared"
        assert not (site / "top.txt").exists() and not (site / "a" / "a.txt").exists()
    finally:
        for target in mounted:
            unmount(target)
    assert remaining(str(site)) == TreeCount(files=0, bytes=du_bytes(site), dirs=3)


def test_protected_directories_are_never_entered(site: Path) -> None:
    (site / "mine").mkdir()
    (site / "mine" / "x").write_text("x")
    (site / "theirs").mkdir()
    (site / "theirs" / "live.db").write_text("another service")
    st = os.stat(site / "theirs")
    with pytest.raises(UnsafePath, match=r"site/theirs is one of another service's directories"):
        delete_tree(str(site), protected={(st.st_dev, st.st_ino)})
    assert (site / "theirs" / "live.db").read_text() == "another service"
    assert not (site / "mine").exists()


# --- failures, interruptions, verification ------------------------------------------


def test_immutable_file_fails_alone_in_one_line(site: Path) -> None:
    deep = site / ("long-folder-name-" * 8) / ("more-" * 20)
    deep.mkdir(parents=True)
    locked = os.fsencode(deep) + b"/locked-\xff.php"
    with open(locked, "wb") as f:
        f.write(b"<?php")
    for n in range(50):
        (site / f"page{n}.html").write_text("<p>")
    if subprocess.run(["chattr", "+i", locked], capture_output=True).returncode != 0:
        pytest.skip("chattr +i does not work on this filesystem")
    try:
        with pytest.raises(TreeError) as raised:
            delete_tree(str(site))
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith("PermissionError: [Errno 1] Operation not permitted: '")
        assert message.endswith("/locked-\\xff.php' (1 entry failed)")
        assert "…" in message and len(message) < 200
        assert raised.value.failed == 1
        assert remaining(str(site)) == TreeCount(files=1, bytes=du_bytes(site), dirs=3)
    finally:
        subprocess.run(["chattr", "-i", locked], check=False)
    assert delete_tree(str(site)).files == 1
    assert remaining(str(site)) is None


def test_file_written_during_deletion_is_found_by_verification(site: Path) -> None:
    for d in range(5):
        (site / f"d{d}").mkdir()
        (site / f"d{d}" / "f").write_text("f")
    (site / "top.html").write_text("<p>")

    def cron_job() -> None:  # the top is listed already, its rmdir comes last
        (site / "late.log").write_text("written meanwhile")

    delete_tree(str(site), threads=1, progress=Hook(lambda f, b, d: d > 0, cron_job))
    assert remaining(str(site)) == TreeCount(files=1, bytes=du_bytes(site), dirs=1)
    assert delete_tree(str(site)).files == 1
    assert remaining(str(site)) is None


def test_stop_event_stops_early_and_a_second_call_finishes(site: Path) -> None:
    for d in range(200):
        (site / f"d{d}").mkdir()
        for n in range(5):
            (site / f"d{d}" / f"f{n}").write_text("x")
    stop = threading.Event()
    first = Hook(lambda f, b, d: True, stop.set)
    with pytest.raises(Stopped):
        delete_tree(str(site), threads=2, progress=first, stop=stop)
    left = remaining(str(site))
    assert left is not None and left.files > 0
    assert first.snapshot().files + left.files == 1000
    assert delete_tree(str(site), threads=2).files == left.files
    assert remaining(str(site)) is None


def test_killed_half_way_a_second_call_finishes(site: Path) -> None:
    for d in range(50):
        (site / f"d{d}").mkdir()
        for n in range(20):
            (site / f"d{d}" / f"f{n}").write_text("x")
    script = textwrap.dedent(
        f"""
        import os, signal
        from activities.deletion import Progress, delete_tree

        class KillAtFirstDirectory(Progress):
            def add(self, files=0, bytes=0, dirs=0):
                if dirs:
                    os.kill(os.getpid(), signal.SIGKILL)

        delete_tree({str(site)!r}, threads=2, progress=KillAtFirstDirectory())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120)
    assert done.returncode == -9
    left = remaining(str(site))
    assert left is not None and 0 < left.files < 1000
    assert delete_tree(str(site)).files == left.files
    assert remaining(str(site)) is None


def test_descriptor_limit_256_on_a_depth_2000_tree(site: Path) -> None:
    chain(site, 2000, "d", side=True)
    script = textwrap.dedent(
        f"""
        import os, resource
        from activities.deletion import count_tree, delete_tree, remaining
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        before = len(os.listdir("/proc/self/fd"))
        counted = count_tree({str(site)!r}, threads=4)
        deleted = delete_tree({str(site)!r}, threads=4)
        print(counted.files, counted.dirs, deleted.files, deleted.dirs, remaining({str(site)!r}))
        print(before == len(os.listdir("/proc/self/fd")))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["4001", "4001", "4001", "4001", "None", "True"]


# --- the inventory --------------------------------------------------------------------


def test_count_matches_find_and_du(site: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not counted: outside")
    messy(site, outside)
    for threads in (1, 4):
        counted = count_tree(str(site), threads=threads)
        assert counted.files == find_count(site)
        assert counted.bytes == du_bytes(site)
        assert counted.dirs == find_count(site, "-type", "d")
    # deleting reports the same figures, hard links counted once there too
    assert delete_tree(str(site)) == counted
    assert outside.read_text() == "not counted: outside"


def test_maildir_messages_and_bytes(site: Path) -> None:
    for folder in ("", ".Sent/"):
        for sub in ("cur", "new", "tmp"):
            (site / folder / sub).mkdir(parents=True)
    for n in range(7):
        (site / "cur" / f"{n}.mail:2,S").write_bytes(b"Subject: hola\n\n" + b"x" * n)
    (site / "new" / "8.mail").write_text("nuevo")
    (site / ".Sent" / "cur" / "9.mail:2,S").write_text("enviado")
    (site / "tmp" / "half-written").write_text("not yet a message")
    (site / "dovecot.index").write_bytes(b"\0" * 1000)
    messages = find_count(
        site, "-type", "f", "(", "-path", "*/cur/*", "-o", "-path", "*/new/*", ")"
    )
    assert messages == 9
    assert count_maildir(str(site)) == MaildirCount(messages=9, bytes=du_bytes(site))
