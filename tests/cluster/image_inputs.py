"""What goes into the cluster's images besides Debian's packages and our Go binaries: the
Docker build context (the files .dockerignore admits, as Docker reads it) and Beam's Flink job
server jar from Maven Central, checksum-verified and cached. Standard library only."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

MAVEN = "https://repo1.maven.org/maven2"


def _pattern(glob: str) -> re.Pattern[str]:
    """Docker's .dockerignore glob (Go's filepath.Match plus `**`) as a regex on a path."""
    out, i = "", 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif glob.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            c = glob[i]
            out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
            i += 1
    return re.compile(out + r"\Z")


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    """(excludes?, regex, literal prefix) per rule, in order: the last matching rule wins."""
    rules = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        rules.append((not negate, _pattern(glob), re.split(r"[*?\[]", glob)[0]))
    return rules


def excluded(rel: str, rules) -> bool:
    """A path is excluded when the last rule matching it, or one of its parent folders, is
    an exclusion (Docker's MatchesOrParentMatches)."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for excludes, regex, _ in rules:
        if any(regex.match(p) for p in prefixes):
            verdict = excludes
    return verdict


def context_files(repo: Path) -> list[str]:
    """Relative paths of the files a `docker build` of repo sends (sorted). A folder is not
    walked when it is excluded and no exception rule could reach inside it."""
    rules = dockerignore(repo / ".dockerignore")
    exceptions = [prefix for excludes, _, prefix in rules if not excludes]
    found = []
    for top, dirs, files in os.walk(repo):
        rel_top = os.path.relpath(top, repo)
        rel_top = "" if rel_top == "." else rel_top + "/"
        dirs[:] = sorted(
            d
            for d in dirs
            if not excluded(rel_top + d, rules)
            or any(
                (rel_top + d + "/").startswith(e)
                or e.startswith(rel_top + d + "/")
                or e == rel_top + d
                or e == ""
                for e in exceptions
            )  # fmt: skip
        )
        found += [rel_top + f for f in files if not excluded(rel_top + f, rules)]
    return sorted(found)


def context_inputs(repo: Path) -> list:
    """What a build of repo's Dockerfile depends on: the Dockerfile, .dockerignore and every
    context file, each by name and content."""
    names = ["Dockerfile", ".dockerignore", *context_files(repo)]
    return [[n, repo / n] for n in names if (repo / n).is_file()]


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as answer:
        return answer.read()


def flink_job_server_jar(cache: Path, beam: str, flink: str) -> Path:
    """org.apache.beam:beam-runners-flink-<flink>-job-server:<beam> from Maven Central,
    verified against its .sha512 (else .sha1). Where Maven Central serves no such jar, a
    stand-in jar saying so (the dae image only carries it; the cluster's scenarios do not run
    Flink), with one loud line."""
    artifact = f"beam-runners-flink-{flink}-job-server"
    name = f"{artifact}-{beam}.jar"
    jar, stand_in = cache / name, cache / f"stand-in-{name}"
    if jar.is_file():
        return jar
    if stand_in.is_file():  # Maven Central answered 404 before: no look-up on every call
        print(f"images: {stand_in.name} stands in for {name} (remove it to ask again)",
              file=sys.stderr)  # fmt: skip
        return stand_in
    url = f"{MAVEN}/org/apache/beam/{artifact}/{beam}/{name}"
    cache.mkdir(parents=True, exist_ok=True)
    try:
        sums = {}
        for algo in ("sha512", "sha1"):
            try:
                sums[algo] = _fetch(f"{url}.{algo}").decode().split()[0].lower()
                break
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
        data = _fetch(url)
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise RuntimeError(f"Maven Central answered {e.code} for {url}") from e
        print(f"images: Maven Central serves no {name} (404): the Flink job server image holds "
              f"a stand-in jar", file=sys.stderr)  # fmt: skip
        return _stand_in(stand_in, f"org.apache.beam:{artifact}:{beam}")
    if not sums:
        raise RuntimeError(f"Maven Central has no .sha512 or .sha1 for {url}")
    algo, want = next(iter(sums.items()))
    if hashlib.new(algo, data).hexdigest() != want:
        raise RuntimeError(f"{url}: {algo} does not match its .{algo} file")
    partial = jar.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(data)
    partial.rename(jar)
    return jar


def _stand_in(path: Path, coordinates: str) -> Path:
    """A reproducible jar whose manifest names what it stands in for."""
    if not path.is_file():
        partial = path.with_suffix(f".partial-{os.getpid()}")
        with zipfile.ZipFile(partial, "w") as z:
            info = zipfile.ZipInfo("META-INF/MANIFEST.MF", date_time=(1980, 1, 1, 0, 0, 0))
            z.writestr(info, f"Manifest-Version: 1.0\nStand-In-For: {coordinates}\n")
        partial.rename(path)
    return path
