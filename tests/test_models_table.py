"""README.md's models table is `lightseg models --markdown`; `models --paper` for a paper without tables."""
import os
import re
import subprocess
import sys
from pathlib import Path

from lightseg import zoo
from lightseg.cli import build_parser, main
from lightseg.models.registry import paper_tables

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_models_table_is_what_the_code_prints():
    # In a fresh process, as a user runs it: models that other tests register in this one are not lightseg's.
    done = subprocess.run([sys.executable, "-m", "lightseg", "models", "--markdown"], capture_output=True, text=True,
                          cwd=README.parent, env=dict(os.environ, PYTHONPATH=str(README.parent)))
    assert done.returncode == 0, done.stderr
    printed = done.stdout.strip()
    assert zoo.readme_models_block(README.read_text()) == printed, (
        "README.md's models table is out of date: put the output of `lightseg models --markdown` between its "
        "models-table markers")
    rows = {r["name"]: r for r in zoo.models_table()}
    lines = {line.split(" | ")[0].strip("| `"): line for line in printed.splitlines()[2:]}
    assert set(lines) <= set(rows) and {"mininet_95k", "mininet_211k", "atonet_r18", "dualaspp_mobilenetv2",
                                        "shufflenetv2_dpc", "rdsnet"} <= set(lines)  # a row per lightseg model
    r = rows["mininet_211k"]  # numbers and the paper's figures come from the table and the registration
    assert f"| {r['macs'] / 1e9:.2f} (512x1024) |" in lines["mininet_211k"] and lines["mininet_211k"].endswith("| 211K, 2.4 G |")
    assert "train-only aux heads" in lines["mininet_211k"] and "train-only" not in lines["rdsnet"]


def test_readme_block_needs_one_marker_pair():
    start, end = zoo.README_MARKERS
    assert zoo.readme_models_block(f"x\n{start}\n| a |\n{end}\ny") == "| a |"
    for text in ("no markers", f"{end}\n{start}", f"{start}{start}{end}"):
        try:
            zoo.readme_models_block(text)
        except zoo.LightsegError as e:
            assert "models-table" in str(e)
        else:
            raise AssertionError(f"accepted {text!r}")


def test_paper_without_complexity_table_says_so(capsys):
    assert main(["models", "--paper", "rdsnet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "RDS-Net paper" in err and "no complexity table" in err and "lightseg models" in err
    # --help names exactly the papers that have tables
    models = next(a for a in build_parser()._subparsers._group_actions[0].choices["models"]._actions
                  if "--paper" in a.option_strings)
    named = re.search(r"paper NAME: ([a-z0-9_, ]+)\)", models.help).group(1).split(", ")
    assert sorted(named) == sorted(paper_tables())
