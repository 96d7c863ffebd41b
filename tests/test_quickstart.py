"""The first run: README's two quick-start commands work on a bare machine (a virtual environment
made and used inside each command, only `python3` needed), CI runs README's test command itself,
and a test skipped for a missing torch says why and how to run it."""

import re
import subprocess
import sys
from pathlib import Path

from optional import TORCH_MISSING

ROOT = Path(__file__).resolve().parents[1]


def quick_start() -> list[str]:
    """The command lines of the first ``bash`` block under README's "Quick start" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md's Quick start has no ```bash block"
    return [ln.split("  #")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_quick_start_makes_and_uses_a_virtual_environment():
    """Two commands; each makes .venv with python3 and runs pip, python and numpy-attention from
    .venv/bin (never a bare `python`, which a bare machine lacks, nor the system's pip, which
    PEP 668 stops)."""
    demo, tests = quick_start()
    for line in (demo, tests):
        steps = [s.strip() for s in line.split("&&")]
        assert steps[0] == "python3 -m venv .venv", line
        for step in steps[1:]:
            assert step.split()[0].startswith(".venv/bin/"), step
    assert demo.endswith(".venv/bin/numpy-attention demo")
    assert tests.endswith(".venv/bin/python -m pytest")


def test_ci_runs_readme_test_command_verbatim():
    """.ci/run holds README's test command as one of its own lines, word for word."""
    _, tests = quick_start()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in [ln.split("  #")[0].strip() for ln in ci]


def test_a_missing_torch_skip_says_why_and_how_to_run_it():
    """With torch made unimportable, the cross-checks are skipped and pytest's summary (as the
    README's command runs it) prints the reason with the pinned install command."""
    code = (
        "import sys, pytest; sys.modules['torch'] = None; "
        "sys.exit(pytest.main(['tests/test_torch_crosscheck.py', '-p', 'no:cacheprovider']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr  # 5: everything was skipped
    assert "skipped" in proc.stdout
    assert TORCH_MISSING in proc.stdout


def test_the_whole_suite_collects_without_torch():
    """README's test command on a machine without torch: every module (doctests included) is
    collected without an error; torch's tests are skipped, not broken."""
    code = (
        "import sys, pytest; sys.modules['torch'] = None; "
        "sys.exit(pytest.main(['--collect-only', '-p', 'no:cacheprovider']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "error" not in proc.stdout.splitlines()[-1], proc.stdout[-3000:]
