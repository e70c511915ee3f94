// The client identity mtlsgw puts into request headers (docs/headers.md). The gateway removes
// every copy a client sent and sets its own, so these are facts about the verified certificate,
// as long as the app is reachable only through the gateway (README.md here).

export type ClientIdentity = {
  cn: string | null; // null when the certificate has no CN or several (ambiguous)
  subject: string; // RFC 4514, as nginx's $ssl_client_s_dn
  fingerprint: string | null;
  uris: string[]; // X-Client-SAN-URI, e.g. SPIFFE IDs
  dns: string[];
};

// Lists (X-Client-CN, X-Client-SAN-*): split on "," first, then undo the escaping.
function items(value: string | null): string[] {
  return value ? value.split(",").map((item) => decodeURIComponent(item)) : [];
}

// The identity of a request that came through mtlsgw, or null (no verified certificate).
// When mtlsgw sends RFC 9440 / XFCC forms as well, read them here too; the X-Client-* set is
// what every version sends.
export function identityFrom(headers: Headers): ClientIdentity | null {
  const subject = headers.get("x-client-subject");
  if (headers.get("x-client-verify") !== "SUCCESS" || subject === null) {
    return null;
  }
  const cns = items(headers.get("x-client-cn"));
  return {
    cn: cns.length === 1 ? cns[0] : null,
    subject: decodeURIComponent(subject),
    fingerprint: headers.get("x-client-fingerprint-sha256"),
    uris: items(headers.get("x-client-san-uri")),
    dns: items(headers.get("x-client-san-dns")),
  };
}
