"""The docs run: every code block of README.md, the pages it links (docs/, CONTRIBUTING.md) and
experiments/README.md is run, checked or declared not runnable, in the order of ``DOCS``, in one working
folder, and the output the docs show is compared with what the commands print, so the docs cannot drift.

Each block carries an HTML comment on the line before it (invisible on GitHub) saying what it is:

    <!-- doc: run -->                   run as written (bash, or python), in one working folder, in order
    <!-- doc: run | small: A => B -->   run with text A replaced by B: a declared CPU-sized variant
    <!-- doc: run | exit: 2 -->         a command that must fail (exit 2) with the message shown
    <!-- doc: check -->                 composes each splitinv command's config (``--cfg job``), runs
                                        nothing: commands that need a GPU, ImageNet or the network
    <!-- doc: output -->                what the last run block printed (a code block or a markdown table),
                                        compared with numbers masked (another run, another machine)
    <!-- doc: output exact -->          compared as written
    <!-- doc: output | mask: REGEX -->  with REGEX masked on both sides (a word that follows a number)
    <!-- doc: file NAME -->             written to NAME in the working folder (a module later blocks import)
    <!-- doc: keys PATH -->             a JSON excerpt: its top-level keys, in order, are those of PATH
    <!-- doc: skip: REASON -->          not run: the install, the test command itself, a diagram

A ``run`` block written as a session (``$ command`` lines followed by what it prints) is compared line by
line (numbers masked unless ``exact``); in a python block, a ``print(...)  # VALUE`` comment that starts
like a value (``[``, ``{``, ``(``, a quote or a digit) is what that print shows. Shown lines must appear in
the output in order (warnings and progress lines in between are fine); a shown markdown table must be the
whole table printed.

The run takes about 23 minutes on 2 CPU cores (the quickstart at full size, the rest CPU-sized), so
it is marked ``docs`` and left out of the default test run: ``pytest -m docs tests/test_docs.py``; CI runs it
after the suite. ``test_every_block_is_declared`` (fast) runs always. While editing the docs,
``SPLITINV_DOCS_DIR=/tmp/docs`` keeps the working folder and ``SPLITINV_DOCS_FROM=LINE`` starts README.md's
blocks at that line (the outputs of the earlier ones already in the folder); each run leaves its log there.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from splitinv.baselines import VERDICTS

ROOT = Path(__file__).resolve().parents[1]
# in the order they run, in one folder: later pages read what earlier ones wrote (the README's quickstart
# victim and decoders); every markdown page the docs link must be here (test_every_linked_page_is_run...)
DOCS = [
    ROOT / "README.md",
    *(
        ROOT / "docs" / f"{page}.md"
        for page in (
            "python", "attack", "own-network", "he2019", "defenses", "leakage", "gans", "results", "sweeps",
            "advise", "cluster", "precision", "benchmarks", "metrics", "dci-study",
        )
    ),
    ROOT / "CONTRIBUTING.md",
    ROOT / "CHANGELOG.md",
    ROOT / "experiments" / "README.md",
]  # fmt: skip
KINDS = ("run", "check", "output", "file", "keys", "skip")
VALUE_START = tuple("[{('\"0123456789-")


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence (or the table's first line)
    lang: str
    text: str
    kind: str = ""
    exact: bool = False
    arg: str = ""
    small: list[tuple[str, str]] = field(default_factory=list)
    exit_code: int = 0  # what every command of a run block must exit with
    masks: list[str] = field(
        default_factory=list
    )  # output: regexes masked on both sides (words that follow the numbers)

    def where(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


_ANNOTATION = re.compile(r"^<!--\s*doc:\s*(.*?)\s*-->\s*$")


def _parse_annotation(block: Block, spec: str) -> None:
    head, *variants = (p.strip() for p in spec.split(" | "))  # " | ": a mask's regex may hold "|"
    if head.startswith("skip"):
        block.kind, block.arg = "skip", head[len("skip") :].lstrip(":").strip()
        if not block.arg:
            raise ValueError(f"{block.where()}: 'doc: skip' needs a reason ('doc: skip: REASON')")
    else:
        block.kind, _, rest = head.partition(" ")
        block.exact = rest.strip() == "exact"
        block.arg = "" if block.exact else rest.strip()
    if block.kind not in KINDS:
        raise ValueError(f"{block.where()}: unknown doc annotation '{spec}' (one of {', '.join(KINDS)})")
    for part in variants:
        key, _, value = part.partition(":")
        if key.strip() == "exit" and value.strip().isdigit():
            block.exit_code = int(value)
            continue
        if key.strip() == "mask" and value.strip():
            block.masks.append(value.strip())
            continue
        if key.strip() != "small" or "=>" not in value:
            raise ValueError(f"{block.where()}: '{part}' is not 'small: OLD => NEW'")
        old, new = (s.strip() for s in value.split("=>", 1))
        block.small.append((old, new))


def parse(doc: Path) -> list[Block]:
    """The code blocks and annotated tables of ``doc``, in order, each with its annotation (or none)."""
    lines = doc.read_text().splitlines()
    blocks: list[Block] = []
    pending: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        match = _ANNOTATION.match(line)
        if match:
            pending = match.group(1)
            i += 1
            continue
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            block = Block(doc, i + 1, line[3:].strip(), "\n".join(lines[i + 1 : end]))
            if pending is not None:
                _parse_annotation(block, pending)
            blocks.append(block)
            pending, i = None, end + 1
            continue
        if line.startswith("|") and pending is not None:  # an annotated markdown table
            end = i
            while end < len(lines) and lines[end].startswith("|"):
                end += 1
            block = Block(doc, i + 1, "table", "\n".join(lines[i:end]))
            _parse_annotation(block, pending)
            blocks.append(block)
            pending, i = None, end
            continue
        if line.strip() and pending is not None:
            raise ValueError(f"{doc.name}:{i}: a doc annotation must be followed by a code block or a table")
        i += 1
    return blocks


def test_every_block_is_declared() -> None:
    """Every code block says what it is, and every run block's substitutions apply to its text."""
    problems = []
    for doc in DOCS:
        for block in parse(doc):
            if not block.kind:
                problems.append(f"{block.where()}: no '<!-- doc: ... -->' line before this block")
            for old, _ in block.small:
                if old not in block.text:
                    problems.append(f"{block.where()}: small variant '{old}' does not occur in the block")
            if block.kind == "output" and block.lang not in ("", "table", "text"):
                problems.append(f"{block.where()}: an output block has no language ({block.lang})")
    assert not problems, "\n".join(problems)


_LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_linked_page_is_run_and_every_link_resolves() -> None:
    """Every relative link of the docs points at a file (and an anchor at a heading there), and every markdown
    page the docs link is one the docs run runs."""
    problems = []
    for doc in DOCS:
        assert doc.is_file(), f"{doc} is in DOCS but does not exist"
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for target, anchor in _LINK.findall(line):
                if re.match(r"^[a-z]+:", target):  # https:, mailto:
                    continue
                path = (doc.parent / target).resolve()
                where = f"{doc.relative_to(ROOT)}:{number}: {target}{anchor}"
                if not path.exists():
                    problems.append(f"{where}: no such file")
                elif path.suffix == ".md" and path not in DOCS:
                    problems.append(f"{where}: a page the docs run does not run (add it to DOCS)")
                elif anchor and path.suffix == ".md":
                    headings = [_slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)]
                    if anchor[1:] not in headings:
                        problems.append(f"{where}: no heading with that anchor")
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for anchor in re.findall(r"\]\((#[^)\s]+)\)", line):
                if anchor[1:] not in [_slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)]:
                    problems.append(
                        f"{doc.relative_to(ROOT)}:{number}: {anchor}: no heading with that anchor"
                    )
    assert not problems, "\n".join(problems)
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 400 and "## I want to ..." in readme


# ------------------------------------------------------------------------------------------------- comparing

# a number, also as a factor or a shape ("3.7x", "64x16x16"), never inside a name ("layer1", "fp16", "e2e")
_NUMBER = re.compile(r"(?<![A-Za-wyz_\d.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![A-Za-wyz_\d])")


# what follows from the numbers, so a smaller docs run may print another: the markers of a verdict or an
# interval over images (tables, the advisor) and the verdict words themselves
_DEPENDS_ON_NUMBERS = "[†‡§⚠]|" + "|".join(re.escape(v) for v in VERDICTS)


def normalise(line: str, exact: bool) -> str:
    """A line as compared: trailing space dropped; masked, also numbers, bold and column padding."""
    line = line.rstrip()
    if exact:
        return line
    line = _NUMBER.sub("#", re.sub(_DEPENDS_ON_NUMBERS, "", line.replace("**", "")))
    line = re.sub(r"#(?:[ .:/]+#)+", "#", line)  # "0:00:28", "3 / 21.8": one masked value
    line = re.sub(r"([─━ ])\1+", r"\1", line)  # rich tables' padding follows the widths of the values
    return line.strip()


def _tables(lines: list[str]) -> list[list[str]]:
    """The markdown tables in ``lines``; a header row + ``|---|`` line starts a new one even without a blank
    line before it (two commands printing tables back to back)."""
    found: list[list[str]] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line) and len(current) > 1:
                found.append(current[:-1])
                current = current[-1:]
            current.append(line)
        elif current:
            found.append(current)
            current = []
    return found


def compare(shown: str, printed: str, exact: bool, masks: Sequence[str] = ()) -> str | None:
    """None when ``printed`` shows what ``shown`` says, else what differs (one paragraph). ``masks``: regexes
    replaced on both sides first (a word that depends on the numbers: "1 cut point meets", "2 ... meet")."""
    for mask in masks:
        shown, printed = (re.sub(mask, "…", text) for text in (shown, printed))
    shown_lines = [normalise(s, exact) for s in shown.splitlines() if s.strip()]
    printed_lines = [normalise(s, exact) for s in printed.splitlines() if s.strip()]
    if shown_lines and shown_lines[0].startswith("|"):  # a table: the whole printed table with that header
        tables = [t for t in _tables(printed_lines) if t[0] == shown_lines[0]]
        if not tables:
            return f"no printed table has the header\n  {shown_lines[0]}\nprinted:\n" + "\n".join(
                printed_lines[-30:]
            )
        if shown_lines not in tables:
            return (
                "the table differs:\nshown:\n"
                + "\n".join(shown_lines)
                + "\nprinted:\n"
                + "\n".join(tables[-1])
            )
        shown_lines = [s for s in shown_lines if not s.startswith("|")]
    position = 0
    for want in shown_lines:
        hit = next((k for k in range(position, len(printed_lines)) if printed_lines[k] == want), None)
        if hit is None:
            return f"not printed (in order):\n  {want}\nprinted:\n" + "\n".join(printed_lines[-40:])
        position = hit + 1
    return None


def test_compare_masks_numbers_not_words() -> None:
    assert (
        compare(
            "| cut | SSIM |\n|---|---|\n| layer1 | **0.731** |",
            "x\n| cut | SSIM |\n|---|---|\n| layer1 | 0.52 |",
            False,
        )
        is None
    )
    assert compare(
        "| cut | SSIM |\n|---|---|\n| layer1 | 0.731 |",
        "| cut | SSIM |\n|---|---|\n| layer2 | 0.731 |",
        False,
    )
    assert compare(
        "| cut | SSIM |\n|---|---|\n| layer1 | 0.7 |",
        "| cut | SSIM |\n|---|---|\n| layer1 | 0.7 |\n| layer2 | 0.6 |",
        False,
    )
    assert (
        compare("match rate 0.8270 (827/1000 flagged)", "warning\nmatch rate 0.1 (1/1000 flagged)", False)
        is None
    )
    assert compare("match rate 0.8270", "match ratio 0.8270", False)
    assert compare("1 point meets it", "2 points meet it", False, [r"points?", r"meets?"]) is None
    assert compare("resnet18 (64x64)", "resnet18 (32x32)", True)
    assert compare("b\na", "a\nb", False)  # order matters
    two = "| a |\n|---|\n| 1 |\n| b |\n|---|\n| 2 |"  # two tables printed back to back
    assert compare("| b |\n|---|\n| 9 |", two, False) is None
    assert (
        compare("3.7x smaller, 64x16x16, layer1, fp16", "1.2x smaller, 64x8x8, layer1, fp16", False) is None
    )
    assert compare("layer1", "layer2", False) and compare("fp16", "fp32", False)
    # a verdict and its markers follow from the numbers: a smaller docs run may print others
    marked = "| cut | SSIM |\n|---|---|\n| layer1 | 0.650 ± 0.448† |"
    assert compare(marked, "| cut | SSIM |\n|---|---|\n| layer1 | 0.7 ± 0.1 |", False) is None
    assert compare("ssim 0.27 (no better than grey) -> out", "ssim 0.5 (leaks) -> out", False) is None
    assert compare(marked, "| cut | SSIM |\n|---|---|\n| layer1 | 0.7 |", False)  # the interval is no marker


# -------------------------------------------------------------------------------------------------- running

SESSION_PROMPT = "$ "


def _sessions(text: str) -> list[tuple[str, str]]:
    """(command, shown output) pairs of a ``$ command`` block; continuation lines join the command."""
    pairs: list[tuple[str, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith(SESSION_PROMPT):
            command = [lines[i][len(SESSION_PROMPT) :]]
            while command[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                command.append(lines[i])
            pairs.append(("\n".join(command), []))
        elif pairs:
            pairs[-1][1].append(lines[i])
        i += 1
    return [(cmd, "\n".join(out)) for cmd, out in pairs]


@dataclass
class Workspace:
    folder: Path
    env: dict[str, str]
    last_output: str = ""
    log: list[str] = field(default_factory=list)

    def sh(self, script: str, where: str, timeout: int = 1800, expect: int = 0) -> str:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], cwd=self.folder, env=self.env, capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
        output = proc.stdout + proc.stderr
        self.log.append(f"== {where}\n$ {script}\n{output}")
        if proc.returncode != expect:
            raise AssertionError(
                f"{where}: exit {proc.returncode} (expected {expect})\n$ {script}\n{output[-4000:]}"
            )
        return output

    def python(self, code: str, where: str) -> str:
        path = self.folder / "_doc_block.py"
        path.write_text(code)
        return self.sh(f"{shlex.quote(sys.executable)} _doc_block.py", where)


def _small(block: Block) -> str:
    text = block.text
    for old, new in block.small:
        text = text.replace(old, new)
    return text


def _check_commands(text: str, ws: Workspace, where: str, table: bool = False) -> None:
    """Compose every splitinv Hydra command of ``text`` (of a table: its backticked cells) without running it:
    one job of a sweep, each swept key at its first value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    joined = re.sub(r"\\\n\s*", " ", text)
    if table:
        joined = "\n".join(re.findall(r"`(splitinv-[^`]+)`", joined))
    parser = OverridesParser.create()
    for raw in joined.splitlines():
        raw = raw.split("  #", 1)[0].strip()
        if raw.startswith(SESSION_PROMPT):
            raw = raw[len(SESSION_PROMPT) :]
        words = shlex.split(raw) if raw else []
        if not words or not words[0].startswith("splitinv-") or words[0] == "splitinv-":
            continue
        args = [w for w in words[1:] if w not in ("-m", "--multirun")]
        single = []
        for override in parser.parse_overrides(args):
            text_value = override.input_line or ""
            if override.is_sweep_override():
                key = override.get_key_element()
                text_value = f"{key}={next(iter(override.sweep_string_iterator()))}"
            single.append(text_value)
        ws.sh(" ".join([words[0], *map(shlex.quote, single), "--cfg", "job"]), where, timeout=300)


def _print_comments(code: str) -> list[str]:
    """The values shown by ``print(...)  # VALUE`` comments (or a ``# VALUE`` line right after the print)."""
    shown = []
    lines = code.splitlines()
    for k, line in enumerate(lines):
        if not re.match(r"^\s*print\(", line):
            continue
        match = re.search(r"\)\s+#\s*(.+)$", line)
        if match is None and k + 1 < len(lines):
            match = re.match(r"^\s*#\s*(.+)$", lines[k + 1])
        if match and match.group(1).startswith(VALUE_START):
            shown.append(match.group(1))
    return shown


def _top_level_keys(text: str) -> list[str]:
    """The keys of the outermost object of a JSON excerpt (``{...}`` and ``[...]`` values allowed)."""
    keys, depth = [], 0
    for match in re.finditer(r'"(\w+)"\s*:|[{}\[\]]', text):
        token = match.group(0)
        if token in "{[":
            depth += 1
        elif token in "}]":
            depth -= 1
        elif depth == 1:
            keys.append(match.group(1))
    return keys


def run_block(block: Block, ws: Workspace) -> list[str]:
    """Run, check or compare one block; the problems found."""
    where = block.where()
    if block.kind == "skip":
        return []
    if block.kind == "file":
        (ws.folder / block.arg).write_text(block.text + "\n")
        return []
    if block.kind == "keys":
        data = json.loads((ws.folder / block.arg).read_text())
        shown_keys = _top_level_keys(block.text)
        real = [k for k in data if k in shown_keys]
        missing = [k for k in shown_keys if k not in data]
        if missing:
            return [f"{where}: keys shown but not in {block.arg}: {missing}"]
        order = [k for k in shown_keys if k in real]
        return [] if order == real else [f"{where}: keys in another order than in {block.arg}: {real}"]
    if block.kind == "output":
        problem = compare(block.text, ws.last_output, block.exact, block.masks)
        return [f"{where}: {problem}"] if problem else []
    text = _small(block)
    if block.kind == "check":
        _check_commands(text, ws, where, table=block.lang == "table")
        return []
    # run
    if block.lang == "python":
        output = ws.python(text, where)
        ws.last_output = output
        problems = []
        printed = [line for line in output.splitlines() if line.strip()]
        for want in _print_comments(block.text):
            masked = normalise(want, block.exact)
            if not any(masked.startswith(normalise(p, block.exact)) for p in printed):
                problems.append(f"{where}: no print shows '{want}'; printed:\n" + "\n".join(printed[-20:]))
        return problems
    sessions = _sessions(text)
    if not sessions:
        ws.last_output = ws.sh(text, where, expect=block.exit_code)
        return []
    problems = []
    for command, shown in sessions:
        output = ws.sh(command, where, expect=block.exit_code)
        ws.last_output = output
        if shown.strip():
            problem = compare(shown, output, block.exact, block.masks)
            if problem:
                problems.append(f"{where}: $ {command.splitlines()[0]}: {problem}")
    return problems


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    folder = Path(os.environ.get("SPLITINV_DOCS_DIR") or tmp_path_factory.mktemp("docs"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("experiments", "tests", "docs", "conf"):  # what the docs' commands read
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(folder),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    env.pop("OMP_NUM_THREADS", None)
    return Workspace(folder, env)


@pytest.mark.docs
@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=lambda d: str(d.relative_to(ROOT)))
def test_docs_commands_print_what_the_docs_show(doc: Path, workspace: Workspace) -> None:
    start = int(os.environ.get("SPLITINV_DOCS_FROM", "0"))  # a line: resume there (with SPLITINV_DOCS_DIR)
    problems = []
    for block in parse(doc):
        if block.line < start and doc == DOCS[0]:
            continue
        try:
            problems += run_block(block, workspace)
        except (AssertionError, subprocess.TimeoutExpired, OSError, ValueError) as err:
            problems.append(str(err))  # a failed command; later blocks may fail for it too: all are listed
    (workspace.folder / f"docs_run_{doc.parent.name}_{doc.stem}.log").write_text("\n".join(workspace.log))
    assert not problems, "\n\n".join(problems)
