"""The README and docs/ against the repository and the command line.

mkdocs' strict build (`make docs`) checks the links between docs/ pages; these tests check
what it cannot see: the README's links, the paths and modules the pages name, and that
docs/command-line.md lists exactly the subcommands and flags `dae --help` has.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
from pathlib import Path

import pytest

from dae import cli
from dae.pipeline import prepare_data
from dae.serving.model_server.flags import NO_EFFECT, UNSUPPORTED

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
COMMAND_LINE = DOCS / "command-line.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img [^>]*src=\"([^\"]+)\"")
# A path into the repository, as prose or code names it (not part of a longer path or URL).
REPO_PATH = re.compile(
    r"(?<![\w./~-])((?:bench|components|configs|dae|docs|k8s|pipeline|serving|tests)/[\w./-]*)"
)
MODULE = re.compile(r"(?<![\w./-])(dae(?:\.\w+)+)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def slug(heading: str) -> str:
    """A heading's anchor as GitHub (and mkdocs, for these headings) spells it."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(page: Path) -> list[str]:
    found = [a or b for a, b in LINK.findall(FENCE.sub("", page.read_text()))]
    return [t for t in found if not re.match(r"[a-z]+:", t)]


def test_every_relative_link_of_the_readme_resolves():
    links = relative_links(README)
    assert any(t.startswith("docs/") for t in links), "the README links into docs/"
    broken = []
    for target in links:
        path, _, fragment = target.partition("#")
        file = (README.parent / path).resolve() if path else README
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.name}")
    assert not broken, "README.md links:\n" + "\n".join(broken)


def _named_paths(text: str) -> set[str]:
    names = set()
    for m in REPO_PATH.finditer(text):
        if text[m.end() : m.end() + 1] in ("<", "{", "*", "$"):
            continue  # a pattern (runs/<run_id>/...), not a path
        names.add(m.group(1).rstrip("."))
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_the_paths_and_modules_a_page_names_exist(page):
    text = page.read_text()
    missing = sorted(p for p in _named_paths(text) if not (REPO / p).exists())
    missing += sorted(m for m in set(MODULE.findall(text)) if not _module_exists(m))
    assert not missing, f"{page.name} names what the repository does not have: {missing}"


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _help(parse, argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse(argv)
    return out.getvalue()


def _options(help_text: str) -> list[list[str]]:
    """Each option of an argparse help text: its spellings, as the options section lists them."""
    options = []
    for line in help_text.splitlines():
        m = re.match(r"  (-[^ ].*?)(?:  |$)", line)
        if m:
            options.append([s.split(" ")[0] for s in m.group(1).split(", ")])
    return [o for o in options if o[0] not in ("-h", "--help")]


def _choices(help_text: str) -> set[str]:
    usage = help_text.split("\n\n")[0]
    return {c for group in re.findall(r"\{([\w,-]+)\}", usage) for c in group.split(",")}


def parser_commands() -> dict[str, str]:
    """`dae NAME --help` for every subcommand (`dae data prepare`'s own parser for data)."""
    parser = cli._parser()
    names = sorted(_choices(_help(parser.parse_args, ["--help"])))
    helps = {name: _help(parser.parse_args, [name, "--help"]) for name in names if name != "data"}
    helps["data"] = _help(prepare_data.main, ["--help"]) + _help(
        parser.parse_args, ["data", "--help"]
    )
    return helps


def documented_commands() -> dict[str, str]:
    """The synopsis of each subcommand in docs/command-line.md's code blocks: a line
    `dae NAME ...` and its indented continuation lines, comments dropped."""
    commands: dict[str, str] = {}
    for block in FENCE.findall(COMMAND_LINE.read_text()):
        name = None
        for line in block.splitlines():
            code = re.split(r"\s#", line, maxsplit=1)[0]
            m = re.match(r"dae (\w+)", code)
            if m:
                name = m.group(1)
                commands[name] = commands.get(name, "") + "\n" + code
            elif name and line.startswith(" "):
                commands[name] += "\n" + code
            else:
                name = None
    return commands


def test_the_command_line_page_has_every_subcommand_and_no_other():
    assert set(documented_commands()) == set(parser_commands())


@pytest.mark.parametrize("name", sorted(parser_commands()))
def test_the_command_line_page_and_the_help_agree(name):
    help_text = parser_commands()[name]
    synopsis = documented_commands().get(name, "")
    options = _options(help_text)
    if name == "serve":  # TF Serving's flags that dae accepts without effect or refuses
        options += [[f"--{flag}"] for flag in (*NO_EFFECT, *UNSUPPORTED)]
    documented = set(FLAG.findall(synopsis))
    undocumented = [o[0] for o in options if not documented & set(o)]
    unknown = documented - {s for o in options for s in o}
    missing_choices = {c for c in _choices(help_text) if not re.search(rf"\b{c}\b", synopsis)}
    assert not undocumented, f"dae {name}: in --help, not in docs/command-line.md: {undocumented}"
    assert not unknown, f"dae {name}: in docs/command-line.md, not in --help: {sorted(unknown)}"
    assert not missing_choices, (
        f"dae {name}: choices not in docs/command-line.md: {missing_choices}"
    )


def test_serve_help_lists_each_spelling_of_a_flag_once():
    """`--port` has one spelling: the help listed it twice (`--port PORT, --port PORT`)."""
    options = _options(parser_commands()["serve"])
    assert [o for o in options if len(o) != len(set(o))] == []
    assert ["--model_base_path", "--model-base-path"] in options
