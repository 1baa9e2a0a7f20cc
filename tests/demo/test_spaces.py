"""The repository is a Hugging Face Space: README front matter, requirements.txt in step with pyproject."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-") for line in requirements
            if line.strip() and not line.lstrip().startswith("#")}


def test_readme_front_matter_configures_a_gradio_space():
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n")
    front = dict(line.split(":", 1) for line in text.split("---\n")[1].splitlines() if ":" in line)
    front = {key.strip(): value.strip().strip('"') for key, value in front.items()}
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    assert (ROOT / front["app_file"]).is_file()
    assert tuple(int(part) for part in front["python_version"].split(".")) >= (3, 11)
    assert front["sdk_version"].split(".")[0] == "6"


def test_requirements_cover_the_package_and_app_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert names(project["dependencies"] + project["optional-dependencies"]["app"]) <= names(lines)
    torch_line = next(line for line in lines if names([line]) == {"torch"})
    assert "+cu" not in torch_line and "==" not in torch_line  # a Space picks the build that fits its hardware
