"""The README works as written: its Python examples run, each block on its own in a fresh interpreter; every
link resolves; its performance table is what ``benchmarks/report.py`` writes from the benchmarks' latest records; its
count of estimators is the registry's; its count of the claims' verdicts, and the findings page's table of them, are
the committed claims run's; the numbers its captions quote are the committed analyses'."""

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_the_readme_has_a_python_block():
    assert BLOCKS


def test_the_readme_stays_a_landing_page():
    assert len(README.read_text().splitlines()) <= 260


def test_the_readmes_count_of_estimators_is_the_registrys():
    """The opening's "seventeen estimators for binary units ... and seven for categorical ones" counts what
    ``gs.estimators.names`` lists; the estimator table has a row for each binary one, and the paragraph below it
    names each categorical one."""
    import gradstats as gs
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
             "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
    text = README.read_text()
    opening = " ".join(text.split("## Two commands")[0].split())
    binary, categorical = gs.estimators.names(kind="sbn"), gs.estimators.names(kind="categorical")
    assert f"covers {words[len(binary)]} estimators for binary units" in opening
    assert f"and {words[len(categorical)]} for categorical ones" in opening
    table, paragraph = text.split("## Estimators")[1].split("Categorical units of K classes")
    assert sorted(re.findall(r"^\| `(\w+)` \|", table, flags=re.M)) == sorted(binary)
    paragraph = paragraph.split("## ")[0]
    assert sorted(re.findall(r"`(categorical_\w+)`", paragraph)) == sorted(categorical)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs_on_its_own(index, tmp_path, run_python):
    script = tmp_path / f"readme_block_{index}.py"   # a real file: hypothesis reads the source of @given functions
    script.write_text(BLOCKS[index])
    done = run_python(script, cwd=tmp_path)
    assert done.returncode == 0, f"README block {index} failed:\n{BLOCKS[index]}\n{done.stderr[-3000:]}"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    if path.suffix == ".md":
        return {github_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", path.read_text(), flags=re.M)}
    lines = path.read_text().splitlines()   # reStructuredText: a title is a line underlined by punctuation
    return {github_anchor(title) for title, under in zip(lines, lines[1:])
            if title.strip() and re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}", under.strip())}


def links(path: Path) -> list[str]:
    return LINK.findall(path.read_text())


@pytest.mark.parametrize("source", ["README.md", "CHANGELOG.md"])
def test_every_link_resolves(source):
    """Relative links name files of the repository (and a heading in them, after '#'); web links are well
    formed (the tests run offline, so a web address is not fetched)."""
    path = ROOT / source
    found = links(path)
    assert found
    broken = []
    for target in found:
        if re.match(r"https?://", target):
            if not re.fullmatch(r"https?://[\w.-]+\.[a-z]{2,}(/\S*)?", target):
                broken.append(f"{target}: not a well-formed web address")
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file) if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {file or source}")
    assert not broken, broken


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_performance_table_comes_from_the_latest_records():
    """Every row of the README's table, and the performance page, are what the records in benchmarks/results/
    give (python benchmarks/report.py rewrites both), and every figure in the table is one of them."""
    report = _report()
    found = report.records()
    assert {"exact", "montecarlo", "byom"} <= set(found)
    readme = README.read_text()
    assert report.with_readme_table(readme, report.readme_table(found)) == readme, \
        "README's performance table is stale: run python benchmarks/report.py"
    assert report.PAGE.read_text() == report.page(found), "docs/performance_figures.inc is stale"
    table = readme.split(report.BEGIN, 1)[1].split(report.END, 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(report.headline_rows(found))
    for line in rows:   # each row names its record's command and date
        command = re.search(r"`(python benchmarks/[^`]+)`", line).group(1)
        assert any(r["command"] == command and r["date"] in line for r in found.values()), line


def test_the_report_refuses_a_readme_without_its_markers():
    report = _report()
    with pytest.raises(ValueError, match="markers"):
        report.with_readme_table("# no table here\n", "| a |")


def _generated(analysis: str) -> dict[str, str]:
    """The committed macros of an analysis (``python -m analyses.NAME`` writes ``paper/generated/NAME.tex``)."""
    text = (ROOT / "paper" / "generated" / f"{analysis}.tex").read_text()
    return dict(re.findall(r"\\newcommand\{\\(\w+)\}\{([^{}]*)\}", text))


def test_the_readme_counts_the_verdicts_of_the_committed_claims_run():
    """The README's count of verdicts is the committed claims run's, and it names as many inconclusive claims as
    that run has, so that neither goes stale when a verdict moves (NOTES-ST's, once the MNIST study is done)."""
    run = _generated("tab_claims")
    paragraph = README.read_text().split("**Claims.**")[1].split("\n\n")[0]
    counts = re.search(r"judges (\d+) claims .*?: (\d+) confirmed, (\d+) refuted", paragraph, flags=re.S)
    assert counts, paragraph
    assert counts.groups() == (run["claimsTotal"], run["claimsConfirmed"], run["claimsRefuted"])
    assert paragraph.count("(inconclusive)") == int(run["claimsInconclusive"])


def test_the_findings_table_gives_each_claims_verdict_of_the_committed_claims_run():
    """docs/results.md's table of claims: one row per claim of the committed run, its verdict column starting with
    that run's verdict."""
    from analyses.tab_claims import status_macro

    run = _generated("tab_claims")
    rows = re.findall(r"^\| ([A-Z0-9][\w-]*) \| .*? \| (confirmed|refuted|inconclusive)\b[^|]*\|",
                      (ROOT / "docs" / "results.md").read_text(), flags=re.M)
    statuses = {k: v for k, v in run.items() if k.startswith("claimStatus")}
    assert len(rows) == len(statuses) == int(run["claimsTotal"])
    assert {status_macro(claim_id): status for claim_id, status in rows} == statuses


# the README's figure captions quote these numbers: (text around the number, with {} for it; the analysis that
# writes it; its macro)
QUOTED = [("for every logit up\nto {} at t = 0.45", "fig_toy", "toyStWrongSignMaxLogit"),
          ("come within {} ± ", "fig_baselines", "runningRelErrorFinal"),
          ("keep their direction (cosine {})", "fig_gate_gradients", "gatesStCosine"),
          ("while their bias is {} times", "fig_gate_gradients", "gatesStRelativeBias"),
          ("ST's test error is {} ± ", "fig_mnist", "mnistStError"),
          ("the noisy rectifier ({} ± ", "fig_mnist", "mnistNoisyRectifierError")]


# docs/results.md's account of the training study quotes these
FINDINGS_QUOTED = [("sigmoid'\nvariant ends at {} ± ", "fig_training", "trainOneStSigmoidLoss"),
                   ("the paper preferred at\n{} ± ", "fig_training", "trainOneStLoss"),
                   ("exact gradient descent at {} (from", "fig_training", "trainOneExactLoss"),
                   ("Rerun at the rate times 1 + 1e-14, {} ± ", "fig_training", "trainPerturbChangedShare"),
                   ("report runs end at another loss and {} ± ", "fig_training", "trainPerturbMovedShare")]


@pytest.mark.parametrize("path, around, analysis, macro",
                         [(README, *q) for q in QUOTED] + [(ROOT / "docs" / "results.md", *q) for q in FINDINGS_QUOTED],
                         ids=[q[2] for q in QUOTED] + [f"findings-{q[2]}" for q in FINDINGS_QUOTED])
def test_the_readmes_quoted_numbers_are_the_committed_analyses(path, around, analysis, macro):
    """A number the README (or the findings page) quotes is its analysis's committed value
    (``paper/generated/NAME.json``, which ``python -m analyses.NAME`` writes), rounded where the printed digits
    end."""
    number = r"(-?\d+(?:\.(\d+))?)"
    found = re.search(re.escape(around).replace(re.escape("{}"), number), path.read_text())
    assert found, f"{path.name} no longer says {around!r}"
    printed, decimals = float(found.group(1)), len(found.group(2) or "")
    value = json.loads((ROOT / "paper" / "generated" / f"{analysis}.json").read_text())[macro]["value"]
    assert abs(printed - value) <= 0.5 * 10 ** -decimals + 1e-12, (printed, value)


# numbers printed with an error that no committed analysis writes, and the command printed beside them that does
PRINTED_ELSEWHERE = {"0.0249 ± 0.0007": "python docs/reproducers/storchastic_rebar.py",
                     "0.0243 ± 0.0004": "python docs/reproducers/storchastic_rebar.py",
                     "0.0251 ± 0.0003": "python docs/reproducers/storchastic_rebar.py"}
# a value and its error as the README and the findings page print them: 0.134 ± 0.021, −0.32 ± 0.04, +0.39 ± 0.41,
# (2.9 ± 0.5) × 10^-4
PAIR = re.compile(r"(?<![\w.])(\()?([−+-]?)(\d+(?:\.(\d+))?) ± (\d+(?:\.(\d+))?)(?(1)\) × 10\^(-?\d+))")


def _estimates() -> list[tuple[float, float]]:
    """(value, standard error) of every committed estimate macro (``paper/generated/*.json``)."""
    found = []
    for path in sorted((ROOT / "paper" / "generated").glob("*.json")):
        found += [(m["value"], m["stderr"]) for m in json.loads(path.read_text()).values()
                  if isinstance(m, dict) and m.get("kind") == "estimate"]
    return found


@pytest.mark.parametrize("path", [README, ROOT / "docs" / "results.md"], ids=["README", "findings"])
def test_every_number_printed_with_its_error_is_a_committed_analysiss(path):
    """Each value printed with its standard error in the README and on the findings page (outside code spans) is,
    to its printed digits, the value and the error of an estimate that a committed analysis wrote
    (``paper/generated/NAME.json``, as printed or in percent), so that none goes stale when an analysis reruns;
    the few that no analysis writes are listed in :data:`PRINTED_ELSEWHERE` with the command printed beside them."""
    text = re.sub(r"`[^`]*`", "``", path.read_text())
    estimates = _estimates()
    pairs = list(PAIR.finditer(text))
    assert len(pairs) >= 25
    unmatched = []
    for pair in pairs:
        scale = 10.0 ** int(pair.group(7)) if pair.group(1) else 1.0
        value = float(pair.group(3)) * (-1 if pair.group(2) in ("−", "-") else 1) * scale
        stderr = float(pair.group(5)) * scale
        value_tol = (0.5 * 10 ** -len(pair.group(4) or "")) * scale + 1e-12
        stderr_tol = (0.5 * 10 ** -len(pair.group(6) or "")) * scale + 1e-12
        if not any(abs(percent * v - value) <= value_tol and abs(percent * e - stderr) <= stderr_tol
                   for v, e in estimates for percent in (1, 100)):
            unmatched.append(pair.group(0))
    elsewhere = [p for p in unmatched if p in PRINTED_ELSEWHERE]
    assert [p for p in unmatched if p not in PRINTED_ELSEWHERE] == []
    for printed in elsewhere:
        paragraph = next(b for b in path.read_text().split("\n\n") if printed in b)
        assert PRINTED_ELSEWHERE[printed] in paragraph, printed


def test_the_findings_table_of_claims_quotes_each_claims_committed_verdict():
    """Each number of a row of docs/results.md's table of claims (a decimal, or an integer from 10 up; the values
    printed with their errors are the test above's) is, to its printed digits, one of the numbers of that claim's
    committed verdict (``paper/generated/tab_claims_verdicts.jsonl``: qualifier, summary, evidence, holds_when,
    which ``python -m analyses.tab_claims`` writes), or the whole text of a committed macro (a p-value of the study
    the verdict names)."""
    verdicts = {v["id"]: v for v in map(json.loads, (ROOT / "paper" / "generated" /
                                                      "tab_claims_verdicts.jsonl").read_text().splitlines())}
    macros = {text for path in (ROOT / "paper" / "generated").glob("*.tex") for text in _generated(path.stem).values()}
    rows = re.findall(r"^\| ([A-Z0-9][\w-]*) \| .*? \| (?:confirmed|refuted|inconclusive)[^|]*\| (.*) \|$",
                      (ROOT / "docs" / "results.md").read_text(), flags=re.M)
    assert {claim_id for claim_id, _ in rows} == set(verdicts)
    unquoted = []
    for claim_id, finding in rows:
        verdict = verdicts[claim_id]
        said = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", " ".join(
            verdict[k] for k in ("qualifier", "summary", "evidence", "holds_when")))]
        finding = PAIR.sub("", re.sub(r"`[^`]*`", "", finding))
        for number in re.finditer(r"(?<![\w.])(\d+(?:\.(\d+))?)(?![\w.]*\w)", finding):
            value, decimals = float(number.group(1)), len(number.group(2) or "")
            if (decimals == 0 and value < 10) or number.group(1) in macros:
                continue
            if not any(abs(value - x) <= 0.5 * 10 ** -decimals + 1e-12 for x in said):
                unquoted.append((claim_id, number.group(1)))
    assert unquoted == []


def test_the_readmes_mnist_caption_says_what_the_long_runs_reading_finds():
    """The MNIST caption says the long runs end within their rows' spread over seeds: the committed reading
    (``\\mnistLongShortRows``, which ``python -m analyses.fig_mnist --collect`` writes) must find none of them short,
    and every planned long run must be in."""
    macros = _generated("fig_mnist")
    caption = README.read_text().split("![mnist]")[1].split("\n\n")[0]
    if "within their row's spread" in " ".join(caption.split()):
        assert macros["mnistLongShortRows"] == "none of them"
        assert macros["mnistLongRead"] == macros["mnistLongPlanned"]


def _rows_named_better_than_st(text: str) -> set[str]:
    """The gated rows (:data:`analyses.fig_mnist.ROW_NAMES`) named in ``text`` between its last ", and " before
    "significantly better than ST" and that phrase; a longer name is taken out before the names inside it."""
    from analyses.fig_mnist import ROW_NAMES

    segment = text.split("significantly better than ST")[0].rsplit(", and ", 1)[-1]
    named = set()
    for gate, name in sorted(ROW_NAMES.items(), key=lambda item: -len(item[1])):
        if gate != "st" and name in segment:
            named.add(gate)
            segment = segment.replace(name, "")
    return named


def test_the_readmes_mnist_caption_names_the_rows_the_rule_finds_better_than_st():
    """Once the MNIST study is complete (``\\mnistComplete``), the caption names exactly the gated rows that
    NOTES-ST's rule finds significantly better than ST (``\\mnistRuleReading``)."""
    macros = _generated("fig_mnist")
    if macros["mnistComplete"] == "1":
        caption = " ".join(README.read_text().split("![mnist]")[1].split("\n\n")[0].split())
        assert "significantly better than ST" in caption
        assert _rows_named_better_than_st(caption) == _rows_named_better_than_st(macros["mnistRuleReading"])


def test_the_readmes_mnist_table_is_the_committed_one():
    """The README quotes the MNIST study's table verbatim between its markers: ``paper/generated/tab_mnist.md``,
    which ``python -m analyses.fig_mnist --collect`` writes from the committed runs."""
    text = README.read_text()
    assert "<!-- mnist table -->\n" in text and "<!-- end of mnist table -->" in text
    quoted = text.split("<!-- mnist table -->\n")[1].split("<!-- end of mnist table -->")[0]
    assert quoted == (ROOT / "paper" / "generated" / "tab_mnist.md").read_text(), \
        "copy paper/generated/tab_mnist.md into the README between its markers"
