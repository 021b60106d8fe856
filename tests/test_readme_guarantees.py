"""README's "What lightseg guarantees" names the tests that prove each claim: every one must exist, and
every claim must name one."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"`(tests/test_\w+\.py)::(test_\w+)`")


def guarantees_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("## What lightseg guarantees\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def defined_tests(path: Path) -> set:
    """The names of the test functions defined at the top level of a test file (read, not imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_every_test_the_guarantees_cite_exists():
    cited = CITED.findall(guarantees_section())
    assert len(cited) >= 40, cited  # the section is parsed: a changed format would find none
    missing = [f"{f}::{name}" for f, name in cited
               if not (ROOT / f).is_file() or name not in defined_tests(ROOT / f)]
    assert not missing, f"README cites tests that do not exist: {missing}"


def test_every_guarantee_names_a_test():
    section = guarantees_section()
    claims = [b for b in re.split(r"\n- ", section)[1:]]
    assert len(claims) >= 10
    assert [c[:60] for c in claims if not CITED.search(c)] == []
    # each citation is written out in full (file::name), so that it can be found and checked
    assert not re.search(r"`::test_", section)


def test_the_check_finds_a_missing_test(tmp_path):
    """The existence check can fail: a name that is not defined in the file is not found."""
    f = tmp_path / "test_x.py"
    f.write_text("def test_a():\n    pass\n\n\nclass TestB:\n    def test_c(self):\n        pass\n")
    assert defined_tests(f) == {"test_a"}
