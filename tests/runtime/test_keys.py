"""The cluster key: generation, files and their permissions, bad keys, token derivation,
and which sockets the policy puts under CURVE. No sockets are opened here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zmq.auth

from spotlight.cli import main as cli_main
from spotlight.runtime import RuntimeConfig
from spotlight.runtime.keys import (
    KEY_ENV,
    KEY_FILE_ENV,
    KeyFileError,
    generate_key,
    key_from_secret,
    key_from_token,
    read_key_file,
    resolve_key,
    write_key_file,
)
from spotlight.runtime.security import host_of


def test_key_file_round_trip_is_private_and_zcert_compatible(tmp_path: Path) -> None:
    key = generate_key()
    path = write_key_file(tmp_path / "cluster.key", key)
    assert path.stat().st_mode & 0o777 == 0o600
    back = read_key_file(path)
    assert (back.public, back.secret) == (key.public, key.secret)
    assert zmq.auth.load_certificate(str(path)) == (key.public, key.secret)  # the zcert format
    assert key.secret.decode() not in repr(back) and back.fingerprint in repr(back)


def test_existing_key_file_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = write_key_file(tmp_path / "k", generate_key())
    with pytest.raises(KeyFileError, match="--force"):
        write_key_file(path, generate_key())
    os.chmod(path, 0o644)
    new = generate_key()
    write_key_file(path, new, force=True)
    assert path.stat().st_mode & 0o777 == 0o600  # --force also tightens the mode
    assert read_key_file(path).public == new.public


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused_naming_the_fix(tmp_path: Path, mode: int) -> None:
    path = write_key_file(tmp_path / "cluster.key", generate_key())
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=rf"{path}.*group/others.*chmod 600 {path}"):
        read_key_file(path)
    with pytest.raises(KeyFileError, match="chmod 600"):  # the same through the env var
        resolve_key(explicit=None, token="t", environ={KEY_FILE_ENV: str(path)})


def test_missing_key_file_names_the_command_that_creates_it(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"does not exist.*spotlight cluster keys"):
        read_key_file(tmp_path / "nope.key")


def _private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_truncated_and_foreign_keys_are_refused_clearly(tmp_path: Path) -> None:
    key = generate_key()
    with pytest.raises(KeyFileError, match=r"\$SPOTLIGHT_CLUSTER_KEY.*40 Z85.*got 39 \(truncated"):
        key_from_secret(key.secret[:39], f"${KEY_ENV}")
    with pytest.raises(KeyFileError, match="base64 key from another tool"):  # WireGuard's
        key_from_secret("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", "x")
    with pytest.raises(KeyFileError, match="not a Z85 CURVE key"):
        key_from_secret("~" * 40, "x")
    half = key.secret.decode()[:20]
    with pytest.raises(KeyFileError, match="got 20 \\(truncated"):
        read_key_file(_private(tmp_path / "t.key", f'curve\n    secret-key = "{half}"\n'))
    public_only = _private(tmp_path / "p.key", f'curve\n    public-key = "{key.public.decode()}"\n')
    with pytest.raises(KeyFileError, match="only a public key"):
        read_key_file(public_only)
    other = generate_key()
    mixed = _private(
        tmp_path / "m.key",
        f'curve\n    public-key = "{other.public.decode()}"\n'
        f'    secret-key = "{key.secret.decode()}"\n',
    )
    with pytest.raises(KeyFileError, match="does not belong"):
        read_key_file(mixed)
    pem = _private(tmp_path / "id.pem", "-----BEGIN PRIVATE KEY-----\nMC4CAQ\n-----END\n")
    with pytest.raises(KeyFileError, match="not a Spotlight cluster key file"):
        read_key_file(pem)
    with pytest.raises(ValueError, match=r"curve_secret_key.*40 Z85"):
        RuntimeConfig(curve_secret_key="short")


def test_a_bare_secret_in_a_file_is_accepted(tmp_path: Path) -> None:
    key = generate_key()
    bare = _private(tmp_path / "bare.key", key.secret.decode() + "\n")
    assert read_key_file(bare).public == key.public


def test_token_derivation_is_deterministic_and_token_specific() -> None:
    a, b = key_from_token("a-long-enough-cluster-token"), key_from_token("another-long-token!!")
    assert a.public == key_from_token("a-long-enough-cluster-token").public
    assert a.public != b.public
    assert a.public == zmq.curve_public(a.secret)


def test_key_sources_in_order(tmp_path: Path) -> None:
    k1, k2, k3 = generate_key(), generate_key(), generate_key()
    f = write_key_file(tmp_path / "k", k3)
    env = {KEY_ENV: k2.secret.decode(), KEY_FILE_ENV: str(f)}
    got = resolve_key(explicit=k1.secret.decode(), token="tok", environ=env)
    assert got is not None and got.public == k1.public
    got = resolve_key(explicit=None, token="tok", environ=env)
    assert got is not None and got.public == k2.public
    got = resolve_key(explicit=None, token="tok", environ={KEY_FILE_ENV: str(f)})
    assert got is not None and got.public == k3.public
    got = resolve_key(explicit=None, token="tok-1234567890123456", environ={})
    assert got is not None and got.source == "derived from the cluster token"
    assert resolve_key(explicit=None, token=None, environ={}) is None


def test_curve_policy_follows_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    from spotlight.runtime.security import Security

    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    ctx = zmq.Context()
    try:
        plain = Security(ctx, RuntimeConfig())
        assert not plain.router_uses_curve()
        assert not plain.dealer_uses_curve("tcp://127.0.0.1:5000")
        assert plain.dealer_uses_curve("tcp://10.1.2.3:5000")  # what leaves the machine
        wide = Security(ctx, RuntimeConfig(bind_host="0.0.0.0", cluster_token="t"))
        assert wide.router_uses_curve()
        forced = Security(ctx, RuntimeConfig(curve=True))
        assert forced.router_uses_curve() and forced.dealer_uses_curve("tcp://127.0.0.1:1")
        off = Security(ctx, RuntimeConfig(curve=False))
        assert not off.dealer_uses_curve("tcp://10.1.2.3:5000")
        with pytest.raises(ValueError, match=r"needs the cluster key.*SPOTLIGHT_CLUSTER_KEY_FILE"):
            plain.key("the connection to tcp://10.1.2.3:5000")
    finally:
        ctx.term()
    assert host_of("tcp://[::1]:80") == "::1"
    with pytest.raises(ValueError, match=r"advertise_host='127.0.0.1'.*wrong mechanism"):
        RuntimeConfig(bind_host="0.0.0.0", advertise_host="127.0.0.1", cluster_token="t")
    RuntimeConfig(bind_host="0.0.0.0", advertise_host="127.0.0.1", cluster_token="t", curve=True)


def test_cluster_keys_command_writes_a_private_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cluster.key"
    assert cli_main(["cluster", "keys", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    key = read_key_file(out)
    assert key.fingerprint in printed and key.secret.decode() not in printed
    assert KEY_FILE_ENV in printed
    assert cli_main(["cluster", "keys", "--out", str(out)]) == 2  # no silent overwrite
    assert "--force" in capsys.readouterr().err
