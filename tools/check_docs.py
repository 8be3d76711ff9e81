"""
Check that the docs say only what the code has: docs that cannot drift.

    python tools/check_docs.py            # prints `file:line: what` for each problem; exit 1 if any
    python -m pytest -q tests/test_docs.py  # the same, as a test

It reads README.md, LEARNING_GUIDE.md, IMPLEMENTATION_ROADMAP.md, HISTORICAL_TIMELINE.md, docs/**/*.md
and benchmarks/README.md, and checks:

(a) paths: every repository path a doc names exists: a markdown link `[text](target)` (relative to the
    doc), and, in backticks or in a command, anything under `mini_nanochat/`, `tests/`, `docs/`,
    `tools/` or `benchmarks/` (globs and placeholders such as `*`, `<tag>`, `NNNN` are skipped).
(b) code: `module.symbol` (`gpt.apply_rope`, `mini_nanochat.engine.Engine.generate`,
    `stages.sft.run`, `stages/chat.py`, `stages/chat.answer`), `ClassName.member` (`GPT.forward`, `KVCache.update`) and `path.py:function`
    (`mini_nanochat/gpt.py:attend`) in backticks resolve in our code, read with `ast` (nothing is run).
    Only names of our own modules and classes are checked: `torch.where` or `os.replace` are not ours.
(c) the command line: every `python -m mini_nanochat <stage> ...`, `mini-nanochat <stage> ...`,
    `torchrun ... -m mini_nanochat <stage> ...` and every backticked `` `<stage> --flag ...` `` names a
    registered stage (`__main__.STAGES`) and only flags its parser (`get_parser()`) has; every
    `python tools/x.py --flag` / `python benchmarks/x.py --flag` names a script that exists and flags
    its `add_argument` calls define.
(d) tests: every backticked `test_name`, `tests/test_a.py::test_b` exists as a test function, and a
    `pytest ... -k EXPR` selects at least one test of the files it names.
(e) figures: a fenced block that shows what a command printed may be marked, on the line right before
    the fence, with

        <!-- output: <command> | <YYYY-MM-DD> | <commit> | <machine> -->

    (the command that printed it, the date, the commit the code was at, the machine). A marked block
    must carry all four, the date must be a date and the commit one this repository knows (the marker's
    command is checked as in (c)). Figures in prose carry their command and date next to them.
(f) ADRs: every `docs/adrs/NNNN-*.md` but the template has the sections Status, Context, Decision,
    Alternatives, Consequences, Evidence and Where in the code (`## <name>`, extra words allowed).
(g) nothing outside the repository: no `../shared/...`, `/work/...`, `shared/anchors.md` (the facts
    are in `docs/anchors.md`) and no script under `/tmp/` (experiment scripts live in `tools/`).
    `/tmp/<dir>` as a scratch folder for artifacts is fine.
(h) test counts: "N passed" / "N tests" go stale with every new test; a paragraph that states one must
    also say when it was measured (a YYYY-MM-DD date), as a historical record.

Exemptions. A line that contains "(planned)" or "in progress (issue #" names work that does not exist
yet, so (a)-(d) skip it. A reference right after the word "nanochat" (as in "nanochat's
`tests/test_engine.py`" or "nanochat `GPT.forward`") is to nanochat's code, not ours, and is skipped.
A reference within 60 characters of "formerly", "is gone", "was removed", "removed in", "at the time",
"as it was then" or "(then " names what the code had once, and is skipped too.
A line containing `<!-- check_docs: skip -->` is skipped entirely (use sparingly: say why next to it).
"""
from __future__ import annotations

import argparse
import ast
import functools
import importlib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_GLOBS = ["README.md", "LEARNING_GUIDE.md", "IMPLEMENTATION_ROADMAP.md", "HISTORICAL_TIMELINE.md",
             "docs/**/*.md", "benchmarks/README.md"]
PATH_PREFIXES = ("mini_nanochat/", "tests/", "docs/", "tools/", "benchmarks/")
ADR_SECTIONS = ["Status", "Context", "Decision", "Alternatives", "Consequences", "Evidence", "Where in the code"]
PLANNED = ("(planned)", "in progress (issue #")
SKIP_LINE = "<!-- check_docs: skip -->"
OUTPUT_MARKER = re.compile(r"^\s*<!--\s*output:\s*(.*?)\s*-->\s*$")
FOREIGN = re.compile(r"(?<![\w-])nanochat(?:'s)?\W{0,3}$", re.I)  # "nanochat's `x`", "nanochat `x`"
HISTORY = re.compile(r"formerly|is gone|was removed|removed in|at the time|as it was then|\(then ", re.I)


@dataclass
class Problem:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


# ----------------------------------------------------------------------------------------------------
# The code's index: modules, their top-level names, classes and their members, test names, CLI flags.

@dataclass
class ClassInfo:
    members: set[str] = field(default_factory=set)
    bases: list[str] = field(default_factory=list)


@dataclass
class ModuleInfo:
    names: set[str] = field(default_factory=set)
    classes: dict[str, ClassInfo] = field(default_factory=dict)


def _class_info(node: ast.ClassDef) -> ClassInfo:
    info = ClassInfo(bases=[b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases])
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            info.members.add(item.name)
        elif isinstance(item, ast.Assign):
            info.members |= {t.id for t in item.targets if isinstance(t, ast.Name)}
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            info.members.add(item.target.id)
    for sub in ast.walk(node):  # self.x = ... anywhere in a method
        if isinstance(sub, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            for t in targets:
                for e in ast.walk(t):
                    if isinstance(e, ast.Attribute) and isinstance(e.value, ast.Name) and e.value.id == "self":
                        info.members.add(e.attr)
    return info


def _module_info(tree: ast.Module) -> ModuleInfo:
    m = ModuleInfo()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            m.names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            m.names.add(node.name)
            m.classes[node.name] = _class_info(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                for e in ast.walk(t):
                    if isinstance(e, ast.Name):
                        m.names.add(e.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            m.names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try)):  # names defined under `if` / `try` at top level
            sub = _module_info(ast.Module(body=[n for n in ast.walk(node) if isinstance(n, ast.stmt)
                                                and n is not node], type_ignores=[]))
            m.names |= sub.names
            m.classes.update(sub.classes)
    return m


@dataclass
class Index:
    modules: dict[str, ModuleInfo]          # "gpt", "stages.sft", "tasks.core", "tools.vocab_sweep"
    classes: dict[str, list[ClassInfo]]     # class name -> every class of that name in the package
    tests: dict[str, set[str]]              # "tests/test_x.py" -> test function names (and Class::test)
    stage_flags: dict[str, set[str] | None]  # stage -> option strings (None: its parser did not build)
    script_flags: dict[str, set[str] | None]  # "tools/x.py" -> option strings (None: no argparse)

    def class_has(self, cls: str, member: str, seen: frozenset = frozenset()) -> bool | None:
        """True if a class of that name (or a base) has `member`; False if not; None if a base is a
        class from elsewhere that we cannot look into."""
        unknown = False
        for info in self.classes.get(cls, []):
            if member in info.members:
                return True
            for b in info.bases:
                if b in seen:
                    continue
                if b in self.classes:
                    found = self.class_has(b, member, seen | {cls})
                elif b in EXTERNAL_BASES:
                    found = _external_has(b, member)
                else:
                    found = None
                if found:
                    return True
                unknown = unknown or found is None
        return None if unknown else False

    @property
    def all_tests(self) -> set[str]:
        return set().union(*self.tests.values()) if self.tests else set()


def _argparse_flags(tree: ast.AST) -> set[str] | None:
    flags, found = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            found = True
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
                      and a.value.startswith("-")}
    return (flags | {"-h", "--help"}) if found else None


EXTERNAL_BASES = {"Module": "torch.nn.Module", "Optimizer": "torch.optim.Optimizer", "Exception": "builtins.Exception",
                  "ValueError": "builtins.ValueError", "RuntimeError": "builtins.RuntimeError",
                  "SystemExit": "builtins.SystemExit", "FileNotFoundError": "builtins.FileNotFoundError",
                  "object": "builtins.object"}


def _external_has(base: str, member: str) -> bool:
    """Whether a well-known base class from elsewhere (nn.Module: `GPT.state_dict`) has `member`."""
    module, name = EXTERNAL_BASES[base].rsplit(".", 1)
    return hasattr(getattr(importlib.import_module(module), name), member)


@functools.lru_cache(maxsize=1)
def build_index() -> Index:
    """The index of the code (built once per process: importing the stages for their parsers costs
    a few seconds)."""
    modules: dict[str, ModuleInfo] = {}
    classes: dict[str, list[ClassInfo]] = {}
    trees: dict[str, ast.Module] = {}
    for py in sorted(ROOT.glob("mini_nanochat/**/*.py")):
        rel = py.relative_to(ROOT / "mini_nanochat").with_suffix("")
        key = ".".join(rel.parts)
        if key.endswith("__init__"):
            key = key[: -len(".__init__")] if "." in key else "mini_nanochat"
        tree = ast.parse(py.read_text(encoding="utf-8"))
        trees[key] = tree
        info = _module_info(tree)
        modules[key] = info
        for name, c in info.classes.items():
            classes.setdefault(name, []).append(c)
    # packages expose their submodules as attributes
    for key in list(modules):
        if "." in key and key.rsplit(".", 1)[0] in modules:
            modules[key.rsplit(".", 1)[0]].names.add(key.rsplit(".", 1)[1])
    modules["mini_nanochat"].names |= {k for k in modules if "." not in k}
    tests: dict[str, set[str]] = {}
    for py in sorted(ROOT.glob("tests/*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"))
        names = set()
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                names.add(node.name)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                        names |= {item.name, f"{node.name}::{item.name}"}
        tests[f"tests/{py.name}"] = names
        modules["tests." + py.stem] = _module_info(tree)
    script_flags: dict[str, set[str] | None] = {}
    for folder in ("tools", "benchmarks"):
        for py in sorted(ROOT.glob(f"{folder}/*.py")):
            tree = ast.parse(py.read_text(encoding="utf-8"))
            script_flags[f"{folder}/{py.name}"] = _argparse_flags(tree)
            modules[f"{folder}.{py.stem}"] = _module_info(tree)
    return Index(modules, classes, tests, _stage_flags(), script_flags)


def _stage_flags() -> dict[str, set[str]]:
    """Each registered stage's option strings, from its own get_parser() (the parser the CLI uses)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from mini_nanochat.__main__ import STAGES

    out: dict[str, set[str] | None] = {}
    for name, (module, _) in STAGES.items():
        try:
            parser = importlib.import_module(f"mini_nanochat.stages.{module}").get_parser()
        except Exception as e:  # noqa: BLE001 - a stage being written right now: its flags go unchecked
            print(f"check_docs: cannot build the parser of stage {name!r} ({type(e).__name__}: {e}); "
                  "its flags are not checked", file=sys.stderr)
            out[name] = None
            continue
        out[name] = set(parser._option_string_actions)
    return out


# ----------------------------------------------------------------------------------------------------
# Reading the docs

def doc_files() -> list[Path]:
    seen, out = set(), []
    for g in DOC_GLOBS:
        for p in sorted(ROOT.glob(g)):
            if p.is_file() and p not in seen:
                seen.add(p)
                out.append(p)
    return out


@dataclass
class Line:
    no: int
    text: str
    in_code: bool       # inside a fenced block
    command: str = ""   # for a code line: the whole command, continuation lines joined


def read_lines(text: str) -> list[Line]:
    lines, in_code, pending = [], False, None
    for no, raw in enumerate(text.splitlines(), 1):
        if raw.lstrip().startswith("```"):
            in_code = not in_code
            lines.append(Line(no, raw, False))
            pending = None
            continue
        line = Line(no, raw, in_code)
        if in_code:
            if pending is not None:
                pending.command += " " + raw.strip().rstrip("\\")
            else:
                line.command = raw.strip().rstrip("\\")
                pending = line
            if not raw.rstrip().endswith("\\"):
                pending = None
        lines.append(line)
    return lines


def paragraph(lines: list[Line], i: int) -> str:
    """The text of the paragraph (run of non-blank lines) holding lines[i]."""
    lo, hi = i, i
    while lo > 0 and lines[lo - 1].text.strip():
        lo -= 1
    while hi + 1 < len(lines) and lines[hi + 1].text.strip():
        hi += 1
    return "\n".join(ln.text for ln in lines[lo:hi + 1])


BACKTICK = re.compile(r"``(.+?)``|`([^`\n]+)`")
MDLINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)|!\[[^\]\n]*\]\(([^)\s]+)\)")
DOTTED = re.compile(r"^(?:mini_nanochat\.)?([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\(.*\))?$")
PATHFUNC = re.compile(r"^((?:[\w./-]+/)?\w+\.py):(\w+(?:\.\w+)*)(?:\(.*\))?$")
TESTNAME = re.compile(r"^(test_\w+)(?:\[.*\])?(?:\(\))?$")
NODEID = re.compile(r"^(tests/\w+\.py)::(\w+(?:::\w+)?)(?:\[.*\])?$")
REPO_PATH = re.compile(r"(?<![\w./-])((?:mini_nanochat|tests|docs|tools|benchmarks)/[\w./-]*[\w/])")
SKIP_PATH = re.compile(r"[*<>{}]|NNNN|\.\.\.|XXXX")
CLI = re.compile(r"(?:^|[\s;&|(`$])(?:python3?\s+-m\s+mini_nanochat|mini-nanochat|-m\s+mini_nanochat)\s+(.*)$")
SCRIPT = re.compile(r"(?:^|[\s;&|(`])python3?\s+((?:tools|benchmarks)/[\w.-]+\.py)(.*)$")
PYTEST = re.compile(r"pytest\b(.*)$")
OUTSIDE = re.compile(r"(\.\./)+shared/|/work/|(?<![\w/.-])shared/anchors|/tmp/[\w./-]*\.py\b")
TEST_COUNT = re.compile(r"(?<![\d.])\b\d+ (?:passed|tests\b|test functions)")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def _split_command(s: str) -> list[str]:
    s = re.split(r"\s(?:\||&&|;|#|>|2>|&>)\s|\s#|`", s)[0]  # the command alone, before pipes, comments
    try:
        return shlex.split(s)
    except ValueError:
        return s.split()


class Checker:
    def __init__(self, index: Index | None = None):
        self.index = index or build_index()
        self.problems: list[Problem] = []
        self._known_commits: dict[str, bool] = {}

    # -- helpers
    def add(self, path: Path, no: int, what: str) -> None:
        try:
            name = str(path.relative_to(ROOT))
        except ValueError:  # a doc outside the repository (the checker's own tests)
            name = str(path)
        problem = Problem(name, no, what)
        if problem not in self.problems:  # one problem once, however many checks see it
            self.problems.append(problem)

    def commit_exists(self, sha: str) -> bool:
        if sha not in self._known_commits:
            r = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{sha}^{{commit}}"],
                               capture_output=True)
            self._known_commits[sha] = r.returncode == 0
        return self._known_commits[sha]

    # -- (b) code references
    def resolve(self, dotted: str) -> bool | None:
        """True/False if `dotted` is one of ours and does / does not resolve; None if it is not ours."""
        parts = dotted.split(".")
        mods = self.index.modules
        for n in range(min(len(parts) - 1, 3), 0, -1):  # the longest module prefix: stages.sft, gpt
            key = ".".join(parts[:n])
            if key in mods:
                rest = parts[n:]
                if rest[0] not in mods[key].names:
                    if key == "mini_nanochat" and len(rest) == 1:
                        return None  # `mini_nanochat.split_pattern`: a metadata key, not a module of ours
                    if len(rest) > 1 and all(r.islower() for r in rest):
                        return None  # `tokenizer.ggml.pre`: a namespaced key (GGUF), not our code
                    return False
                if len(rest) > 1 and rest[0] in mods[key].classes:
                    return self.index.class_has(rest[0], rest[1])
                return True
        if parts[0] in self.index.classes:
            return self.index.class_has(parts[0], parts[1])
        return None

    def check_span(self, path: Path, no: int, span: str) -> None:
        span = span.strip()
        m = NODEID.match(span)
        if m:
            f, name = m.groups()
            if f not in self.index.tests:
                self.add(path, no, f"test file `{f}` does not exist")
            elif not name.startswith(("test", "Test")):  # a helper: `tests/test_gpt.py::formula_params`
                if not self.resolve(f"tests.{Path(f).stem}.{name.replace('::', '.')}"):
                    self.add(path, no, f"`{f}` has no `{name}`")
            elif name not in self.index.tests[f]:
                self.add(path, no, f"`{f}` has no test `{name}`")
            return
        m = TESTNAME.match(span)
        if m:
            if m.group(1) not in self.index.all_tests:
                self.add(path, no, f"no test named `{m.group(1)}` in tests/")
            return
        m = re.match(r"^stages/(\w+)(?:\.py|\.(\w+(?:\.\w+)*))(?:\(.*\))?$", span)  # stages/chat.py, stages/chat.answer
        if m:
            stage, sym = m.groups()
            if f"stages.{stage}" not in self.index.modules:
                self.add(path, no, f"`{span}`: there is no `mini_nanochat/stages/{stage}.py`")
            elif sym and not self.resolve(f"stages.{stage}.{sym}"):
                self.add(path, no, f"`{span}`: `stages/{stage}.py` has no `{sym}`")
            return
        m = PATHFUNC.match(span)
        if m:
            file, sym = m.groups()
            key = self._module_of_file(file)
            if key is None:
                if "/" in file:
                    self.add(path, no, f"`{file}` does not exist")
                return
            if not self.resolve(f"{key}.{sym}"):
                self.add(path, no, f"`{span}`: `{file}` has no `{sym}`")
            return
        m = DOTTED.match(span)
        if m and not re.search(r"\.(py|md|json|jsonl|txt|toml|sh|png|pt|html|yaml|yml|csv|zip|tiktoken|"
                                r"parquet|safetensors|bpe|pkl|out|log)$", m.group(1)):
            ok = self.resolve(m.group(1))
            if ok is False:
                self.add(path, no, f"`{span}` does not resolve in mini_nanochat (renamed or removed?)")

    def _module_of_file(self, file: str) -> str | None:
        f = file[len("mini_nanochat/"):] if file.startswith("mini_nanochat/") else file
        key = f[:-3].replace("/", ".")
        if key.endswith("__init__"):
            key = key.rsplit(".", 1)[0] if "." in key else "mini_nanochat"
        if key in self.index.modules:
            return key
        if "/" not in file:  # a bare gpt.py: ours if we have one of that name
            return key if key in self.index.modules else None
        return None

    # -- (a) paths
    def check_path(self, path: Path, no: int, p: str, base: Path | None = None) -> None:
        if SKIP_PATH.search(p):
            return
        p = p.split("::")[0]
        p = re.sub(r":\w[\w.]*$", "", p)  # file.py:function
        target = ((base or ROOT) / p).resolve()
        if not target.exists():
            self.add(path, no, f"`{p}` does not exist")

    def check_link(self, path: Path, no: int, target: str) -> None:
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return
        t = target.split("#")[0]
        if not t:
            return
        resolved = (path.parent / t).resolve()
        if path.resolve().is_relative_to(ROOT) and not resolved.is_relative_to(ROOT):
            self.add(path, no, f"link `{target}` points outside the repository")
            return
        if not resolved.exists():
            self.add(path, no, f"link `{target}` does not exist")

    # -- (c) command lines
    def check_cli(self, path: Path, no: int, rest: str) -> None:
        self.check_cli_tokens(path, no, _split_command(rest))

    def check_cli_tokens(self, path: Path, no: int, toks: list[str]) -> None:
        if not toks:
            return
        stage = toks[0]
        if stage.endswith(":") or stage.startswith("<") or stage in ("[", "...") or stage.startswith("-"):
            return
        if stage not in self.index.stage_flags:
            self.add(path, no, f"`{stage}` is not a stage (python -m mini_nanochat --help lists them)")
            return
        if self.index.stage_flags[stage] is not None:
            self._check_flags(path, no, f"{stage}", toks[1:], self.index.stage_flags[stage])

    def _check_flags(self, path, no, what, toks, flags):
        if "--" in toks:  # what follows `--` belongs to another command (`tools/broken_runs.py -- base-train ...`)
            rest = toks[toks.index("--") + 1:]
            toks = toks[:toks.index("--")]
            if rest and rest[0] in self.index.stage_flags:  # a stage's own flags, checked as such
                self.check_cli_tokens(path, no, rest)
        for t in toks:
            if re.match(r"^--?[A-Za-z][\w-]*(=.*)?$", t):
                name = t.split("=")[0]
                if name not in flags:
                    self.add(path, no, f"`{what}` has no flag `{name}`")

    def check_script(self, path: Path, no: int, script: str, rest: str) -> None:
        if not (ROOT / script).is_file():
            self.add(path, no, f"`{script}` does not exist")
            return
        flags = self.index.script_flags.get(script)
        if flags is not None:
            self._check_flags(path, no, script, _split_command(rest), flags)

    # -- (d) pytest -k
    def check_pytest(self, path: Path, no: int, rest: str) -> None:
        toks = _split_command(rest)
        files = [t.split("::")[0] for t in toks if t.startswith("tests/") and t.endswith(".py") or "::" in t]
        for f in files:
            if f not in self.index.tests and not SKIP_PATH.search(f):
                self.add(path, no, f"test file `{f}` does not exist")
                return
        if "-k" not in toks or toks.index("-k") + 1 >= len(toks):
            return
        expr = toks[toks.index("-k") + 1]
        pool = [f"{f} {n}" for f in (files or self.index.tests) for n in self.index.tests.get(f, ())]
        words = set(re.findall(r"[A-Za-z_]\w*", expr)) - {"and", "or", "not"}
        code = re.sub(r"[A-Za-z_]\w*", lambda w: w.group(0) if w.group(0) in ("and", "or", "not")
                      else f"({w.group(0).lower()!r} in s)", expr)
        try:
            # every name became a string literal, so only and / or / not / parentheses are left to evaluate
            hit = any(eval(code, {"__builtins__": {}}, {"s": s.lower()}) for s in pool)  # noqa: S307
        except Exception:  # noqa: BLE001 - not an expression we understand: leave it to pytest
            return
        if words and not hit:
            self.add(path, no, f"`pytest -k {expr}` selects no test in {' '.join(files) or 'tests/'}")

    # -- one document
    def check_doc(self, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        lines = read_lines(text)
        for i, ln in enumerate(lines):
            t = ln.text
            if SKIP_LINE in t:
                continue
            planned = any(p in t for p in PLANNED)
            # (g) outside the repository
            for m in OUTSIDE.finditer(t):
                self.add(path, ln.no, f"`{m.group(0)}` is outside the repository")
            # (h) test counts
            if TEST_COUNT.search(t) and not DATE.search(paragraph(lines, i)):
                self.add(path, ln.no, "a test count without the date it was measured (remove it or date it)")
            # (e) output markers
            om = OUTPUT_MARKER.match(t)
            if om:
                self.check_marker(path, ln.no, om.group(1), lines[i + 1:i + 2])
                continue
            if planned:
                continue
            # (a) markdown links
            if not ln.in_code:
                for m in MDLINK.finditer(t):
                    self.check_link(path, ln.no, m.group(1) or m.group(2))
            # commands, in code blocks (joined continuation lines) and in backticks
            cmds = [ln.command] if ln.in_code and ln.command else []
            spans = []
            if not ln.in_code:
                for m in BACKTICK.finditer(t):
                    span = m.group(1) or m.group(2)
                    if FOREIGN.search(t[:m.start()]):
                        continue
                    if HISTORY.search(t[max(0, m.start() - 60):m.end() + 60]):  # a name the code had once
                        continue
                    spans.append(span)
                    cmds.append(span)
            for c in cmds:
                c = re.sub(r"^\$\s+", "", c)
                m = CLI.search(c)
                if m:
                    self.check_cli(path, ln.no, m.group(1))
                else:
                    m = re.match(r"^([a-z][a-z-]+)\s+(--?[A-Za-z].*)$", c)  # `tok-train --corpus shk`
                    if m and not ln.in_code and m.group(1) in self.index.stage_flags:
                        self.check_cli(path, ln.no, c)
                m = SCRIPT.search(c)
                if m:
                    self.check_script(path, ln.no, m.group(1), m.group(2))
                m = PYTEST.search(c)
                if m and ("python" in c or c.startswith("pytest")):
                    self.check_pytest(path, ln.no, m.group(1))
                if ln.in_code and not c.lstrip().startswith("#"):
                    for pm in REPO_PATH.finditer(c.split(" #")[0]):
                        if re.match(r"^(python|pytest|torchrun|cat|less|ls|sed|diff|cmp|bash|sh)\b", c) or \
                                "python" in c:
                            self.check_path(path, ln.no, pm.group(1))
            for span in spans:
                for pm in REPO_PATH.finditer(span):
                    self.check_path(path, ln.no, pm.group(1))
                self.check_span(path, ln.no, span)
        if path.parent.name == "adrs" and re.match(r"\d{4}-", path.name) and not path.name.startswith("0000-"):
            self.check_adr(path, text)

    def check_marker(self, path: Path, no: int, body: str, after: list[Line]) -> None:
        parts = [p.strip() for p in body.split(" | ")]
        if len(parts) != 4 or not all(parts):
            self.add(path, no, "output marker needs `<!-- output: <command> | <date> | <commit> | <machine> -->`")
            return
        command, date, commit, _machine = parts
        if not re.fullmatch(r"20\d\d-\d\d-\d\d", date):
            self.add(path, no, f"output marker: `{date}` is not a YYYY-MM-DD date")
        if not re.fullmatch(r"[0-9a-f]{7,40}", commit) or not self.commit_exists(commit):
            self.add(path, no, f"output marker: `{commit}` is not a commit of this repository")
        if not after or not after[0].text.lstrip().startswith("```"):
            self.add(path, no, "output marker must be the line right before a fenced block")
        m = CLI.search(command)
        if m:
            self.check_cli(path, no, m.group(1))
        m = SCRIPT.search(command)
        if m:
            self.check_script(path, no, m.group(1), m.group(2))

    def check_adr(self, path: Path, text: str) -> None:
        heads = [h.strip().lower() for h in re.findall(r"^##\s+(.+)$", text, re.M)]
        for s in ADR_SECTIONS:
            if not any(h.startswith(s.lower()) for h in heads):
                self.add(path, 1, f"ADR lacks the section `## {s}`")

    def run(self, files: list[Path] | None = None) -> list[Problem]:
        for p in files or doc_files():
            self.check_doc(p)
        return self.problems


def check(files: list[Path] | None = None) -> list[Problem]:
    """Every problem in the docs (all of them, or `files`)."""
    return Checker().run(files)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    ap.add_argument("files", nargs="*", help="docs to check (default: all)")
    args = ap.parse_args(argv)
    files = [Path(f).resolve() for f in args.files] or None
    problems = check(files)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) in {len(files or doc_files())} docs", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
