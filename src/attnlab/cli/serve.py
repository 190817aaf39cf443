"""`attnlab make-target`, `attnlab serve` and `attnlab keys ...`: a target behind an HTTP API."""

from __future__ import annotations

import ipaddress
import math
from pathlib import Path

import typer

from attnlab.cli.apps import app
from attnlab.cli.output import console, emit, err_console, guarded

keys_app = typer.Typer(
    help="API keys and query budgets of `attnlab serve` (stored hashed in SQLite).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

KEYS_DB = typer.Option(
    Path("attnlab-keys.sqlite"),
    "--keys-db",
    envvar="ATTNLAB_KEYS_DB",
    help="SQLite file holding the keys, budgets and idempotency records.",
)
JSON_OUT = typer.Option(False, "--json", help="One JSON object instead of a table.")


@app.command("make-target")
def make_target(
    out: Path = typer.Argument(..., help="Where to write the .safetensors file."),
    kind: str = typer.Option("single-head", help="single-head or affine."),
    d: int = typer.Option(8, min=1, help="Token width."),
    rank: int = typer.Option(None, min=1, help="Rank of W (default: full)."),
    scale: float = typer.Option(1.0, help="Entry scale of W (and of u for affine)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    json_out: bool = JSON_OUT,
) -> None:
    """Save a random target (weights in safetensors, kind and d in its header) for `attnlab serve`."""
    from attnlab.models.attention import AffineHead, SingleHeadAttention
    from attnlab.serve import read_metadata, save_target
    from attnlab.serve.model_file import MAX_D

    builders = {"single-head": SingleHeadAttention, "affine": AffineHead}

    def run():
        if kind not in builders:
            raise ValueError(f"--kind must be one of {', '.join(builders)}, got {kind!r}")
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"--scale must be a finite number > 0, got {scale}")
        if d > MAX_D:
            raise ValueError(
                f"--d {d} is too large for a served target (at most {MAX_D}: a d x d float64 "
                f"W of that size is already {MAX_D * MAX_D * 8 // 2**20} MiB)"
            )
        if rank is not None and rank > d:
            raise ValueError(
                f"--rank {rank} exceeds --d {d}: the rank of a d x d matrix is at most d"
            )
        if out.is_dir():
            raise ValueError(
                f"{str(out)!r} is a directory; give a file path such as {str(out / 'head.safetensors')!r}"
            )
        if out.exists() and not force:
            raise ValueError(
                f"{str(out)!r} exists already; pass --force to overwrite it, or pick another path"
            )
        path = save_target(builders[kind].random(d, rank=rank, scale=scale, seed=seed), out)
        meta = read_metadata(path)
        return {
            "path": str(path),
            "kind": meta["kind"],
            "d": int(meta["d"]),
            "dtype": meta["dtype"],
            "rank": rank or d,
            "seed": seed,
        }

    emit(guarded(run), json_out, title="target saved")


@app.command("serve")
def serve(
    model_file: Path = typer.Argument(
        ..., help="A target saved by `attnlab make-target` or save_target."
    ),
    host: str = typer.Option(
        "127.0.0.1",
        help="Interface to listen on. Anything but loopback needs "
        "--tls-cert/--tls-key, or --insecure.",
    ),
    port: int = typer.Option(8000, min=0, max=65535, help="Port; 0 picks a free one (printed)."),
    keys_db: Path = KEYS_DB,
    budget: int = typer.Option(
        None,
        min=0,
        help="If the keys database is empty, create a key 'default' with this budget and print it.",
    ),
    round_digits: int = typer.Option(
        None, min=1, help="Round every answer to this many significant digits."
    ),
    noise_sigma: float = typer.Option(
        0.0, min=0.0, help="Add Gaussian noise of this std to every answer."
    ),
    max_batch: int = typer.Option(256, min=1, help="Most sequences per request."),
    max_tokens: int = typer.Option(
        65536, min=1, help="Most tokens per request, over all its sequences."
    ),
    seed: int = typer.Option(None, help="Seed of the answer noise (default: fresh entropy)."),
    torch_threads: int = typer.Option(
        1,
        min=1,
        help="torch intra-op threads. Requests already run "
        "concurrently; more threads only fight over the cores.",
    ),
    log_level: str = typer.Option(
        "info", help="uvicorn log level: critical, error, warning, info, debug."
    ),
    tls_cert: Path = typer.Option(None, "--tls-cert", help="PEM certificate: serve HTTPS."),
    tls_key: Path = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Allow plain HTTP on a non-loopback interface "
        "(API keys then cross the network unencrypted).",
    ),
    max_connections: int = typer.Option(
        4096,
        min=1,
        help="Most open connections; beyond it the longest-waiting half-sent request is dropped.",
    ),
    header_timeout: float = typer.Option(
        10.0, min=0.001, help="Seconds a connection has to send its headers."
    ),
    body_timeout: float = typer.Option(
        30.0, min=0.001, help="Seconds a request has to send its body."
    ),
) -> None:
    """Serve MODEL_FILE as a black-box API: POST /v1/query, GET /v1/info, GET /healthz."""
    import torch

    from attnlab.serve import KeyStore, load_target
    from attnlab.serve.app import ServeConfig, create_app
    from attnlab.serve.runner import bind, serve_foreground, url_of

    def prepare():
        if log_level.lower() not in LOG_LEVELS:
            raise ValueError(
                f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}"
            )
        check_binding(host, tls_cert, tls_key, insecure)
        target = load_target(model_file)
        config = ServeConfig(
            max_batch=max_batch,
            max_tokens=max_tokens,
            round_digits=round_digits,
            noise_sigma=noise_sigma,
            seed=seed,
            max_connections=max_connections,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
        )
        store = KeyStore(keys_db)
        return target, store, create_app(target, store, config), bind(host, port)

    # Measured on 2 busy cores: a (32, 16, 8) batch ran 2.5k queries/s with 2 threads, 210k with 1.
    torch.set_num_threads(torch_threads)
    target, store, api, sock = guarded(prepare)
    if budget is not None and not store.keys():
        secret = guarded(lambda: store.add_key("default", budget))
        err_console.print(
            f"created key 'default' with a budget of {budget} queries: [bold]{secret}[/]"
        )
    elif budget is not None:
        err_console.print(
            "[yellow]--budget ignored:[/] the keys database already holds keys (see `attnlab keys list`)"
        )
    if not store.keys():
        err_console.print(
            f"[yellow]no API keys yet:[/] create one with `attnlab keys add NAME --budget N --keys-db {keys_db}`"
        )
    if not _is_loopback(host) and tls_cert is None:
        err_console.print(
            f"[yellow]--insecure: listening on {host} over plain HTTP:[/] traffic, API keys "
            f"included, is unencrypted"
        )
    defenses = []
    if noise_sigma:
        defenses.append(f"noise sigma {noise_sigma}")
    if round_digits:
        defenses.append(f"rounding to {round_digits} significant digits")
    if api.state.refunded:
        err_console.print(
            f"refunded {api.state.refunded} queries charged by a server that died before answering"
        )
    url = url_of(sock, tls=tls_cert is not None)
    err_console.print(
        f"serving {target.kind} target (d = {target.d}, {target.dtype}) from {model_file} on "
        f"{url}; defenses: {', '.join(defenses) or 'none'}; keys in {keys_db}"
    )
    tls = (str(tls_cert), str(tls_key)) if tls_cert is not None else None
    try:
        serve_foreground(api, sock, log_level=log_level.lower(), tls=tls)
    finally:
        store.close()


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def check_binding(host: str, tls_cert: Path | None, tls_key: Path | None, insecure: bool) -> None:
    """Refuse to serve plain HTTP beyond loopback unless told to, and half-given TLS settings."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together: pass both (PEM files) or neither")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise ValueError(f"TLS file {str(path)!r} does not exist")
    if not _is_loopback(host) and tls_cert is None and not insecure:
        where = "every interface" if host.strip() in ("", "0.0.0.0", "::") else host
        raise ValueError(
            f"--host {host!r} would serve {where} over plain HTTP, exposing API keys; pass "
            f"--tls-cert and --tls-key, or --insecure if this network is trusted"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@keys_app.command("add")
def keys_add(
    name: str = typer.Argument(..., help="A name for the key's holder."),
    budget: int = typer.Option(..., min=0, help="Queries this key may spend, across restarts."),
    keys_db: Path = KEYS_DB,
    json_out: bool = JSON_OUT,
) -> None:
    """Create an API key and print it (this is the only time it is shown)."""
    from attnlab.serve import KeyStore

    with guarded(lambda: KeyStore(keys_db)) as store:
        secret = guarded(lambda: store.add_key(name, budget))
        emit(
            {"name": name, "key": secret, "budget": budget, "keys_db": str(keys_db)},
            json_out,
            title="API key",
        )


@keys_app.command("list")
def keys_list(keys_db: Path = KEYS_DB, json_out: bool = JSON_OUT) -> None:
    """Show every key's budget, spending and state (not the keys themselves)."""
    from rich.table import Table

    from attnlab.serve import KeyStore

    with guarded(lambda: KeyStore(keys_db)) as store:
        keys = [k.to_dict() for k in store.keys()]
    if json_out:
        emit({"keys": keys}, True)
        return
    table = Table(title=f"API keys in {keys_db}")
    for column in ("name", "key_starts", "budget", "spent", "budget_left", "revoked"):
        table.add_column(column)
    for k in keys:
        table.add_row(
            *(
                str(k[c])
                for c in ("name", "key_starts", "budget", "spent", "budget_left", "revoked")
            )
        )
    console.print(table)


@keys_app.command("budget")
def keys_budget(
    name: str = typer.Argument(...),
    budget: int = typer.Argument(..., min=0, help="New total budget."),
    keys_db: Path = KEYS_DB,
    json_out: bool = JSON_OUT,
) -> None:
    """Set a key's total budget (what it already spent still counts)."""
    from attnlab.serve import KeyStore

    with guarded(lambda: KeyStore(keys_db)) as store:
        emit(guarded(lambda: store.set_budget(name, budget)).to_dict(), json_out, title="API key")


@keys_app.command("revoke")
def keys_revoke(
    name: str = typer.Argument(...), keys_db: Path = KEYS_DB, json_out: bool = JSON_OUT
) -> None:
    """Refuse a key from now on (403)."""
    from attnlab.serve import KeyStore

    with guarded(lambda: KeyStore(keys_db)) as store:
        emit(guarded(lambda: store.revoke(name)).to_dict(), json_out, title="API key")
