"""Every code example in docs/*.md and README.md runs, so the docs cannot rot.

How examples are written (the conventions this file enforces):

- A ```python block is a program: it is written to a file in a fresh folder and run
  with this Python in a subprocess (timeout 60 s); it must exit with status 0.
  Examples check themselves with ``assert`` where a reader would want to know what
  comes out.
- A ```console block holds shell commands, each on a line starting with ``$ ``
  (the lines after a command are its output, pasted, not compared). ``loopwatch``,
  ``python`` and ``pytest`` are this Python's; each command must exit 0 unless the
  block says otherwise (``exit=N``, for the last command).
- Directives go in an HTML comment right before a block (invisible on the site),
  words separated by spaces (shell quoting), ``<!-- docs: WORD WORD -->``:

  - ``no-run REASON...``: not run (a fragment, or a command against a live process).
    Rare. A first line ``# docs: no-run`` inside a python block does the same.
  - ``file=NAME``: the block is also saved as ``NAME`` in the folder of every example
    of the same page (so a console block can run ``loopwatch run app.py``). Works on
    blocks of any language (```ini, ```toml).
  - ``write-only``: with ``file=``, save it but do not run it on its own.
  - ``python>=3.12``: run only on that Python or newer.
  - ``needs=CMD``: run only when the command ``CMD`` is on PATH (``jq``).
  - ``exit=N``: the expected exit status (of the program, or of a console block's
    last command).
  - ``expect=TEXT``: TEXT must appear in the output (stdout and stderr together);
    quote it when it has spaces: ``expect="2 passed"``. May be repeated.
  - ``setup`` then code lines up to ``-->``: code run before the block (imports, a
    ``main`` to run), for blocks that show a fragment.

Also here: the configuration page lists every option with its real default, the API
page every public name with its real signature, the findings page every kind, and
every page is in the site's navigation.
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import loopwatch
from loopwatch import KINDS, Options

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: the pages whose examples run: docs/findings-*.md are the drafts merged into
#: docs/findings.md (left out of the site too), so their examples run from there
PAGES = sorted(p for p in DOCS.glob("*.md") if not p.name.startswith("findings-")) + [
    ROOT / "README.md"]
TIMEOUT = 60

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")
_DIRECTIVE = re.compile(r"^ *<!--\s*docs:(?P<body>.*?)(?:-->\s*)?$")


@dataclasses.dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    words: list[str] = dataclasses.field(default_factory=list)
    setup: str = ""

    @property
    def id(self) -> str:
        return f"{self.page.name}:{self.line}"

    def option(self, name: str) -> str | None:
        for word in self.words:
            if word.startswith(name + "="):
                return word[len(name) + 1:]
        return None

    def options(self, name: str) -> list[str]:
        return [w[len(name) + 1:] for w in self.words if w.startswith(name + "=")]

    @property
    def no_run(self) -> bool:
        first = self.code.lstrip().splitlines()[0] if self.code.strip() else ""
        return "no-run" in self.words or first.strip() == "# docs: no-run"


def extract(page: Path) -> list[Block]:
    """The ```python and ```console blocks of a page, with their directives."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    words: list[str] = []
    setup: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        directive = _DIRECTIVE.match(line)
        if directive:
            body = directive.group("body").strip()
            words = shlex.split(body)
            if not line.rstrip().endswith("-->"):  # a setup comment: code lines up to -->
                i += 1
                while i < len(lines) and lines[i].strip() != "-->":
                    setup.append(lines[i])
                    i += 1
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            indent, lang = len(fence.group("indent")), fence.group("lang")
            start = i + 1
            body_lines = []
            i += 1
            while i < len(lines) and not re.match(rf"^ {{{indent}}}```\s*$", lines[i]):
                body_lines.append(lines[i][indent:])
                i += 1
            if lang in ("python", "console") or any(w.startswith("file=") for w in words):
                blocks.append(Block(page, start, lang, "\n".join(body_lines) + "\n",
                                    words, "\n".join(setup) + "\n" if setup else ""))
            words, setup = [], []
            i += 1
            continue
        if line.strip():
            words, setup = [], []  # a directive applies to the block right after it
        i += 1
    return blocks


ALL_BLOCKS = [b for page in PAGES for b in extract(page)]
#: the examples: python and console blocks (others are only saved, with file=)
BLOCKS = [b for b in ALL_BLOCKS if b.lang in ("python", "console")]


def _files_of(page: Path) -> dict[str, str]:
    return {b.option("file") or "": b.code for b in ALL_BLOCKS
            if b.page == page and b.option("file")}


def _command(line: str) -> list[str]:
    argv = shlex.split(line)
    head = {"loopwatch": [sys.executable, "-m", "loopwatch"],
            "python": [sys.executable], "python3": [sys.executable],
            "pytest": [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]}
    return head.get(argv[0], argv[:1]) + argv[1:]


@dataclasses.dataclass
class Outcome:
    status: int
    output: str
    command: str


def _run(block: Block, folder: Path) -> Outcome:
    folder.mkdir(parents=True)
    for name, code in _files_of(block.page).items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "COLUMNS": "120", "NO_COLOR": "1"}
    env.pop("LOOPWATCH_TEST_LOOP", None)
    if block.lang == "python":
        script = folder / (block.option("file") or "example.py")
        script.write_text(block.setup + block.code, encoding="utf-8")
        commands = [[sys.executable, script.name]]
    else:
        commands = [_command(line[2:]) for line in block.code.splitlines()
                    if line.startswith("$ ")]
        if block.setup:
            (folder / "setup.py").write_text(block.setup, encoding="utf-8")
            commands.insert(0, [sys.executable, "setup.py"])
    output = ""
    for argv in commands:
        try:
            done = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            return Outcome(-1, f"{output}timed out after {TIMEOUT} s\n{exc.stdout}\n"
                               f"{exc.stderr}", shlex.join(argv))
        output += done.stdout + done.stderr
        if argv is commands[-1] or done.returncode != 0:
            return Outcome(done.returncode, output, shlex.join(argv))
    return Outcome(0, output, "")


def _skip_reason(block: Block) -> str | None:
    if block.no_run:
        return "marked no-run"
    if "write-only" in block.words:
        return "write-only: saved for the page's other examples"
    for command in block.options("needs"):
        if shutil.which(command) is None:
            return f"needs {command} on PATH"
    for word in block.words:
        found = re.fullmatch(r"python>=(\d+)\.(\d+)", word)
        if found and sys.version_info < (int(found.group(1)), int(found.group(2))):
            return f"needs Python {found.group(1)}.{found.group(2)}+"
    return None


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, concurrent.futures.Future[Outcome]]]:
    """Every runnable example, started at once in parallel (each in its own folder)."""
    base = tmp_path_factory.mktemp("docs")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool:
        futures = {
            b.id: pool.submit(_run, b, base / re.sub(r"\W", "_", b.id))
            for b in BLOCKS if _skip_reason(b) is None
        }
        yield futures
        for f in futures.values():
            f.cancel()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_example_runs(block: Block, outcomes: dict[str, concurrent.futures.Future[Outcome]]
                      ) -> None:
    reason = _skip_reason(block)
    if reason is not None:
        pytest.skip(reason)
    outcome = outcomes[block.id].result()
    expected = int(block.option("exit") or 0)
    assert outcome.status == expected, (
        f"{block.id}: `{outcome.command}` exited with {outcome.status}, expected {expected}\n"
        f"{outcome.output}")
    for text in block.options("expect"):
        assert text in outcome.output, f"{block.id}: {text!r} not in the output:\n{outcome.output}"


def test_examples_were_found() -> None:
    runnable = [b for b in BLOCKS if _skip_reason(b) is None]
    assert len(runnable) >= 20, [b.id for b in BLOCKS]
    no_run = [b.id for b in BLOCKS if b.no_run]
    assert len(no_run) <= len(BLOCKS) // 5, f"too many examples are not run: {no_run}"


def test_python_examples_parse() -> None:
    """Even the ones not run are Python."""
    for block in BLOCKS:
        if block.lang == "python":
            ast.parse(block.setup + block.code, filename=block.id)


# -- pages that must list everything ---------------------------------------------------


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = text[text.index("\nnav:"):]
    return re.findall(r":\s*([\w./-]+\.md)\s*$", nav, re.M)


def test_every_page_is_in_the_navigation() -> None:
    nav = set(_nav_pages())
    pages = {p.name for p in DOCS.glob("*.md") if not p.name.startswith(("findings-", "_"))}
    assert not nav - pages, f"in mkdocs.yml's nav but not in docs/: {sorted(nav - pages)}"
    assert not pages - nav, f"in docs/ but not in mkdocs.yml's nav: {sorted(pages - nav)}"


def _default_text(field: dataclasses.Field[object]) -> str:
    default = field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = field.default_factory()  # type: ignore[misc]
    if isinstance(default, frozenset):
        return "frozenset()" if not default else repr(set(default))
    return repr(default)


def test_configuration_page_lists_every_option_with_its_default() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(2) for m in
            re.finditer(r"^\| `(\w+)` \| `([^`]*)` \|", text, re.M)}
    fields = dataclasses.fields(Options)
    assert sorted(rows) == sorted(f.name for f in fields), "options table out of date"
    for field in fields:
        assert rows[field.name] == _default_text(field), field.name


def _public_names() -> list[tuple[str, object]]:
    """(qualified name, object) for every public name: the front door's re-exports and
    the ``__all__`` of the public submodules."""
    tree = ast.parse(Path(loopwatch.__file__).read_text(encoding="utf-8"))
    names = [(f"loopwatch.{alias.asname or alias.name}",
              getattr(loopwatch, alias.asname or alias.name))
             for node in tree.body if isinstance(node, ast.ImportFrom) for alias in node.names]
    import importlib

    for module in map(importlib.import_module, ("loopwatch.testing", "loopwatch.aiomonitor")):
        names.extend((f"{module.__name__}.{n}", getattr(module, n)) for n in module.__all__)
    return names


def plain_signature(obj: object) -> str | None:
    """The signature as the API page shows it: names and defaults, no annotations."""
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def test_api_page_has_every_public_name_with_its_signature() -> None:
    """Each public name has a heading ``### `loopwatch.name(signature)` `` on
    docs/api.md; functions must show their signature, and a signature shown must be
    the code's."""
    text = (DOCS / "api.md").read_text(encoding="utf-8")
    headings = {m.group(1): m.group(2) for m in
                re.finditer(r"^#{2,4} `([\w.]+)(\(.*\))?`", text, re.M)}
    missing = [name for name, _ in _public_names() if name not in headings]
    assert not missing, f"not on docs/api.md: {missing}"
    for name, obj in _public_names():
        shown = headings[name]
        if inspect.isfunction(obj):
            assert shown is not None, f"docs/api.md: show the signature of {name}"
        if shown is not None:
            assert _same_signature(shown, plain_signature(obj)), (
                f"docs/api.md: {name}{shown}, but the code says {name}{plain_signature(obj)}")


def _same_signature(shown: str, code: str | None) -> bool:
    """Equal, with either kind of quotes, and ``...`` in the docs standing for a
    default value too long to show."""
    if code is None:
        return False
    pattern = re.escape(shown.replace('"', "'")).replace(re.escape("..."), ".+?")
    return re.fullmatch(pattern, code.replace('"', "'")) is not None


def test_findings_page_has_every_kind() -> None:
    text = (DOCS / "findings.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## `(\w+)`", text, re.M)
    assert headings == list(KINDS), "docs/findings.md: one section per kind, in KINDS order"
