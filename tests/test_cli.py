"""The command line, in-process as `main([...])` and once as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.analysis.tables import models_table
from cnnlab.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_models_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resnet*"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"resnet56\s+resnet-cifar\s+32x32\s+853,018", out)
    assert "6.97" in out and "Table 6" in out
    assert "vgg16" not in out


def test_models_no_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "lenet*"]) == 2
    assert "no model matches" in capsys.readouterr().err


def test_summary_alexnet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "alexnet"]) == 0
    out = capsys.readouterr().out
    conv1 = next(line for line in out.splitlines() if line.startswith("conv1 "))
    for cell in ("55x55x96", "34,944", "290,400", "105,705,600"):
        assert cell in conv1
    assert "60,965,224 parameters" in out


def test_summary_alexnet_224_explains_227(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "alexnet", "--input-size", "224"]) == 0
    out = capsys.readouterr().out
    assert "does not tile a 224x224 input" in out and "227x227" in out


def test_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "resnet56", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 853_018


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["summary", "resnet65"], "unknown model 'resnet65'; did you mean"),
        (["summary", "alexnet", "--input-size", "32"], "smallest input that works is"),
    ],
)
def test_bad_input_is_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_readme_model_table_is_generated_from_the_cards() -> None:
    from cnnlab import list_models

    readme = (ROOT / "README.md").read_text()
    assert models_table(list_models(), markdown=True) in readme, (
        "README's model table is stale: regenerate it with `cnnlab models --markdown`"
    )


def test_console_script_as_a_user_runs_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "summary", "resnet65"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("cnnlab: error: unknown model 'resnet65'")
    done = subprocess.run(
        [sys.executable, "-m", "cnnlab", "models", "resnet2?"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "resnet20" in done.stdout
