"""``bioviz demo``: the studies run end to end through ``bioviz run`` and the demo says, per
study, whether its planted truth was recovered; ``index.html`` links each study's report.
(Each study's recovery is tested in depth in tests/test_study_*.py; this runs the shortest
one through the demo itself.)"""

from html.parser import HTMLParser
from pathlib import Path

import pytest

from bioviz.demo import STUDIES, run, study_config
from bioviz.report import RUO


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs = []

    def handle_starttag(self, tag, attrs):
        self.hrefs += [v for k, v in attrs if k == "href"]


def test_every_demo_study_ships_a_config_with_a_cohort_that_checks_itself():
    for name in STUDIES:
        cfg = study_config(name)
        assert cfg["study"] == f"bioviz-demo/{name}" and "class_path" in cfg["cohort"]
        assert {"extract", "train", "associate", "interpret", "report"} <= set(cfg)
    with pytest.raises(Exception, match="unknown demo study 'nope'"):
        study_config("nope")


@pytest.mark.slow
def test_demo_runs_a_study_says_it_recovered_the_truth_and_links_its_report(dna_demo):
    assert dna_demo.returncode == 0, dna_demo.stderr[-3000:]
    out = dna_demo.out
    printed = [line for line in dna_demo.stdout.splitlines() if line.strip()]
    verdicts = [line for line in printed if "recovered" in line and not line.startswith(("1 of", "0 of"))]
    assert len(verdicts) == 1 and "not recovered" not in verdicts[0].lower(), printed
    assert verdicts[0].startswith("DNA: the planted CTCF motif (MA0139.2) recovered — ")
    assert printed[-1].startswith("1 of 1 planted truths recovered")
    index = out / "index.html"
    html = index.read_text()
    assert RUO in html and verdicts[0].split(" — ")[0] in html
    links = _Links()
    links.feed(html)
    assert {"dna_motifs/report/report.html", "dna_motifs/report/report.pdf", "dna_motifs/report/atlas.html"} <= set(
        links.hrefs)
    assert all((out / h).is_file() for h in links.hrefs)  # every link leads to a file of the demo
    assert not [h for h in links.hrefs if "://" in h or Path(h).is_absolute()]


def test_studies_are_named_on_the_command_line_as_one_name_or_a_comma_list(tmp_path):
    with pytest.raises(Exception, match="unknown demo study 'nope'"):
        run(out=str(tmp_path), studies="dna_motifs,nope", progress=False)
    assert not (tmp_path / "dna_motifs").exists()  # checked before any study runs
