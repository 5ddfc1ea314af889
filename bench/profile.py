"""A py-spy profile of the worker while it decides, summed to its top frames. Imports stdlib.

``py-spy record`` samples the worker process from outside (no switch in the product, no
change to what it runs) for as long as the profiled phase lasts; its collapsed stacks are
summed per function: samples where the function was running itself (self) and where it was
on the stack at all (total).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

RATE_HZ = 100
_LINE = re.compile(r"\s*\((?P<file>[^()]*?)(?::\d+)?\)$")


class Profile:
    """``py-spy record`` on one pid until ``stop()``; ``why`` says why there is no profile."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.why = ""
        beside = Path(sys.executable).parent / "py-spy"  # the venv's, from the bench extra
        exe = str(beside) if beside.exists() else shutil.which("py-spy")
        if exe is None:
            self.proc = None
            self.why = "py-spy is not installed (pip install -e '.[bench]')"
            return
        self.proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(RATE_HZ), "--format", "raw",
             "--output", str(out), "--nonblocking"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self) -> str:
        """Stop sampling (py-spy writes its file on SIGINT); the collapsed stacks, or ''."""
        if self.proc is None:
            return ""
        self.proc.send_signal(signal.SIGINT)
        try:
            output, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            output, _ = self.proc.communicate()
        if not self.out.exists():
            self.why = f"py-spy wrote no profile: {output.decode(errors='replace')[-300:]}"
            return ""
        return self.out.read_text()


def _function(frame: str) -> str:
    """'decide (broker/grants/decide.py:42)' -> 'decide (broker/grants/decide.py)'."""
    match = _LINE.search(frame)
    if match is None:
        return frame.strip()
    path = match["file"].split("site-packages/")[-1]
    return f"{frame[:match.start()].strip()} ({path})"


def top_frames(collapsed: str, n: int = 15) -> list[dict[str, object]]:
    """The ``n`` functions with the most self samples: self and total share of all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k = int(count)
        samples += k
        frames = [_function(f) for f in stack.split(";") if f]
        own[frames[-1]] += k
        for name in set(frames):
            total[name] += k
    return [{"function": name, "self %": round(100 * k / samples, 1),
             "total %": round(100 * total[name] / samples, 1), "self samples": k}
            for name, k in own.most_common(n)]
