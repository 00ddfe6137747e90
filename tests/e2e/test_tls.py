"""TLS and mutual TLS on the gRPC port, with certificates made at test time."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from storefront.v1 import identity_service_pb2 as pb
from storefront.v1 import identity_service_pb2_grpc
from storefront_client import StorefrontClient, create_channel

from tests.e2e.conftest import Running

StatusCode = grpc.StatusCode


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """A CA with a server and a client certificate, and an unrelated CA with a client cert."""

    ca: Issued
    server: Issued
    client: Issued
    other_ca: Issued
    other_client: Issued


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Issued(cert_file, key_file)


def _builder(
    subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def _make_ca(
    directory: Path, stem: str
) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(f"{stem} test CA", _name(f"{stem} test CA"), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return _write(directory, stem, cert, key), cert, key


def _make_leaf(
    directory: Path,
    stem: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(stem, ca_cert.subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = _make_ca(directory, "ca")
    other_ca, other_cert, other_key = _make_ca(directory, "other-ca")
    return Pki(
        ca=ca,
        server=_make_leaf(directory, "server", ca_cert, ca_key, server=True),
        client=_make_leaf(directory, "client", ca_cert, ca_key, server=False),
        other_ca=other_ca,
        other_client=_make_leaf(directory, "other-client", other_cert, other_key, server=False),
    )


def list_keys(channel: grpc.Channel) -> pb.ListSigningKeysResponse:
    """One call straight through the channel (no SDK retries: failures show at once)."""
    stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
    response: pb.ListSigningKeysResponse = stub.ListSigningKeys(
        pb.ListSigningKeysRequest(), timeout=5
    )
    return response


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        list_keys(channel)
    code: grpc.StatusCode = caught.value.code()
    return code


@pytest.fixture
def tls_server(server_factory: Callable[..., Running], pki: Pki) -> Running:
    return server_factory(tls_cert_file=pki.server.cert, tls_key_file=pki.server.key)


@pytest.fixture
def mtls_server(server_factory: Callable[..., Running], pki: Pki) -> Running:
    return server_factory(
        tls_cert_file=pki.server.cert, tls_key_file=pki.server.key, tls_client_ca_file=pki.ca.cert
    )


def test_tls_with_the_right_root_works(tls_server: Running, pki: Pki) -> None:
    assert list_keys(create_channel(tls_server.target, root_certificates=pki.ca.cert)).keys
    # The DNS name in the certificate is accepted too.
    channel = create_channel(
        tls_server.target,
        root_certificates=pki.ca.cert.read_bytes(),
        server_name_override="localhost",
    )
    assert list_keys(channel).keys


def test_the_sdk_signs_in_over_tls(tls_server: Running, pki: Pki) -> None:
    email = tls_server.create_user()
    with StorefrontClient(
        create_channel(tls_server.target, tls=True, root_certificates=pki.ca.cert)
    ) as client:
        assert client.login(email, "correct horse battery staple").email == email
        assert client.identity.GetCurrentUser(pb.GetCurrentUserRequest()).user.email == email


def test_plaintext_to_a_tls_port_fails(tls_server: Running) -> None:
    assert refused(grpc.insecure_channel(tls_server.target)) == StatusCode.UNAVAILABLE


def test_a_client_trusting_another_ca_fails(tls_server: Running, pki: Pki) -> None:
    channel = create_channel(tls_server.target, root_certificates=pki.other_ca.cert)
    assert refused(channel) == StatusCode.UNAVAILABLE


def test_a_name_the_certificate_does_not_cover_fails(tls_server: Running, pki: Pki) -> None:
    channel = create_channel(
        tls_server.target,
        root_certificates=pki.ca.cert,
        server_name_override="storefront.example.com",
    )
    assert refused(channel) == StatusCode.UNAVAILABLE


def test_mtls_refuses_a_client_without_a_certificate(mtls_server: Running, pki: Pki) -> None:
    channel = create_channel(mtls_server.target, root_certificates=pki.ca.cert)
    assert refused(channel) == StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(mtls_server: Running, pki: Pki) -> None:
    channel = create_channel(
        mtls_server.target,
        root_certificates=pki.ca.cert,
        client_certificate=pki.other_client.cert,
        client_key=pki.other_client.key,
    )
    assert refused(channel) == StatusCode.UNAVAILABLE


def test_mtls_accepts_a_client_certificate_the_ca_signed(mtls_server: Running, pki: Pki) -> None:
    channel = create_channel(
        mtls_server.target,
        root_certificates=pki.ca.cert,
        client_certificate=pki.client.cert,
        client_key=pki.client.key,
    )
    assert list_keys(channel).keys
    assert refused(grpc.insecure_channel(mtls_server.target)) == StatusCode.UNAVAILABLE
