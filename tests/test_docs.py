"""The documentation stays true to the code: every relative link in README.md and docs/**/*.md leads to a file
(and heading) that exists, and the reference pages are what their generators print from the parser and the
recipe schema."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import cli_reference  # noqa: E402
import recipes_reference  # noqa: E402

from lightseg.cli import build_parser  # noqa: E402
from lightseg.config import SCHEMA  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]]|\\\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where a bracket pair is not a link."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def links(text: str) -> list[str]:
    return LINK.findall(_prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def broken_links(page: Path, text: str) -> list[str]:
    bad = []
    for target in links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        if not path:  # a heading of this page
            if anchor not in anchors(text):
                bad.append(f"{target} (no heading #{anchor} in {page.name})")
            continue
        dest = (page.parent / path).resolve()
        if not dest.exists():
            bad.append(f"{target} (no file {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append(f"{target} (no heading #{anchor} in {dest.name})")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_lead_to_existing_files_and_headings(page):
    bad = broken_links(page, page.read_text(encoding="utf-8"))
    assert not bad, f"{page.relative_to(ROOT)}: broken links: {bad}"


def test_link_checker_finds_what_is_broken(tmp_path):
    (tmp_path / "other.md").write_text("# A heading, with `code`\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    text = ("[ok](other.md) [ok](other.md#a-heading-with-code) [ok](other.md#twice-1) [self](#local) [self](#elsewhere)\n"
            "# Local\n[gone](missing.md) [no anchor](other.md#nope) ![img](img/x.png) [web](https://example.com/x)\n"
            "`[not a link](missing2.md)`\n```\n[not a link](missing3.md)\n```\n")
    assert broken_links(page, text) == ["#elsewhere (no heading #elsewhere in page.md)", f"missing.md (no file {tmp_path / 'missing.md'})",
                                        "other.md#nope (no heading #nope in other.md)",
                                        f"img/x.png (no file {tmp_path / 'img' / 'x.png'})"]


def test_docs_name_no_issue_numbers():
    for page in PAGES:
        hits = re.findall(r"[Ii]ssue[ -]?#?[0-9]+", page.read_text(encoding="utf-8"))
        assert not hits, f"{page.relative_to(ROOT)} mentions {hits}: say what the change does, not which issue asked"


def test_cli_reference_is_what_the_parser_gives():
    committed = (ROOT / cli_reference.PATH).read_text(encoding="utf-8")
    assert committed == cli_reference.render(), "docs/reference/cli.md is out of date: run python tools/cli_reference.py"


def test_cli_reference_lists_every_command_and_option():
    text = cli_reference.render()
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert list(commands) == ["models", "train", "config", "eval", "score", "bench", "export", "predict", "plot"]
    sections = re.split(r"^## lightseg ", text, flags=re.M)[1:]
    assert [s.split("\n", 1)[0] for s in sections] == list(commands)
    for section, (name, sub) in zip(sections, commands.items()):
        for action in sub._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}`" in section, (name, option)
    # values and defaults come from the parser: the choices of bench --backend, eval's default split
    bench = sections[list(commands).index("bench")]
    assert ("| `--backend` | `{eager_nchw, eager, compile, onnxruntime, onnxruntime_int8, openvino, executorch, ncnn, peer_ort, "
            "peer_openvino, onnxruntime_plain, all}` | eager |") in bench
    assert "| `--split` | `{train, val, test}` | val |" in sections[list(commands).index("eval")]
    assert "until two calls agree within 10%)" in bench  # argparse's %% written as the user reads it


def test_cli_reference_check_mode_reports_a_stale_page(tmp_path, monkeypatch):
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "cli_reference.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    monkeypatch.setattr(cli_reference, "render", lambda: "changed\n")
    from docgen import main

    assert main(cli_reference.render, cli_reference.PATH, cli_reference.TOOL, ["--check"]) == 1


def test_recipe_reference_is_what_the_schema_gives():
    committed = (ROOT / recipes_reference.PATH).read_text(encoding="utf-8")
    assert committed == recipes_reference.render(), \
        "docs/reference/recipes.md is out of date: run python tools/recipes_reference.py"


def test_recipe_reference_has_every_key_with_its_rule_and_default():
    text = recipes_reference.render()
    rows = {line.split(" | ")[0].strip("| `"): line for line in text.splitlines() if line.startswith("| `")}
    assert set(rows) == set(SCHEMA)
    assert rows["train.batch_size"].startswith("| `train.batch_size` | a positive integer | `8` |")
    assert "| one of sgd, adam, adamw | `adam` |" in rows["train.optimizer.name"]
    assert "| `[0.9, 0.999]` |" in rows["train.optimizer.betas"]
    assert "| `null` |" in rows["output_dir"]


def test_recipe_reference_refuses_a_key_without_a_meaning(monkeypatch):
    monkeypatch.setitem(SCHEMA, "train.new_key", SCHEMA["train.seed"])
    with pytest.raises(SystemExit, match="train.new_key"):
        recipes_reference.render()


def _weights_rows(text: str) -> dict:
    """README's trained-weights table: (model, weights) -> the row's text."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\| `(\w+)` \| `(\w+)` \|", line)
        if m:
            rows[m.groups()] = line
    return rows


def test_the_weights_tables_say_what_the_shipped_manifest_records():
    """Each shipped file's val mIoU (as `lightseg eval` measured it when it was shipped), whether val was held
    out, and the epochs done of planned are what README's table, docs/zoo.md and docs/results.md state: a
    shipping that leaves the docs at the file it replaced fails here."""
    from lightseg import weights as registry

    rows = _weights_rows((ROOT / "README.md").read_text())
    zoo, results = (ROOT / "docs" / "zoo.md").read_text(), (ROOT / "docs" / "results.md").read_text()
    records = [r for r in registry.list_weights() if r.get("val_miou") is not None]
    assert records
    for r in records:
        row = rows.get((r["model"], r["weights"]))
        assert row, f"README.md's weights table has no row for {r['model']} {r['weights']}"
        val = f"{100 * r['val_miou']:.2f}"
        label = "held out" if r.get("val_held_out", True) else "trained on"
        assert f"{val} val ({label}" in row or f"{val} val (**{label}" in row, (row, val, label)
        if "epochs_done" in r:
            assert f"{r['epochs_done']:g} of {r['epochs_planned']:g} epochs" in row, (row, r["epochs_done"])
        for name, page in (("docs/zoo.md", zoo), ("docs/results.md", results)):
            assert f"**{val}" in page or f"{val} /" in page or f"{val} (" in page, f"{name} does not state {val}"
