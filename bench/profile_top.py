"""The top entries of a py-spy profile in folded form (`py-spy record --format raw`, or the bench's
`--profile`): by own time (the frame on top of the stack) and by inclusive time (anywhere on it).

    .venv/bin/python bench/profile_top.py PROFILE.folded [--top 25] [--match services/spec_registry]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]+):\d+\)$")


def frame_name(frame: str) -> str:
    """`function (path/file.py)` without the line number, so samples of one function add up."""
    found = FRAME.match(frame)
    return f"{found['function']} ({found['file']})" if found else frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="inclusive list: only frames whose name matches this regular expression")
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = [frame_name(f) for f in stack.split(";")]
        if frames and frames[0].startswith(("Thread._bootstrap", "<module>")) and "idle" in stack:
            continue
        total += samples
        own[frames[-1]] += samples
        for name in set(frames):
            inclusive[name] += samples
    print(f"{total} samples")
    print("own time:")
    for name, samples in own.most_common(args.top):
        print(f"  {samples / total:6.1%}  {name}")
    print("inclusive time" + (f" (frames matching {args.match!r})" if args.match else "") + ":")
    shown = [(n, s) for n, s in inclusive.most_common() if re.search(args.match, n)][: args.top]
    for name, samples in shown:
        print(f"  {samples / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
