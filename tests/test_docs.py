"""Every `productvlm` command line in README.md and docs/*.md is one the real CLI takes, and
the ones marked to run on a CPU run as written.

A fenced block's info string says how its lines are checked: ```` ```bash cpu ```` lines run
here, in a folder laid out as `make demo` leaves one (runs/demo/...), but with a small run
this test trains itself; ```` ```bash gpu ````, ``net``, ``long`` and ``cluster`` lines are
parsed against the real command's options and skipped with the reason below. A block that
holds a `productvlm` line and no such mark is an error, so no example goes unchecked.
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer.main
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: fence marks of lines that are parsed but not run here, and why
SKIPPED = {
    "gpu": "GPU-only: needs a CUDA GPU and the real model",
    "net": "needs the Hugging Face Hub or the web",
    "long": "takes minutes on a CPU, or serves until stopped",
    "cluster": "needs a Ray cluster",
}
MARKS = {"cpu", *SKIPPED}
SHELLS = {"bash", "sh", "shell", "console"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class DocLine:
    """One `productvlm ...` command of a fenced block: where it is and how it is marked."""

    where: str  # file:line, for the test id and messages
    mark: str | None  # the fence's mark (cpu, gpu, ...), None when it has none
    argv: tuple[str, ...]  # the command's words, "productvlm" first
    redirect: str | None  # `> FILE`: where its standard output goes


def _commands(text: str) -> list[tuple[list[str], str | None]]:
    """The `productvlm` commands of one logical shell line: (words, `>` target) each."""
    out = []
    for part in re.split(r"\s(?:&&|;)\s", text):
        if not re.match(r"^\s*(?:[A-Za-z_]\w*=\S*\s+)*productvlm\s", part):
            continue  # other programs' lines (python, curl, make) are not ours to parse
        words = shlex.split(part, comments=True)
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]  # VAR=value before the command
        if not words or words[0] != "productvlm":
            continue
        redirect = None
        if ">" in words:
            i = words.index(">")
            redirect, words = words[i + 1], words[:i]
        out.append((words, redirect))
    return out


def doc_lines(path: Path) -> list[DocLine]:
    """The `productvlm` command lines of ``path``'s fenced code blocks, in order."""
    lines, found = path.read_text().splitlines(), []
    mark, inside, i = None, False, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            words = line[3:].split()
            # only shell blocks hold commands (plain ``` blocks are diagrams and listings)
            inside = not inside and bool(words) and words[0] in SHELLS
            mark = words[1] if inside and len(words) > 1 else None
            i += 1
            continue
        start = i
        while inside and line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + " " + lines[i].strip()  # a continued line is one command
        if inside:
            for argv, redirect in _commands(line):
                found.append(DocLine(f"{path.relative_to(ROOT)}:{start + 1}", mark,
                                     tuple(argv), redirect))
        i += 1
    return found


ALL_LINES = [d for p in DOCS for d in doc_lines(p)]


def test_the_docs_have_commands_and_every_one_is_marked() -> None:
    assert len(ALL_LINES) >= 30, [d.where for d in ALL_LINES]
    unmarked = [d.where for d in ALL_LINES if d.mark not in MARKS]
    assert not unmarked, f"fence these blocks as bash cpu|{'|'.join(SKIPPED)}: {unmarked}"
    readme = [d for d in ALL_LINES if d.where.startswith("README.md")]
    assert any(d.mark == "cpu" for d in readme), "the README shows no command that runs on a CPU"


@pytest.mark.parametrize("line", ALL_LINES, ids=[d.where for d in ALL_LINES])
def test_command_line_parses_against_the_real_cli(line: DocLine) -> None:
    """The subcommand exists, and click takes its options and arguments as written (types,
    required options, unknown flags), without running anything."""
    from productvlm.cli import app

    commands = typer.main.get_command(app).commands  # the click commands typer builds
    name, *args = line.argv[1:]
    command = commands.get(name)
    assert command is not None, f"{line.where}: no command {name!r}"
    try:
        command.make_context(name, list(args))
    except Exception as e:  # click's usage errors (typer vendors click: no public class)
        message = e.format_message() if hasattr(e, "format_message") else repr(e)
        pytest.fail(f"{line.where}: {' '.join(line.argv)}: {message}")


def _write_catalog(path: Path, rows: list[dict[str, object]]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    if path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_csv(path, index=False)


@pytest.fixture(scope="module")
def workspace(calibrated_run: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as after `make demo` (runs/demo: catalog, prepared, base-model,
    train), from the small calibrated run of conftest.py; plus the files the docs' examples
    name: shots/ (photos), items.jsonl and my-catalog.csv (catalogs of other layouts)."""
    import pandas as pd

    ws = tmp_path_factory.mktemp("docs")
    demo = ws / "runs" / "demo"
    demo.mkdir(parents=True)
    shutil.copytree(calibrated_run["run"], demo / "train")  # evaluate writes inside it
    shutil.copytree(calibrated_run["run"] / "merged", demo / "base-model")
    (demo / "prepared").symlink_to(calibrated_run["prepared"])
    (demo / "catalog").symlink_to(calibrated_run["prepared"].parent / "catalog")

    catalog = pd.read_parquet(demo / "catalog" / "catalog.parquet")
    catalog = catalog[catalog.full_price.notna() & catalog.imageurl.str.endswith(".jpg")]
    photos = [Path(p) for p in catalog.imageurl if Path(p).is_file()]
    (ws / "shots").mkdir()
    shutil.copy(photos[0], ws / "shots" / "bag.jpg")
    Image.open(photos[1]).save(ws / "shots" / "coat.png")
    (ws / "photos").mkdir()
    rows = []
    for (_, r), photo in zip(catalog.head(24).iterrows(), photos, strict=False):
        shutil.copy(photo, ws / "photos" / photo.name)  # relative paths: inside the folder
        rows.append({"name": r.title, "type": r.category3_code, "list_price": r.full_price,
                     "photo": f"photos/{photo.name}", "product_code": r.product_code})
    _write_catalog(ws / "items.jsonl", rows)
    _write_catalog(ws / "my-catalog.csv", [
        {"product_code": r["product_code"], "title": r["name"], "category": r["type"],
         "price": r["list_price"], "photo_path": r["photo"]} for r in rows])
    return ws


def _run(line: DocLine, cwd: Path) -> None:
    """Run ``line`` in this process (the CLI as `productvlm` runs it), globs expanded as a
    shell would, its standard output into its `>` file."""
    from typer.testing import CliRunner

    from productvlm.cli import app

    args = []
    for word in line.argv[1:]:
        matches = sorted(glob.glob(word, root_dir=cwd)) if "*" in word else []
        args.extend(matches or [word])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (
        f"{line.where}: {' '.join(line.argv)} exited {result.exit_code}\n{result.output}"
        f"\n{result.exception!r}")
    if line.redirect:
        (cwd / line.redirect).write_text(result.stdout)


@pytest.mark.parametrize("line", ALL_LINES, ids=[d.where for d in ALL_LINES])
def test_cpu_command_line_runs(line: DocLine, request: pytest.FixtureRequest,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A `bash cpu` line runs to exit status 0 in the demo-like folder; the others are
    skipped with their mark's reason."""
    if line.mark != "cpu":
        pytest.skip(SKIPPED.get(line.mark or "", "not marked"))
    ws = request.getfixturevalue("workspace")
    monkeypatch.chdir(ws)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # no tracker process for each command
    _run(line, ws)
