"""The claim cache behind incremental `attnlab reproduce`: keys, entries, resume, --fresh."""

import json

import numpy as np
import pytest

from attnlab.report import cache as cache_mod
from attnlab.report import reproduce
from attnlab.report.cache import ClaimCache, claim_key
from attnlab.report.claims import CLAIMS, Claim, Context, Measurement
from attnlab.report.figures import line_plot
from attnlab.report.reproduce import ReproduceInterrupted

SETTINGS = {"quick": True, "seed": 0}


def _figure_claim(key="fig-claim", calls=None):
    def check(ctx):
        if calls is not None:
            calls.append(key)
        x = np.arange(1, 4)
        fig = line_plot(ctx.figure_path(f"{key}.png"), {"y": (list(x), list(x))}, "x", "y", key)
        return Measurement(f"{key} measured", True, table=[{"x": 1}], figures=[fig])

    return Claim(key, "A", f"title {key}", "statement", check)


def test_key_depends_on_claim_settings_code_and_inputs(tmp_path, monkeypatch):
    data = tmp_path / "grid.jsonl"
    data.write_text("one")
    claim = Claim("k", "A", "t", "p", lambda ctx: None, inputs=(data,))
    base = claim_key(claim, SETTINGS)
    assert claim_key(claim, dict(SETTINGS)) == base  # deterministic
    assert claim_key(claim, {"quick": False, "seed": 0}) != base
    assert claim_key(claim, {"quick": True, "seed": 1}) != base
    assert claim_key(Claim("k2", "A", "t", "p", lambda ctx: None, inputs=(data,)), SETTINGS) != base
    data.write_text("two")
    assert claim_key(claim, SETTINGS) != base
    data.write_text("one")
    assert claim_key(claim, SETTINGS) == base
    monkeypatch.setattr(cache_mod, "code_version", lambda: "9.9.9+src.other")
    assert claim_key(claim, SETTINGS) != base


def test_code_version_names_the_version_and_hashes_the_source():
    from attnlab._version import __version__

    version = cache_mod.code_version()
    assert version.startswith(__version__ + "+src.") and len(version.split(".")[-1]) == 16


def test_entry_round_trip_restores_figures_and_marks_the_hit(tmp_path):
    claim = _figure_claim()
    out = tmp_path / "out"
    result = claim.run(Context(quick=True, out_dir=out))
    cache = ClaimCache(tmp_path / "cache")
    key = claim_key(claim, SETTINGS)
    assert cache.store(claim, key, result, out / "figures", SETTINGS)
    (out / "figures" / "fig-claim.png").unlink()  # another run may overwrite or remove it
    got = cache.load(claim, key, out / "figures")
    assert got is not None and got.cached and not result.cached
    assert (got.measured, got.table, got.figures) == (result.measured, result.table, result.figures)
    assert got.finished_at == result.finished_at is not None
    assert (out / "figures" / "fig-claim.png").read_bytes()[:4] == b"\x89PNG"
    assert cache.load(claim, "another-key", out / "figures") is None


def test_a_check_that_raised_is_never_cached(tmp_path):
    def broken(ctx):
        raise RuntimeError("solver diverged")

    claim = Claim("broken", "B", "t", "p", broken)
    result = claim.run(Context(quick=True, out_dir=tmp_path))
    cache = ClaimCache(tmp_path / "cache")
    assert result.status == "error"
    assert not cache.store(claim, "k", result, tmp_path / "figures", SETTINGS)
    assert cache.load(claim, "k", tmp_path / "figures") is None


def test_damaged_entry_is_a_miss_and_is_removed(tmp_path):
    claim = _figure_claim()
    out = tmp_path / "out"
    cache = ClaimCache(tmp_path / "cache")
    key = claim_key(claim, SETTINGS)
    cache.store(claim, key, claim.run(Context(quick=True, out_dir=out)), out / "figures", SETTINGS)
    entry = tmp_path / "cache" / f"fig-claim-{key}"
    (entry / "result.json").write_text('{"truncated": ')
    assert cache.load(claim, key, out / "figures") is None
    assert not entry.exists()
    cache.store(claim, key, claim.run(Context(quick=True, out_dir=out)), out / "figures", SETTINGS)
    (entry / "fig-claim.png").unlink()
    assert cache.load(claim, key, out / "figures") is None and not entry.exists()


def test_stale_entries_of_the_same_settings_are_pruned(tmp_path):
    claim = _figure_claim()
    out = tmp_path / "out"
    cache = ClaimCache(tmp_path / "cache")
    result = claim.run(Context(quick=True, out_dir=out))
    cache.store(claim, "old", result, out / "figures", SETTINGS)
    cache.store(claim, "full", result, out / "figures", {"quick": False, "seed": 0})
    cache.store(claim, "new", result, out / "figures", SETTINGS)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == ["fig-claim-full", "fig-claim-new"]


@pytest.fixture
def fake_claims(monkeypatch):
    """Three registered claims that count their runs; the second can be made to interrupt."""
    calls: list[str] = []
    state = {"interrupt": False}
    claims = [_figure_claim(f"fake-{i}", calls) for i in range(3)]
    second = claims[1]

    def maybe_interrupt(ctx):
        if state["interrupt"]:
            raise KeyboardInterrupt
        return second.check(ctx)

    claims[1] = Claim(second.key, "B", second.title, second.paper, maybe_interrupt)
    for c in claims:
        monkeypatch.setitem(CLAIMS, c.key, c)
    return [c.key for c in claims], calls, state


def test_rerun_reads_finished_claims_from_the_cache(tmp_path, fake_claims):
    keys, calls, _ = fake_claims
    first, _ = reproduce(tmp_path, quick=True, only=keys)
    assert calls == keys and not any(r.cached for r in first)
    second, path = reproduce(tmp_path, quick=True, only=keys)
    assert calls == keys  # nothing recomputed
    assert all(r.cached for r in second)
    assert [r.finished_at for r in second] == [r.finished_at for r in first]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["complete"] and [c["cached"] for c in report["claims"]] == [True] * 3
    assert "read from cache" in path.read_text()
    reproduce(tmp_path, quick=True, only=keys, seed=1)  # other settings: a miss
    assert calls == keys * 2
    reproduce(tmp_path, quick=True, only=keys, fresh=True)
    assert calls == keys * 3


def test_interrupt_leaves_a_partial_report_and_the_rerun_resumes(tmp_path, fake_claims):
    keys, calls, state = fake_claims
    state["interrupt"] = True
    with pytest.raises(ReproduceInterrupted) as stop:
        reproduce(tmp_path, quick=True, only=keys)
    assert [r.key for r in stop.value.done] == keys[:1] and stop.value.pending == keys[1:]
    partial = json.loads((tmp_path / "report.json").read_text())
    assert not partial["complete"] and partial["pending"] == keys[1:]
    assert [c["key"] for c in partial["claims"]] == keys[:1]
    assert "Partial report" in (tmp_path / "report.html").read_text()
    state["interrupt"] = False
    results, _ = reproduce(tmp_path, quick=True, only=keys)
    assert calls == keys  # fake-0 once (cached on the rerun), fake-1 and fake-2 once each
    assert [r.cached for r in results] == [True, False, False]
    final = json.loads((tmp_path / "report.json").read_text())
    assert final["complete"] and [c["key"] for c in final["claims"]] == keys
    assert "Partial report" not in (tmp_path / "report.html").read_text()


def test_progress_reports_the_steps_of_a_claim(tmp_path, monkeypatch):
    steps = []

    def stepped(ctx):
        for _ in ctx.track([4, 8, 16], lambda d: f"d = {d}"):
            pass
        return Measurement("ok", True)

    monkeypatch.setitem(CLAIMS, "stepped", Claim("stepped", "A", "t", "p", stepped))
    reproduce(tmp_path, quick=True, only=["stepped"], progress=lambda *a: steps.append(a))
    assert steps == [(0, 3, "d = 4"), (1, 3, "d = 8"), (2, 3, "d = 16"), (3, 3, "done")]
