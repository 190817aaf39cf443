"""The query journal: bound to its target, checked on replay, locked, and losing at most one chunk."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from attnlab import Oracle, QueryJournal
from attnlab.errors import JournalError, JournalMismatch
from attnlab.models import SingleHeadAttention
from attnlab.oracle.journal import row_checksum
from attnlab.oracle.noise import GaussianNoise

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
PROBES = 3  # Oracle's default journal_probes


def linear_target(X):
    return X.sum(axis=(1, 2))


def queries(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def counting(target):
    sent = []

    def answer(X):
        sent.append(X.shape[0])
        return target(X)

    return answer, sent


def test_journal_replays_without_paying_twice(tmp_path):
    path = tmp_path / "journal.sqlite"
    X = queries((10, 3, 2))
    with Oracle(linear_target, d=2, journal=path) as first:
        answers = first(X)
    assert first.paid == 10 + PROBES
    target, sent = counting(linear_target)
    with Oracle(target, d=2, journal=path, budget=2 + PROBES) as again:
        replay = again(np.concatenate([X, X[:2] + 1.0]))
        assert again.queries == 12 and again.paid == 2 + PROBES
    np.testing.assert_array_equal(replay[:10], answers)
    assert sent == [PROBES, 2]
    assert len(QueryJournal(path)) == 12


def test_probe_queries_are_paid_once_per_opening_and_charged_to_the_budget(tmp_path):
    path = tmp_path / "j.sqlite"
    with pytest.raises(Exception, match="budget exhausted"):
        Oracle(linear_target, d=2, journal=path, budget=PROBES - 1)(np.ones((1, 2)))
    with Oracle(linear_target, d=2, journal=path, journal_probes=5) as oracle:
        assert oracle.paid == 0  # nothing is asked before the first query
        oracle(np.ones((1, 2)))
        assert oracle.paid == 5 + 1 and oracle.queries == 1
    with Oracle(linear_target, d=2, journal=path) as oracle:  # the file's 5 probes are re-asked
        oracle(np.ones((1, 2)))
        assert oracle.paid == 5


def test_a_journal_is_bound_to_its_target(tmp_path):
    """The issue's case: a journal of head seed=0 must not answer for head seed=1."""
    path = tmp_path / "j.sqlite"
    X = queries((20, 5, 8))
    with Oracle(SingleHeadAttention.random(8, seed=0), journal=path) as first:
        first(X)
    other = Oracle(SingleHeadAttention.random(8, seed=1), journal=path)
    with pytest.raises(
        JournalMismatch, match=rf"(?s){path}.*another target.*probe queries.*new journal="
    ):
        other(X)
    assert other.queries == 0 and other.paid == PROBES  # only the probes were asked
    other.close()
    with Oracle(SingleHeadAttention.random(8, seed=0), journal=path) as same:
        same(X)
        assert same.paid == PROBES  # everything else replayed


def test_width_identity_and_noise_mismatches_fail_before_any_query(tmp_path):
    path = tmp_path / "j.sqlite"
    with Oracle(linear_target, d=3, journal=path, journal_id="head-A") as oracle:
        oracle(np.ones((2, 3)))
    target, sent = counting(linear_target)
    for kwargs, message in [
        ({"d": 4, "journal_id": "head-A"}, "width d = 3, this oracle's are d = 4"),
        (
            {"d": 3, "journal_id": "head-B"},
            "journal_id = 'head-A', this oracle has journal_id = 'head-B'",
        ),
        ({"d": 3}, "journal_id = 'head-A', this oracle has journal_id = None"),
        ({"d": 3, "journal_id": "head-A", "noise": GaussianNoise(0.01)}, "noise model none"),
    ]:
        with pytest.raises(JournalMismatch, match=message):
            Oracle(target, journal=path, **kwargs)
    assert sent == []


def test_a_width_mismatch_is_caught_when_d_is_fixed_by_the_first_query(tmp_path):
    path = tmp_path / "j.sqlite"
    with Oracle(linear_target, d=3, journal=path) as oracle:
        oracle(np.ones((2, 3)))
    target, sent = counting(linear_target)
    with pytest.raises(JournalMismatch, match="width d = 3, this oracle's are d = 4"):
        Oracle(target, journal=path)(np.ones((2, 4)))
    assert sent == []


def test_binding_by_name_only_asks_nothing_extra(tmp_path):
    path = tmp_path / "j.sqlite"
    with pytest.raises(ValueError, match="journal must be bound"):
        Oracle(linear_target, d=2, journal=path, journal_probes=0)
    with Oracle(linear_target, d=2, journal=path, journal_probes=0, journal_id="t1") as oracle:
        oracle(np.ones((1, 2)))
        assert oracle.paid == 1
    with Oracle(linear_target, d=2, journal=path, journal_probes=0, journal_id="t1") as oracle:
        oracle(np.ones((1, 2)))
        assert oracle.paid == 0


def test_the_fingerprint_goes_through_the_http_door(tmp_path):
    from attnlab.serve import save_target

    from serve_helpers import serve

    path = tmp_path / "j.sqlite"
    X = queries((6, 3, 4))
    a = save_target(SingleHeadAttention.random(4, seed=0), tmp_path / "a.safetensors")
    b = save_target(SingleHeadAttention.random(4, seed=1), tmp_path / "b.safetensors")
    with serve(a, tmp_path / "keys_a.sqlite") as srv:
        with Oracle.http(srv.url, srv.key, journal=path) as oracle:
            oracle(X)
            assert oracle.paid == 6 + PROBES
        assert srv.spent() == 6 + PROBES
    with serve(b, tmp_path / "keys_b.sqlite") as srv:
        with pytest.raises(JournalMismatch, match="probe queries"):
            Oracle.http(srv.url, srv.key, journal=path)(X)
        assert srv.spent() == PROBES


# -- checksums and answer checks on replay ---------------------------------------------------


def _journal_with_rows(path, rows=5):
    with Oracle(linear_target, d=2, journal=path) as oracle:
        X = queries((rows, 1, 2))
        oracle(X)
    return X


def test_a_tampered_answer_is_detected_on_replay_naming_file_and_row(tmp_path):
    path = tmp_path / "j.sqlite"
    X = _journal_with_rows(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE answers SET answer = answer + 1e-9 WHERE rowid = 3")
    with pytest.raises(
        JournalError, match=rf"row 3 \(rowid\) of the journal {path} fails its checksum"
    ):
        Oracle(linear_target, d=2, journal=path)(X)
    with pytest.raises(JournalError, match="row 3"):
        list(QueryJournal(path).entries())


def test_a_stored_infinite_answer_is_refused_even_with_a_valid_checksum(tmp_path):
    path = tmp_path / "j.sqlite"
    X = _journal_with_rows(path)
    with sqlite3.connect(path) as db:
        key, n, d, query = db.execute(
            "SELECT key, n, d, query FROM answers WHERE rowid = 2"
        ).fetchone()
        db.execute(
            "UPDATE answers SET answer = ?, checksum = ? WHERE rowid = 2",
            (float("inf"), row_checksum(key, n, d, query, float("inf"))),
        )
    with pytest.raises(JournalError, match="row 2 .* not finite"):
        Oracle(linear_target, d=2, journal=path)(X)


def test_a_text_answer_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    X = _journal_with_rows(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE answers SET answer = 'forty-two' WHERE rowid = 1")
    with pytest.raises(JournalError, match="row 1 .* str answer"):
        Oracle(linear_target, d=2, journal=path)(X)


def test_answers_without_a_binding_are_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    X = _journal_with_rows(path)
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM meta WHERE name = 'binding'")
    with pytest.raises(JournalError, match="no record of the target"):
        Oracle(linear_target, d=2, journal=path)(X)


# -- files that are not (or no longer) journals ------------------------------------------------


def _garbage(path):
    path.write_bytes(b"this is not a database\n" * 200)


def _truncated(path):
    _journal_with_rows(path, rows=3000)
    size = path.stat().st_size
    assert not path.with_name(path.name + "-wal").exists()  # checkpointed on close
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _foreign(path):
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")


def _legacy(path):
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE answers (key BLOB PRIMARY KEY, n INTEGER, d INTEGER, query BLOB, answer REAL,"
            " created TEXT)"
        )


def _wrong_columns(path):
    _journal_with_rows(path)
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE answers ADD COLUMN extra TEXT")


@pytest.mark.parametrize(
    "make, message",
    [
        (_garbage, "truncated, corrupt or not an SQLite file"),
        (_truncated, "truncated, corrupt or not an SQLite file"),
        (_foreign, "not an attnlab query journal .tables: users"),
        (_legacy, "from an older attnlab"),
        (_wrong_columns, "columns"),
    ],
)
def test_unusable_files_raise_a_journal_error_naming_the_file(tmp_path, make, message):
    path = tmp_path / "j.sqlite"
    make(path)
    with pytest.raises(JournalError, match=message) as info:
        Oracle(linear_target, d=2, journal=path)(queries((5, 1, 2)))
    assert str(path) in str(info.value) and "Move it away" in str(info.value)
    assert not isinstance(info.value, sqlite3.Error)


def test_a_directory_is_not_a_journal(tmp_path):
    with pytest.raises(JournalError, match="is a directory"):
        Oracle(linear_target, d=2, journal=tmp_path)


# -- one process at a time, and kill -9 -----------------------------------------------------------


def test_a_second_opener_in_the_same_process_is_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    first = Oracle(linear_target, d=2, journal=path)
    with pytest.raises(
        JournalError, match=rf"{path} is open in another Oracle \(pid {os.getpid()}\)"
    ):
        Oracle(linear_target, d=2, journal=path)
    first.close()
    Oracle(linear_target, d=2, journal=path).close()


def test_a_second_process_is_refused_until_the_first_dies(tmp_path):
    path = tmp_path / "j.sqlite"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, numpy as np
        from attnlab import Oracle
        oracle = Oracle(lambda X: X.sum(axis=(1, 2)), d=2, journal={str(path)!r})
        oracle(np.ones((1, 2)))
        print("holding", flush=True)
        sys.stdin.read()
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(
            JournalError, match=rf"open in another Oracle \(pid {holder.pid}\).*its own journal="
        ):
            Oracle(linear_target, d=2, journal=path)
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        holder.kill()
    with Oracle(
        linear_target, d=2, journal=path
    ) as oracle:  # the kernel dropped the dead holder's lock
        oracle(np.ones((1, 2)))
        assert oracle.paid == PROBES


def test_kill_9_in_the_middle_of_a_batch_re_pays_at_most_the_chunk_in_flight(tmp_path):
    path = tmp_path / "j.sqlite"
    X = queries((1000, 3, 2))
    np.save(tmp_path / "X.npy", X)
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from attnlab import Oracle
        calls = []
        def target(X):
            calls.append(X.shape[0])
            if len(calls) == 6:  # the probes, four chunks, then die holding the fifth's answers
                print("sent", sum(calls), flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            return X.sum(axis=(1, 2))
        oracle = Oracle(target, d=2, journal={str(path)!r}, journal_chunk=64)
        oracle(np.load({str(tmp_path / "X.npy")!r}))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    sent_before = int(proc.stdout.split()[-1])
    assert sent_before == PROBES + 5 * 64
    assert len(QueryJournal(path)) == 4 * 64
    target, sent = counting(linear_target)
    with Oracle(target, d=2, journal=path) as resumed:
        np.testing.assert_array_equal(resumed(X), linear_target(X))
        fresh = resumed.paid - PROBES
    paid_twice = (sent_before - PROBES) + fresh - 1000
    assert paid_twice == 64  # exactly the chunk in flight


def test_journal_keeps_answers_when_the_process_is_killed(tmp_path):
    path = tmp_path / "journal.sqlite"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from attnlab import Oracle
        oracle = Oracle(lambda X: X.sum(axis=(1, 2)), d=2, journal={str(path)!r})
        for i in range(5):
            oracle(np.full((1, 1, 2), float(i)))
        print("answered", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL and "answered" in proc.stdout
    journal = QueryJournal(path)
    answers = sorted(a for _, a in journal.entries())
    assert answers == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_noise_model_applies_to_fresh_answers_and_is_journaled(tmp_path):
    def plus_one(y, X, rng):
        return y + 1.0

    oracle = Oracle(linear_target, d=1, noise=plus_one, journal=tmp_path / "j.sqlite")
    assert oracle(np.ones((2, 1))) == 3.0
    assert oracle(np.ones((2, 1))) == 3.0  # replayed, not noised twice
    assert oracle.paid == 1 + PROBES


def test_repeats_under_a_journal_are_merged_even_for_random_noise(tmp_path):
    target, sent = counting(linear_target)
    with Oracle(
        target, d=2, noise=GaussianNoise(0.1), seed=0, journal=tmp_path / "j.sqlite"
    ) as oracle:
        out = oracle(np.ones((4, 1, 2)))
        assert sent == [PROBES, 1] and np.all(out == out[0])


def test_a_refused_journal_is_released_at_once_and_stays_refused(tmp_path):
    path = tmp_path / "j.sqlite"
    with Oracle(SingleHeadAttention.random(4, seed=0), journal=path) as oracle:
        oracle(queries((2, 3, 4)))
    wrong = Oracle(SingleHeadAttention.random(4, seed=1), journal=path)
    for _ in range(2):
        with pytest.raises(JournalMismatch):
            wrong(queries((2, 3, 4)))
    assert wrong.paid == PROBES  # the probes once; the second refusal asks nothing
    with pytest.raises(JournalMismatch):
        Oracle(linear_target, d=5, journal=path)
    with Oracle(
        SingleHeadAttention.random(4, seed=0), journal=path
    ) as right:  # no lock left behind
        right(queries((2, 3, 4)))
        assert right.paid == PROBES


def test_a_lock_file_that_cannot_be_created_is_a_clear_error(tmp_path, monkeypatch):
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.raises(JournalError, match=r"j.sqlite.lock \(Permission denied\).*can write to"):
        Oracle(linear_target, d=2, journal=tmp_path / "j.sqlite")
