"""The README's test command is what CI runs, so a fresh clone is tested the way users are told to test."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bash_blocks(text):
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = _bash_blocks(readme)
    assert len(blocks) >= 2, "README must open with the demo command and the test command"
    test_cmd = blocks[1]
    assert "pytest" in test_cmd
    ci_cmd = ci.split("# --- README test command (verbatim) ---\n", 1)[1].split("\n# --- end ---", 1)[0].strip()
    assert ci_cmd == test_cmd


def test_readme_pins_cpu_torch_but_package_keeps_a_range():
    readme = (ROOT / "README.md").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    for cmd in _bash_blocks(readme)[:2]:
        assert "torch==2.13.0" in cmd
    assert '"torch>=2.4"' in pyproject
    assert "torch==" not in pyproject
