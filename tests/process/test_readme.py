"""README.md, pasted in order: every ``sh`` block from its set-up to its hand-driven calls, run as a
reader runs them, on a host of its own.

Why a host of its own: the README's lines name fixed ports (2379, 53100, 9101...), ``/tmp`` logs,
``/run/milvus`` pid files, edit ``config/milvus.yaml`` and find processes with ``ps`` and ``pgrep``;
run here as written they would meet the reader's own cluster (which the suite must run beside: the
README's first command leaves one). So the lines run in new network, pid and mount namespaces (a
loopback of their own, only their own processes in ``/proc``, a fresh ``/tmp`` and ``/run``), with
the repository under an overlay whose writes stay in the test's directory.

The README marks what runs: everything between ``<!-- readme-test: begin`` and ``<!-- readme-test:
end -->``; each ``sh`` block line by line, each ``<!-- readme-test: COMMAND -->`` as a step the
reader does by hand (an edit, waiting until a log says something). A line's ``(exit N)`` comment is
its expected exit code, else 0. ``scripts/test.sh`` is left out: it is what runs this test.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.procs import REPO

pytestmark = pytest.mark.process

README = REPO / "README.md"
_BEGIN, _END = "<!-- readme-test: begin", "<!-- readme-test: end -->"
_HIDDEN = re.compile(r"^\s*<!-- readme-test: (?P<cmd>.+?) -->\s*$")
_FENCE = re.compile(r"^\s*```(?P<lang>\w*)\s*$")
_EXIT = re.compile(r"\(exit (?P<code>\d+)\)")
_SKIPPED = ("scripts/test.sh",)
_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Step:
    command: str
    expect: int
    hidden: bool  #: a readme-test comment (done by hand), not a line of a block


def readme_steps(text: str) -> list[Step]:
    """The lines to run, in order (see the module docstring)."""
    start = text.index(_BEGIN)
    end = text.index(_END, start)
    lines = text[start:end].splitlines()[1:]
    while lines and "-->" not in lines[0]:  # the rest of the begin comment
        lines.pop(0)
    steps: list[Step] = []
    fence: str | None = None
    for line in lines[1:]:
        fenced = _FENCE.match(line)
        if fenced is not None:
            fence = None if fence is not None else fenced["lang"]
            continue
        if fence is None:
            if (hidden := _HIDDEN.match(line)) is not None:
                steps.append(Step(hidden["cmd"], 0, hidden=True))
            continue
        command = line.strip()
        if fence != "sh" or not command or command.startswith("#") or command.startswith(_SKIPPED):
            continue
        code = _EXIT.search(command.split(" #", 1)[1]) if " #" in command else None
        steps.append(Step(command, int(code["code"]) if code else 0, hidden=False))
    return steps


def test_the_readme_marks_its_steps() -> None:
    """The parser finds the flow it must run: the set-up, the steps, the switchovers and the calls."""
    steps = readme_steps(README.read_text())
    commands = [s.command for s in steps]
    assert commands[0].startswith("scripts/start_cluster.sh")
    assert any(c.startswith("kill -9") for c in commands)
    assert any(s.expect == 10 for s in steps)  # the refused switchover
    assert commands[-1] == "scripts/stop_cluster.sh" and steps[-1].hidden
    assert not any(c.startswith("scripts/test.sh") for c in commands)


def _sandbox_problem() -> str:
    if os.geteuid() != 0:
        return "needs root (namespaces and mounts)"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--net", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot create namespaces here: {probe.stderr.strip()}"
    return ""


def _script(steps: list[Step]) -> str:
    """The reader's shell session: each step framed so its output and exit code can be told apart."""
    out = [
        "cd " + shlex.quote(str(REPO)),
        # A reader waits until they see it; the test waits the same way, with a bound.
        'wait_for() { local i; for i in $(seq 1 300); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; '
        'echo "readme-test: gave up waiting for: $*" >&2; return 1; }',
    ]
    for i, step in enumerate(steps):
        out.append(f"echo '@@@ begin {i}'")
        out.append(step.command)
        out.append(f"echo \"@@@ end {i} $?\"")
    return "\n".join(out) + "\n"


async def _in_a_host_of_its_own(tmp_path: Path, script: str, timeout: float = _TIMEOUT_S) -> str:
    """Run ``script`` (bash, in the repository) in new network, pid and mount namespaces (see the module
    docstring); its output. Skips the test where namespaces cannot be made."""
    problem = _sandbox_problem()
    if problem:
        pytest.skip(f"the README's host of its own {problem}")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(exist_ok=True)
    work.mkdir()
    # The repository and the test's directory (the overlay's upper and work dirs, which must share one
    # mount) are bound under the fresh /run before /tmp is replaced: either may live under /tmp (a
    # clone in /tmp, pytest's tmp_path), and the overlay must still find them. Nothing runs unless the
    # repository path is the overlay: a write to the reader's own checkout would pass unseen.
    stash = "/run/readme-sandbox"
    repo = shlex.quote(str(REPO))
    setup = " && ".join([
        "ip link set lo up",
        "mount -t tmpfs tmpfs /run",
        f"mkdir -p {stash}/repo {stash}/scratch",
        f"mount --bind {repo} {stash}/repo",
        f"mount --bind {shlex.quote(str(tmp_path))} {stash}/scratch",
        "mount -t tmpfs tmpfs /tmp",
        f"mkdir -p {repo}",
        f"mount -t overlay overlay -o lowerdir={stash}/repo,upperdir={stash}/scratch/{upper.name},"
        f"workdir={stash}/scratch/{work.name} {repo}",
        f"cd {repo}",
        '[ "$(findmnt -n -o FSTYPE --target .)" = overlay ]',
        "exec bash -s",
    ])
    # The reader's environment, without what would point the commands elsewhere (the suite's own
    # settings, another cluster's etcd, a run dir).
    env = {k: v for k, v in os.environ.items()
           if not re.sub(r"[_./]", "", k).lower().startswith(("etcd", "rootcoord", "querycoord", "datacoord",
                                                              "common", "log", "milvus", "cluster", "standby"))}
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--mount", "--pid", "--fork", "--mount-proc", "--net", "--", "bash", "-c", setup,
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(script.encode()), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"did not finish within {timeout:.0f}s") from None
    return raw.decode(errors="replace")


def _checkout_state() -> tuple[str, bytes]:
    """What the README's steps would change if they ran in the reader's own checkout."""
    status = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True)
    return status.stdout, (REPO / "config" / "milvus.yaml").read_bytes()


async def test_every_readme_section_works_pasted_in_order(tmp_path: Path) -> None:
    steps = readme_steps(README.read_text())
    before = _checkout_state()
    output = await _in_a_host_of_its_own(tmp_path, _script(steps))
    assert _checkout_state() == before, "the README's steps changed the checkout itself, not the sandbox's overlay"
    ran = {int(m["i"]): (int(m["code"]), m["out"]) for m in re.finditer(
        r"@@@ begin (?P<i>\d+)\n(?P<out>.*?)@@@ end (?P=i) (?P<code>\d+)\n", output, re.S)}
    for i, step in enumerate(steps):
        assert i in ran, f"step {i} `{step.command}` never ran; output:\n{output[-6000:]}"
        code, out = ran[i]
        kind = "hand-done step" if step.hidden else "README line"
        assert code == step.expect, f"{kind} `{step.command}` exited {code}, expected {step.expect}:\n{out}"
    assert "Traceback" not in output, output


async def test_the_test_command_under_load_reports_every_failure_and_cleans_up(tmp_path: Path) -> None:
    """README: ``scripts/test.sh --under-load`` keeps one core busy and runs the README's cluster (started
    and stopped by it when none runs), reports every failure (no -x), and runs ``--repeat N`` times."""
    tests = tmp_path / "upper" / "sandbox_tests"  # the overlay's upper dir: REPO/sandbox_tests in there
    tests.mkdir(parents=True)
    (tests / "test_two.py").write_text("def test_one_fails():\n    assert False\n\n\ndef test_another_fails():\n"
                                       "    assert False\n\n\ndef test_one_passes():\n    pass\n")
    script = "\n".join([
        "cd " + shlex.quote(str(REPO)),
        "scripts/test.sh --repeat 0; echo \"@@@ repeat0 $?\"",
        "MILVUS_SKIP_CHECKS=1 scripts/test.sh --under-load --repeat 2 sandbox_tests/test_two.py -p no:cacheprovider; "
        "echo \"@@@ rc $?\"",
        "echo \"@@@ hogs $(pgrep -fc 'while True: pass')\"",
        "echo \"@@@ coordinators $(pgrep -fc 'milvus run')\"",
    ]) + "\n"
    output = await _in_a_host_of_its_own(tmp_path, script)
    assert "@@@ repeat0 2" in output and "--repeat takes a positive number" in output, output
    assert "the README's cluster is not running: starting it" in output, output
    assert re.search(r"one core kept busy \(CPU hog pid \d+\)", output), output
    assert output.count("2 failed, 1 passed") == 2, output  # every failure, in each of the two runs
    assert "test.sh: run 1: exit 1" in output and "test.sh: run 2: exit 1" in output, output
    assert "slowest" in output, output  # --durations still printed
    assert "stopping the cluster this run started" in output and "@@@ rc 1" in output, output
    assert "@@@ hogs 0" in output and "@@@ coordinators 0" in output, output
