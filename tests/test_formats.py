"""Unit tests for gateway.formats: Envoy's XFCC, RFC 9440 Client-Cert, Traefik's headers.

Expected strings are fixed, for the fixed certificate of tests/formats_fixture.py, and built from
each reference's documentation: Envoy's x-forwarded-client-cert page (examples, quoting rules),
RFC 9440 §2 (with RFC 8941 parsing by http_sf), Traefik's passTLSClientCert (its documented
field order, url.QueryEscape). Every XFCC value the gateway writes is parsed back by
:func:`parse_xfcc`, a small parser of Envoy's documented grammar, element by element.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from urllib.parse import quote, unquote, unquote_plus

import http_sf
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from formats_fixture import INTERMEDIATE_DER, LEAF, LEAF_DER

from gateway.config import HeaderSettings
from gateway.formats import (
    names_client_cert,
    rfc9440_values,
    traefik_values,
    xfcc_element,
    xfcc_value,
)
from gateway.headers import (
    identity_values,
    is_owned,
    upstream_request_headers,
    vary_for_client_cert,
)
from gateway.identity import ClientIdentity
from gateway.pki import make_ca, make_leaf

IDENTITY = ClientIdentity.from_der(LEAF_DER)
LEAF_B64 = (
    "MIIByTCCAXugAwIBAgIEPC4SEDAFBgMrZXAwOzELMAkGA1UEBhMCREUxEDAOBgNVBAoMB0V4YW1wbGUxGjAYBgNV"
    "BAMMEUV4YW1wbGUgQ2xpZW50IENBMB4XDTI2MDEzMTEyMDAwMFoXDTI3MDEzMTEyMDAwMFowSDELMAkGA1UEBhMC"
    "REUxFjAUBgNVBAoMDUV4YW1wbGUsIEluYy4xETAPBgNVBAsMCHBheW1lbnRzMQ4wDAYDVQQDDAVhbGljZTAqMAUG"
    "AytlcAMhAO1JKMYo0cLG6ukDOJBZlWEpWSc6XGP5NjbBRhSshzfRo4GTMIGQMAwGA1UdEwEB/wQCMAAwEwYDVR0l"
    "BAwwCgYIKwYBBQUHAwIwawYDVR0RBGQwYoYjc3BpZmZlOi8vZXhhbXBsZS5vcmcvbnMvcHJvZC9zYS93ZWKCEWFs"
    "aWNlLmV4YW1wbGUuY29tgg9hcGkuZXhhbXBsZS5jb22BEWFsaWNlQGV4YW1wbGUuY29thwQKAAAFMAUGAytlcANB"
    "AGPv07IgsEoBdf1LJWSw77CfUIo++zZw8xY6kc0HHmG56tevkbP4H2tLCCPBYe+TO8iZeDjVypYVsHUhpDrCjwA="
)
HASH = "54fe3e52471f3c412655ae5e563b1242a412cc2ace1c65527a76a0a85c3cf128"
BY = "spiffe://example.org/ns/edge/sa/mtlsgw"
ALL_DETAILS = ("Cert", "Chain", "Subject", "URI", "DNS")
NGINX = HeaderSettings("X-Client-", False)


def settings(*formats: str, **kwargs: object) -> HeaderSettings:
    return HeaderSettings("X-Client-", False, formats=formats, **kwargs)  # type: ignore[arg-type]


def pem(der: bytes) -> str:
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode("ascii")


# --------------------------------------------------------------------------
# a parser of Envoy's XFCC grammar (its documentation, "x-forwarded-client-cert")
# --------------------------------------------------------------------------


def parse_xfcc(header: str) -> list[list[tuple[str, str]]]:
    """Elements split on ``,``, pairs on ``;``, key and value on the first ``=``, each outside
    double quotes; a quoted value loses its quotes and ``\\"`` is a ``"``. Keys are
    case-insensitive (returned as written), values case-sensitive. Raises ValueError on an
    unterminated quote or a pair without ``=``."""
    elements: list[list[tuple[str, str]]] = []
    pairs: list[tuple[str, str]] = []
    key: str | None = None
    token: list[str] = []
    quoted = False
    index = 0
    while index < len(header):
        ch = header[index]
        if quoted:
            if ch == "\\" and header[index + 1:index + 2] == '"':
                token.append('"')
                index += 1
            elif ch == '"':
                quoted = False
            else:
                token.append(ch)
        elif ch == '"':
            quoted = True
        elif ch == "=" and key is None:
            key, token = "".join(token), []
        elif ch in ";,":
            if key is None:
                raise ValueError(f"pair without '=' at {index}")
            pairs.append((key, "".join(token)))
            key, token = None, []
            if ch == ",":
                elements.append(pairs)
                pairs = []
        else:
            token.append(ch)
        index += 1
    if quoted:
        raise ValueError("unterminated quoted value")
    if key is None:
        raise ValueError("pair without '='")
    pairs.append((key, "".join(token)))
    elements.append(pairs)
    return elements


ENVOY_EXAMPLES = [
    pytest.param(
        "By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02"
        "dd8de688;URI=http://testclient.lyft.com",
        [[("By", "http://frontend.lyft.com"),
          ("Hash", "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"),
          ("URI", "http://testclient.lyft.com")]],
        id="one-uri-san"),
    pytest.param(
        "By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02"
        "dd8de688;URI=http://testclient.lyft.com,By=http://backend.lyft.com;Hash=9ba61d6425303443"
        "c0748a02dd8de688468ed33be74eee6556d90c0149c1309e;URI=http://frontend.lyft.com",
        [[("By", "http://frontend.lyft.com"),
          ("Hash", "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"),
          ("URI", "http://testclient.lyft.com")],
         [("By", "http://backend.lyft.com"),
          ("Hash", "9ba61d6425303443c0748a02dd8de688468ed33be74eee6556d90c0149c1309e"),
          ("URI", "http://frontend.lyft.com")]],
        id="two-proxies"),
    pytest.param(
        'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02'
        'dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testcli'
        "ent.lyft.com",
        [[("By", "http://frontend.lyft.com"),
          ("Hash", "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"),
          ("Subject", "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client"),
          ("URI", "http://testclient.lyft.com")]],
        id="subject-quoted"),
    pytest.param(
        'By=http://frontend.lyft.com;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02'
        'dd8de688;Subject="/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client";URI=http://testcli'
        "ent.lyft.com;DNS=lyft.com;DNS=www.lyft.com",
        [[("By", "http://frontend.lyft.com"),
          ("Hash", "468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688"),
          ("Subject", "/C=US/ST=CA/L=San Francisco/OU=Lyft/CN=Test Client"),
          ("URI", "http://testclient.lyft.com"), ("DNS", "lyft.com"), ("DNS", "www.lyft.com")]],
        id="dns-sans"),
    pytest.param('Subject="a \\"quoted\\" ; , = value"', [[("Subject", 'a "quoted" ; , = value')]],
                 id="quoting-rules"),
]


@pytest.mark.parametrize(("header", "expected"), ENVOY_EXAMPLES)
def test_the_test_parser_reads_envoys_documented_examples(header, expected) -> None:
    assert parse_xfcc(header) == expected


# --------------------------------------------------------------------------
# XFCC
# --------------------------------------------------------------------------


def test_xfcc_default_details_for_the_fixed_certificate() -> None:
    element = xfcc_element(IDENTITY, (), ("Subject", "URI", "DNS"))
    assert element == (
        f"Hash={HASH};"
        'Subject="CN=alice,OU=payments,O=Example\\, Inc.,C=DE";'
        "URI=spiffe://example.org/ns/prod/sa/web;"
        "DNS=alice.example.com;DNS=api.example.com")
    assert hashlib.sha256(LEAF_DER).hexdigest() == HASH


def test_xfcc_with_every_detail_parses_back_element_by_element() -> None:
    element = xfcc_element(IDENTITY, (INTERMEDIATE_DER,), ALL_DETAILS, (BY,))
    [pairs] = parse_xfcc(element)
    assert [key for key, _ in pairs] == ["By", "Hash", "Cert", "Chain", "Subject", "URI", "DNS",
                                         "DNS"]
    values = dict(pairs)
    assert values["By"] == BY
    assert values["Hash"] == HASH
    assert unquote(values["Cert"]) == pem(LEAF_DER)
    assert unquote(values["Chain"]) == pem(LEAF_DER) + pem(INTERMEDIATE_DER)
    assert values["Subject"] == IDENTITY.subject
    assert values["URI"] == "spiffe://example.org/ns/prod/sa/web"
    assert [v for k, v in pairs if k == "DNS"] == list(IDENTITY.dns_names)
    # Envoy's URL encoding of the PEM: newline, space, "+", "/" and "=" percent-encoded.
    assert values["Cert"].startswith("-----BEGIN%20CERTIFICATE-----%0AMIIByTCCAXugAwIBAgIEPC4S")
    assert values["Cert"] == quote(pem(LEAF_DER), safe="")
    assert element.count('Cert="') == 1 and 'Chain="' in element  # always quoted, as Envoy


def test_xfcc_writes_uri_empty_and_no_dns_without_sans() -> None:
    ca = make_ca("CA")
    identity = ClientIdentity.from_certificate(make_leaf(ca, "bob").certificate)
    element = xfcc_element(identity, (), ("Subject", "URI", "DNS"))
    assert element == f'Hash={identity.fingerprint_sha256};Subject="CN=bob";URI='


def test_xfcc_writes_only_the_first_uri_san_as_envoy() -> None:
    ca = make_ca("CA")
    leaf = make_leaf(ca, "svc", sans=[x509.UniformResourceIdentifier("spiffe://a/one"),
                                      x509.UniformResourceIdentifier("spiffe://a/two")])
    element = xfcc_element(ClientIdentity.from_certificate(leaf.certificate), (), ("URI",))
    assert element.endswith(";URI=spiffe://a/one")


XFCC_VALUES = [
    pytest.param("plain", "plain", id="plain"),
    pytest.param("a,b", '"a,b"', id="comma"),
    pytest.param("a;b", '"a;b"', id="semicolon"),
    pytest.param("a=b", '"a=b"', id="equals"),
    pytest.param('a"b', '"a\\"b"', id="quote"),
    pytest.param("https://x/?a=1", '"https://x/?a=1"', id="uri-with-query"),
    pytest.param("caf\u00e9", "caf%C3%A9", id="non-ascii"),
    pytest.param("a=b\\", '"a=b%5C"', id="trailing-backslash"),
]


@pytest.mark.parametrize(("value", "written"), XFCC_VALUES)
def test_xfcc_values_are_quoted_as_envoy_documents(value: str, written: str) -> None:
    assert xfcc_value(value) == written
    [[(_, parsed)]] = parse_xfcc(f"K={written}")
    if value.isascii() and not value.endswith("\\"):
        assert parsed == value


def test_xfcc_subject_is_always_quoted_and_survives_quotes_and_backslashes() -> None:
    ca = make_ca("CA")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, 'a "b"; c=d \\')])
    identity = ClientIdentity.from_certificate(make_leaf(ca, subject).certificate)
    element = xfcc_element(identity, (), ("Subject",))
    [pairs] = parse_xfcc(element)
    written = dict(pairs)["Subject"]
    # OpenSSL's RFC 2253 form ends in "\\\\" (an escaped backslash); a final backslash would
    # read as an escaped quote, so it is written as the equal RFC 4514 escape "\\5C".
    assert identity.subject == 'CN=a \\"b\\"\\; c=d \\\\'
    assert written == 'CN=a \\"b\\"\\; c=d \\5C'
    assert x509.Name.from_rfc4514_string(written) == subject


def test_xfcc_by_names_every_uri_san_of_the_gateways_certificate() -> None:
    element = xfcc_element(IDENTITY, (), (), ("spiffe://a/gw", "https://gw.example/x=1"))
    assert element == f'By=spiffe://a/gw;By="https://gw.example/x=1";Hash={HASH}'


# --------------------------------------------------------------------------
# RFC 9440
# --------------------------------------------------------------------------


def test_client_cert_is_the_leaf_der_as_a_byte_sequence() -> None:
    values = dict(rfc9440_values(IDENTITY, (INTERMEDIATE_DER,)))
    assert values[b"Client-Cert"] == b":" + LEAF_B64.encode() + b":"
    assert base64.b64decode(LEAF_B64) == LEAF_DER
    assert http_sf.parse(values[b"Client-Cert"], tltype="item") == (LEAF_DER, {})
    chain = http_sf.parse(values[b"Client-Cert-Chain"], tltype="list")
    assert chain == [(INTERMEDIATE_DER, {})]


def test_client_cert_chain_is_left_out_without_intermediates() -> None:
    assert [n for n, _ in rfc9440_values(IDENTITY, ())] == [b"Client-Cert"]


def test_client_cert_chain_lists_every_intermediate_in_order() -> None:
    other = make_ca("other").certificate.public_bytes(Encoding.DER)
    values = dict(rfc9440_values(IDENTITY, (INTERMEDIATE_DER, other)))
    assert values[b"Client-Cert-Chain"].count(b", ") == 1
    assert http_sf.parse(values[b"Client-Cert-Chain"], tltype="list") == [
        (INTERMEDIATE_DER, {}), (other, {})]


@pytest.mark.parametrize(("vary", "named"), [
    (b"Client-Cert", True), (b"client-cert-chain", True), (b"Accept, CLIENT-CERT", True),
    (b"Accept,Client-Cert-Chain ", True), (b"Accept-Encoding", False),
    (b"Client-Certificate", False), (b"*", False)])
def test_vary_naming_client_cert_is_recognised(vary: bytes, named: bool) -> None:
    assert names_client_cert(vary) is named


def test_vary_naming_client_cert_is_rewritten_to_star() -> None:
    headers = [(b"Content-Type", b"text/plain"), (b"Vary", b"Accept"), (b"vary", b"Client-Cert")]
    assert vary_for_client_cert(headers) == [(b"Content-Type", b"text/plain"), (b"Vary", b"*")]
    untouched = [(b"Vary", b"Accept-Encoding")]
    assert vary_for_client_cert(untouched) is untouched


# --------------------------------------------------------------------------
# Traefik
# --------------------------------------------------------------------------


def test_traefik_cert_is_base64_der_without_armour_comma_joined() -> None:
    values = dict(traefik_values(IDENTITY, (INTERMEDIATE_DER,)))
    cert = values[b"X-Forwarded-Tls-Client-Cert"].decode()
    assert cert == LEAF_B64 + "," + base64.b64encode(INTERMEDIATE_DER).decode()


def test_traefik_info_for_the_fixed_certificate() -> None:
    values = dict(traefik_values(IDENTITY, ()))
    info = values[b"X-Forwarded-Tls-Client-Cert-Info"].decode()
    assert info == (
        "Subject%3D%22C%3DDE%2CO%3DExample%2C+Inc.%2COU%3Dpayments%2CCN%3Dalice%22%3B"
        "Issuer%3D%22C%3DDE%2CO%3DExample%2CCN%3DExample+Client+CA%22%3B"
        "SerialNumber%3D%221009652240%22%3BNB%3D%221769860800%22%3BNA%3D%221801396800%22%3B"
        "SAN%3D%22alice.example.com%2Capi.example.com%2Calice%40example.com%2C10.0.0.5%2C"
        "spiffe%3A%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb%22")
    assert int(LEAF.serial_number) == 1009652240
    assert int(LEAF.not_valid_before_utc.timestamp()) == 1769860800


def _cheese_name(cn: tuple[str, str], ou: tuple[str, str], st: tuple[str, str]) -> x509.Name:
    # The attribute order of the certificates in Traefik's own passTLSClientCert tests.
    oid = NameOID
    pairs = [(oid.DOMAIN_COMPONENT, "org"), (oid.DOMAIN_COMPONENT, "cheese"),
             (oid.ORGANIZATION_NAME, "Cheese"), (oid.ORGANIZATION_NAME, "Cheese 2"),
             (oid.ORGANIZATIONAL_UNIT_NAME, ou[0]), (oid.ORGANIZATIONAL_UNIT_NAME, ou[1]),
             (oid.COMMON_NAME, cn[0]), (oid.COMMON_NAME, cn[1]),
             (oid.COUNTRY_NAME, "FR"), (oid.COUNTRY_NAME, "US"),
             (oid.LOCALITY_NAME, "TOULOUSE"), (oid.LOCALITY_NAME, "LYON"),
             (oid.STATE_OR_PROVINCE_NAME, st[0]), (oid.STATE_OR_PROVINCE_NAME, st[1]),
             (oid.EMAIL_ADDRESS, "cert@cheese.org")]
    return x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v)])
                      for o, v in pairs])


def test_traefik_info_matches_traefiks_complete_certificate_example() -> None:
    """Traefik's test "TLS with complete certificate, with all info": same names, SANs, serial
    and validity, so the same expected Info (before url.QueryEscape)."""
    import datetime
    import ipaddress

    issuer = _cheese_name(("Simple Signing CA", "Simple Signing CA 2"),
                          ("Simple Signing Section", "Simple Signing Section 2"),
                          ("Signing State", "Signing State 2"))
    subject = _cheese_name(("*.cheese.org", "*.cheese.com"),
                           ("Simple Signing Section", "Simple Signing Section 2"),
                           ("Cheese org state", "Cheese com state"))
    ca = make_ca(issuer)
    sans = [x509.DNSName("*.cheese.org"), x509.DNSName("*.cheese.net"),
            x509.DNSName("*.cheese.com"), x509.IPAddress(ipaddress.ip_address("10.0.1.0")),
            x509.IPAddress(ipaddress.ip_address("10.0.1.2")), x509.RFC822Name("test@cheese.org"),
            x509.RFC822Name("test@cheese.net")]
    utc = datetime.UTC
    leaf = make_leaf(ca, subject, sans=sans, serial=1,
                     not_before=datetime.datetime(2018, 12, 6, 11, 10, 16, tzinfo=utc),
                     not_after=datetime.datetime(2020, 12, 5, 11, 10, 16, tzinfo=utc))
    identity = ClientIdentity.from_certificate(leaf.certificate)
    info = dict(traefik_values(identity, ()))[b"X-Forwarded-Tls-Client-Cert-Info"].decode()
    assert unquote_plus(info) == ";".join([
        'Subject="DC=org,DC=cheese,C=FR,C=US,ST=Cheese org state,ST=Cheese com state,'
        "L=TOULOUSE,L=LYON,O=Cheese,O=Cheese 2,OU=Simple Signing Section,"
        'OU=Simple Signing Section 2,CN=*.cheese.com"',
        'Issuer="DC=org,DC=cheese,C=FR,C=US,ST=Signing State,ST=Signing State 2,L=TOULOUSE,'
        'L=LYON,O=Cheese,O=Cheese 2,CN=Simple Signing CA 2"',
        'SerialNumber="1"',
        'NB="1544094616"',
        'NA="1607166616"',
        'SAN="*.cheese.org,*.cheese.net,*.cheese.com,test@cheese.org,test@cheese.net,'
        '10.0.1.0,10.0.1.2"',
    ])
    # Go's url.QueryEscape: space as "+", "*" and "@" percent-encoded.
    assert "Cheese+2" in info and "%2A.cheese.org" in info and "test%40cheese.org" in info


def test_traefik_writes_ipv4_mapped_addresses_as_go_does() -> None:
    import ipaddress

    leaf = make_leaf(make_ca("CA"), "x", sans=[
        x509.IPAddress(ipaddress.ip_address("::ffff:10.1.2.3")),
        x509.IPAddress(ipaddress.ip_address("2001:db8::1"))])
    identity = ClientIdentity.from_certificate(leaf.certificate)
    info = unquote_plus(dict(traefik_values(identity, ()))[b"X-Forwarded-Tls-Client-Cert-Info"]
                        .decode())
    assert info.endswith('SAN="10.1.2.3,2001:db8::1"')


# --------------------------------------------------------------------------
# the formats through gateway.headers
# --------------------------------------------------------------------------


def test_default_settings_write_only_the_nginx_headers() -> None:
    names = [n for n, _ in identity_values(IDENTITY, NGINX, (INTERMEDIATE_DER,))]
    assert all(n.startswith(b"X-Client-") for n in names)


def test_formats_are_written_in_the_order_listed_and_nginx_can_be_left_out() -> None:
    chosen = settings("traefik", "xfcc")
    names = [n for n, _ in identity_values(IDENTITY, chosen, ())]
    assert names == [b"X-Forwarded-Tls-Client-Cert", b"X-Forwarded-Tls-Client-Cert-Info",
                     b"X-Forwarded-Client-Cert"]


def test_no_certificate_writes_only_nginx_verify_none() -> None:
    chosen = settings("nginx", "xfcc", "rfc9440", "traefik")
    assert identity_values(None, chosen, ()) == ((b"X-Client-Verify", b"NONE"),)
    assert identity_values(None, settings("rfc9440"), ()) == ()


@pytest.mark.parametrize("mode", ["sanitize", "forward_only", "always_forward_only"])
def test_xfcc_modes_that_write_no_element(mode: str) -> None:
    assert identity_values(IDENTITY, settings("xfcc", xfcc_mode=mode), ()) == ()


def test_every_written_value_is_printable_ascii() -> None:
    chosen = settings("nginx", "xfcc", "rfc9440", "traefik", xfcc_details=ALL_DETAILS,
                      xfcc_by=(BY,))
    for name, value in identity_values(IDENTITY, chosen, (INTERMEDIATE_DER,)):
        assert all(0x20 <= byte <= 0x7E for byte in value), name


FORMAT_NAMES = ["X-Forwarded-Client-Cert", "Client-Cert", "Client-Cert-Chain",
                "X-Forwarded-Tls-Client-Cert", "X-Forwarded-Tls-Client-Cert-Info"]


@pytest.mark.parametrize("header", FORMAT_NAMES)
@pytest.mark.parametrize("spelling", [str, str.lower, str.upper,
                                      lambda n: n.replace("-", "_"),
                                      lambda n: n.replace("-", ".")])
def test_every_format_header_is_owned_in_every_spelling_even_when_not_enabled(
        header: str, spelling) -> None:
    assert is_owned(spelling(header).encode(), NGINX)


def _upstream(client_headers, identity, chosen):
    return upstream_request_headers(client_headers, identity, chosen, "192.0.2.1", b"gw")


def _xfcc(headers) -> list[bytes]:
    return [v for n, v in headers if n.lower() == b"x-forwarded-client-cert"]


PROXY = {IDENTITY.fingerprint_sha256}
FORGED = [(b"X-Forwarded-Client-Cert", b"By=spiffe://evil;Hash=00"),
          (b"x_forwarded_client_cert", b"Hash=11")]


def test_sanitize_set_replaces_the_clients_xfcc() -> None:
    headers = _upstream(FORGED, IDENTITY, settings("xfcc"))
    assert _xfcc(headers) == [xfcc_element(IDENTITY, (), ("Subject", "URI", "DNS")).encode()]
    assert not any(n == b"x_forwarded_client_cert" for n, _ in headers)


@pytest.mark.parametrize("mode", ["forward_only", "always_forward_only"])
def test_forwarding_modes_keep_the_xfcc_of_a_trusted_proxy_only(mode: str) -> None:
    chosen = settings("xfcc", xfcc_mode=mode, trusted_proxy_sha256=frozenset(PROXY))
    assert _xfcc(_upstream(FORGED, IDENTITY, chosen)) == [b"By=spiffe://evil;Hash=00"]
    untrusted = settings("xfcc", xfcc_mode=mode, trusted_proxy_sha256=frozenset({"ab" * 32}))
    assert _xfcc(_upstream(FORGED, IDENTITY, untrusted)) == []


def test_append_forward_appends_our_element_to_a_trusted_proxys() -> None:
    chosen = settings("xfcc", xfcc_mode="append_forward", trusted_proxy_sha256=frozenset(PROXY))
    ours = xfcc_element(IDENTITY, (), ("Subject", "URI", "DNS")).encode()
    assert _xfcc(_upstream(FORGED, IDENTITY, chosen)) == [b"By=spiffe://evil;Hash=00," + ours]
    elements = parse_xfcc(_xfcc(_upstream(FORGED, IDENTITY, chosen))[0].decode())
    assert [dict(e)["Hash"] for e in elements] == ["00", HASH]
    untrusted = settings("xfcc", xfcc_mode="append_forward",
                         trusted_proxy_sha256=frozenset({"ab" * 32}))
    assert _xfcc(_upstream(FORGED, IDENTITY, untrusted)) == [ours]


def test_sanitize_drops_the_clients_xfcc_and_writes_none() -> None:
    assert _xfcc(_upstream(FORGED, IDENTITY, settings("xfcc", xfcc_mode="sanitize"))) == []


# --------------------------------------------------------------------------
# docs/headers.md: its examples are what the code writes, its Python reader reads them
# --------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "headers.md"


def _documented_headers() -> dict[bytes, bytes]:
    full = settings("xfcc", "rfc9440", "traefik", xfcc_details=("Cert", "Subject", "URI", "DNS"))
    return dict(identity_values(IDENTITY, full, (INTERMEDIATE_DER,)))


def test_the_documented_examples_are_what_the_gateway_writes() -> None:
    text = DOCS.read_text(encoding="utf-8")
    by = settings("xfcc", xfcc_by=(BY,))
    every = settings("xfcc", "rfc9440", "traefik", xfcc_details=ALL_DETAILS)
    for chosen in (by, every):
        for name, value in identity_values(IDENTITY, chosen, (INTERMEDIATE_DER,)):
            assert f"\n{name.decode()}: {value.decode()}\n" in text, name
    assert pem(LEAF_DER) + pem(INTERMEDIATE_DER) in text


def test_the_documented_python_reader_reads_every_format() -> None:
    code = DOCS.read_text(encoding="utf-8").split("#### Python\n\n```python\n")[1]
    namespace: dict[str, object] = {}
    exec(code.split("```")[0], namespace)  # the reader as documented
    headers = {name.decode(): value.decode() for name, value in _documented_headers().items()}
    xfcc = namespace["from_xfcc"](headers)  # type: ignore[operator]
    assert xfcc["hash"] == HASH and xfcc["dns"] == list(IDENTITY.dns_names)
    assert xfcc["cert"] == LEAF
    rfc = namespace["from_rfc9440"](headers)  # type: ignore[operator]
    assert rfc["leaf"] == LEAF
    assert [c.public_bytes(Encoding.DER) for c in rfc["chain"]] == [INTERMEDIATE_DER]
    traefik = namespace["from_traefik"](headers)  # type: ignore[operator]
    assert [cert["SerialNumber"] for cert in traefik] == ["1009652240", "4097"]
    assert traefik[0]["Subject"] == "C=DE,O=Example, Inc.,OU=payments,CN=alice"


def test_header_values_are_computed_once_per_identity_chain_and_settings() -> None:
    chosen = settings("nginx", "xfcc", "rfc9440", "traefik")
    first = identity_values(IDENTITY, chosen, (INTERMEDIATE_DER,))
    assert identity_values(IDENTITY, chosen, (INTERMEDIATE_DER,)) is first
    assert identity_values(IDENTITY, chosen, ()) is not first
