"""The benchmark runner (vrn_site.bench): its timing harness, its correctness checks, the JSON it
writes, the page it renders and the values it publishes. Nothing here asserts a speed."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch

from vrn_site import bench

CASE_KEYS = {
    "id",
    "title",
    "baseline",
    "candidate",
    "baseline_median_s",
    "candidate_median_s",
    "ratio",
    "target",
    "target_value",
    "met",
    "note",
    "rounds",
    "informative",
}
BUDGET_KEYS = {"id", "title", "measured", "unit", "target", "target_value", "met", "source", "note"}
MACHINE_KEYS = {"cpu", "cores", "aten_capability", "torch", "threads", "device", "date"}


def hand_made_results() -> dict:
    """Results as the runner writes them, with one missed target and one unmeasured budget."""

    def case(id: str, ratio: float, target: str, value: float, met: bool, **extra) -> dict:
        return {
            "id": id,
            "title": f"title of {id}",
            "baseline": "the baseline",
            "candidate": "the candidate",
            "baseline_median_s": 0.2,
            "candidate_median_s": 0.05,
            "ratio": ratio,
            "target": target,
            "target_value": value,
            "met": met,
            "note": f"note of {id}",
            "rounds": 9,
            "informative": False,
        } | extra

    decode = {"context": [1024, 2048], "speed_up": [1.5, 2.1], "bound": [1.7, 2.3]}
    return {
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "aten_capability": "AVX2",
            "torch": "2.x",
            "python": "3.11",
            "threads": 1,
            "device": "CPU",
            "date": "2026-01-01 00:00 UTC",
            "load_average": 0.5,
            "quick": False,
        },
        "cases": [
            case("kv-cache", 4.26, "≥ 5x faster", 5.0, False),
            case("greedy-vs-transformers", 0.56, "ours/theirs ≤ 1", 1.0, True),
            case("beam-vs-transformers", 0.5, "ours/theirs ≤ 1", 1.0, True),
            case("batched-beam", 5.2, "≥ 3x faster", 3.0, True),
            case("gqa-decode", 2.1 / 2.3, "≥ 0.5 of the bytes bound", 0.5, True, series=decode),
            case("mqa-decode", 0.8, "≥ 0.5 of the bytes bound", 0.5, True, series=decode),
            case("mha-decode-bandwidth", 0.7, "> 0.25", 0.25, True, informative=True),
            case("sdpa", 5.54, "ours/theirs (informative)", 1.0, False, informative=True),
        ],
        "budgets": [
            bench.budget("site-build", "Strict site build", 12.34, 20, "timed"),
            bench.budget(
                "notebooks", "Each notebook", None, 60, "x", "not measured: run make unit"
            ),
        ],
    }


# --- timing ------------------------------------------------------------------------------------


def test_timer_alternates_and_times_each_call_between_two_clock_reads() -> None:
    calls, now = [], [0.0]
    cost = {"A": 3.0, "B": 1.0}

    def work(name: str):
        def run() -> None:
            calls.append(name)
            now[0] += cost[name]  # the fake clock advances by what the call "costs"

        return run

    timer = bench.Timer(rounds=3, warmup=1, clock=lambda: now[0])
    times = timer([work("A"), work("B")])
    assert calls == ["A", "B"] * 4  # one warm-up round, then three timed ones, alternating
    assert times == [[3.0] * 3, [1.0] * 3]


def test_timer_syncs_before_each_clock_read() -> None:
    events = []
    timer = bench.Timer(
        rounds=2,
        warmup=0,
        clock=lambda: events.append("clock") or 0.0,
        sync=lambda: events.append("sync"),
    )
    timer([lambda: events.append("call")])
    assert events == ["sync", "clock", "call", "sync", "clock"] * 2


def test_speed_up_case_takes_the_ratio_of_medians() -> None:
    # An outlier round (9.0) moves a mean, not a median.
    case = bench.speed_up_case(
        "x", "t", ("slow", [4.0, 4.0, 9.0]), ("fast", [1.0, 2.0, 1.0]), 3.0, "n"
    )
    assert (case.baseline_median_s, case.candidate_median_s, case.ratio) == (4.0, 1.0, 4.0)
    assert case.met and case.target == "≥ 3x faster" and case.rounds == 3
    slower = bench.speed_up_case("x", "t", ("slow", [2.0]), ("fast", [1.0]), 3.0, "n")
    assert not slower.met


# --- correctness checks ------------------------------------------------------------------------


def test_check_same_names_the_case_when_outputs_differ() -> None:
    bench.check_same("kv-cache", "generated tokens", [[1, 2, 3]], [[1, 2, 3]])
    with pytest.raises(bench.OutputsDiffer, match=r"kv-cache: the generated tokens differ"):
        bench.check_same("kv-cache", "generated tokens", [[1, 2, 3]], [[1, 2, 4]])


def test_check_close_tolerates_rounding_and_names_the_case_beyond_it() -> None:
    bench.check_close("sdpa", "outputs", torch.ones(4), torch.ones(4) + 1e-7, tol=1e-5)
    with pytest.raises(bench.OutputsDiffer, match=r"sdpa: the outputs differ by more than 1e-05"):
        bench.check_close("sdpa", "outputs", [0.0, 1.0], [0.0, 1.1], tol=1e-5)


def test_hypotheses_cut_transformers_rows_after_the_end_token() -> None:
    rows = [[9, 9, 4, 0, 0, 0], [9, 9, 4, 5, 6, 7]]  # prompt of 2, end token 0 then padding
    cut = bench.hypotheses("beam", [None, None], rows, prompt_len=2, eos=0)
    assert cut == [[9, 9, 4, 0], [9, 9, 4, 5, 6, 7]]
    with pytest.raises(bench.OutputsDiffer, match="numbers of hypotheses"):
        bench.hypotheses("beam", [None], rows, prompt_len=2, eos=0)


def test_per_hypothesis_baseline_finds_what_the_batched_scorer_finds() -> None:
    """The batched-beam baseline is a fair one: the same search, one model call per beam."""
    from snippets.beam_search import GPTNextLogProbs, beam_search
    from snippets.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=32, block_size=16, n_layers=1, n_heads=2, d_model=16)).eval()
    for p in model.parameters():
        p.data.mul_(15)  # peaked distributions: no near-ties for rounding to swap
    calls = []
    scorer = bench.PerHypothesisNextLogProbs(model)
    hook = model.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[0]))
    per_beam = beam_search(scorer, [1, 2, 3], 3, 6, 0)
    hook.remove()
    batched = beam_search(GPTNextLogProbs(model), [1, 2, 3], 3, 6, 0)
    assert [t for t, _ in per_beam] == [t for t, _ in batched]
    bench.check_close("test", "scores", [s for _, s in per_beam], [s for _, s in batched], 1e-5)
    assert set(calls) == {1}  # one row per model call


# --- the runner's JSON -------------------------------------------------------------------------


def test_quick_run_writes_every_case_in_the_schema(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="two cases compare with transformers")
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    assert bench.main(["--quick", "--skip-build", "--threads", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # restored
    results = json.loads(out.read_text())
    assert MACHINE_KEYS <= set(results["machine"]) and results["machine"]["quick"] is True
    ids = [c["id"] for c in results["cases"]]
    assert ids == [
        "kv-cache",
        "greedy-vs-transformers",
        "beam-vs-transformers",
        "batched-beam",
        "gqa-decode",
        "mqa-decode",
        "mha-decode-bandwidth",
        "sdpa",
    ]
    for c in results["cases"]:
        assert CASE_KEYS <= set(c) <= CASE_KEYS | {"series"}, c["id"]
        assert c["ratio"] > 0 and isinstance(c["met"], bool) and c["rounds"] == 3
    for c in results["cases"][4:6]:
        assert len(c["series"]["context"]) == len(c["series"]["speed_up"]) == 2
    for b in results["budgets"]:
        assert set(b) == BUDGET_KEYS
    site = results["budgets"][0]
    assert site["id"] == "site-build" and site["measured"] is None and site["met"] is None


def test_cuda_requested_without_cuda_is_a_clear_error(capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--device", "cuda", "--quick", "--out", "unused.json"])
    assert exit_.value.code == 2
    assert "sees no CUDA device" in capsys.readouterr().err


def test_budgets_read_the_last_runs_records(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    [notebooks, tests] = bench.record_budgets(tmp_path)
    assert notebooks["note"] == "not measured: run make unit first" and notebooks["met"] is None
    assert tests["note"] == "not measured: run make test first" and tests["measured"] is None
    record = {"date": "d", "notebook_seconds": {"notebooks/a.ipynb": 12.3, "notebooks/b.ipynb": 75}}
    (tmp_path / "build/verification.json").write_text(json.dumps(record))
    (tmp_path / "build/test-seconds.json").write_text('{"seconds": 250, "date": "e"}')
    a, b, tests = bench.record_budgets(tmp_path)
    assert (a["measured"], a["met"], b["met"]) == (12.3, True, False)
    assert (tests["measured"], tests["met"], tests["target"]) == (250, True, "< 300 s")


# --- the page and the published values -----------------------------------------------------------


def test_render_shows_every_case_and_a_missed_target_as_missed_with_its_number() -> None:
    results = hand_made_results()
    page = bench.render(results)
    for c in results["cases"]:
        assert f"[{c['id']}](#{c['id']})" in page and f'<a id="{c["id"]}">' in page
    kv_row = next(line for line in page.splitlines() if line.startswith("| [kv-cache]"))
    assert "**4.3**" in kv_row and "≥ 5x faster" in kv_row and ">missed</span>" in kv_row
    batched_row = next(line for line in page.splitlines() if line.startswith("| [batched-beam]"))
    assert ">met</span>" in batched_row
    sdpa_row = next(line for line in page.splitlines() if line.startswith("| [sdpa]"))
    assert ">info</span>" in sdpa_row  # informative: neither met nor missed
    assert "| Strict site build | 12.3 s | < 20 s |" in page
    assert "not measured: run make unit" in page and ">not measured</span>" in page
    assert "Test CPU, 2 cores, ATen kernels AVX2, 1 torch thread" in page
    assert page == bench.render(copy.deepcopy(results))  # the same page on every build


def test_figures_are_inline_svg_that_markdown_keeps_whole() -> None:
    page = bench.render(hand_made_results())
    figures = re.findall(r"<figure[^>]*>\n(.*?)\n</figure>", page, flags=re.S)
    assert len(figures) == 2  # ratios against targets; decoding speed-up against the bound
    for figure in figures:
        assert figure.startswith("<svg ") and "</svg>\n<figcaption>" in figure
        assert "\n\n" not in figure  # a blank line would end the HTML block in Markdown
        assert "<?xml" not in figure and "<style" not in figure
        assert 'role="img" aria-label="' in figure
    assert "<text" in figures[1] and "cached context (tokens)" in figures[1]


def test_published_values_are_formatted_strings() -> None:
    values = bench.published_values(hand_made_results())
    assert values["kv_cache"] == "4.3"  # one decimal from 1 up
    assert values["greedy_vs_transformers"] == "0.56"  # two below 1
    assert values["greedy_vs_transformers_speedup"] == "1.8"
    assert values["batched_beam"] == "5.2"
    assert values["gqa_decode"] == "2.1" and values["gqa_decode_bound"] == "2.3"
    assert values["gqa_decode_fraction"] == "91%" and values["gqa_decode_context"] == "2,048"
    assert values["mha_decode_bandwidth"] == "70%" and values["sdpa"] == "5.5"
    assert all(isinstance(v, str) for v in values.values())
    assert all(
        re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) for name in values
    )  # placeholder names
