"""Files holding keys the tools write (`python -m infra.lock_ca`, the reference lock `simlock`): their user's only."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from infra import lock_ca
from lockwise.devices.lock_certs import LockCa


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_ca_is_its_users_only_is_never_made_over_another_and_has_a_name_of_its_own(tmp_path: Path) -> None:
    """Written into a file already there, the CA's key kept that file's mode (0644: attack run 57); a second
    ``init`` made a new CA over the one every certificate stands on; and every CA had the same name."""
    out = tmp_path / "ca"
    assert lock_ca.main(["init", "--out", str(out), "--project", "acme-prod"]) == 0
    assert mode(out / "lock-ca.pem") == 0o600
    first = (out / "lock-ca.pem").read_text()
    assert lock_ca.main(["init", "--out", str(out), "--project", "acme-prod"]) == 1
    assert (out / "lock-ca.pem").read_text() == first
    other = tmp_path / "other"
    assert lock_ca.main(["init", "--out", str(other), "--project", "acme-prod"]) == 0
    names = {LockCa.from_pem(p.read_text()).cert.subject for p in (out / "lock-ca.pem", other / "lock-ca.pem")}
    assert len(names) == 2


def test_an_init_stopped_before_it_wrote_the_certificate_is_finished_by_the_next(tmp_path: Path) -> None:
    """``init`` wrote the CA's key and certificate (``lock-ca.pem``), then its certificate alone (``lock-ca.crt``,
    the broker's); stopped between the two, it left no certificate for the broker, and every later ``init`` refused
    as the CA was there, naming no way on (attack run 126). The next one writes the certificate of the CA there, and
    makes no new CA; a certificate cut short is written again."""
    out = tmp_path / "ca"
    assert lock_ca.main(["init", "--out", str(out), "--project", "acme-prod"]) == 0
    kept = (out / "lock-ca.pem").read_text()
    (out / "lock-ca.crt").unlink()  # what a run stopped between the two left
    assert lock_ca.main(["init", "--out", str(out), "--project", "acme-prod"]) == 0
    assert (out / "lock-ca.pem").read_text() == kept  # no new CA
    assert (out / "lock-ca.crt").read_text() == LockCa.from_pem(kept).cert_pem()
    (out / "lock-ca.crt").write_text(LockCa.from_pem(kept).cert_pem()[:100])  # cut short
    assert lock_ca.main(["init", "--out", str(out), "--project", "acme-prod"]) == 0
    assert (out / "lock-ca.crt").read_text() == LockCa.from_pem(kept).cert_pem()
    assert lock_ca.main(["init", "--out", str(out), "--project", "acme-prod"]) == 1  # both there: refused as before


def test_the_relays_certificates_are_their_users_only_over_a_file_already_there(tmp_path: Path) -> None:
    assert lock_ca.main(["init", "--out", str(tmp_path), "--project", "acme-prod"]) == 0
    target = tmp_path / "relay-certs.json"
    target.write_text("{}")
    target.chmod(0o644)
    assert (
        lock_ca.main(["relay-certs", "--ca", str(tmp_path / "lock-ca.pem"), "--out", str(target), "--slots", "2"]) == 0
    )
    assert mode(target) == 0o600
    certs = json.loads(target.read_text())
    assert sorted(certs) == ["lockwise-relay-1", "lockwise-relay-2"]
    ca = LockCa.from_pem((tmp_path / "lock-ca.pem").read_text())
    for bundle in certs.values():
        assert x509.load_pem_x509_certificate(bundle["cert"].encode()).issuer == ca.cert.subject


def test_the_reference_locks_keys_are_its_users_only_over_files_already_there(tmp_path: Path) -> None:
    """``simlock``'s saved configuration and TLS key: written, then made 0600, they were readable for an instant, and
    the key file kept an existing file's mode (attack run 57)."""
    from simlock.lock import LockConfig

    config = LockConfig("lock", "lk-1", "CERT", "KEY", "127.0.0.1", 8883, "ca.crt", signing_key_b64="c2VlZA==")
    saved, keys = tmp_path / "lock.json", tmp_path / "tls"
    keys.mkdir()
    for path in (saved, keys / "client.key"):
        path.write_text("old")
        path.chmod(0o644)
    config.save(saved)
    _, key = config.tls_files(keys)
    assert mode(saved) == 0o600 and LockConfig.load(saved) == config
    assert mode(Path(key)) == 0o600 and Path(key).read_text() == "KEY"


def test_relay_certificates_are_asked_for_days_and_slots_they_can_have(tmp_path: Path) -> None:
    """``--days 0`` wrote certificates ending as they were made and said they were written; a negative or a huge
    count was a traceback (ValueError, OverflowError); ``--slots 0`` wrote none (attack run 119): each is argparse's
    usage error, exit 2, and nothing is written."""
    assert lock_ca.main(["init", "--out", str(tmp_path), "--project", "acme-prod"]) == 0
    target = tmp_path / "relay-certs.json"
    base = ["relay-certs", "--ca", str(tmp_path / "lock-ca.pem"), "--out", str(target)]
    for extra in (["--days", "0"], ["--days", "-1"], ["--days", "10000000"], ["--slots", "0"], ["--slots", "99"]):
        with pytest.raises(SystemExit) as usage:
            lock_ca.main([*base, *extra])
        assert usage.value.code == 2, extra
        assert not target.exists()
    assert lock_ca.main([*base, "--slots", "1", "--days", str(lock_ca.MAX_DAYS)]) == 0
    (bundle,) = json.loads(target.read_text()).values()
    ends = x509.load_pem_x509_certificate(bundle["cert"].encode()).not_valid_after_utc
    assert ends == LockCa.from_pem((tmp_path / "lock-ca.pem").read_text()).cert.not_valid_after_utc  # the CA's end
