"""Assessing candidates: the exercise catalogue, the candidate pack, isolated grading with a
normalised score, the grade report and the candidate view (layer L4: composes lab.bench,
lab.verify and lab.isolation).

    catalogue.py   exercises/<name>/exercise.toml loaded and validated (`Exercise`)
    pack.py        the candidate bundle: the lab, the brief, the starter, SUBMIT.md
    grade.py       verify + benchmark in isolated workers, score, hidden checks, file checks
    rubric.py      the human part: dimensions with anchored levels
    report.py      the versioned grade report (JSON) and its Markdown
    candidates.py  `servelab compare` over grade reports: ranked by score
    cli.py         `servelab exercise list|show|pack` and `servelab grade`
    debug.py       pair-debug scenarios: plant the fault in a copy of the lab, apply the
                   reference fix, run the hidden checks in a child process
"""
