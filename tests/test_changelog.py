"""The changelog page's history: claims added, verdicts changed and claims removed, commit by commit."""

from __future__ import annotations

import subprocess

from vrn_site.changelog import history, render

NOTE = """---
title: Demo
claims:
{claims}
---
# Demo
"""


def claim(claim_id: str, verdict: str) -> str:
    return f"  - {{id: {claim_id}, seed: X1, claim: c, verdict: {verdict}, finding: f}}"


def commit(repo, text: str, date: str) -> None:
    (repo / "docs" / "notes" / "demo.md").write_text(text)
    env = {"GIT_AUTHOR_DATE": f"{date}T12:00:00", "GIT_COMMITTER_DATE": f"{date}T12:00:00"}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        [*git, "commit", "-qm", date], cwd=repo, check=True, env=env | {"PATH": "/usr/bin:/bin"}
    )


def test_history_follows_claims_through_commits(tmp_path):
    (tmp_path / "docs" / "notes").mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    commit(tmp_path, NOTE.format(claims=claim("demo.a", "holds")), "2026-01-01")
    both = claim("demo.a", "nuance") + "\n" + claim("demo.b", "answered")
    commit(tmp_path, NOTE.format(claims=both), "2026-02-01")
    commit(tmp_path, NOTE.format(claims=claim("demo.a", "nuance")), "2026-03-01")
    changes = [(c.date, c.claim, c.what) for c in history(tmp_path)]
    assert changes == [
        ("2026-01-01", "demo.a", "added as holds"),
        ("2026-02-01", "demo.a", "verdict holds → nuance"),
        ("2026-02-01", "demo.b", "added as answered"),
        ("2026-03-01", "demo.b", "removed"),
    ]
    page = render(history(tmp_path))
    assert page.startswith("4 changes") and page.index("removed") < page.index("added as holds")


def test_without_git_the_page_says_so(tmp_path):
    assert "outside a git repository" in render(history(tmp_path))
