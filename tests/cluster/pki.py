"""The test cluster's PKI and kubeconfigs, as kubeadm lays them out: one CA signs every
serving and client certificate (the apiserver reads a client's user from CN and groups from
O), plus the key pair that signs ServiceAccount tokens. Made with `cryptography`."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAYS = 365


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.write_bytes(data)
    path.chmod(mode)


@dataclass(frozen=True)
class Pair:
    """A certificate and its key, as files."""

    cert: Path
    key: Path


class PKI:
    """The cluster's CA under `folder`; `issue` writes `<name>.crt`/`<name>.key` signed by it."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = Pair(folder / "ca.crt", folder / "ca.key")
        now = datetime.datetime.now(datetime.UTC)
        self._not_before = now - datetime.timedelta(minutes=5)
        self._not_after = now + datetime.timedelta(days=DAYS)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("dae-test-cluster-ca"))
            .issuer_name(_name("dae-test-cluster-ca"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        self._key, self._cert = key, cert
        _write(self.ca.key, _pem_key(key))
        _write(self.ca.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        sa = ec.generate_private_key(ec.SECP256R1())
        self.service_account = Pair(folder / "sa.pub", folder / "sa.key")
        _write(self.service_account.key, _pem_key(sa))
        pub = sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write(self.service_account.cert, pub, 0o644)

    def issue(
        self,
        name: str,
        cn: str,
        orgs: tuple[str, ...] = (),
        *,
        server: bool = False,
        client: bool = False,
        hosts: tuple[str, ...] = (),
    ) -> Pair:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [
            ExtendedKeyUsageOID.CLIENT_AUTH
        ] * client
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn, orgs))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._not_before)
            .not_valid_after(self._not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if hosts:
            names = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = Pair(self.folder / f"{name}.crt", self.folder / f"{name}.key")
        _write(pair.key, _pem_key(key))
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return pair

    def kubeconfig(
        self, path: Path, server: str, user: str, pair: Pair | None = None, token: str = ""
    ) -> Path:
        """A kubeconfig for `user` at `server`: by client certificate, or by bearer token."""
        credentials = (
            {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
            if pair
            else {"token": token}
        )
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "dae-test",
                    "cluster": {"server": server, "certificate-authority": str(self.ca.cert)},
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": "dae-test", "context": {"cluster": "dae-test", "user": user}}],
            "current-context": "dae-test",
        }
        _write(path, yaml.safe_dump(config).encode())
        return path
