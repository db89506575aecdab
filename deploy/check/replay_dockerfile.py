#!/usr/bin/env python3
"""Replays the Dockerfile outside Docker (no engine needed), as far as that is
possible without root and without the base images:

    replay_dockerfile.py ROOT WORK [--no-build]

Builder stage: each COPY copies from the build context (honouring
.dockerignore, keeping modification times as Docker does) into WORK/<stage>/
(the stage's filesystem root); each RUN runs with `sh -c` in the mapped
WORKDIR, except package installation (apt-get), which is checked against the
host instead: the listed packages must be installed here, so the replay uses
the same toolchain. With --no-build the RUN steps that compile are skipped
and an earlier replay's output is reused if there is one.

Last stage: COPY and COPY --from are replayed into WORK/rootfs; RUN steps are
not (they need root: apt-get, useradd) but are checked to create the
directories the ENV points at. The ENTRYPOINT's program and --config file
must exist in the rootfs, and the binary's shared libraries must come from
Essential / required packages or their dependencies (present in debian:*-slim).

Prints a JSON summary on the last line: rootfs, binary, config, env,
entrypoint, healthcheck, expose, user, stopsignal.
"""

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys


def logical_lines(path):
    """Dockerfile lines with continuations joined and comments dropped."""
    out, cur = [], ""
    with open(path) as f:
        for raw in f:
            line = raw.rstrip("\n")
            stripped = line.strip()
            if stripped.startswith("#"):
                continue  # comments, also inside continuations
            if not stripped and not cur:
                continue
            if line.rstrip().endswith("\\"):
                cur += line.rstrip()[:-1] + " "
                continue
            cur += line
            if cur.strip():
                out.append(cur.strip())
            cur = ""
    if cur.strip():
        out.append(cur.strip())
    return out


def parse(path):
    stages = []
    for line in logical_lines(path):
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        rest = rest.strip()
        if instr == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append({"name": name, "base": words[0], "steps": [], "env": [], "user": "",
                           "workdir": "/", "expose": [], "entrypoint": None, "cmd": None,
                           "healthcheck": None, "stopsignal": None})
            continue
        if not stages:
            if instr == "ARG":
                continue
            raise SystemExit(f"{path}: {instr} before FROM")
        st = stages[-1]
        if instr in ("RUN", "COPY", "ADD", "WORKDIR"):
            st["steps"].append((instr, rest))
            if instr == "WORKDIR":
                st["workdir"] = os.path.join(st["workdir"], rest)
        elif instr == "ENV":
            st["env"].extend(parse_env(rest))
        elif instr == "USER":
            st["user"] = rest
        elif instr == "EXPOSE":
            st["expose"].extend(rest.split())
        elif instr == "ENTRYPOINT":
            st["entrypoint"] = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif instr == "CMD":
            st["cmd"] = json.loads(rest) if rest.startswith("[") else ["/bin/sh", "-c", rest]
        elif instr == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(.*)$", rest)
            if m:
                c = m.group(1).strip()
                st["healthcheck"] = {"options": rest[:m.start()].split(),
                                     "cmd": json.loads(c) if c.startswith("[") else ["/bin/sh", "-c", c]}
        elif instr == "STOPSIGNAL":
            st["stopsignal"] = rest
    return stages


def parse_env(rest):
    words = shlex.split(rest, posix=True)
    if words and "=" not in words[0]:
        return [(words[0], rest.split(None, 1)[1] if len(words) > 1 else "")]
    return [tuple(w.split("=", 1)) for w in words]


def stage_env(stage):
    return dict(stage["env"])


# ---------------------------------------------------------------------------
# .dockerignore (the subset of Docker's semantics these files use: globs,
# `**`, `!` exceptions, a pattern excluding a directory excludes its contents)

def load_dockerignore(root):
    pats = []
    p = os.path.join(root, ".dockerignore")
    if os.path.exists(p):
        for line in open(p):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = os.path.normpath(line[1:] if neg else line).lstrip("/")
            pats.append((neg, pat))
    return pats


def _match(pat, path):
    rx = ""
    i = 0
    while i < len(pat):
        if pat[i:i + 3] == "**/":
            rx += "(?:.*/)?"
            i += 3
        elif pat[i:i + 2] == "**":
            rx += ".*"
            i += 2
        elif pat[i] == "*":
            rx += "[^/]*"
            i += 1
        elif pat[i] == "?":
            rx += "[^/]"
            i += 1
        else:
            rx += re.escape(pat[i])
            i += 1
    return re.fullmatch(rx, path) is not None


def ignored(pats, rel):
    rel = os.path.normpath(rel)
    parts = rel.split("/")
    result = False
    for neg, pat in pats:
        # A path is matched if it or one of its parent directories is.
        hit = any(_match(pat, "/".join(parts[:i])) for i in range(1, len(parts) + 1))
        if hit:
            result = not neg
    return result


# ---------------------------------------------------------------------------

def copy_into(src, dst, pats, root):
    """cp -a semantics (mtimes kept), skipping .dockerignore'd paths."""
    rel = os.path.relpath(src, root)
    if ignored(pats, rel):
        raise SystemExit(f"COPY source {rel} is excluded by .dockerignore")
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
        for name in sorted(os.listdir(src)):
            s = os.path.join(src, name)
            if ignored(pats, os.path.relpath(s, root)):
                continue
            copy_into(s, os.path.join(dst, name), pats, root)
        shutil.copystat(src, dst)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def parse_copy(rest):
    words = json.loads(rest) if rest.lstrip().startswith("[") else shlex.split(rest)
    flags = {}
    while words and words[0].startswith("--"):
        k, _, v = words.pop(0)[2:].partition("=")
        flags[k] = v
    return flags, words[:-1], words[-1]


def mapped(base, container_path):
    return os.path.join(base, container_path.lstrip("/"))


def host_has_package(pkg):
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def replay(root, work, no_build):
    stages = parse(os.path.join(root, "Dockerfile"))
    pats = load_dockerignore(root)
    problems = []
    runtime_pkgs = []
    stage_roots = {}
    final = stages[-1]
    for idx, st in enumerate(stages):
        is_final = idx == len(stages) - 1
        sroot = os.path.join(work, "rootfs" if is_final else f"stage-{st['name']}")
        stage_roots[st["name"]] = sroot
        stage_roots[str(idx)] = sroot
        print(f"== stage {st['name']} (FROM {st['base']}) -> {sroot}")
        workdir = "/"
        # Start from a clean stage root, but keep cargo's target/ between
        # runs (Docker's layer cache does the same job).
        if os.path.isdir(sroot):
            for dirpath, dirnames, filenames in os.walk(sroot, topdown=True):
                dirnames[:] = [d for d in dirnames if d != "target"]
                for fn in filenames:
                    os.unlink(os.path.join(dirpath, fn))
        os.makedirs(sroot, exist_ok=True)
        env = dict(os.environ)
        env.update(stage_env(st))
        for instr, rest in st["steps"]:
            if instr == "WORKDIR":
                workdir = os.path.join(workdir, rest)
                os.makedirs(mapped(sroot, workdir), exist_ok=True)
                print(f"WORKDIR {workdir}")
            elif instr in ("COPY", "ADD"):
                flags, srcs, dest = parse_copy(rest)
                dest_abs = dest if dest.startswith("/") else os.path.join(workdir, dest)
                for s in srcs:
                    if "from" in flags:
                        fr = stage_roots.get(flags["from"])
                        if fr is None:
                            raise SystemExit(f"COPY --from={flags['from']}: unknown stage")
                        spath = mapped(fr, s)
                        if not os.path.exists(spath):
                            if no_build:
                                print(f"COPY --from={flags['from']} {s}: not built (--no-build)")
                                continue
                            raise SystemExit(f"COPY --from={flags['from']} {s}: missing after the build")
                    else:
                        spath = os.path.join(root, s)
                        if not os.path.exists(spath):
                            raise SystemExit(f"COPY {s}: not in the build context")
                    d = mapped(sroot, dest_abs)
                    if dest.endswith("/") or len(srcs) > 1:
                        d = os.path.join(d, os.path.basename(s.rstrip("/")))
                    copy_into(spath, d, pats if "from" not in flags else [], root if "from" not in flags else os.path.dirname(spath))
                    print(f"COPY {'--from=' + flags['from'] + ' ' if 'from' in flags else ''}{s} -> {dest_abs}")
            elif instr == "RUN":
                if "apt-get" in rest:
                    pkgs = re.search(r"apt-get install ([^&;|]*)", rest)
                    names = [w for w in (pkgs.group(1).split() if pkgs else []) if not w.startswith("-")]
                    missing = [p for p in names if not host_has_package(p)]
                    if is_final:
                        runtime_pkgs.extend(names)
                        print(f"RUN (not replayed; needs root) {rest[:70]}...")
                    elif missing:
                        problems.append(f"builder packages not installed on this host: {missing}")
                        print(f"RUN apt-get: MISSING here: {missing}")
                    else:
                        print(f"RUN apt-get: {names} all installed on this host")
                    continue
                if is_final:
                    print(f"RUN (not replayed) {rest[:70]}...")
                    continue
                if no_build and "cargo build" in rest:
                    print(f"RUN (skipped, --no-build) {rest[:70]}...")
                    continue
                print(f"RUN {rest}")
                r = subprocess.run(["sh", "-c", rest], cwd=mapped(sroot, workdir), env=env)
                if r.returncode != 0:
                    raise SystemExit(f"RUN failed with exit status {r.returncode}: {rest}")

    # Last stage: ENV directories are created by its RUN steps.
    fenv = stage_env(final)
    run_text = " ".join(r for i, r in final["steps"] if i == "RUN")
    for k, v in fenv.items():
        if k.endswith(("_PATH", "_DIR")) and v.startswith("/"):
            if os.path.dirname(v) not in run_text:
                problems.append(f"ENV {k}={v}: no RUN step creates {os.path.dirname(v)}")
    if final["workdir"] != "/" and final["workdir"] not in run_text:
        problems.append(f"WORKDIR {final['workdir']} is not created (with the right owner) by a RUN step")

    rootfs = stage_roots[final["name"]]
    ep = final["entrypoint"] or []
    binary = None
    if ep:
        prog = ep[0]
        if not prog.startswith("/"):
            for d in fenv.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(":"):
                if os.path.exists(mapped(rootfs, os.path.join(d, prog))):
                    binary = mapped(rootfs, os.path.join(d, prog))
                    break
        elif os.path.exists(mapped(rootfs, prog)):
            binary = mapped(rootfs, prog)
        if binary is None and not no_build:
            problems.append(f"ENTRYPOINT program {prog} not found in the image")
    config = None
    if "--config" in ep:
        config = mapped(rootfs, ep[ep.index("--config") + 1])
        if not os.path.exists(config):
            problems.append(f"ENTRYPOINT --config {ep[ep.index('--config') + 1]} not in the image")
    if binary:
        problems += check_libraries(binary, runtime_pkgs)
    summary = {"rootfs": rootfs, "binary": binary, "config": config, "env": fenv,
               "entrypoint": ep, "healthcheck": final["healthcheck"], "expose": final["expose"],
               "user": final["user"], "stopsignal": final["stopsignal"], "workdir": final["workdir"],
               "problems": problems}
    for p in problems:
        print(f"FAIL: {p}")
    print(json.dumps(summary))
    return 1 if problems else 0


def essential_closure():
    """Installed packages that are Essential or Priority required, plus everything
    they (pre-)depend on: a subset of what every debian:*-slim image contains."""
    r = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Essential}\t${Priority}\t${Pre-Depends}, ${Depends}\n"],
                       capture_output=True, text=True)
    deps, roots = {}, []
    for line in r.stdout.splitlines():
        pkg, essential, prio, dep = (line.split("\t") + ["", "", ""])[:4]
        names = []
        for alt in dep.split(","):
            # "a (>= 1) | b": take every alternative that is installed (checked below).
            for a in alt.split("|"):
                n = a.strip().split(" ")[0].split(":")[0]
                if n:
                    names.append(n)
        deps[pkg] = names
        if essential == "yes" or prio == "required":
            roots.append(pkg)
    seen, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in seen or p not in deps:
            continue
        seen.add(p)
        todo.extend(deps[p])
    return seen


def check_libraries(binary, runtime_pkgs=()):
    """Every shared library must come from a package every debian:*-slim image
    has, or one the runtime stage installs."""
    problems = []
    base = essential_closure() | set(runtime_pkgs)
    r = subprocess.run(["ldd", binary], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        if "not found" in line:
            problems.append(f"binary needs a library not found: {line.strip()}")
            continue
        m = re.search(r"=>\s*(/\S+)", line)
        if not m:
            continue
        lib = m.group(1)
        candidates = [lib, os.path.realpath(lib)]
        candidates += [c.replace("/lib/", "/usr/lib/", 1) for c in list(candidates) if c.startswith("/lib/")]
        pkg = None
        for c in candidates:
            q = subprocess.run(["dpkg-query", "-S", c], capture_output=True, text=True)
            if q.returncode == 0:
                pkg = q.stdout.split(":")[0].strip()
                break
        if pkg is None:
            problems.append(f"binary library {lib}: no Debian package owns it")
        elif pkg not in base:
            problems.append(f"binary library {lib} comes from {pkg}, which debian:*-slim does not "
                            "necessarily have: install it in the runtime stage")
        else:
            print(f"library {os.path.basename(lib)}: {pkg} (essential set; in debian:bookworm-slim)")
    return problems


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__)
        sys.exit(2)
    sys.exit(replay(sys.argv[1], sys.argv[2], "--no-build" in sys.argv[3:]))
