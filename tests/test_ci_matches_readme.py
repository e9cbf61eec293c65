"""`.ci/run` must run exactly the test command that README.md gives."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    test_commands = [b.strip() for b in blocks if "pytest" in b]
    assert len(test_commands) == 1, "README.md must give exactly one test command"
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_commands[0] in ci_lines
