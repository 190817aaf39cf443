"""`attnlab serve` end to end: a real uvicorn server on 127.0.0.1, queried over HTTP."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest
import torch

from attnlab import BudgetExhausted, Oracle, OracleError, QueryShapeError
from attnlab.models import AffineHead, SingleHeadAttention
from attnlab.serve import round_significant, save_target
from attnlab.serve.app import ServeConfig
from attnlab.serve.client import HttpTarget, ServiceBudgetExhausted

from serve_helpers import DroppingProxy, DropResponses, FailFirst, serve

D = 4


@pytest.fixture
def head():
    return SingleHeadAttention.random(D, seed=3)


@pytest.fixture
def model_path(tmp_path, head):
    return save_target(head, tmp_path / "head.safetensors")


def distinct(b, n, seed=0):
    """b different sequences of n tokens (an Oracle answers identical queries in a batch once)."""
    return np.random.default_rng(seed).standard_normal((b, n, D))


def truth(module, sequences):
    with torch.no_grad():
        return np.array([float(module(torch.as_tensor(s[None]))[0]) for s in sequences])


def test_one_token_probes_read_v_exactly_and_two_token_probes_read_w(model_path, tmp_path, head):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        oracle = Oracle.http(srv.url, srv.key)
        assert oracle.d == D
        v = oracle(np.eye(D)[:, None, :])
        np.testing.assert_array_equal(v, head.v.detach().numpy())
        # [(a + b); b] has logit a^T W b; its answer is b^T v + sigmoid(a^T W b) a^T v.
        a, b = 0.3 * np.eye(D)[0], 0.2 * np.eye(D)[2]
        y = oracle(np.stack([a + b, b]))
        alpha = (y - b @ v) / (a @ v)
        assert np.log(alpha / (1 - alpha)) == pytest.approx(
            a @ head.W.detach().numpy() @ b, abs=1e-12
        )
        assert oracle.queries == D + 1 == oracle.http_target.charged == srv.spent() == srv.answered
        assert oracle.http_target.budget_left == 1000 - (D + 1)


def test_ragged_batch_in_one_request_matches_the_model(model_path, tmp_path, head):
    rng = np.random.default_rng(0)
    sequences = [rng.standard_normal((n, D)) for n in (1, 5, 2, 5)]
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        r = httpx.post(
            f"{srv.url}/v1/query",
            headers={"X-API-Key": srv.key},
            json={"sequences": [s.tolist() for s in sequences]},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        np.testing.assert_array_equal(body["outputs"], truth(head, sequences))
        assert body["queries_used"] == 4 and body["budget_left"] == 996 and srv.spent() == 4


def test_info_tells_kind_and_limits_but_not_weights(tmp_path):
    path = save_target(AffineHead.random(3, seed=1), tmp_path / "affine.safetensors")
    with serve(
        path, tmp_path / "keys.sqlite", config=ServeConfig(max_batch=7, max_tokens=50)
    ) as srv:
        info = httpx.get(f"{srv.url}/v1/info", headers={"X-API-Key": srv.key}).json()
        assert {k: info[k] for k in ("kind", "d", "dtype", "max_batch", "max_tokens")} == {
            "kind": "affine",
            "d": 3,
            "dtype": "float64",
            "max_batch": 7,
            "max_tokens": 50,
        }
        assert not {"W", "u", "v", "c", "weights"} & set(info)
        assert httpx.get(f"{srv.url}/healthz").json() == {"status": "ok"}


def test_client_splits_batches_to_the_servers_limits(model_path, tmp_path, head):
    X = np.random.default_rng(1).standard_normal((23, 3, D))
    with serve(
        model_path, tmp_path / "keys.sqlite", config=ServeConfig(max_batch=5, max_tokens=12)
    ) as srv:
        oracle = Oracle.http(srv.url, srv.key)
        np.testing.assert_array_equal(oracle(X), truth(head, list(X)))
        assert oracle.http_target.requests == 6  # 4 sequences of 3 tokens fit in 12 tokens
        assert srv.spent() == 23 == oracle.paid
        with pytest.raises(QueryShapeError, match="max_tokens = 12"):
            oracle(np.zeros((1, 13, D)))
        assert srv.spent() == 23


def test_budget_persists_across_a_restart_and_is_never_overspent(model_path, tmp_path, head):
    db = tmp_path / "keys.sqlite"
    with serve(model_path, db, budget=10) as srv:
        key = srv.key
        Oracle.http(srv.url, key)(distinct(6, 2))
    with serve(model_path, db) as srv:
        oracle = Oracle.http(srv.url, key)
        assert oracle.http_target.budget_left == 4
        with pytest.raises(
            BudgetExhausted, match="4 of 10 queries left and this request needs 5"
        ) as err:
            oracle(distinct(5, 2))
        assert isinstance(err.value, ServiceBudgetExhausted)
        assert (err.value.spent, err.value.budget, err.value.requested) == (6, 10, 5)
        assert srv.spent() == 6 and srv.answered == 0 and oracle.paid == 0
        oracle(distinct(4, 1))
        assert srv.spent() == 10 and oracle.http_target.budget_left == 0


def test_a_dropped_response_is_retried_and_charged_once(model_path, tmp_path, head):
    X = np.random.default_rng(2).standard_normal((8, 3, D))
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        oracle = Oracle.http(srv.url, srv.key, transport=DropResponses(drops=2))
        np.testing.assert_array_equal(oracle(X), truth(head, list(X)))
        client = oracle.http_target
        assert client.retried == 2 and client.replayed == 1
        assert srv.spent() == 8 == srv.answered == oracle.paid == client.charged


def test_a_connection_cut_by_the_network_after_the_answer_is_not_charged_twice(
    model_path, tmp_path, head
):
    X = np.random.default_rng(6).standard_normal((5, 4, D))
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        proxy = DroppingProxy(srv.url, drops=1)
        try:
            oracle = Oracle.http(proxy.url, srv.key)
            np.testing.assert_array_equal(oracle(X), truth(head, list(X)))
        finally:
            proxy.close()
        assert (
            proxy.dropped == 1
            and oracle.http_target.retried == 1
            and oracle.http_target.replayed == 1
        )
        assert srv.spent() == 5 == srv.answered == oracle.paid


@pytest.mark.parametrize("status", [500, 502, 503, 504, 409])
def test_5xx_and_in_flight_answers_are_retried_and_charged_once(model_path, tmp_path, status):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        transport = FailFirst(failures=2, status=status, headers={"Retry-After": "0"})
        oracle = Oracle.http(srv.url, srv.key, transport=transport)
        oracle(distinct(3, 2))
        assert oracle.http_target.retried == 2 and oracle.http_target.replayed == 0
        assert srv.spent() == 3 == srv.answered


def test_retries_give_up_with_a_clear_error(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        oracle = Oracle.http(srv.url, srv.key, retries=1, transport=FailFirst(failures=5))
        with pytest.raises(
            OracleError, match="failed 2 times, last with HTTP 503: simulated failure"
        ):
            oracle(np.ones((1, 1, D)))
        assert (
            srv.spent() == 0 == oracle.http_target.charged
        )  # the local Oracle counts what it sent


def test_an_unreachable_server_is_an_oracle_error():
    with pytest.raises(OracleError, match="Check that `attnlab serve` is running"):
        HttpTarget("http://127.0.0.1:9", "ak_x", retries=1, backoff_s=0.0).info()


def test_replaying_an_idempotency_key_returns_the_same_noisy_answer(model_path, tmp_path):
    config = ServeConfig(noise_sigma=0.5, seed=0)
    with serve(model_path, tmp_path / "keys.sqlite", config=config) as srv:
        headers = {"X-API-Key": srv.key, "Idempotency-Key": "req-1"}
        body = {"sequences": [[[1.0, 0, 0, 0]]] * 3}
        first = httpx.post(f"{srv.url}/v1/query", headers=headers, json=body)
        again = httpx.post(f"{srv.url}/v1/query", headers=headers, json=body)
        assert first.json() == again.json() and again.headers["Idempotent-Replayed"] == "true"
        assert srv.spent() == 3
        other = httpx.post(
            f"{srv.url}/v1/query", headers=headers, json={"sequences": [[[2.0, 0, 0, 0]]]}
        )
        assert other.status_code == 422 and other.json()["error"] == "idempotency_key_reused"
        assert srv.spent() == 3


def test_rounding_and_noise_defenses(model_path, tmp_path, head):
    X = np.random.default_rng(4).standard_normal((200, 3, D))
    exact = truth(head, list(X))
    with serve(model_path, tmp_path / "r.sqlite", config=ServeConfig(round_digits=3)) as srv:
        np.testing.assert_array_equal(Oracle.http(srv.url, srv.key)(X), round_significant(exact, 3))
    with serve(
        model_path, tmp_path / "n.sqlite", config=ServeConfig(noise_sigma=0.01, seed=7)
    ) as srv:
        error = Oracle.http(srv.url, srv.key)(X) - exact
    assert 0.008 < error.std() < 0.012 and abs(error.mean()) < 0.003


def test_concurrent_clients_never_overspend_one_key(model_path, tmp_path):
    budget, batch = 60, 3
    with serve(model_path, tmp_path / "keys.sqlite", budget=budget) as srv:
        answered, refused = [], []

        def client(seed):
            oracle = Oracle.http(srv.url, srv.key)
            X = np.random.default_rng(seed).standard_normal((batch, 2, D))
            while True:
                try:
                    oracle(X)
                except BudgetExhausted:
                    refused.append(seed)
                    break
            answered.append(oracle.paid)

        threads = [threading.Thread(target=client, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(refused) == 6
        assert sum(answered) == srv.spent() == srv.answered == budget


BAD = [
    # (body bytes, headers beyond the key, status, error code, words the message must contain)
    (json.dumps({"sequences": [[[1, 2, 3]]]}), {}, 422, "bad_shape", "exactly d = 4 numbers"),
    (json.dumps({"sequences": [[[1, 2, 3, 4], [1, 2]]]}), {}, 422, "bad_shape", "ragged"),
    (json.dumps({"sequences": [[["a", "b", "c", "d"]]]}), {}, 422, "bad_shape", "non-numeric"),
    (json.dumps({"sequences": [[]]}), {}, 422, "bad_shape", "non-empty"),
    ('{"sequences": [[[1, NaN, 0, 0]]]}', {}, 422, "not_finite", "NaN or infinite"),
    ('{"sequences": [[[1, Infinity, 0, 0]]]}', {}, 422, "not_finite", "NaN or infinite"),
    (json.dumps({"queries": []}), {}, 422, "missing_sequences", '"sequences" field'),
    (json.dumps({"sequences": {}}), {}, 422, "no_sequences", "must be a list"),
    ("{not json", {}, 400, "invalid_json", "not valid JSON"),
    (json.dumps({"sequences": [[[0] * 4]] * 9}), {}, 413, "too_many_sequences", "max_batch = 8"),
    (json.dumps({"sequences": [[[0] * 4] * 11]}), {}, 413, "too_many_tokens", "max_tokens = 10"),
    (" " * 2_000_000, {}, 413, "body_too_large", "split the batch"),
    (
        json.dumps({"sequences": [[[0] * 4]]}),
        {"X-API-Key": ""},
        401,
        "missing_api_key",
        "X-API-Key header",
    ),
    (
        json.dumps({"sequences": [[[0] * 4]]}),
        {"X-API-Key": "ak_wrong"},
        401,
        "unknown_api_key",
        "no key",
    ),
    (
        json.dumps({"sequences": [[[0] * 4]] * 6}),
        {},
        402,
        "budget_exhausted",
        "quota, not a rate limit",
    ),
    (
        json.dumps({"sequences": [[[0] * 4]]}),
        {"Idempotency-Key": "x" * 300},
        400,
        "bad_idempotency_key",
        "255",
    ),
]


@pytest.mark.parametrize("body, headers, status, code, words", BAD, ids=[b[3] for b in BAD])
def test_each_error_has_its_status_code_and_says_what_to_fix(
    model_path, tmp_path, body, headers, status, code, words
):
    with serve(
        model_path,
        tmp_path / "keys.sqlite",
        budget=5,
        config=ServeConfig(max_batch=8, max_tokens=10),
    ) as srv:
        r = httpx.post(
            f"{srv.url}/v1/query", content=body.encode(), headers={"X-API-Key": srv.key, **headers}
        )
        assert r.status_code == status, r.text
        assert r.json()["error"] == code and words in r.json()["detail"]
        assert srv.spent() == 0 and srv.answered == 0


def test_revoked_key_is_refused_with_403(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        srv.store.revoke("alice")
        r = httpx.get(f"{srv.url}/v1/info", headers={"X-API-Key": srv.key})
        assert r.status_code == 403 and "revoked" in r.json()["detail"]
        with pytest.raises(OracleError, match="HTTP 403"):
            Oracle.http(srv.url, srv.key)


def test_client_maps_server_rejections_to_attnlab_errors(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        with pytest.raises(OracleError, match="HTTP 401: .*no key this server knows"):
            Oracle.http(srv.url, "ak_not_a_key")
        with pytest.raises(QueryShapeError, match="serves a target with d = 4"):
            Oracle.http(srv.url, srv.key, d=5)
        target = HttpTarget(srv.url, srv.key)
        with pytest.raises(QueryShapeError, match=r"HTTP 422\): .*exactly d = 4 numbers"):
            target(np.ones((2, 3, 5)))
        with pytest.raises(QueryShapeError, match=r"shape \(B, N, d\)"):
            target(np.ones((3, D)))
        target.close()


@pytest.mark.parametrize("affine", [False, True])
def test_an_extractor_recovers_the_served_head_as_it_would_locally(tmp_path, affine):
    single_head = pytest.importorskip("attnlab.extract.single_head").single_head
    from attnlab.evaluate import relative_error

    module = (AffineHead if affine else SingleHeadAttention).random(D, seed=5)
    local = single_head(Oracle(module, d=D), affine=affine, fidelity_samples=50)
    path = save_target(module, tmp_path / "t.safetensors")
    with serve(path, tmp_path / "keys.sqlite") as srv:
        oracle = Oracle.http(srv.url, srv.key)
        result = single_head(oracle, affine=affine, fidelity_samples=50)
        assert (
            oracle.queries
            == result.queries + 50
            == srv.spent()
            == srv.answered
            == oracle.http_target.charged
        )
    assert result.queries == local.queries == D * D + D + (D + 1 if affine else 0)
    # JSON carries float64 exactly (shortest round-trip repr), so HTTP changes no bit of the answer.
    for name in local.params:
        np.testing.assert_array_equal(result.params[name], local.params[name])
        assert relative_error(result.params[name], getattr(module, name).detach().numpy()) < 1e-6, (
            name
        )


def test_a_429_from_anywhere_is_budget_exhaustion_and_not_retried(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        oracle = Oracle.http(srv.url, srv.key, transport=FailFirst(failures=1, status=429))
        with pytest.raises(BudgetExhausted, match="simulated failure"):
            oracle(distinct(2, 1))
        assert oracle.http_target.retried == 0 and srv.spent() == 0 and oracle.paid == 0


def test_an_input_the_model_cannot_answer_is_refunded(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        huge = {"sequences": [[[1e200] * D, [1e200] * D]]}
        r = httpx.post(f"{srv.url}/v1/query", headers={"X-API-Key": srv.key}, json=huge)
        assert (
            r.status_code == 422
            and r.json()["error"] == "unanswerable"
            and "Scale the inputs down" in r.text
        )
        assert srv.spent() == 0
        with pytest.raises(OracleError, match="HTTP 422: .*could not answer") as err:
            HttpTarget(srv.url, srv.key)(np.full((1, 2, D), 1e200))
        assert not isinstance(err.value, QueryShapeError) and srv.spent() == 0


def test_two_servers_sharing_one_keys_database_never_overspend(model_path, tmp_path):
    """Two apps with their own SQLite connections (as two server processes would have) serve one key."""
    from attnlab.serve import KeyStore, load_target
    from attnlab.serve.app import create_app
    from attnlab.serve.runner import BackgroundServer

    db, budget = tmp_path / "keys.sqlite", 50
    with KeyStore(db) as admin:
        key = admin.add_key("alice", budget)
    stores = [KeyStore(db), KeyStore(db)]
    apps = [create_app(load_target(model_path), store) for store in stores]
    received = []
    with BackgroundServer(apps[0]) as url_a, BackgroundServer(apps[1]) as url_b:

        def client(url, seed):
            oracle, rng = Oracle.http(url, key), np.random.default_rng(seed)
            try:
                while True:
                    oracle(rng.standard_normal((int(rng.integers(1, 4)), 2, D)))
            except BudgetExhausted:
                received.append(oracle.paid)

        threads = [
            threading.Thread(target=client, args=(url, s))
            for s, url in enumerate([url_a, url_b] * 3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    answered = sum(app.state.oracle.queries for app in apps)
    with KeyStore(db) as admin:
        assert sum(received) == answered == admin.get("alice").spent <= budget
        assert (
            admin.get("alice").spent >= budget - 2
        )  # stopped only when no batch of 1-3 could be paid
    for store in stores:
        store.close()
