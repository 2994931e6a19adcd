#!/usr/bin/env python3
"""Keeps the examples of docs/cli.md equal to what the `psa` tool prints.

Every fenced block of the document whose first line is `$ psa ...` is an example: the command is
run (in a scratch directory, so the files it writes go nowhere) and its output, stderr then
stdout as a terminal shows them, is what the block must hold after that line.

  --write  rewrites the blocks with the tool's output (run it after changing the tool);
  --check  fails, showing the difference, when a block differs from the tool's output. Timings
           differ from run to run and are compared as placeholders: the "attn ms" column of
           `psa run` and its "times (ms ...)" line.

--check also fails when an option that `psa <subcommand> --help` lists is missing from the
document. The CTest test tool.cli_doc runs --check (tests/tools/tool_tests.cmake); the CMake
target cli_docs runs --write.
"""

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile

FENCE = "```"
PROMPT = "$ psa"
SUBCOMMANDS = ("run", "presets", "plan", "sweep")
# Rows of the `psa run` table (a name, then numbers) end with the attention time in milliseconds.
RUN_TABLE_ROW = re.compile(r"^(PSA|binary block-sparse|dense)\s+[0-9.]+\s.*?(\s+\S+)$")
TIMES_LINE = re.compile(r"^times \(ms.*$")


def examples(lines):
    """(first, last) line indices of each example's output: after the prompt, before the fence."""
    found = []
    i = 0
    while i < len(lines):
        if lines[i].startswith(FENCE) and i + 1 < len(lines) and lines[i + 1].startswith(PROMPT):
            end = i + 2
            while end < len(lines) and not lines[end].startswith(FENCE):
                end += 1
            if end == len(lines):
                sys.exit(f"cli_docs: the block opened at line {i + 1} is never closed")
            found.append((i + 1, end))
            i = end + 1
        else:
            i += 1
    return found


def run_example(tool, command_line, scratch):
    args = shlex.split(command_line[len("$ "):])
    result = subprocess.run([tool] + args[1:], cwd=scratch, capture_output=True, text=True,
                            timeout=600, check=False)
    if result.returncode != 0:
        sys.exit(f"cli_docs: `{command_line[2:]}` exited {result.returncode}:\n{result.stderr}")
    return (result.stderr + result.stdout).rstrip("\n").split("\n")


def without_timings(lines):
    masked = []
    for line in lines:
        row = RUN_TABLE_ROW.match(line)
        if row:
            line = line[: row.start(2)] + " <ms>"
        elif TIMES_LINE.match(line):
            line = "times (ms ...)"
        masked.append(line)
    return masked


def missing_options(tool, text):
    missing = []
    for sub in SUBCOMMANDS:
        result = subprocess.run([tool, sub, "--help"], capture_output=True, text=True,
                                check=True)
        for option in sorted(set(re.findall(r"(?m)^\s+(--[a-z][a-z-]*)", result.stdout))):
            if option not in ("--help", "--help-all") and f"`{option}" not in text:
                missing.append(f"psa {sub} {option}")
    return missing


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--write", action="store_true")
    parser.add_argument("--tool", required=True, help="the built psa executable")
    parser.add_argument("doc", nargs="?", default=os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "docs", "cli.md"))
    options = parser.parse_args()
    tool = os.path.abspath(options.tool)

    with open(options.doc, encoding="utf-8") as f:
        lines = f.read().split("\n")
    updated = list(lines)
    problems = []
    with tempfile.TemporaryDirectory() as scratch:
        # Replaced from the last block up, so that earlier line numbers stay valid.
        for prompt, end in reversed(examples(lines)):
            output = run_example(tool, lines[prompt], scratch)
            updated[prompt + 1:end] = output
            documented = without_timings(lines[prompt + 1:end])
            actual = without_timings(output)
            if documented != actual:
                diff = difflib.unified_diff(documented, actual, "docs/cli.md", "psa", lineterm="")
                problems.append(f"`{lines[prompt][2:]}` (line {prompt + 1}):\n" + "\n".join(diff))

    if options.write:
        with open(options.doc, "w", encoding="utf-8") as f:
            f.write("\n".join(updated))
        return 0
    missing = missing_options(tool, "\n".join(lines))
    if missing:
        problems.append("options the tool has and docs/cli.md does not describe: " +
                        ", ".join(missing))
    if problems:
        print("docs/cli.md does not match the tool; after checking the change, regenerate it with\n"
              "  cmake --build --preset release --target cli_docs\n", file=sys.stderr)
        print("\n\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
