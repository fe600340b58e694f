#!/usr/bin/env python3
"""Runs every entry of docs/errors.md and checks that its documented message appears.

The catalogue is the test's data, so the document and the programs cannot drift apart. An entry is
a `### ` heading; in it, fenced blocks by their info string:
  ```<lang> file=NAME    written to NAME in the entry's folder before anything runs
  ```sh setup            commands run first; they must succeed
  ```sh                  the command (exactly one); it must exit non-zero, not by a signal
  ```text output         text that must appear in the command's stdout + stderr
In output blocks `<work>` stands for the entry's folder and `<...>` for any text within a line.
Every entry runs in its own copy of a folder prepared once by the document's ```sh prepare block,
with the programs of --bin and --launch first on PATH.

  error_catalogue_test.py --doc docs/errors.md --bin build/bin --launch launch [--only TEXT] [--show]
--show prints each entry's actual output (for writing an entry) instead of checking it.
"""
import argparse
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile

FENCE = re.compile(r"^```(\S*)(.*)$")


class Entry:
    def __init__(self, title, line):
        self.title = title
        self.line = line
        self.files = []  # (name, text)
        self.setup = []
        self.commands = []
        self.outputs = []


def parse(doc_path):
    """Returns (prepare script, [Entry]) from the markdown at doc_path."""
    entries, prepare = [], []
    entry = None
    lines = open(doc_path, encoding="utf-8").read().split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("## "):
            entry = None
        elif line.startswith("### "):
            entry = Entry(line[4:].strip(), index + 1)
            entries.append(entry)
        else:
            match = FENCE.match(line)
            if match:
                start = index + 1
                index += 1
                while index < len(lines) and lines[index] != "```":
                    index += 1
                if index == len(lines):
                    raise SystemExit(f"{doc_path}:{start}: unterminated code block")
                body = "\n".join(lines[start:index])
                words = match.group(2).split()
                lang = match.group(1)
                target = None
                if "prepare" in words:
                    prepare.append(body)
                elif entry is None:
                    pass  # an example outside any entry
                elif any(word.startswith("file=") for word in words):
                    name = next(word for word in words if word.startswith("file="))[5:]
                    entry.files.append((name, body + "\n"))
                elif lang == "sh" and "setup" in words:
                    entry.setup.append(body)
                elif lang == "sh":
                    target = entry.commands
                elif lang == "text" and "output" in words:
                    target = entry.outputs
                if target is not None:
                    target.append(body)
        index += 1
    return "\n".join(prepare), entries


def pattern_of(expected, work):
    """The expected text as a regular expression: literal, with <work> and <...> placeholders."""
    parts = re.split(r"(<work>|<\.\.\.>)", expected)
    regex = ""
    for part in parts:
        if part == "<work>":
            regex += re.escape(work)
        elif part == "<...>":
            regex += r"[^\n]*?"
        else:
            regex += re.escape(part)
    return re.compile(regex)


def run_shell(script, cwd, env, timeout):
    return subprocess.run(["bash", "-c", "set -e\n" + script], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout, text=True, errors="replace")


def check(entry, template, env, show):
    """Runs one entry; returns (title, problem or None, output)."""
    if len(entry.commands) != 1 or (not entry.outputs and not show):
        return entry.title, (f"needs exactly one ```sh command block (has {len(entry.commands)}) and at least one "
                             f"```text output block (has {len(entry.outputs)})"), ""
    work = tempfile.mkdtemp(prefix="errors-")
    try:
        shutil.copytree(template, work, dirs_exist_ok=True, symlinks=True)
        for name, text in entry.files:
            path = os.path.join(work, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
        for script in entry.setup:
            setup = run_shell(script, work, env, 120)
            if setup.returncode != 0:
                return entry.title, f"setup failed (exit {setup.returncode}):\n{setup.stdout}", ""
        try:
            result = run_shell(entry.commands[0], work, env, 60)
        except subprocess.TimeoutExpired:
            return entry.title, "the command ran for more than 60 s", ""
        output = result.stdout
        if show:
            return entry.title, None, f"(exit {result.returncode})\n{output}".replace(work, "<work>")
        if result.returncode == 0:
            return entry.title, "the command succeeded; a bad input must fail", output
        if result.returncode >= 128 or result.returncode < 0:
            return entry.title, f"the command died of a signal (exit {result.returncode}), not an error message", output
        for expected in entry.outputs:
            if not pattern_of(expected, work).search(output):
                return entry.title, f"the documented message does not appear:\n{expected}", output
        return entry.title, None, output
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--doc", required=True)
    parser.add_argument("--bin", required=True, help="folder of chunkflow-train, chunkflow-data, chunkflow-export")
    parser.add_argument("--launch", required=True, help="folder of chunkflow-launch")
    parser.add_argument("--only", default="", help="run only entries whose title contains this text")
    parser.add_argument("--show", action="store_true", help="print each entry's output instead of checking it")
    # Most of an entry's time is the programs' start (loading LibTorch), not CPU: 4 at once.
    parser.add_argument("--jobs", type=int, default=4)
    args = parser.parse_args()

    prepare, entries = parse(args.doc)
    entries = [entry for entry in entries if args.only in entry.title]
    if not entries:
        raise SystemExit(f"FAIL: no entries in {args.doc}" + (f" matching '{args.only}'" if args.only else ""))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([os.path.abspath(args.bin), os.path.abspath(args.launch), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")

    template = tempfile.mkdtemp(prefix="errors-template-")
    try:
        prepared = run_shell(prepare, template, env, 300)
        if prepared.returncode != 0:
            raise SystemExit(f"FAIL: the ```sh prepare block of {args.doc} failed:\n{prepared.stdout}")
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda entry: check(entry, template, env, args.show), entries))
    finally:
        shutil.rmtree(template, ignore_errors=True)

    failed = 0
    for entry, (title, problem, output) in zip(entries, results):
        if args.show:
            print(f"### {title}\n{output}")
        elif problem:
            failed += 1
            print(f"FAIL: {args.doc}:{entry.line} '{title}': {problem}")
            if output:
                print("--- its output:\n" + output.rstrip())
        else:
            print(f"ok: {title}")
    if not args.show:
        print(f"{len(entries) - failed} of {len(entries)} entries produce their documented message")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
