#!/usr/bin/env python3
"""Fill ``vendor/llama.cpp`` with the pinned llama.cpp source tree.

The tree is taken from the source distribution of ``llama-cpp-python`` on PyPI,
which carries llama.cpp at exactly the upstream commit we pin (see
``vendor/README.md``).  The archive is fetched once with pip, checked against a
sha256, and cached, so a second run needs no network.  Our own patches in
``vendor/patches/*.patch`` (unified diffs, each saying why) are applied on top.

Usage: python scripts/vendor_llama_cpp.py [--force] [--cache-dir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# --- the pin: change these three together (vendor/README.md says how) ---
LLAMA_CPP_COMMIT = "0c1e57098"
SOURCE_PACKAGE = "llama-cpp-python==0.3.36"
SOURCE_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

ARCHIVE_NAME = "llama_cpp_python-0.3.36.tar.gz"
INNER_PREFIX = "llama_cpp_python-0.3.36/vendor/llama.cpp/"

# Top-level folders the build, the tests and the benchmarks never read.
DROP = {".git", ".devops", ".github", ".gemini", ".pi", "media", "docs", "app", "skills",
        "pocs", "benches", "ci", "examples", "licenses_extra"}

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "vendor" / "llama.cpp"
PATCHES = ROOT / "vendor" / "patches"
STAMP = ".pyllama-vendor-stamp"


def default_cache_dir() -> Path:
    env = os.environ.get("PYLLAMA_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "pyllama"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_archive(cache: Path) -> Path:
    archive = cache / ARCHIVE_NAME
    if archive.exists() and sha256_of(archive) == SOURCE_SHA256:
        print(f"vendor: using cached {archive}")
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        print(f"vendor: downloading {SOURCE_PACKAGE} (source distribution) with pip")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
             "--disable-pip-version-check", "-d", tmp, SOURCE_PACKAGE],
            check=True,
        )
        got = Path(tmp) / ARCHIVE_NAME
        if not got.exists():
            raise SystemExit(f"vendor: pip did not produce {ARCHIVE_NAME}")
        digest = sha256_of(got)
        if digest != SOURCE_SHA256:
            raise SystemExit(f"vendor: sha256 mismatch for {ARCHIVE_NAME}: got {digest}, want {SOURCE_SHA256}")
        os.replace(got, archive)
    return archive


# --- our patches: plain unified diffs, applied with exact context (no fuzz) ---

def patch_files() -> list[Path]:
    return sorted(PATCHES.glob("*.patch")) if PATCHES.is_dir() else []


def patches_digest(patches: list[Path]) -> str:
    h = hashlib.sha256()
    for p in patches:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def parse_patch(text: str) -> dict[str, list[tuple[list[str], list[str]]]]:
    """{path: [(old lines, new lines) per hunk]} of a unified diff (a/ b/ prefixes)."""
    files: dict[str, list[tuple[list[str], list[str]]]] = {}
    lines = text.splitlines(keepends=True)
    i, path = 0, None
    while i < len(lines):
        line = lines[i]
        if line.startswith("+++ "):
            path = line[4:].strip().split("\t")[0]
            path = path[2:] if path.startswith("b/") else path
            files.setdefault(path, [])
        elif line.startswith("@@") and path is not None:
            old: list[str] = []
            new: list[str] = []
            i += 1
            while i < len(lines) and lines[i][:1] in (" ", "-", "+", "\\"):
                tag, body = lines[i][:1], lines[i][1:]
                if tag in (" ", "-"):
                    old.append(body)
                if tag in (" ", "+"):
                    new.append(body)
                i += 1
            files[path].append((old, new))
            continue
        i += 1
    return files


def apply_patch(patch: Path, tree: Path) -> list[str]:
    """Apply one patch to ``tree``; every hunk's context must match exactly once."""
    touched = []
    for rel, hunks in parse_patch(patch.read_text()).items():
        target = tree / rel
        text = target.read_text()
        for old, new in hunks:
            old_s, new_s = "".join(old), "".join(new)
            if text.count(old_s) != 1:
                raise SystemExit(f"vendor: {patch.name} does not apply to {rel} "
                                 f"(context found {text.count(old_s)} times); update the patch")
            text = text.replace(old_s, new_s)
        target.write_text(text)
        touched.append(rel)
    print(f"vendor: applied {patch.name} ({', '.join(touched)})")
    return touched


def stamp_text(patched: list[str]) -> str:
    return (f"{LLAMA_CPP_COMMIT} {SOURCE_SHA256} {patches_digest(patch_files())}\n"
            + "".join(f"{rel}\n" for rel in sorted(set(patched))))


def copy_members(archive: Path, dest: Path, only: set[str] | None = None) -> int:
    """Write the archive's files under ``dest`` (all kept ones, or just ``only``)."""
    n = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.name.startswith(INNER_PREFIX):
                continue
            rel = member.name[len(INNER_PREFIX):]
            if not rel or rel.split("/", 1)[0] in DROP:
                continue
            if only is not None and rel not in only:
                continue
            if not (member.isfile() or member.isdir()):
                continue  # no links or devices from an archive
            target = (dest / rel).resolve()
            if not str(target).startswith(str(dest.resolve()) + os.sep):
                raise SystemExit(f"vendor: refusing path outside the tree: {member.name}")
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None
            with open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
            n += 1
    return n


def extract(archive: Path, dest: Path) -> None:
    tmp_dest = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp_dest, ignore_errors=True)
    tmp_dest.mkdir(parents=True)
    n = copy_members(archive, tmp_dest)
    patched = [rel for p in patch_files() for rel in apply_patch(p, tmp_dest)]
    (tmp_dest / STAMP).write_text(stamp_text(patched))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp_dest, dest)
    print(f"vendor: extracted {n} files into {dest} (llama.cpp {LLAMA_CPP_COMMIT})")


def repatch(archive: Path, dest: Path, previously: set[str]) -> None:
    """Same upstream tree, other patches: restore the patched files, apply the patches again
    (only those files change, so a build directory stays valid)."""
    wanted = previously | {rel for p in patch_files() for rel in parse_patch(p.read_text())}
    copy_members(archive, dest, only=wanted)
    patched = [rel for p in patch_files() for rel in apply_patch(p, dest)]
    (dest / STAMP).write_text(stamp_text(patched))


def read_stamp(dest: Path) -> tuple[list[str], set[str]]:
    stamp = dest / STAMP
    if not stamp.exists():
        return [], set()
    first, *rest = stamp.read_text().splitlines() or [""]
    return first.split(), {r for r in rest if r}


def is_current(dest: Path) -> bool:
    head, _ = read_stamp(dest)
    return head == [LLAMA_CPP_COMMIT, SOURCE_SHA256, patches_digest(patch_files())]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="extract again even if the tree is current")
    ap.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                    help="where the source archive is kept (default: %(default)s)")
    ap.add_argument("--dest", type=Path, default=DEST, help="where to put the tree (default: %(default)s)")
    args = ap.parse_args(argv)
    if not args.force and is_current(args.dest):
        print(f"vendor: {args.dest} is current (llama.cpp {LLAMA_CPP_COMMIT})")
        return 0
    head, patched = read_stamp(args.dest)
    if not args.force and head[:2] == [LLAMA_CPP_COMMIT, SOURCE_SHA256]:
        repatch(fetch_archive(args.cache_dir), args.dest, patched)
        return 0
    extract(fetch_archive(args.cache_dir), args.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
