"""Killing, inside a sandbox, a command whose exec timed out.

An engine's exec channel (``podman exec``, Docker's exec API, a Kubernetes exec stream, SSH) only
stops the *client* when the harness gives up waiting: the process it started inside keeps running,
holding its GPU, its memory and its files, and the next case on that sandbox competes with it.
So a sandbox command runs under a tiny POSIX-shell wrapper that records the command's pid in the
sandbox's scratch dir and then ``exec``s the command (the pid stays the command's), and on a
timeout the harness runs a second short command that kills that pid with its whole tree.

The caller's argv stays argv: the scripts below are constants, the pid file and the command reach
them as positional arguments (``"$1"``, ``"$@"``), never spliced into the script text.

This module only builds argvs and reads the killer's report; ``Sandbox.exec`` (drivers/base.py)
runs them through the sandbox's own ``raw_exec`` under deadlines.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

# The killer is a second exec into a sandbox whose first exec just timed out (a busy or frozen
# engine): its own deadline is short, so a timed-out command costs at most this much more.
KILL_TIMEOUT_S = 5.0

# Record our pid (best effort: a read-only or full scratch dir must not stop the command; the
# directory is made only the first time), then become the command. One extra exec per command.
WRAP_SCRIPT = '{ [ -d "${1%/*}" ] || mkdir -p "${1%/*}"; echo $$ > "$1"; } 2>/dev/null; shift; exec "$@"'

# Kill the recorded pid and everything that belongs to it: its descendants (by parent pid, read
# from /proc/N/stat, each stopped when found so none can fork away), and any process in its
# process group or session (engines start an exec as a session leader; when the killed client
# took the recorded pid with it, its children were re-parented to the sandbox's init but keep
# their group). Prints "killed <pids>", "gone" (nothing of it is left) or "no pid" (nothing was
# recorded: the wrapper never ran, or could not write; exit 3).
KILL_SCRIPT = """\
{ read -r root < "$1"; } 2>/dev/null
rm -f "$1" 2>/dev/null
case $root in ''|*[!0-9]*) echo "no pid"; exit 3;; esac
tree=" "
if [ -d "/proc/$root" ]; then kill -STOP "$root" 2>/dev/null; tree=" $root "; fi
grew=1
while [ "$grew" = 1 ]; do
  grew=0
  for f in /proc/[0-9]*/stat; do
    p=${f#/proc/}; p=${p%/stat}
    case $tree in *" $p "*) continue;; esac
    { read -r s < "$f"; } 2>/dev/null || continue
    set -- ${s##*) }
    case "$tree" in *" $2 "*) ;; *) [ "$3" = "$root" ] || [ "$4" = "$root" ] || continue;; esac
    [ "$p" = "$$" ] && continue
    kill -STOP "$p" 2>/dev/null
    tree="$tree$p "
    grew=1
  done
done
[ "$tree" = " " ] && { echo gone; exit 0; }
kill -KILL $tree 2>/dev/null
echo "killed$tree"
"""


def pid_file(scratch: str) -> str:
    """A fresh pid file path under the sandbox's scratch dir (one per command: commands may run
    side by side in one sandbox)."""
    return f"{scratch.rstrip('/')}/exec.{secrets.token_hex(6)}.pid"


def wrapped(argv: Sequence[str], pidfile: str) -> list[str]:
    """``argv`` run under the pid-recording wrapper; ``argv`` itself stays separate arguments."""
    return ["sh", "-c", WRAP_SCRIPT, "sh", pidfile, *argv]


def killer(pidfile: str) -> list[str]:
    """The command that kills what ``wrapped(..., pidfile)`` started, with its whole tree."""
    return ["sh", "-c", KILL_SCRIPT, "sh", pidfile]


@dataclass(frozen=True)
class KillReport:
    """What the killer did, as one line for the timed-out command's stderr (the evidence says
    whether the command is known to be gone inside)."""

    killed: tuple[int, ...] = ()
    gone: bool = False  # it had ended on its own before the killer looked
    problem: str = ""  # why nothing is known to be killed: no pid recorded, the killer failed

    @property
    def note(self) -> str:
        if self.killed:
            pids = " ".join(str(p) for p in self.killed)
            return f"[gpuconform: timed out; killed inside: pid {pids}]"
        if self.gone:
            return "[gpuconform: timed out; the command had already ended inside]"
        return f"[gpuconform: timed out; NOT known to be killed inside: {self.problem}]"


def read_report(exit_code: int | None, stdout: str, stderr: str, timed_out: bool) -> KillReport:
    """The killer's result, read: its last line says what it did."""
    if timed_out:
        return KillReport(problem=f"the kill command itself timed out after {KILL_TIMEOUT_S:g} s")
    lines = stdout.strip().splitlines()
    last = lines[-1] if lines else ""
    if exit_code == 0 and last.startswith("killed"):
        pids = tuple(int(p) for p in last[len("killed") :].split() if p.isdigit())
        return KillReport(killed=pids)
    if exit_code == 0 and last == "gone":
        return KillReport(gone=True)
    if last == "no pid":
        return KillReport(problem="the wrapper recorded no pid (it never started, or could not write)")
    why = (stderr.strip() or last or "no output").splitlines()[-1][:200]
    return KillReport(problem=f"the kill command failed (exit {exit_code}): {why}")
